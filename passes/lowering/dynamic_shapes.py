"""`canonicalize-dynamic-shapes`: rewrite shape ops TVM 0.27's ONNX frontend misreads on symbolic dims.

With symbolic input dims left symbolic, the frontend tracks shape values (`Shape`, `Gather`
of a Shape, arithmetic on them, `Unsqueeze`/`Concat` of them) as Relax shape expressions,
but two common PyTorch export patterns fall outside what it takes:

- `Expand(x, c)` with a constant target `c` (PyTorch's `expand(-1, n, -1)` once its
  Equal/Where chain folds, attention-mask broadcasts `[batch,1,1,seq]` to per-head shape):
  the converter reads every dim of x as a static int and fails on a symbolic one
  ("'Var' object has no attribute 'value'"). Rule `expand_target_from_input`: where the
  target entry is 1 and x's dim is symbolic, the output dim is x's dim; the target becomes
  `Concat(Unsqueeze(Gather(Shape(x), j)) ..., constants)`, which the frontend turns into a
  shape expression over the same symbols. When every entry is such a copy (the Expand
  keeps x's shape), the Expand is removed instead. A symbolic dim under a target entry > 1
  (x's dim must be 1 or that entry at run time) is left alone: the frontend cannot take it
  in either form, and the conversion error asks to pin the shapes.
- `Range(0, n, 1)` with n computed from dims (`torch.arange(x.size(1))`): the converter gives
  the result a fresh length symbol unrelated to the dim, so ops mixing it with x fail to
  build ("emit_te now only supports Tensor that has ShapeExpr shape"). Rule
  `range_from_dims`: `CumSum(ConstantOfShape(Unsqueeze(n), 1)) - 1`, whose length the
  frontend knows to be n. n may go through Add/Mul/Div with non-negative constants, Cast and
  Squeeze/Reshape-to-scalar from a `Gather(Shape(y), j)`; a float Range over a
  `Cast(int n)` limit is taken too (exact while n < 2^24).

Both rules keep onnxruntime's outputs bit-exact for every valid input (integer ranges are
exact; a float range `0, 1, ..., n-1` is exact up to 2^24). They fire only where a dim is
not a static int, so with pinned input shapes the cleanup passes fold everything first and
this pass finds nothing.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import numpy as np
import onnx

from lepton_ir import Graph, Node, Value
from lepton_ir.constants import constant_value
from lepton_ir.rewriter import Builder, Rewriter
from lepton_ir.types import Dim, np_dtype

from passes.base import register
from passes.rewrite import Match, RewritePass, Rule, failed, matched

I64 = onnx.TensorProto.INT64


def _opset(graph: Graph) -> int:
    return graph.root().opset_imports.get("", 1)


def _dead(node: Node) -> bool:
    return not node.outputs[0].is_used()


def _static(d: Dim) -> bool:
    return isinstance(d, int) and not isinstance(d, bool)


class ExpandTargetFromInput(Rule):
    """`Expand(x, const)` with symbolic dims of x under target 1s: copy those dims from `Shape(x)`."""

    name = "expand_target_from_input"
    op_types = ("Expand",)

    def check(self, node: Node, graph: Graph) -> Match:
        if _dead(node):
            return failed("nothing reads the output (eliminate-dead-code's job)")
        if len(node.inputs) < 2 or node.inputs[0] is None or node.inputs[1] is None:
            return failed("Expand without a shape input")
        x = node.inputs[0]
        c = constant_value(graph, node.inputs[1])
        if c is None or c.ndim != 1 or c.dtype != np.int64:
            return failed("target shape is not a constant 1-D int64 tensor")
        if x.shape is None:
            return failed("rank of the data input is unknown")
        if all(_static(d) for d in x.shape):
            return failed("the data input's shape is static (the frontend takes it)")
        r, k = len(x.shape), len(c)
        n = max(r, k)
        entries: list[tuple[str, int]] = []  # ("dim", j) copies x's dim j; ("const", v)
        for i in range(n):
            ci = int(c[i - (n - k)]) if i >= n - k else 1
            j = i - (n - r)
            xd = x.shape[j] if j >= 0 else 1
            if _static(xd):
                entries.append(("const", int(xd) if ci == 1 else ci))
            elif ci == 1:
                entries.append(("dim", j))
            else:  # x's dim must be 1 or ci at run time: the frontend cannot broadcast that either way
                return failed(f"symbolic dim {j} of the data input meets target {ci}; only pinned shapes can take it")
        copies = [e for e in entries if e[0] == "dim"]
        if not copies:
            return failed("no symbolic dim of the data input sits under a 1 of the target")
        noop = n == r and all(e == ("dim", i) or (e[0] == "const" and _static(x.shape[i]) and e[1] == x.shape[i])
                              for i, e in enumerate(entries))
        return matched(entries=entries, noop=noop)

    def rewrite(self, rw: Rewriter, node: Node, m: Match) -> None:
        x = node.inputs[0]
        assert x is not None and node.graph is not None
        if m["noop"]:
            rw.replace_uses(node.outputs[0], x)  # the Expand is left dead, for eliminate-dead-code
            return
        b = Builder(node.graph, node.name or "expand")
        opset = _opset(node.graph)
        shape = b.Shape(x, shape=(len(x.shape),))
        parts: list[Value] = []
        consts: list[int] = []

        def flush() -> None:
            if consts:
                parts.append(b.const(np.array(consts, dtype=np.int64), "dims"))
                consts.clear()

        for kind, v in m["entries"]:
            if kind == "const":
                consts.append(v)
                continue
            flush()
            dim = b.Gather(shape, b.const(np.array(v, dtype=np.int64), "dim"), shape=(), axis=0)
            parts.append(_unsqueeze0(b, dim, opset))
        flush()
        target = b.Concat(*parts, dtype=I64, shape=(len(m["entries"]),), axis=0)
        rw.insert_before(node, b.nodes)
        rw.set_input(node, 1, target)


def _unsqueeze0(b: Builder, v: Value, opset: int) -> Value:
    """`v` (a scalar) as a 1-element tensor."""
    if opset >= 13:
        return b.Unsqueeze(v, b.const(np.array([0], dtype=np.int64), "axes"), shape=(1,))
    return b.Unsqueeze(v, shape=(1,), axes=[0])


#: Ops through which a non-negative scalar computed from dims stays one (and the frontend keeps
#: it a shape value). Sub is left out: a negative count would make ConstantOfShape fail where
#: Range returns an empty tensor.
_ARITH = {"Add", "Mul", "Div"}


def _from_dims(graph: Graph, v: Value | None, depth: int = 12) -> bool:
    """Whether scalar `v` is computed from dims only: Gather(Shape(y), scalar), non-negative
    constants, + * /, Cast, Squeeze; such a value is never negative."""
    if v is None or depth == 0:
        return False
    arr = constant_value(graph, v)
    if arr is not None:
        return arr.size == 1 and arr.dtype.kind in "iuf" and float(arr.reshape(())) >= 0
    n = v.producer
    if n is None or n.domain:
        return False
    if n.op_type == "Gather":
        src = n.inputs[0].producer if n.inputs[0] is not None else None
        idx = constant_value(graph, n.inputs[1]) if len(n.inputs) > 1 else None
        return src is not None and src.op_type == "Shape" and not src.domain and idx is not None and idx.ndim == 0
    if n.op_type in _ARITH:
        return all(_from_dims(graph, i, depth - 1) for i in n.inputs)
    if n.op_type in ("Cast", "Squeeze", "Identity"):
        return _from_dims(graph, n.inputs[0], depth - 1)
    return False


class RangeFromDims(Rule):
    """`Range(0, n, 1)`, n computed from dims -> `CumSum(ConstantOfShape([n], 1), 0) - 1`."""

    name = "range_from_dims"
    op_types = ("Range",)

    def check(self, node: Node, graph: Graph) -> Match:
        if _dead(node):
            return failed("nothing reads the output (eliminate-dead-code's job)")
        if _opset(graph) < 14:
            return failed("TVM converts CumSum from opset 14")
        if len(node.inputs) != 3 or any(v is None for v in node.inputs):
            return failed("Range without three inputs")
        start, limit, delta = node.inputs
        s, d = constant_value(graph, start), constant_value(graph, delta)
        if s is None or d is None or s.size != 1 or d.size != 1:
            return failed("start or delta is not a constant scalar")
        if float(s.reshape(())) != 0 or float(d.reshape(())) != 1:
            return failed("only Range(0, n, 1) is rewritten")
        if constant_value(graph, limit) is not None:
            return failed("limit is constant (fold-constants' job)")
        out = node.outputs[0]
        dt = np_dtype(out.dtype) if out.dtype is not None else None
        if dt is None or dt.kind not in "if":
            return failed("the output type is unknown or not numeric")
        count = limit
        if dt.kind == "f":
            # A float limit counts ceil(limit) steps; only a Cast of an integer computed from dims is exact.
            p = limit.producer
            if p is None or p.op_type != "Cast" or p.inputs[0] is None or p.inputs[0].dtype is None \
                    or np_dtype(p.inputs[0].dtype).kind not in "iu":
                return failed("a float limit that is not a Cast of an integer")
            count = p.inputs[0]
        if not _from_dims(graph, count):
            return failed("the limit is not computed from dims (the frontend could not track its length)")
        return matched(count=count, dtype=dt)

    def rewrite(self, rw: Rewriter, node: Node, m: Match) -> None:
        assert node.graph is not None
        b = Builder(node.graph, node.name or "range")
        count: Value = m["count"]
        dt: np.dtype = m["dtype"]
        if count.dtype != I64:
            count = b.Cast(count, shape=(), to=I64)
        out = node.outputs[0]
        length = out.shape[0] if out.shape else None
        ones = b.ConstantOfShape(_unsqueeze0(b, count, _opset(node.graph)), dtype=out.dtype, shape=(length,),
                                 value=np.ones(1, dtype=dt))
        csum = b.CumSum(ones, b.const(np.array(0, dtype=np.int64), "axis"), dtype=out.dtype, shape=(length,))
        r = b.Sub(csum, b.const(np.array(1, dtype=dt), "one"), dtype=out.dtype, shape=out.shape)
        rw.replace([node], b.nodes, {out: r})


@register
@dataclass(frozen=True)
class CanonicalizeDynamicShapes(RewritePass):
    """Expand targets and Range lengths over symbolic dims, in forms TVM's frontend tracks."""

    name: ClassVar[str] = "canonicalize-dynamic-shapes"
    summary: ClassVar[str] = "rewrite Expand(x, const) and Range(0, n, 1) over symbolic dims into forms TVM's frontend can take"
    rules: ClassVar[tuple[Rule, ...]] = (ExpandTargetFromInput(), RangeFromDims())
