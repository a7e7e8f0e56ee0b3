"""`lower-quantized-ops`: models quantized in onnxruntime's QOperator form -> the QDQ form.

TVM 0.27's ONNX frontend converts QuantizeLinear/DequantizeLinear and MatMulInteger, but not the
integer operators onnxruntime's `quantize_static(quant_format=QOperator)` and `quantize_dynamic` write.
Each rule rewrites one of them into `DequantizeLinear -> the float op -> QuantizeLinear`, the one
quantized form Lepton's passes and codegen read (and the form onnxruntime recommends):

- `qlinear_conv`: `QLinearConv(x, xs, xz, w, ws, wz, ys, yz[, B])` -> Conv of the dequantized operands,
  the int32 bias dequantized with scale `xs * ws` (per channel where `ws` is), quantized to `ys, yz`.
- `qlinear_matmul`: `QLinearMatMul` -> MatMul of the dequantized operands (a per row, b per column where
  their scales are vectors), quantized.
- `conv_integer`: `ConvInteger(x, w[, xz, wz])` -> `Round(Conv((x - xz), (w - wz)))` cast to int32, the
  differences taken exactly by DequantizeLinear with scale 1. Exact while every partial sum stays below
  2**24 in magnitude (float32's integers), which holds for 8-bit operands up to a reduction of 256 terms
  at full scale and far beyond for real data.
- `qgemm` (com.microsoft): `QGemm(A, as, az, B, bs, bz[, C[, ys, yz]])` -> `alpha * A' B'` of the
  dequantized operands plus the int32 C dequantized with scale `as * bs`, quantized when `ys` is given.
- `qlinear_binary` (com.microsoft): `QLinearAdd`/`QLinearMul` -> the float op of the dequantized operands.
- `qlinear_unary` (com.microsoft): `QLinearSigmoid`, `QLinearLeakyRelu`, `QLinearGlobalAveragePool`,
  `QLinearAveragePool` (channels first) -> the float op.
- `qlinear_concat` (com.microsoft): `QLinearConcat(ys, yz, x0, s0, z0, ...)` -> Concat of the dequantized inputs.

Blocked QuantizeLinear/DequantizeLinear (`block_size`) stay as they are: the codegen converts them itself
(`lepton.codegen.narrow`), so that a blocked int4 weight stays packed in the compiled module.

Numerics: the float op sees exactly the values onnxruntime's integer kernel multiplies; the results
can differ from onnxruntime's by one quantization step where the float sum lands next to a rounding
tie, so such models are verified under the int8 policy (DESIGN §6, `is_quantized`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import numpy as np
import onnx

from lepton_ir import Graph, Node, Value
from lepton_ir.rewriter import Builder, Rewriter

from passes.base import register
from passes.rewrite import Match, RewritePass, Rule, failed, matched

T = onnx.TensorProto
MS = "com.microsoft"
INTEGER_OPS = frozenset({"QLinearConv", "QLinearMatMul", "ConvInteger", "MatMulInteger", "QGemm", "QLinearAdd",
                         "QLinearMul", "QLinearSigmoid", "QLinearLeakyRelu", "QLinearGlobalAveragePool",
                         "QLinearAveragePool", "QLinearConcat", "MatMulNBits", "DynamicQuantizeMatMul",
                         "MatMulIntegerToFloat"})
"""Op types (any domain) of quantized compute: a model holding one is judged under the int8 policy."""
WEIGHTED = frozenset({"Conv", "ConvTranspose", "Gemm", "MatMul"})


def _builder(node: Node) -> Builder:
    assert node.graph is not None
    return Builder(node.graph, node.name or node.op_type.lower())


def _swap(rw: Rewriter, node: Node, b: Builder, result: Value) -> None:
    rw.replace([node], b.nodes, {node.outputs[0]: result})


def _float32(b: Builder, scale: Value) -> Value:
    """A float16/bfloat16 scale cast to float32: the float op then computes in float32, as the integer kernel's
    requantization does."""
    return scale if scale.dtype == T.FLOAT else b.Cast(scale, to=T.FLOAT, dtype=T.FLOAT, shape=scale.shape)


def _dq(b: Builder, q: Value, scale: Value, zp: Value | None, axis: int | None = None) -> Value:
    inputs = [q, _float32(b, scale)] + ([zp] if zp is not None else [])
    return b.op("DequantizeLinear", inputs, {"axis": axis} if axis is not None else {}, dtype=T.FLOAT, shape=q.shape)


def _q(b: Builder, x: Value, scale: Value, zp: Value | None, like: Value) -> Value:
    inputs = [x, _float32(b, scale)] + ([zp] if zp is not None else [])
    return b.op("QuantizeLinear", inputs, dtype=like.dtype, shape=like.shape)


def _vector(v: Value | None) -> bool:
    """Whether a scale or zero point is a vector (per channel / row / column) rather than a scalar."""
    return v is not None and v.shape is not None and len(v.shape) == 1 and v.shape[0] != 1


def _known_ranks(node: Node, *indices: int) -> Match | None:
    for i in indices:
        v = node.inputs[i] if i < len(node.inputs) else None
        if v is None or v.shape is None:
            return failed(f"the rank of input {i} is unknown")
    return None


def _per_tensor(b: Builder, v: Value | None) -> Value | None:
    """A 1-element vector scale or zero point as a scalar (DequantizeLinear wants a scalar without `axis`)."""
    if v is None or v.shape is None or len(v.shape) == 0:
        return v
    return b.Reshape(v, b.const(np.array([], np.int64)), dtype=v.dtype, shape=())


def _scaled(b: Builder, v: Value | None) -> Value | None:
    return v if _vector(v) else _per_tensor(b, v)


class QLinearConv(Rule):
    name = "qlinear_conv"
    op_types = ("QLinearConv",)

    def check(self, node: Node, graph: Graph) -> Match:
        return _known_ranks(node, 0, 3, 4) or matched()

    def rewrite(self, rw: Rewriter, node: Node, m: Match) -> None:
        b = _builder(node)
        x, xs, xz, w, ws, wz, ys, yz = node.inputs[:8]
        bias = node.inputs[8] if len(node.inputs) > 8 else None
        fx = _dq(b, x, _per_tensor(b, xs), _per_tensor(b, xz))
        fw = _dq(b, w, _scaled(b, ws), _scaled(b, wz), 0 if _vector(ws) else None)
        inputs = [fx, fw]
        if bias is not None:
            bias_scale = b.Mul(_per_tensor(b, xs), _scaled(b, ws), dtype=T.FLOAT)
            bias_scale.shape = ws.shape if _vector(ws) else ()
            inputs.append(_dq(b, bias, bias_scale, None, 0 if _vector(ws) else None))
        y = b.op("Conv", inputs, dict(node.attributes), dtype=T.FLOAT)
        _swap(rw, node, b, _q(b, y, _per_tensor(b, ys), _per_tensor(b, yz), node.outputs[0]))


class QLinearMatMul(Rule):
    name = "qlinear_matmul"
    op_types = ("QLinearMatMul",)

    def check(self, node: Node, graph: Graph) -> Match:
        return _known_ranks(node, 0, 1, 3, 4) or matched()

    def rewrite(self, rw: Rewriter, node: Node, m: Match) -> None:
        b = _builder(node)
        a, as_, az, bq, bs, bz, ys, yz = node.inputs[:8]
        fa = _dq(b, a, _scaled(b, as_), _scaled(b, az), len(a.shape) - 2 if _vector(as_) else None)
        fb = _dq(b, bq, _scaled(b, bs), _scaled(b, bz), len(bq.shape) - 1 if _vector(bs) else None)
        y = b.MatMul(fa, fb, dtype=T.FLOAT)
        _swap(rw, node, b, _q(b, y, _per_tensor(b, ys), _per_tensor(b, yz), node.outputs[0]))


class ConvInteger(Rule):
    name = "conv_integer"
    op_types = ("ConvInteger",)

    def check(self, node: Node, graph: Graph) -> Match:
        return _known_ranks(node, 0, 1) or matched()

    def rewrite(self, rw: Rewriter, node: Node, m: Match) -> None:
        b = _builder(node)
        x, w = node.inputs[0], node.inputs[1]
        xz = node.inputs[2] if len(node.inputs) > 2 else None
        wz = node.inputs[3] if len(node.inputs) > 3 else None
        one = b.const(np.float32(1.0), "one")
        fx = _dq(b, x, one, _per_tensor(b, xz))
        if _vector(wz):
            ones = b.Expand(one, b.Shape(wz, dtype=T.INT64), dtype=T.FLOAT, shape=wz.shape)
            fw = _dq(b, w, ones, wz, 0)
        else:
            fw = _dq(b, w, one, _per_tensor(b, wz))
        y = b.op("Conv", [fx, fw], dict(node.attributes), dtype=T.FLOAT)
        _swap(rw, node, b, b.Cast(b.Round(y, dtype=T.FLOAT), to=T.INT32, dtype=T.INT32, shape=node.outputs[0].shape))


class QGemm(Rule):
    name = "qgemm"
    op_types = ("QGemm",)
    domain = MS

    def check(self, node: Node, graph: Graph) -> Match:
        return _known_ranks(node, 0, 3, 4) or matched()

    def rewrite(self, rw: Rewriter, node: Node, m: Match) -> None:
        b = _builder(node)
        a, as_, az, bq, bs, bz = node.inputs[:6]
        c = node.inputs[6] if len(node.inputs) > 6 else None
        ys = node.inputs[7] if len(node.inputs) > 7 else None
        yz = node.inputs[8] if len(node.inputs) > 8 else None
        trans_b = int(node.attr("transB", 0))
        fa = _dq(b, a, _per_tensor(b, as_), _per_tensor(b, az))
        fb = _dq(b, bq, _scaled(b, bs), _scaled(b, bz), (0 if trans_b else 1) if _vector(bs) else None)
        inputs = [fa, fb]
        if c is not None:
            c_scale = b.Mul(_per_tensor(b, as_), _scaled(b, bs), dtype=T.FLOAT)
            c_scale.shape = bs.shape if _vector(bs) else ()
            inputs.append(_dq(b, c, c_scale, None, (len(c.shape) - 1) if _vector(bs) and c.shape else None))
        attrs = {"alpha": float(node.attr("alpha", 1.0)), "transA": int(node.attr("transA", 0)), "transB": trans_b}
        y = b.op("Gemm", inputs, attrs, dtype=T.FLOAT, shape=node.outputs[0].shape)
        _swap(rw, node, b, y if ys is None else _q(b, y, _per_tensor(b, ys), _per_tensor(b, yz), node.outputs[0]))


class QLinearBinary(Rule):
    name = "qlinear_binary"
    op_types = ("QLinearAdd", "QLinearMul")
    domain = MS

    def check(self, node: Node, graph: Graph) -> Match:
        return matched()

    def rewrite(self, rw: Rewriter, node: Node, m: Match) -> None:
        b = _builder(node)
        a, as_, az, bq, bs, bz, ys, yz = (list(node.inputs) + [None] * 8)[:8]
        y = b.op(node.op_type.removeprefix("QLinear"),
                 [_dq(b, a, _per_tensor(b, as_), _per_tensor(b, az)), _dq(b, bq, _per_tensor(b, bs), _per_tensor(b, bz))],
                 dtype=T.FLOAT)
        _swap(rw, node, b, _q(b, y, _per_tensor(b, ys), _per_tensor(b, yz), node.outputs[0]))


_UNARY = {"QLinearSigmoid": "Sigmoid", "QLinearLeakyRelu": "LeakyRelu", "QLinearGlobalAveragePool": "GlobalAveragePool",
          "QLinearAveragePool": "AveragePool"}


class QLinearUnary(Rule):
    name = "qlinear_unary"
    op_types = tuple(_UNARY)
    domain = MS

    def check(self, node: Node, graph: Graph) -> Match:
        if int(node.attr("channels_last", 0)):
            return failed("channels_last layout")
        return matched()

    def rewrite(self, rw: Rewriter, node: Node, m: Match) -> None:
        b = _builder(node)
        x, xs, xz, ys, yz = (list(node.inputs) + [None] * 5)[:5]
        attrs = {k: v for k, v in node.attributes.items() if k != "channels_last"}
        y = b.op(_UNARY[node.op_type], [_dq(b, x, _per_tensor(b, xs), _per_tensor(b, xz))], attrs, dtype=T.FLOAT)
        _swap(rw, node, b, _q(b, y, _per_tensor(b, ys), _per_tensor(b, yz), node.outputs[0]))


class QLinearConcat(Rule):
    name = "qlinear_concat"
    op_types = ("QLinearConcat",)
    domain = MS

    def check(self, node: Node, graph: Graph) -> Match:
        if (len(node.inputs) - 2) % 3 or len(node.inputs) < 5:
            return failed("inputs are not (y_scale, y_zero_point, then x, scale, zero point triples)")
        return matched()

    def rewrite(self, rw: Rewriter, node: Node, m: Match) -> None:
        b = _builder(node)
        ys, yz, *rest = node.inputs
        parts = [_dq(b, rest[i], _per_tensor(b, rest[i + 1]), _per_tensor(b, rest[i + 2])) for i in range(0, len(rest), 3)]
        y = b.op("Concat", parts, {"axis": int(node.attr("axis"))}, dtype=T.FLOAT)
        _swap(rw, node, b, _q(b, y, _per_tensor(b, ys), _per_tensor(b, yz), node.outputs[0]))


@register
@dataclass(frozen=True)
class LowerQuantizedOps(RewritePass):
    """Rewrite onnxruntime's QOperator-form integer ops into QDQ form (see the module docstring)."""

    name: ClassVar[str] = "lower-quantized-ops"
    summary: ClassVar[str] = "rewrite QOperator-form ops (QLinearConv, QLinearMatMul, ConvInteger, QGemm, ...) into QDQ form"
    rules: ClassVar[tuple[Rule, ...]] = (QLinearConv(), QLinearMatMul(), ConvInteger(), QGemm(), QLinearBinary(),
                                         QLinearUnary(), QLinearConcat())


def is_quantized(graph: Graph) -> bool:
    """Whether `graph` (subgraphs included) computes on quantized values: an op of `INTEGER_OPS`, or a
    Conv/ConvTranspose/Gemm/MatMul reading a DequantizeLinear (the QDQ form). A lone QuantizeLinear or
    DequantizeLinear does not count: its float result is exact."""
    for n in graph.all_nodes():
        if n.op_type in INTEGER_OPS:
            return True
        if n.op_type in WEIGHTED and not n.domain and any(
                v is not None and v.producer is not None and v.producer.op_type == "DequantizeLinear" for v in n.inputs):
            return True
    return False


__all__ = ["INTEGER_OPS", "LowerQuantizedOps", "is_quantized"]
