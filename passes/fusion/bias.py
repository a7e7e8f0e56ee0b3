"""`fuse-bias`: an Add of a per-output-channel constant after Conv/ConvTranspose/Gemm becomes their bias;
MatMul + Add of a constant becomes Gemm.

Rules (default domain, every graph and subgraph), each anchored at `Add(y, c)` (either operand order) with `c`
a constant of y's dtype that broadcasting does not let change y's shape, and `y` read by the Add alone (the
rewrite engine refuses otherwise, naming the other reader):

- `conv-bias`: `y = Conv(x, W[, b])`, y of rank r = rank(W), `c` constant along every axis but the channel
  axis (c padded to rank r is [1, K or 1, 1, ...]) -> `Conv(x, W, b + c)` (one value per output channel,
  summed in float64). W itself may be a runtime input; its shape must be known.
- `conv-transpose-bias`: the same for `ConvTranspose` (K = W.shape[1] * group).
- `gemm-bias`: `y = Gemm(A, B[, C])` (y is [M, N]), `c` of rank <= 2 constant along the rows (shape [N],
  [1, N], [1] or a scalar) and C constant or omitted -> `Gemm(A, B, beta * C + c)` with beta 1.
- `matmul-add-gemm`: `y = MatMul(x, W)` with W a constant matrix [K, N], float, and x of rank 2, `c` as for
  `gemm-bias` -> `Gemm(x, W, c)`. Gemm is 2-D only (A must be a matrix): for x of another rank the MatMul
  and the Add stay, and the reason says so.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import ClassVar

import numpy as np

from lepton_ir import Graph, Node, Value
from lepton_ir.constants import constant_value
from lepton_ir.rewriter import Builder
from lepton_ir.types import np_dtype

from passes.base import register
from passes.pattern import Pattern, PatternMatch, const, op, var
from passes.rewrite import Match, PatternRule, RewritePass, Rule, failed, matched, static_shape


def _same_dtype(pm: PatternMatch, y: Value) -> str | None:
    c = pm.const("c")
    if y.dtype is None or np.dtype(c.dtype) != np_dtype(y.dtype):
        return f"the added constant is {c.dtype}, the {y.name!r} it is added to is not"
    if c.dtype.kind != "f":
        return f"the added constant is {c.dtype}, not a float type"
    return None


def _channel_bias(c: np.ndarray, rank: int, channels: int) -> np.ndarray | str:
    """`c` as one value per channel (axis 1 of a rank-`rank` output), or why it is not one."""
    if c.ndim > rank:
        return f"the added constant has rank {c.ndim}, more than the output's {rank}: it would broadcast the output"
    full = c.reshape((1,) * (rank - c.ndim) + c.shape)
    if full.shape[0] != 1 or any(d != 1 for d in full.shape[2:]) or full.shape[1] not in (1, channels):
        return (f"the added constant of shape {list(c.shape)} is not one value per output channel "
                f"(shape [{channels}, 1, ...] broadcast on axis 1 of the rank-{rank} output)")
    return np.broadcast_to(full.reshape(-1), (channels,))


def _row_bias(c: np.ndarray, columns: int | None) -> str | None:
    """Why `c` is not a bias Gemm takes for an [M, N] output (constant along the rows), or None."""
    if c.ndim > 2 or (c.ndim == 2 and c.shape[0] != 1):
        return (f"the added constant of shape {list(c.shape)} is not constant along the rows "
                "(shape [N], [1, N], [1] or a scalar)")
    last = c.shape[-1] if c.ndim else 1
    if last != 1 and (columns is None or last != columns):
        return f"the added constant's last dim {last} is not the output's {columns} columns"
    return None


def _optional(node: Node, index: int) -> Value | None:
    return node.inputs[index] if len(node.inputs) > index else None


class _ConvBias(PatternRule):
    conv_op: ClassVar[str]

    def channels(self, node: Node, w: tuple[int, ...]) -> int:
        raise NotImplementedError

    def condition(self, pm: PatternMatch, graph: Graph) -> Match:
        conv, y = pm["conv"], pm["conv"].outputs[0]
        if (why := _same_dtype(pm, y)) is not None:
            return failed(why)
        w = static_shape(pm["w"])
        if w is None or len(w) < 3:
            return failed(f"the {self.conv_op} weight's shape is unknown or of rank < 3")
        k = self.channels(conv, w)
        per = _channel_bias(pm.const("c"), len(w), k)
        if isinstance(per, str):
            return failed(per)
        b = _optional(conv, 2)
        old = None if b is None else constant_value(graph, b)
        if b is not None and old is None:
            return failed(f"the {self.conv_op} bias is not constant")
        total = per.astype(np.float64) + (0.0 if old is None else old.astype(np.float64))
        return matched(bias=total.astype(pm.const("c").dtype))

    def build(self, b: Builder, pm: PatternMatch, m: Match) -> Sequence[Value]:
        conv = pm["conv"]
        return [b.op(self.conv_op, [pm["x"], pm["w"], b.const(m["bias"], "bias")], dict(conv.attributes))]


class ConvBias(_ConvBias):
    """`Add(Conv(x, W[, b]), c)` -> `Conv(x, W, b + c)`."""

    name = "conv-bias"
    conv_op = "Conv"
    pattern = Pattern(op.Add(op.Conv(var("x"), var("w"), ..., name="conv"), const("c")))

    def channels(self, node: Node, w: tuple[int, ...]) -> int:
        return w[0]


class ConvTransposeBias(_ConvBias):
    """`Add(ConvTranspose(x, W[, b]), c)` -> `ConvTranspose(x, W, b + c)`."""

    name = "conv-transpose-bias"
    conv_op = "ConvTranspose"
    pattern = Pattern(op.Add(op.ConvTranspose(var("x"), var("w"), ..., name="conv"), const("c")))

    def channels(self, node: Node, w: tuple[int, ...]) -> int:
        return w[1] * int(node.attr("group", 1))


class GemmBias(PatternRule):
    """`Add(Gemm(A, B[, C]), c)` -> `Gemm(A, B, beta * C + c)`."""

    name = "gemm-bias"
    pattern = Pattern(op.Add(op.Gemm(var("a"), var("w"), ..., name="gemm"), const("c")))

    def condition(self, pm: PatternMatch, graph: Graph) -> Match:
        gemm = pm["gemm"]
        y = gemm.outputs[0]
        if (why := _same_dtype(pm, y)) is not None:
            return failed(why)
        w = static_shape(pm["w"])
        columns = None if w is None or len(w) != 2 else (w[0] if int(gemm.attr("transB", 0)) else w[1])
        c = pm.const("c")
        if (why := _row_bias(c, columns)) is not None:
            return failed(why)
        old_v = _optional(gemm, 2)
        old = None if old_v is None else constant_value(graph, old_v)
        if old_v is not None and old is None:
            return failed("the Gemm's C input is not constant")
        beta = float(gemm.attr("beta", 1.0))
        total = c.astype(np.float64) + (0.0 if old is None else beta * old.astype(np.float64))
        return matched(c=np.asarray(total).astype(c.dtype))

    def build(self, b: Builder, pm: PatternMatch, m: Match) -> Sequence[Value]:
        attrs = dict(pm["gemm"].attributes)
        attrs.pop("beta", None)  # the new C holds beta * C
        return [b.op("Gemm", [pm["a"], pm["w"], b.const(m["c"], "c")], attrs)]


class MatMulAddGemm(PatternRule):
    """`Add(MatMul(x, W), c)`, x a matrix, W a constant matrix -> `Gemm(x, W, c)`."""

    name = "matmul-add-gemm"
    pattern = Pattern(op.Add(op.MatMul(var("x"), const("w")), const("c")))

    def condition(self, pm: PatternMatch, graph: Graph) -> Match:
        x, w = pm["x"], pm.const("w")
        y = pm.nodes[1].outputs[0]
        if (why := _same_dtype(pm, y)) is not None:
            return failed(why)
        if w.ndim != 2:
            return failed(f"the MatMul weight has rank {w.ndim}, not 2")
        if x.shape is None:
            return failed(f"the rank of the MatMul input {x.name!r} is unknown (Gemm is 2-D only)")
        if len(x.shape) != 2:
            return failed(f"the MatMul input {x.name!r} has rank {len(x.shape)}: Gemm is 2-D only (its A is a matrix), "
                          "so MatMul + Add stays")
        if (why := _row_bias(pm.const("c"), w.shape[1])) is not None:
            return failed(why)
        return matched()

    def build(self, b: Builder, pm: PatternMatch, m: Match) -> Sequence[Value]:
        return [b.op("Gemm", [pm["x"], pm["w"], pm["c"]])]


@register
@dataclass(frozen=True)
class FuseBias(RewritePass):
    """Per-channel constant Adds become the bias of the Conv/ConvTranspose/Gemm before them; MatMul + Add -> Gemm."""

    name: ClassVar[str] = "fuse-bias"
    summary: ClassVar[str] = ("an Add of a per-output-channel constant after Conv/ConvTranspose/Gemm becomes their bias; "
                              "MatMul(x, W) + constant with x a matrix becomes Gemm")
    rules: ClassVar[tuple[Rule, ...]] = (ConvBias(), ConvTransposeBias(), GemmBias(), MatMulAddGemm())
