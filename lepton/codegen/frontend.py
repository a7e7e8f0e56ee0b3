"""Lower a Lepton graph to a TVM Relax module through TVM's ONNX frontend.

`unsupported_nodes` finds every node the frontend cannot take before TVM is called, so the
user gets one report with all of them. `to_relax` converts; a converter that fails raises
`ConversionError` naming the node (TVM's own message says only the op and prints inputs). Given a
`Provenance`, it records which node's conversion produced which Relax operators and kernels, so that a
later build failure can name the node (`lepton.codegen.failures`).
"""

from __future__ import annotations

import contextlib
import io
import warnings

import onnx
import tvm
from tvm import relax, topi
from tvm.relax.frontend.onnx import onnx_frontend

from lepton.codegen import float8, fused_ops, fused_transformer, layout_ops, narrow
from lepton.codegen.provenance import Provenance
from lepton.errors import ConversionError, SourceNode, UnsupportedNode
from lepton.input_shapes import symbolic_inputs
from lepton_ir import Graph, Node, to_onnx
from lepton_ir.types import dtype_bits, dtype_name
from passes.lowering import unlowered_reason

#: Default-domain ops whose name TVM's frontend gives to a converter of a different op: its "Attention"
#: is onnxruntime's contrib op (attribute `num_heads`, packed QKV weights), not ONNX's Attention (opset 23).
#: They count as unconverted, so expand-functions replaces them by their ONNX function bodies.
MISREAD_OPS: frozenset[str] = frozenset({"Attention"})

#: Ops TVM 0.27's ONNX frontend converts (it reads `op_type` only, whatever the domain).
CONVERTED_OPS: frozenset[str] = (frozenset(onnx_frontend._get_convert_map()) | {"If", "Constant", "BitCast"}) - MISREAD_OPS

#: Contrib ops the frontend converts under Microsoft's domain (onnxruntime's fused ops).
_MS_OPS = frozenset({"BiasGelu", "EmbedLayerNormalization", "FastGelu", "SkipLayerNormalization", "MatMulInteger16"})

#: Element types TVM cannot hold in a tensor.
_BAD_DTYPES = {
    getattr(onnx.TensorProto, n)
    for n in ("STRING", "COMPLEX64", "COMPLEX128")
    if hasattr(onnx.TensorProto, n)
}

#: Float8 types: TVM holds them, and Lepton converts them itself (lepton/codegen/float8.py), in
#: Cast/CastLike to or from float16/32/64 and in (de)quantization; no other op may touch them.
_FLOAT8 = {onnx.TensorProto.FLOAT8E4M3FN, onnx.TensorProto.FLOAT8E5M2, onnx.TensorProto.FLOAT8E4M3FNUZ,
           onnx.TensorProto.FLOAT8E5M2FNUZ, onnx.TensorProto.FLOAT8E8M0}
_FLOATS = {onnx.TensorProto.FLOAT16, onnx.TensorProto.FLOAT, onnx.TensorProto.DOUBLE}
_FLOAT8_OPS = frozenset({"Cast", "CastLike", "QuantizeLinear", "DequantizeLinear", "BitCast"})


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
    elif fused_transformer.converts(node):  # the transformer fusions' contrib ops
        pass
    elif node.domain == "com.microsoft":
        if node.op_type not in _MS_OPS:
            return "onnxruntime contrib op TVM does not convert"
    elif layout_ops.converts(node):  # convert-layout's channels-last ops
        pass
    elif fused_ops.converts(node):  # fuse-activation's fused ops
        pass
    elif node.domain == "ai.onnx.preview.training":
        return "training op (ai.onnx.preview.training): Lepton compiles inference graphs"
    else:
        return f"custom domain {node.domain!r}: only standard ONNX ops can be compiled"
    for v in [*node.inputs, *node.outputs]:
        if v is not None and v.dtype in _BAD_DTYPES:
            return f"value {v.name!r} has element type {dtype_name(v.dtype)}, which TVM cannot compile"
    return _float8_unsupported(node) or _narrow_unsupported(node)


