"""Errors raised by compilation, artifacts and verification (see `lepton_ir.errors` for the base classes).

Exit codes follow the class: `UserError` 2, `InternalError` 3, `VerificationError` 1.
"""

from __future__ import annotations

from collections.abc import Sequence
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


@dataclass(frozen=True)
class SourceNode:
    """An ONNX node of the model Lepton handed to TVM."""

    name: str
    op_type: str

    def __str__(self) -> str:
        return f"{self.name!r} ({self.op_type})"


class CodegenError(InternalError):
    """TVM (or a tool it drives: a compiler, nvcc) failed to build or export a module Lepton handed it: a bug
    in Lepton or TVM. The message's first line says what failed. `reason` is the line of the tool's text that
    states the error, `nodes` the ONNX nodes whose code failed (none where the text names nothing Lepton can
    trace to a node), `named` the Relax operators and kernels the text names, `tvm_pass` the TVM pass that
    failed where one was running, and `details` the tool's full text."""

    def __init__(self, message: str, *, reason: str = "", nodes: Sequence[SourceNode] = (), named: Sequence[str] = (),
                 tvm_pass: str = "", details: str = "") -> None:
        super().__init__(message)
        self.reason, self.nodes, self.named, self.tvm_pass = reason, tuple(nodes), tuple(named), tvm_pass
        self.details = details

    def with_hint(self, hint: str) -> CodegenError:
        """The same error with `hint` (advice) added to the message as a line of its own."""
        return CodegenError(f"{self}\n{hint}", reason=self.reason, nodes=self.nodes, named=self.named,
                            tvm_pass=self.tvm_pass, details=self.details)

    def to_json(self) -> dict[str, object]:
        return {
            **super().to_json(),
            "reason": self.reason,
            "nodes": [{"name": n.name, "op_type": n.op_type} for n in self.nodes],
            "named": list(self.named),
            "tvm_pass": self.tvm_pass,
        }


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
