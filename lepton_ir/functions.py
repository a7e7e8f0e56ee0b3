"""Lepton-domain ops are ONNX functions: each registered op type has a body in standard ONNX.

A pass that introduces a Lepton-domain op (an NHWC convolution, say) registers its definition here, as a
builder that makes the `FunctionProto` for a model's default-domain opset. The exporter adds the
definition of every registered Lepton-domain op a model uses to the model's `functions`, so any
intermediate graph still runs in onnxruntime (and type-checks in ONNX shape inference); the codegen lowers
the same ops to native TVM ops instead. The importer inlines model-local functions, so a model re-imported
from such an export holds the bodies' standard ops.
"""

from __future__ import annotations

from collections.abc import Callable

import onnx

from lepton_ir.core import Graph

DOMAIN = "lepton"

#: op type -> builder of its FunctionProto for a default-domain opset version.
_DEFINITIONS: dict[str, Callable[[int], onnx.FunctionProto]] = {}


def register_function(op_type: str, build: Callable[[int], onnx.FunctionProto]) -> None:
    """Define the Lepton-domain op `op_type` by `build(opset)` (a FunctionProto of domain `DOMAIN`)."""
    if op_type in _DEFINITIONS and _DEFINITIONS[op_type] is not build:
        raise ValueError(f"two definitions of the Lepton-domain op {op_type!r}")
    _DEFINITIONS[op_type] = build


def is_function_op(domain: str, op_type: str) -> bool:
    return domain == DOMAIN and op_type in _DEFINITIONS


def functions_for(graph: Graph) -> list[onnx.FunctionProto]:
    """The definitions of the registered Lepton-domain ops `graph` (subgraphs included) uses, in first-use order."""
    used = dict.fromkeys(n.op_type for n in graph.all_nodes() if is_function_op(n.domain, n.op_type))
    opset = graph.opset_imports.get("", graph.opset_imports.get("ai.onnx", 1))
    out = []
    for op_type in used:
        proto = _DEFINITIONS[op_type](opset)
        if proto.domain != DOMAIN or proto.name != op_type:
            raise ValueError(f"the definition of {op_type!r} builds {proto.domain}.{proto.name}")
        out.append(proto)
    return out
