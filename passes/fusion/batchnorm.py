"""`fuse-batchnorm` folds inference-mode BatchNormalization into the op that feeds it; `decompose-batchnorm`
turns the BatchNormalizations left into Mul/Add with folded constants.

Every rule anchors at a default-domain `BatchNormalization(y, scale, B, mean, var)` (every graph and
subgraph) in inference form: no `training_mode=1`, no `spatial=0` (opset < 9), no `is_test=0` (opset < 7),
running-statistics outputs unread, and all four parameters constant, of shape [C]. With
`s = scale / sqrt(var + epsilon)` and `t = B - mean * s` (float64; results stored in the weight's dtype,
or the input's for the standalone form), `fuse-batchnorm` tries, in this order:

- `conv-batchnorm`: `y = Conv(x, W[, b])` -> `Conv(x, W', b')` with `W'[k] = W[k] * s[k]` (W is [C_out, ...])
  and `b' = b * s + t`.
- `conv-transpose-batchnorm`: `y = ConvTranspose(x, W[, b])`. W is [C_in, C_out/group, k...] (IOHW): output
  channel `g * C_out/group + j` reads `W[g-th block of C_in/group input channels, j]`, so W is scaled along
  axis 1 within each group's block.
- `gemm-batchnorm`: `y = Gemm(A, B[, C])`. Gemm's output is [M, N] and BN's channel axis is 1, the column:
  column n of the product is scaled (B's axis 1, or axis 0 with `transB=1`), `C' = beta * C * s + t`
  (broadcast; C may be any constant Gemm takes), `beta = 1`.
- `matmul-batchnorm`: `y = MatMul(x, W)`, W a constant matrix, x of rank 2 -> `Gemm(x, W * s, t)`. For an
  x of another rank BN's channel axis (1) is not the MatMul's last axis: not folded (the reason says so).

and `decompose-batchnorm` (after it in the pipelines, so a BN is folded wherever a producer takes it):

- `batchnorm-mul-add`: any such BN whose input has a known rank >= 2 -> `Add(Mul(y, s'), t')` with s' and t'
  of shape [C, 1, ..., 1] (one 1 per axis after the channel axis): two elementwise ops that fuse with their
  neighbours, instead of TVM's batch_norm, which computes `(x - mean) / sqrt(var + epsilon)` at run time (a
  division per element). Not where `fuse-batchnorm` will fold the BN (the reason names the fold rule): a
  fold rule takes it now (a bias folded earlier in the same stage can have made its producer adjacent), or
  it is the only reader of a BN that will fold (and then folds itself).

Where a producer is folded, its weight and bias must be constant and its output read by the BN alone (the
rewrite engine refuses otherwise, naming the other reader: it needs the unscaled values). The original
weights stay for other readers; `eliminate-dead-code` drops them otherwise. Results differ from the unfused
graph by rounding only (the same folding onnxruntime does at session creation); `x * s + t` cancels where
`x` is close to `mean`, to `|mean * s|` times the dtype's epsilon.
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
from passes.rewrite import Match, PatternRule, RewritePass, Rule, failed, matched


def _bn(producer: object) -> object:
    """`BatchNormalization(producer, scale, B, mean, var)`, the BN node bound as "bn"."""
    return op.BatchNormalization(producer, const("scale"), const("bias"), const("mean"), const("var"), name="bn")


def bn_fold(pm: PatternMatch, graph: Graph, channels: int | None) -> Match:
    """The inference-form checks, and `s`, `t` (float64, shape [C]) for a BN with `channels` channels (None: any)."""
    node = pm["bn"]
    if int(node.attr("training_mode", 0)) != 0:
        return failed("training-mode BatchNormalization (batch statistics, not the running ones)")
    if int(node.attr("spatial", 1)) == 0:
        return failed("BatchNormalization with spatial=0 (per-activation statistics)")
    if int(node.attr("is_test", 1)) == 0:
        return failed("BatchNormalization with is_test=0 (training)")
    if any(o.is_used() for o in node.outputs[1:]):
        return failed("the running-statistics outputs of the BatchNormalization are used")
    params = [pm.const(k) for k in ("scale", "bias", "mean", "var")]
    c = params[0].shape[0] if params[0].ndim == 1 else -1
    if any(p.shape != (c,) for p in params) or (channels is not None and c != channels):
        what = f"the producer's {channels} output channels" if channels is not None else "one value per channel"
        return failed(f"BatchNormalization parameters of shapes {[p.shape for p in params]} do not match {what}")
    if any(p.dtype.kind != "f" for p in params):
        return failed("BatchNormalization parameters are not float tensors numpy holds")
    scale, bias, mean, var_ = (p.astype(np.float64) for p in params)
    with np.errstate(all="ignore"):
        s = scale / np.sqrt(var_ + float(node.attr("epsilon", 1e-5)))
        t = bias - mean * s
    return matched(s=s, t=t)


def _optional_const(graph: Graph, v: Value | None) -> tuple[bool, np.ndarray | None]:
    """(ok, array): an omitted input is ok with None; a present one must be constant."""
    if v is None:
        return True, None
    arr = constant_value(graph, v)
    return arr is not None, arr


def _float_weight(w: np.ndarray, ndim: int | None = None) -> str | None:
    if w.dtype.kind != "f":
        return f"the weight is {w.dtype}, not a float type numpy holds"
    if ndim is not None and w.ndim != ndim:
        return f"the weight has rank {w.ndim}, not {ndim}"
    return None


class ConvBatchNorm(PatternRule):
    """`BatchNormalization(Conv(x, W[, b]))` -> `Conv(x, W', b')`."""

    name = "conv-batchnorm"
    pattern = Pattern(_bn(op.Conv(var("x"), const("w"), ..., name="conv")))

    def condition(self, pm: PatternMatch, graph: Graph) -> Match:
        conv = pm["conv"]
        w = pm.const("w")
        if (why := _float_weight(w)) is not None or w.ndim < 3:
            return failed(why or "the Conv weight has rank < 3")
        ok, b = _optional_const(graph, conv.inputs[2] if len(conv.inputs) > 2 else None)
        if not ok:
            return failed("the Conv bias is not constant")
        bn = bn_fold(pm, graph, w.shape[0])
        if not bn:
            return bn
        s, t = bn["s"], bn["t"]
        w2 = (w.astype(np.float64) * s.reshape((-1,) + (1,) * (w.ndim - 1))).astype(w.dtype)
        b2 = ((0.0 if b is None else b.astype(np.float64)) * s + t).astype(w.dtype)
        return matched(weight=w2, bias=b2)

    def build(self, b: Builder, pm: PatternMatch, m: Match) -> Sequence[Value]:
        conv = pm["conv"]
        return [b.op("Conv", [pm["x"], b.const(m["weight"], "w_bn"), b.const(m["bias"], "b_bn")], dict(conv.attributes))]


class ConvTransposeBatchNorm(PatternRule):
    """`BatchNormalization(ConvTranspose(x, W[, b]))` -> `ConvTranspose(x, W', b')` (W is IOHW, grouped)."""

    name = "conv-transpose-batchnorm"
    pattern = Pattern(_bn(op.ConvTranspose(var("x"), const("w"), ..., name="conv")))

    def condition(self, pm: PatternMatch, graph: Graph) -> Match:
        conv = pm["conv"]
        w = pm.const("w")
        if (why := _float_weight(w)) is not None or w.ndim < 3:
            return failed(why or "the ConvTranspose weight has rank < 3")
        group = int(conv.attr("group", 1))
        if group < 1 or w.shape[0] % group:
            return failed(f"group={group} does not divide the weight's {w.shape[0]} input channels")
        ok, b = _optional_const(graph, conv.inputs[2] if len(conv.inputs) > 2 else None)
        if not ok:
            return failed("the ConvTranspose bias is not constant")
        per_group = w.shape[1]
        bn = bn_fold(pm, graph, per_group * group)
        if not bn:
            return bn
        s, t = bn["s"], bn["t"]
        kernel = w.shape[2:]
        blocks = w.astype(np.float64).reshape((group, w.shape[0] // group, per_group) + kernel)
        w2 = (blocks * s.reshape((group, 1, per_group) + (1,) * len(kernel))).reshape(w.shape).astype(w.dtype)
        b2 = ((0.0 if b is None else b.astype(np.float64)) * s + t).astype(w.dtype)
        return matched(weight=w2, bias=b2)

    def build(self, b: Builder, pm: PatternMatch, m: Match) -> Sequence[Value]:
        conv = pm["conv"]
        inputs = [pm["x"], b.const(m["weight"], "w_bn"), b.const(m["bias"], "b_bn")]
        return [b.op("ConvTranspose", inputs, dict(conv.attributes))]


class GemmBatchNorm(PatternRule):
    """`BatchNormalization(Gemm(A, B[, C]))` -> `Gemm(A, B', C')` (columns scaled; transB respected)."""

    name = "gemm-batchnorm"
    pattern = Pattern(_bn(op.Gemm(var("a"), const("w"), ..., name="gemm")))

    def condition(self, pm: PatternMatch, graph: Graph) -> Match:
        gemm = pm["gemm"]
        w = pm.const("w")
        if (why := _float_weight(w, 2)) is not None:
            return failed(why)
        trans_b = int(gemm.attr("transB", 0))
        ok, c = _optional_const(graph, gemm.inputs[2] if len(gemm.inputs) > 2 else None)
        if not ok:
            return failed("the Gemm's C input is not constant")
        n = w.shape[0] if trans_b else w.shape[1]
        bn = bn_fold(pm, graph, n)
        if not bn:
            return bn
        s, t = bn["s"], bn["t"]
        w2 = (w.astype(np.float64) * (s[:, None] if trans_b else s[None, :])).astype(w.dtype)
        beta = float(gemm.attr("beta", 1.0))
        c2 = (t if c is None else beta * c.astype(np.float64) * s + t).astype(w.dtype)
        return matched(weight=w2, c=c2)

    def build(self, b: Builder, pm: PatternMatch, m: Match) -> Sequence[Value]:
        attrs = dict(pm["gemm"].attributes)
        attrs.pop("beta", None)  # C' already holds beta * C
        return [b.op("Gemm", [pm["a"], b.const(m["weight"], "w_bn"), b.const(m["c"], "c_bn")], attrs)]


class MatMulBatchNorm(PatternRule):
    """`BatchNormalization(MatMul(x, W))`, x of rank 2 -> `Gemm(x, W * s, t)`."""

    name = "matmul-batchnorm"
    pattern = Pattern(_bn(op.MatMul(var("x"), const("w"))))

    def condition(self, pm: PatternMatch, graph: Graph) -> Match:
        w = pm.const("w")
        if (why := _float_weight(w, 2)) is not None:
            return failed(why)
        x = pm["x"]
        if x.shape is None:
            return failed(f"the rank of the MatMul input {x.name!r} is unknown")
        if len(x.shape) != 2:
            return failed(f"the MatMul input {x.name!r} has rank {len(x.shape)}: BatchNormalization normalizes axis 1, "
                          "which is the MatMul's last (column) axis only for rank-2 inputs")
        bn = bn_fold(pm, graph, w.shape[1])
        if not bn:
            return bn
        s, t = bn["s"], bn["t"]
        return matched(weight=(w.astype(np.float64) * s[None, :]).astype(w.dtype), c=t.astype(w.dtype))

    def build(self, b: Builder, pm: PatternMatch, m: Match) -> Sequence[Value]:
        return [b.op("Gemm", [pm["x"], b.const(m["weight"], "w_bn"), b.const(m["c"], "c_bn")])]


#: The rules of `fuse-batchnorm`, in order.
FOLDS: tuple[Rule, ...] = (ConvBatchNorm(), ConvTransposeBatchNorm(), GemmBatchNorm(), MatMulBatchNorm())


def folds_later(bn: Node, graph: Graph) -> str | None:
    """Why `fuse-batchnorm` will fold `bn` (None: it will not): a fold rule takes it now, or it is the only
    reader of a BatchNormalization that will fold (then `bn`'s producer is the folded op, and it folds next)."""
    chain: list[str] = []
    node: Node | None = bn
    while node is not None and len(chain) < 16:
        for rule in FOLDS:
            if rule.check(node, graph):
                if not chain:
                    return f"{rule.name} folds it into its producer (fuse-batchnorm)"
                return f"it reads {chain[0]!r}, which fuse-batchnorm folds ({rule.name}) first; it folds next"
        x = node.inputs[0]
        p = None if x is None else x.producer
        ok = x is not None and len(x.uses) == 1 and not x.graph_outputs
        node = p if ok and p is not None and p.op_type == "BatchNormalization" and not p.domain and p.graph is graph else None
        if node is not None:
            chain.append(node.name)
    return None


class BatchNormMulAdd(PatternRule):
    """A BatchNormalization no producer takes -> `Add(Mul(x, s), t)` with folded per-channel constants."""

    name = "batchnorm-mul-add"
    pattern = Pattern(_bn(var("x")))

    def condition(self, pm: PatternMatch, graph: Graph) -> Match:
        fold = folds_later(pm["bn"], graph)
        if fold is not None:
            return failed(fold)
        x = pm["x"]
        if x.shape is None or len(x.shape) < 2:
            return failed(f"the rank of the BatchNormalization input {x.name!r} is unknown or below 2")
        channels = x.shape[1] if isinstance(x.shape[1], int) else None
        bn = bn_fold(pm, graph, channels)
        if not bn:
            return bn
        dtype = pm.const("scale").dtype if x.dtype is None else np_dtype(x.dtype)
        if dtype.kind != "f":
            return failed(f"the BatchNormalization input {x.name!r} is not a float type numpy holds")
        shape = (-1,) + (1,) * (len(x.shape) - 2)
        return matched(s=bn["s"].reshape(shape).astype(dtype), t=bn["t"].reshape(shape).astype(dtype))

    def build(self, b: Builder, pm: PatternMatch, m: Match) -> Sequence[Value]:
        scaled = b.Mul(pm["x"], b.const(m["s"], "bn_scale"))
        return [b.Add(scaled, b.const(m["t"], "bn_shift"))]


@register
@dataclass(frozen=True)
class FuseBatchNorm(RewritePass):
    """Inference BatchNormalization folds into the Conv/ConvTranspose/Gemm/MatMul feeding it."""

    name: ClassVar[str] = "fuse-batchnorm"
    summary: ClassVar[str] = ("fold inference BatchNormalization into the preceding Conv/ConvTranspose/Gemm/MatMul's "
                              "weights and bias (MatMul becomes Gemm)")
    rules: ClassVar[tuple[Rule, ...]] = FOLDS


@register
@dataclass(frozen=True)
class DecomposeBatchNorm(RewritePass):
    """Inference BatchNormalization with constant parameters becomes Mul/Add by folded per-channel constants."""

    name: ClassVar[str] = "decompose-batchnorm"
    summary: ClassVar[str] = "inference BatchNormalization (constant parameters) -> Mul and Add by folded per-channel constants"
    rules: ClassVar[tuple[Rule, ...]] = (BatchNormMulAdd(),)
