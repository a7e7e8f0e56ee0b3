"""The error a bad target name, file or option raises."""

from __future__ import annotations

from lepton_ir.errors import UserError


class TargetError(UserError):
    """A target name, TOML file or option is wrong; the message names the file and field at fault."""