def _float8_unsupported(node: Node) -> str | None:
    """Why `node` cannot take or make its float8 values (None: it has none, or it is a conversion float8.py does)."""
    fp8 = [v for v in [*node.inputs, *node.outputs] if v is not None and v.dtype in _FLOAT8]
    if not fp8:
        return None
    why = f"value {fp8[0].name!r} has element type {dtype_name(fp8[0].dtype)}"
    if node.domain or node.op_type not in _FLOAT8_OPS:
        return why + ": Lepton compiles float8 only in Cast, CastLike and (de)quantization"
    if int(node.attr("block_size", 0) or 0) and node.op_type != "DequantizeLinear":
        return why + ": Lepton quantizes to float8 per tensor or per axis only, not in blocks"
    x, y = node.inputs[0], node.outputs[0]
    if onnx.TensorProto.FLOAT8E8M0 in (x.dtype, y.dtype) and node.op_type not in ("Cast", "CastLike", "BitCast"):
        return why + ": FLOAT8E8M0 converts only in Cast and CastLike"
    if node.op_type == "BitCast":
        ok = x.dtype is not None and y.dtype is not None and dtype_bits(x.dtype) == dtype_bits(y.dtype) == 8
    elif node.op_type == "DequantizeLinear":
        ok = x.dtype in _FLOAT8 and y.dtype in _FLOATS
    elif node.op_type == "QuantizeLinear":
        ok = x.dtype in _FLOATS and y.dtype in _FLOAT8
    else:
        ok = (x.dtype in _FLOAT8 and y.dtype in _FLOATS) or (x.dtype in _FLOATS and y.dtype in _FLOAT8)
    return None if ok else why + ": float8 converts only to and from float16, float32 and float64"


def _narrow_unsupported(node: Node) -> str | None:
    """Why `node` cannot take or make its sub-byte values (None: it has none, or narrow.py converts them)."""
    small = [v for v in [*node.inputs, *node.outputs] if v is not None and v.dtype in narrow.NARROW]
    if not small:
        return None
    why = f"value {small[0].name!r} has element type {dtype_name(small[0].dtype)}"
    if node.domain or node.op_type not in _FLOAT8_OPS - {"BitCast"}:
        return why + ": Lepton compiles sub-byte types only in Cast, CastLike and (de)quantization"
    x, y = node.inputs[0], node.outputs[0]
    if int(node.attr("block_size", 0) or 0) and node.op_type == "QuantizeLinear" and y.dtype == onnx.TensorProto.FLOAT4E2M1:
        return why + ": Lepton quantizes to FLOAT4E2M1 per tensor or per axis only, not in blocks"
    if x.dtype in narrow.NARROW and y.dtype in narrow.NARROW:
        return why + ": casts between two sub-byte types are not compiled"
    other = y.dtype if x.dtype in narrow.NARROW else x.dtype
    if other in _FLOAT8 or other == onnx.TensorProto.BFLOAT16 or (node.op_type != "Cast" and node.op_type != "CastLike" and other not in _FLOATS):
        return why + f": converts only to and from float16/32/64 (and integers in Cast), not {dtype_name(other)}"
    if (onnx.TensorProto.FLOAT4E2M1 in (x.dtype, y.dtype)) and other not in _FLOATS:
        return why + ": FLOAT4E2M1 converts only to and from float16/32/64"
    return None


class _Importer(onnx_frontend.ONNXGraphImporter):
    """TVM's importer, with converter failures re-raised naming the node, and each node's Relax code recorded in
    `provenance` (if given)."""

    provenance: Provenance | None = None

    def _check_for_unsupported_ops(self, graph):  # type: ignore[no-untyped-def]
        """TVM's check, knowing the ops Lepton converts itself (BitCast)."""
        missing = sorted({n.op_type for n in graph.node if n.op_type not in CONVERTED_OPS | MISREAD_OPS | layout_ops.OPS | fused_ops.OPS
                          | fused_transformer.OPS})
        if missing:
            raise tvm.error.OpNotImplemented("The following operators are not supported for frontend ONNX: " + ", ".join(missing))

    def _convert_operator(self, op_name, inputs, attrs, opset):  # type: ignore[no-untyped-def]
        node = attrs.get("tvm_custom", {}).get("name", "?")
        try:
            sym = self._convert(op_name, inputs, attrs, opset)
        except Exception as e:  # noqa: BLE001 - every converter failure becomes one clear error
            raise _NodeFailure(node, op_name, f"{type(e).__name__}: {e}") from e
        if self.provenance is not None:
            self.provenance.record(SourceNode(node, op_name), self.bb, list(inputs), sym)
        return sym

    def _convert(self, op_name, inputs, attrs, opset):  # type: ignore[no-untyped-def]
        """One node's Relax code: Lepton's own converters, else TVM's."""
        if op_name == "BitCast":
            return self.bb.normalize(_bitcast(self.bb, inputs[0], onnx_frontend.get_type(attrs["to"])))
        if op_name == "Clip":
            return self.bb.normalize(_clip(self.bb, inputs, attrs, opset))
        if op_name in layout_ops.OPS:
            return self.bb.normalize(layout_ops.convert(self.bb, op_name, inputs, attrs, [self._nodes, self._params]))
        if op_name in fused_transformer.OPS | {"LayerNormalization"}:
            sym = fused_transformer.convert(self.bb, op_name, inputs, attrs)
            if sym is not None:
                return self.bb.normalize(sym)
        if op_name in fused_ops.OPS:
            standard = lambda op, ins, at: self._convert(op, ins, at, opset)  # noqa: E731
            return self.bb.normalize(fused_ops.convert(self.bb, op_name, inputs, attrs, standard))
        if op_name in _FLOAT8_OPS:
            sym = narrow.convert(self.bb, op_name, inputs, attrs)
            if sym is not None:
                return self.bb.normalize(sym)
            sym = float8.convert(self.bb, op_name, inputs, attrs, _output_dtype(op_name, inputs, attrs))
            if sym is not None:
                return self.bb.normalize(sym)
        return super()._convert_operator(op_name, inputs, attrs, opset)


