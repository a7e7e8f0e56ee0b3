"""Lepton's error hierarchy.

Every error a user can cause is a `UserError` (CLI exit code 2) whose message names the
model part at fault and what to do. Bugs in Lepton surface as `InternalError` (exit 3).
Verification failures (exit 1) are defined by the verification harness.
"""

from __future__ import annotations


class LeptonError(Exception):
    """Base class of every error Lepton raises on purpose."""

    exit_code: int = 3
    #: The full text behind the message (a tool's own output), which the CLI prints with --verbose; "" if none.
    details: str = ""

    def to_json(self) -> dict[str, object]:
        """The error as the CLI's --json reports it: its type, exit code and message (and a subclass's fields)."""
        return {"type": type(self).__name__, "exit_code": self.exit_code, "message": str(self)}


class UserError(LeptonError):
    """The input (model, option, file) is at fault; the message says what to change."""

    exit_code = 2


class ModelLoadError(UserError):
    """The bytes are not a readable ONNX model (empty, truncated, garbage, unreadable file)."""


class UnsafeExternalDataError(UserError):
    """An external-data reference points outside the model folder, through a link, or past a file's end."""


class InvalidModelError(UserError):
    """The model is structurally wrong: undefined inputs, cycles, duplicate names, checker failures."""


class UnsupportedModelError(UserError):
    """The model is valid ONNX but uses something Lepton does not take (IR version, opset, domain, type)."""


class InternalError(LeptonError):
    """A bug in Lepton: an invariant broke. Please report it with the model."""

    exit_code = 3


class IRError(InternalError):
    """An IR edit would break an invariant (for example removing a node that still has users)."""
