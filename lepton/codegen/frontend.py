"""Lower a Lepton graph to a TVM Relax module through TVM's ONNX frontend.

`unsupported_nodes` finds every node the frontend cannot take before TVM is called, so the
user gets one report with all of them. `to_relax` converts; a converter that fails raises
`ConversionError` naming the node (TVM's own message says only the op and prints inputs).
"""

from __future__ import annotations

import contextlib
import io
import warnings

import onnx
import tvm
from tvm.relax.frontend.onnx import onnx_frontend

from lepton.errors import ConversionError, UnsupportedNode
from lepton.input_shapes import symbolic_inputs
from lepton_ir import Graph, Node, to_onnx
from lepton_ir.types import dtype_name
from passes.lowering import unlowered_reason

#: Default-domain ops whose name TVM's frontend gives to a converter of a different op: its "Attention"
#: is onnxruntime's contrib op (attribute `num_heads`, packed QKV weights), not ONNX's Attention (opset 23).
#: They count as unconverted, so expand-functions replaces them by their ONNX function bodies.
MISREAD_OPS: frozenset[str] = frozenset({"Attention"})

#: Ops TVM 0.27's ONNX frontend converts (it reads `op_type` only, whatever the domain).
CONVERTED_OPS: frozenset[str] = (frozenset(onnx_frontend._get_convert_map()) | {"If", "Constant"}) - MISREAD_OPS

#: Contrib ops the frontend converts under Microsoft's domain (onnxruntime's fused ops).
_MS_OPS = frozenset({"BiasGelu", "EmbedLayerNormalization", "FastGelu", "SkipLayerNormalization", "MatMulInteger16"})

#: Element types TVM cannot hold in a tensor.
_BAD_DTYPES = {
    getattr(onnx.TensorProto, n)
    for n in ("STRING", "COMPLEX64", "COMPLEX128", "FLOAT8E4M3FN", "FLOAT8E4M3FNUZ", "FLOAT8E5M2", "FLOAT8E5M2FNUZ",
              "FLOAT8E8M0", "INT4", "UINT4", "FLOAT4E2M1", "INT2", "UINT2")
    if hasattr(onnx.TensorProto, n)
}


def unsupported_nodes(graph: Graph) -> list[UnsupportedNode]:
    """Every node (subgraphs included) TVM's frontend cannot convert, in graph order."""
    found = []
    for g in graph.all_graphs():
        for node in g:
            reason = _why_unsupported(node)
            if reason:
                found.append(UnsupportedNode(node.name, node.op_type, node.domain, reason))
    return found


def _why_unsupported(node: Node) -> str | None:
    if node.domain in ("", "ai.onnx"):
        if node.op_type not in CONVERTED_OPS:
            return unlowered_reason(node) or "TVM's ONNX frontend has no converter for this op"
    elif node.domain == "com.microsoft":
        if node.op_type not in _MS_OPS:
            return "onnxruntime contrib op TVM does not convert"
    else:
        return f"custom domain {node.domain!r}: only standard ONNX ops can be compiled"
    for v in [*node.inputs, *node.outputs]:
        if v is not None and v.dtype in _BAD_DTYPES:
            return f"value {v.name!r} has element type {dtype_name(v.dtype)}, which TVM cannot compile"
    return None


class _Importer(onnx_frontend.ONNXGraphImporter):
    """TVM's importer, with converter failures re-raised naming the node."""

    def _convert_operator(self, op_name, inputs, attrs, opset):  # type: ignore[no-untyped-def]
        try:
            return super()._convert_operator(op_name, inputs, attrs, opset)
        except Exception as e:  # noqa: BLE001 - every converter failure becomes one clear error
            node = attrs.get("tvm_custom", {}).get("name", "?")
            raise _NodeFailure(node, op_name, f"{type(e).__name__}: {e}") from e


class _NodeFailure(Exception):
    def __init__(self, node: str, op: str, message: str) -> None:
        super().__init__(message)
        self.node, self.op, self.message = node, op, message


def to_relax(graph: Graph) -> tvm.IRModule:
    """Convert `graph` (weights embedded as constants) to a Relax module with function `main`.

    Raises `ConversionError` naming the first node TVM could not convert.
    """
    model = to_onnx(graph)
    _name_nodes(model.graph)
    opset = next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), 1)
    importer = _Importer({}, {}, keep_params_in_input=False, sanitize=True)
    try:
        with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
            warnings.simplefilter("ignore")
            return importer.from_onnx(model.graph, opset)
    except _NodeFailure as f:
        raise ConversionError(_conversion_message(graph, f.node, f.op, f.message)) from None
    except Exception as e:  # noqa: BLE001 - outside a converter (graph inputs, outputs, If)
        raise ConversionError(_conversion_message(graph, "", "", f"{type(e).__name__}: {e}")) from None


def _conversion_message(graph: Graph, node: str, op: str, message: str) -> str:
    first = message.strip().splitlines()[0] if message.strip() else "unknown error"
    where = f"node {node!r} ({op})" if node else "the model"
    text = f"TVM's ONNX frontend could not convert {where}: {first[:500]}"
    dynamic = symbolic_inputs(graph)
    if dynamic:
        text += (
            "\nThe model has symbolic input dims (" + "; ".join(dynamic) + "); pin them with "
            "--input-shape NAME:D1,D2,... (input_shapes= in Python) so shape computations fold to constants."
        )
    return text


def _name_nodes(g: onnx.GraphProto) -> None:
    """Give unnamed nodes unique names (TVM's errors and ours report nodes by name)."""
    used = {n.name for n in g.node if n.name}
    for i, n in enumerate(g.node):
        if not n.name:
            name = f"{n.op_type}_{i}"
            while name in used:
                name += "_"
            n.name = name
            used.add(name)
        for a in n.attribute:
            if a.type == onnx.AttributeProto.GRAPH:
                _name_nodes(a.g)