def _bitcast(bb: relax.BlockBuilder, x: relax.Expr, to: str) -> relax.Expr:
    """ONNX BitCast (same bit width, same shape). TVM's bool is one bit wide: it is read as the byte 0/1."""
    src = float8.dtype_of(x)
    if src == to:
        return x
    if src == "bool":
        return relax.op.astype(x, to)
    if to == "bool":
        return relax.op.not_equal(x, relax.const(0, src))
    return bb.emit_te(topi.reinterpret, x, to)


def _clip(bb: relax.BlockBuilder, inputs: list, attrs: dict, opset: int) -> relax.Expr:  # type: ignore[type-arg]
    """ONNX Clip as Relax `maximum`/`minimum` ops (TVM's converter emits TE calls, which layout conversion
    cannot see through, so every Clip after a convolution cost two transposes). A NaN bound is no bound."""
    x = inputs[0]
    dtype = float8.dtype_of(x)
    if opset < 11:
        lo = relax.const(float(attrs.get("min", float("-inf"))), dtype)
        hi = relax.const(float(attrs.get("max", float("inf"))), dtype)
    else:
        lo = inputs[1] if len(inputs) > 1 else None
        hi = inputs[2] if len(inputs) > 2 else None
    for bound, op, unbounded in ((lo, relax.op.maximum, float("-inf")), (hi, relax.op.minimum, float("inf"))):
        if bound is None:
            continue
        if dtype.startswith(("float", "bfloat")):
            bound = bb.emit(relax.op.where(relax.op.isnan(bound), relax.const(unbounded, dtype), bound))
        x = bb.emit(op(x, bound))
    return x


def _output_dtype(op_name: str, inputs: list, attrs: dict) -> str | None:  # type: ignore[type-arg]
    """The TVM dtype a Cast/CastLike/QuantizeLinear node produces, where its attributes or inputs say."""
    if op_name == "Cast" and "to" in attrs:
        return onnx_frontend.get_type(attrs["to"])
    if op_name == "CastLike" and len(inputs) > 1 and inputs[1] is not None:
        return float8.dtype_of(inputs[1])
    if op_name == "QuantizeLinear" and attrs.get("output_dtype"):
        return onnx_frontend.get_type(attrs["output_dtype"])
    return None


class _NodeFailure(Exception):
    def __init__(self, node: str, op: str, message: str) -> None:
        super().__init__(message)
        self.node, self.op, self.message = node, op, message


def to_relax(graph: Graph, provenance: Provenance | None = None) -> tvm.IRModule:
    """Convert `graph` (weights embedded as constants) to a Relax module with function `main`; which node's
    conversion produced which Relax operators and kernels goes into `provenance`.

    Raises `ConversionError` naming the first node TVM could not convert.
    """
    model = fused_ops.prepare(to_onnx(graph))  # fuse-activation's ops inlined when lowered by expansion
    narrow.to_storage(model)
    _name_nodes(model.graph)
    opset = next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), 1)
    importer = _Importer({}, {}, keep_params_in_input=False, sanitize=True)
    importer.provenance = provenance
    try:
        with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
            warnings.simplefilter("ignore")
            return layout_ops.mark(graph, importer.from_onnx(model.graph, opset))
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
