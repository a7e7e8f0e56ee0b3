"""Errors raised by compilation, artifacts and verification (see `lepton_ir.errors` for the base classes).

Exit codes follow the class: `UserError` 2, `InternalError` 3, `VerificationError` 1.
"""

from __future__ import annotations

from dataclasses import dataclass

from lepton_ir.errors import InternalError, LeptonError, UnsupportedModelError, UserError


@dataclass(frozen=True)
class UnsupportedNode:
    """One node the target cannot take, and why."""

    node: str
    op_type: str
    domain: str
    reason: str

    def __str__(self) -> str:
        op = f"{self.domain}::{self.op_type}" if self.domain else self.op_type
        return f"{self.node or '<unnamed>'} ({op}): {self.reason}"


class UnsupportedOpsError(UnsupportedModelError):
    """Nodes the target cannot compile; all of them are listed, with node names."""

    def __init__(self, target: str, nodes: list[UnsupportedNode]) -> None:
        self.target = target
        self.nodes = nodes
        ops = sorted({n.op_type for n in nodes})
        lines = "\n".join(f"  - {n}" for n in nodes[:50])
        more = f"\n  ... and {len(nodes) - 50} more" if len(nodes) > 50 else ""
        super().__init__(
            f"{len(nodes)} node(s) use ops target {target!r} cannot compile ({', '.join(ops)}):\n{lines}{more}\n"
            "Where a reason names a symbolic dim, pin it (--input-shape / input_shapes=); otherwise replace these ops "
            "in the exported model, or file an issue with the model."
        )


class InputShapeError(UserError):
    """An input-shape override is malformed or does not fit the model, or a dim must be pinned."""


class ConversionError(UserError):
    """TVM's ONNX frontend could not convert a node (the message names it and how to help)."""


class CodegenError(InternalError):
    """TVM failed to build or export a module Lepton handed it: a bug in Lepton or TVM."""


class VerificationError(LeptonError):
    """The compiled module's outputs are out of tolerance against onnxruntime (exit code 1)."""

    exit_code = 1

    def __init__(self, message: str, report: object = None) -> None:
        super().__init__(message)
        self.report = report


# --- artifacts and loading (lepton/artifact.py, lepton/module.py) ---


class ArtifactError(UserError):
    """An artifact folder is unusable: no or invalid manifest, a missing or unsafe file."""


class TamperedArtifactError(ArtifactError):
    """A file's sha256 differs from the manifest, or native code is present that the manifest does not list."""


class WrongDeviceError(ArtifactError):
    """The artifact was built for a device this machine does not have; the message names both."""


class InputError(UserError):
    """Inputs given to a compiled module do not match its signature (names, dtypes, shapes)."""
