"""Lepton's graph IR: values, nodes and graphs, with safe ONNX import and exact export."""

from lepton_ir.core import Attr, Graph, Node, Value, tensors_equal
from lepton_ir.errors import (
    InternalError,
    InvalidModelError,
    IRError,
    LeptonError,
    ModelLoadError,
    UnsafeExternalDataError,
    UnsupportedModelError,
    UserError,
)
from lepton_ir.exporter import save, to_onnx
from lepton_ir.importer import load
from lepton_ir.nxview import to_networkx
from lepton_ir.printer import format_graph
from lepton_ir.rewriter import Builder, Event, Rewriter, RewriteRefused
from lepton_ir.tensor import Tensor
from lepton_ir.verifier import verify

__all__ = [
    "Attr", "Builder", "Event", "Graph", "IRError", "InternalError", "InvalidModelError", "LeptonError", "ModelLoadError", "Node", "RewriteRefused", "Rewriter",
    "Tensor", "UnsafeExternalDataError", "UnsupportedModelError", "UserError", "Value", "format_graph", "load",
    "save", "tensors_equal", "to_networkx", "to_onnx", "verify",
]
