"""`fuse-layernorm`, `fuse-rmsnorm`, `fuse-skip-layernorm`: normalization chains -> one op.

`fuse-layernorm` (default domain, float32):
- `layernorm`: `d / sqrt(mean(d^2) + eps)` with `d = x - mean(x)`, the means over the same trailing axes
  (keepdims), d^2 as Pow(d, 2) or d * d, the division as Div, Mul by Reciprocal, or Mul by Div(1, .)
  (TorchScript below opset 17 writes the Div form; Hugging Face's own LayerNorm the same) ->
  `LayerNormalization(x, ones, axis, epsilon)`, ONNX's op from opset 17. Below opset 17 ONNX has no such
  op and onnxruntime has none in its contrib domain (its opset-1 LayerNormalization is registered in the
  ONNX domain, which the ONNX checker rejects): the chain stays, and the reason says so; where an Add feeds
  it, `fuse-skip-layernorm` makes it a SkipLayerNormalization instead.
- `layernorm-scale`, `layernorm-bias`: `Mul(LN, g)` and `Add(LN, c)` with g, c constants varying only
  along the normalized axes fold into the scale (and the bias: `(n*s + b)*g = n*(s*g) + b*g`) and the bias
  of a LayerNormalization, SkipLayerNormalization or RMSNormalization (scale only). So the affine part of
  a decomposed norm joins the fused op, and a norm whose affine part cleanup removed (gamma 1, beta 0) has
  none.

`fuse-rmsnorm` (`rmsnorm`): `x / sqrt(mean(x^2) + eps)` (same variants; Hugging Face's `x * rsqrt(...)`
exports as Mul by Reciprocal(Sqrt) or Div(1, Sqrt)) -> `RMSNormalization` (ONNX, opset 23). Below 23 it
stays: onnxruntime's SimplifiedLayerNormalization is, like its LayerNormalization, an ONNX-domain
registration that is not ONNX. A chain whose x is itself `y - mean(y)` is a LayerNormalization, left to
`fuse-layernorm`.

`fuse-skip-layernorm`:
- `skip-layernorm`: `LayerNormalization(a + b)` (normalized over the last axis only, a and b of one shape,
  rank 2 or 3) -> `com.microsoft.SkipLayerNormalization(a, b, gamma, beta, bias)`; where a or b is
  `y + c` with c one constant per channel (a matmul's bias), c becomes the op's bias input. Where the sum is
  read elsewhere too (pre-norm residual streams: GPT-2, ViT) the op's fourth output
  (input_skip_bias_sum) replaces it.
- `skip-layernorm-chain`: the same for the decomposed chain below opset 17 (TorchScript at opsets 14-16),
  where `layernorm` cannot fire.
- `layernorm-scale`, `layernorm-bias` as in `fuse-layernorm` (the chain's affine Mul/Add follow the new op).
onnxruntime runs SkipLayerNormalization; Lepton's codegen lowers it (`lepton.codegen.fused_transformer`).

Numerics: the fused ops normalize with the variance computed in one reduction after the mean (onnxruntime,
TVM's `nn.layer_norm`), the chain in its own order; outputs agree within float32 rounding for inputs whose
mean is not large against their spread (checked in tests/test_fusion_transformer.py).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import ClassVar

import numpy as np

from lepton_ir import Graph, Node, Value
from lepton_ir.constants import constant_value
from lepton_ir.rewriter import Builder

from passes.base import register
from passes.fusion.chains import (CONTRIB, ReplaceRule, float32, internal_nodes, is_scalar, keeps_dims, opset,
                                  rank_of, reduce_axes, scalar_of, static, use_contrib)
from passes.pattern import Op, Pattern, PatternMatch, const, op, var
from passes.rewrite import Match, PatternRule, RewritePass, Rule, failed, matched

LAYERNORM_OPSET = 17
RMSNORM_OPSET = 23

XFactory = Callable[[], object]


def _x() -> object:
    return var("x")


def _skip_x() -> object:
    return op.Add(var("a"), var("b"), name="skip_add")


def _norm_patterns(x: XFactory, centered: bool) -> list[Op]:
    """`n / sqrt(mean(n^2) + eps)` with n = x - mean(x) (`centered`) or x, in the exporters' variants."""

    def n() -> object:
        return op.Sub(x(), op.ReduceMean(x(), ..., name="mean"), name="centered") if centered else x()

    out = []
    for square in (lambda: op.Pow(n(), const("two"), name="square"), lambda: op.Mul(n(), n(), name="square")):
        denom = op.Sqrt(op.Add(op.ReduceMean(square(), ..., name="var"), const("eps")), name="sqrt")
        out += [op.Div(n(), denom, name="norm"),
                op.Mul(n(), op.Reciprocal(denom), name="norm"),
                op.Mul(n(), op.Div(const("one"), denom), name="norm")]
    return out


def _check_chain(pm: PatternMatch, graph: Graph, x: Value, centered: bool) -> Match:
    """The checks of a matched norm chain: float32, static normalized dims, means over the same trailing
    axes with keepdims, the square's exponent 2, a scalar eps. Binds `axis`, `eps`, `normalized`."""
    if not float32(x):
        return failed(f"{x.name!r} is not float32")
    rank = rank_of(x)
    if rank is None or rank == 0:
        return failed(f"the rank of {x.name!r} is not known")
    means = [pm["var"], *([pm["mean"]] if centered else [])]
    axes = {reduce_axes(m, graph) for m in means}
    if len(axes) != 1 or None in axes:
        return failed("the means are not over the same constant axes")
    (ax,) = axes
    assert ax is not None
    if ax != tuple(range(rank - len(ax), rank)):
        return failed(f"the means are over axes {list(ax)}, not the trailing axes of a rank-{rank} tensor")
    if not all(keeps_dims(m) for m in means):
        return failed("a mean drops the reduced axes (keepdims=0)")
    if pm["square"].op_type == "Pow" and not is_scalar(graph, pm["two"], 2.0, rank, rtol=0.0):
        return failed(f"the square's exponent {pm['two'].name!r} is not 2")
    if "one" in pm.values and not is_scalar(graph, pm["one"], 1.0, rank, rtol=0.0):
        return failed(f"{pm['one'].name!r} is not 1 (the division is not a reciprocal)")
    eps = scalar_of(graph, pm["eps"], rank)
    if eps is None or not eps >= 0:
        return failed(f"the epsilon {pm['eps'].name!r} is not a non-negative scalar constant")
    shape = x.shape
    assert shape is not None
    normalized = shape[rank - len(ax):]
    if not all(isinstance(d, int) for d in normalized):
        return failed(f"the normalized dims of {x.name!r} are not static")
    return matched(axis=rank - len(ax), eps=eps, normalized=tuple(int(d) for d in normalized))  # type: ignore[arg-type]


class _LayerNorm(PatternRule):
    name = "layernorm"

    def condition(self, pm: PatternMatch, graph: Graph) -> Match:
        m = _check_chain(pm, graph, pm["x"], centered=True)
        if not m:
            return m
        if opset(graph) < LAYERNORM_OPSET:
            return failed(f"LayerNormalization needs opset {LAYERNORM_OPSET} (the model has {opset(graph)}) and "
                          "onnxruntime has no contrib LayerNormalization: the chain stays (fuse-skip-layernorm fuses it "
                          "where an Add feeds it)")
        return m

    def build(self, b: Builder, pm: PatternMatch, m: Match) -> Sequence[Value]:
        scale = b.const(np.ones(m["normalized"], np.float32), "scale")
        return [b.op("LayerNormalization", [pm["x"], scale], {"axis": m["axis"], "epsilon": m["eps"]},
                     shape=pm["x"].shape)]


class _RmsNorm(PatternRule):
    name = "rmsnorm"

    def condition(self, pm: PatternMatch, graph: Graph) -> Match:
        x = pm["x"]
        p = x.producer
        if p is not None and p.op_type == "Sub" and p.inputs[1] is not None and p.inputs[1].producer is not None \
                and p.inputs[1].producer.op_type == "ReduceMean" and p.inputs[1].producer.inputs[0] is p.inputs[0]:
            return failed(f"{x.name!r} is x - mean(x): the chain is a LayerNormalization (fuse-layernorm)")
        m = _check_chain(pm, graph, x, centered=False)
        if not m:
            return m
        if opset(graph) < RMSNORM_OPSET:
            return failed(f"RMSNormalization needs opset {RMSNORM_OPSET} (the model has {opset(graph)}); onnxruntime's "
                          "SimplifiedLayerNormalization is not an ONNX op: the chain stays")
        return m

    def build(self, b: Builder, pm: PatternMatch, m: Match) -> Sequence[Value]:
        scale = b.const(np.ones(m["normalized"], np.float32), "scale")
        return [b.op("RMSNormalization", [pm["x"], scale], {"axis": m["axis"], "epsilon": m["eps"]}, shape=pm["x"].shape)]


def _chain_rules(cls: type, patterns: list[Op], stem: str) -> list[Rule]:
    return [type(f"{stem}{i}", (cls,), {"pattern": Pattern(p)})() for i, p in enumerate(patterns)]


# ----- affine folding -------------------------------------------------------------------------------------------

#: Norm op (domain, type) -> (index of its scale input, index of its bias input or None).
NORMS: dict[tuple[str, str], tuple[int, int | None]] = {
    ("", "LayerNormalization"): (1, 2),
    ("", "RMSNormalization"): (1, None),
    (CONTRIB, "SkipLayerNormalization"): (2, 3),
}


def _norm_axis(node: Node) -> int | None:
    x = node.inputs[0]
    rank = rank_of(x)
    if rank is None:
        return None
    if node.domain == CONTRIB:
        return rank - 1
    axis = int(node.attr("axis", -1))
    return axis % rank if -rank <= axis < rank else None


def _along_normalized(arr: np.ndarray, rank: int, axis: int, normalized: tuple[int, ...]) -> np.ndarray | None:
    """`arr` as a full array of the normalized dims when it broadcasts against a rank-`rank` tensor without
    changing its shape and varies only along the normalized axes (rank >= its rank), else None."""
    if arr.ndim > rank:
        return None
    full = arr.reshape((1,) * (rank - arr.ndim) + arr.shape)
    lead, tail = full.shape[:axis], full.shape[axis:]
    if any(d != 1 for d in lead) or any(t not in (1, n) for t, n in zip(tail, normalized, strict=True)):
        return None
    return np.broadcast_to(full.reshape(tail), normalized)


class _NormAffine(ReplaceRule):
    """`Mul(norm, g)` / `Add(norm, c)` -> the norm with g folded into its scale (and bias) / c into its bias.
    A SkipLayerNormalization's sum output (4th), if read, moves to the new node."""

    kind: ClassVar[str]  # "scale" | "bias"
    pattern: ClassVar[Pattern]

    def find(self, node: Node, graph: Graph) -> Match:
        pm = self.pattern.match(node, graph)
        if not isinstance(pm, PatternMatch):
            return failed(pm.reason, pm.depth)
        n = pm["norm"]
        s_idx, b_idx = NORMS[(n.domain, n.op_type)]
        if self.kind == "bias" and b_idx is None:
            return failed(f"{n.op_type} has no bias to fold an Add into")
        if any(o.name and o.is_used() for o in n.outputs[1:3]):
            return failed(f"{n.name!r} returns its mean or inverse standard deviation, which the fold would change")
        y = n.outputs[0]
        rank, axis, x = rank_of(y), _norm_axis(n), n.inputs[0]
        shape = static(x)
        if rank is None or axis is None or shape is None or not float32(y):
            return failed(f"{n.name!r} has no static float32 input")
        normalized = shape[axis:]
        c = _along_normalized(pm.const("c"), rank, axis, normalized)
        if c is None or c.dtype != np.float32:
            return failed(f"the constant {pm['c'].name!r} is not float32 varying along the normalized axes only")
        has_bias = b_idx is not None and len(n.inputs) > b_idx and n.inputs[b_idx] is not None
        scale = constant_value(graph, n.inputs[s_idx])
        bias = constant_value(graph, n.inputs[b_idx]) if has_bias else None  # type: ignore[index]
        if scale is None or (has_bias and bias is None):
            return failed(f"the scale or bias of {n.name!r} is not a constant")
        scale = np.broadcast_to(scale, normalized).astype(np.float32)
        if bias is not None:
            bias = np.broadcast_to(bias, normalized).astype(np.float32)
        if self.kind == "scale":
            new_scale, new_bias = scale * c, None if bias is None else bias * c
        else:
            new_scale, new_bias = scale, c.astype(np.float32) + (0 if bias is None else bias)
        outputs = [node.outputs[0]]
        if len(n.outputs) > 3 and n.outputs[3].is_used():
            outputs.append(n.outputs[3])
        return Match(True, "", {"nodes": list(pm.nodes), "outputs": outputs, "norm": n,
                                "scale": np.ascontiguousarray(new_scale),
                                "bias": None if new_bias is None else np.ascontiguousarray(new_bias)}, len(pm.nodes))

    def make(self, b: Builder, m: Match) -> Sequence[Value]:
        n = m["norm"]
        s_idx, b_idx = NORMS[(n.domain, n.op_type)]
        inputs = list(n.inputs)
        inputs += [None] * (max(s_idx, b_idx or 0) + 1 - len(inputs))
        inputs[s_idx] = b.const(m["scale"], "scale")
        if m["bias"] is not None:
            assert b_idx is not None
            inputs[b_idx] = b.const(m["bias"], "bias")
        while inputs and inputs[-1] is None:
            inputs.pop()
        outs = n.outputs
        count = 4 if len(m["outputs"]) > 1 else 1
        y = b.op(n.op_type, inputs, dict(n.attributes), domain=n.domain, num_outputs=count,
                 dtypes=[outs[i].dtype for i in range(count)], shapes=[outs[i].shape for i in range(count)])
        return [y] if count == 1 else [y[0], y[3]]


def _affine_rules() -> list[Rule]:
    out: list[Rule] = []
    for (domain, op_type) in NORMS:
        for kind, op_name in (("scale", "Mul"), ("bias", "Add")):
            norm = op[op_type](var("xin"), ..., name="norm", domain=domain)
            pattern = Pattern(op[op_name](norm, const("c")))
            out.append(type(f"{op_type}{kind.title()}", (_NormAffine,), {
                "__doc__": f"{op_name}({op_type}, c) -> {op_type} with c folded into its {kind}.",
                "name": f"layernorm-{kind}", "kind": kind, "pattern": pattern, "op_types": (op_name,)})())
    return out


@register
@dataclass(frozen=True)
class FuseLayerNorm(RewritePass):
    """The ReduceMean/Sub/Pow/Sqrt/Div chain -> LayerNormalization (opset >= 17); affine Mul/Add folded into
    LayerNormalization/SkipLayerNormalization/RMSNormalization."""

    name: ClassVar[str] = "fuse-layernorm"
    summary: ClassVar[str] = "mean/sub/pow/sqrt/div chains -> LayerNormalization (opset 17); scale/bias Mul/Add folded in"
    repeat: ClassVar[bool] = False  # see passes.fusion.chains: after cleanup has settled the shapes
    rules: ClassVar[tuple[Rule, ...]] = (*_chain_rules(_LayerNorm, _norm_patterns(_x, True), "LayerNorm"), *_affine_rules())


@register
@dataclass(frozen=True)
class FuseRmsNorm(RewritePass):
    """x / sqrt(mean(x^2) + eps) -> RMSNormalization (opset >= 23)."""

    name: ClassVar[str] = "fuse-rmsnorm"
    summary: ClassVar[str] = "x/sqrt(mean(x^2)+eps) (x*rsqrt(...)) -> RMSNormalization (opset 23)"
    repeat: ClassVar[bool] = False  # see passes.fusion.chains: after cleanup has settled the shapes
    rules: ClassVar[tuple[Rule, ...]] = tuple(_chain_rules(_RmsNorm, _norm_patterns(_x, False), "RmsNorm"))


# ----- skip + layer norm ------------------------------------------------------------------------------------------


def _channel_bias(graph: Graph, v: Value | None, width: int) -> tuple[Value, Value, Node] | None:
    """`(y, c, add)` when `v = Add(y, c)` with c a float32 constant of one value per channel (last axis)."""
    p = None if v is None else v.producer
    if p is None or p.op_type != "Add" or p.domain or p.graph is not graph:
        return None
    for i in (0, 1):
        c = constant_value(graph, p.inputs[1 - i])
        y = p.inputs[i]
        if c is not None and y is not None and c.dtype == np.float32 and c.size == width and \
                all(d == 1 for d in c.shape[:-1]) and c.ndim <= (rank_of(y) or 0) and static(y) == static(v):
            return y, p.inputs[1 - i], p  # type: ignore[return-value]
    return None


class _SkipBase(ReplaceRule):
    """Shared by both skip rules: find the Add, its optional bias, and build SkipLayerNormalization."""

    def skip_parts(self, graph: Graph, add: Node) -> Match:
        a, b = add.inputs[0], add.inputs[1]
        sa, sb = static(a), static(b)
        if sa is None or sa != sb or len(sa) not in (2, 3):
            return failed("the Add's operands are not two static tensors of one shape of rank 2 or 3 "
                          "(SkipLayerNormalization takes [batch, sequence, hidden] or [tokens, hidden])")
        if not (float32(a) and float32(b)):
            return failed("the Add is not float32")
        width = sa[-1]
        extra: list[Node] = []
        bias = None
        for i in (0, 1):
            found = _channel_bias(graph, add.inputs[i], width)
            if found is not None and len(add.inputs[i].uses) == 1 and not add.inputs[i].graph_outputs:  # type: ignore[union-attr]
                y, bias, bias_add = found
                a, b = (y, add.inputs[1]) if i == 0 else (add.inputs[0], y)
                extra = [bias_add]
                break
        return matched(input=a, skip=b, bias=bias, extra=extra, width=width)

    def make_skip(self, b: Builder, m: Match, gamma: Value, beta: Value | None, eps: float) -> Sequence[Value]:
        use_contrib(b.graph)
        bias = m["bias"]
        if bias is not None and constant_value(b.graph, bias).ndim != 1:  # type: ignore[union-attr]
            bias = b.const(constant_value(b.graph, bias).reshape(-1), "bias")  # type: ignore[union-attr]
        inputs = [m["input"], m["skip"], gamma, beta, bias]
        while inputs[-1] is None:
            inputs.pop()
        shape = m["input"].shape
        sum_used = len(m["outputs"]) > 1
        outs = b.op("SkipLayerNormalization", inputs, {"epsilon": float(eps)}, domain=CONTRIB,
                    num_outputs=4 if sum_used else 1, shapes=[shape] * (4 if sum_used else 1),
                    dtypes=[m["input"].dtype] * (4 if sum_used else 1))
        if not sum_used:
            return [outs]
        return [outs[0], outs[3]]


class _SkipLayerNorm(_SkipBase):
    name = "skip-layernorm"
    op_types = ("LayerNormalization",)
    pattern: ClassVar[Pattern] = Pattern(op.LayerNormalization(op.Add(var("a"), var("b"), name="add"), ..., name="ln"))

    def find(self, node: Node, graph: Graph) -> Match:
        pm = self.pattern.match(node, graph)
        if not isinstance(pm, PatternMatch):
            return failed(pm.reason, pm.depth)
        ln, add = pm["ln"], pm["add"]
        if any(o.name for o in ln.outputs[1:]):
            return failed(f"{ln.name!r} returns its mean or inverse standard deviation")
        rank = rank_of(ln.inputs[0])
        if rank is None or _norm_axis(ln) != rank - 1:
            return failed(f"{ln.name!r} does not normalize over the last axis only")
        if int(ln.attr("stash_type", 1)) != 1:
            return failed(f"{ln.name!r} has stash_type {ln.attr('stash_type')}")
        parts = self.skip_parts(graph, add)
        if not parts:
            return parts
        gamma = ln.inputs[1]
        beta = ln.inputs[2] if len(ln.inputs) > 2 else None
        width = parts["width"]
        for v in (gamma, beta):
            if v is not None and static(v) != (width,):
                return failed(f"{v.name!r} is not one value per channel of the last axis")
        return _skip_match(parts, [ln, add], ln.outputs[0], add.outputs[0], gamma, beta,
                           float(ln.attr("epsilon", 1e-5)), len(pm.nodes))

    def make(self, b: Builder, m: Match) -> Sequence[Value]:
        return self.make_skip(b, m, m["gamma"], m["beta"], m["eps"])


def _skip_match(parts: Match, nodes: list[Node], out: Value, total: Value, gamma: Value | None, beta: Value | None,
                eps: float, depth: int) -> Match:
    removable = [*nodes, *parts["extra"]]
    outputs = [out]
    inner = internal_nodes(removable, [out])
    if not any(n is total.producer for n in inner):  # the sum is read outside: the op's 4th output replaces it
        outputs.append(total)
    return Match(True, "", {**parts.bindings, "nodes": removable, "outputs": outputs, "gamma": gamma, "beta": beta,
                            "eps": eps}, depth)


class _SkipLayerNormChain(_SkipBase):
    name = "skip-layernorm-chain"

    def __init__(self, pattern: Op) -> None:
        self.pattern = Pattern(pattern)
        self.op_types = self.pattern.anchor_ops

    def find(self, node: Node, graph: Graph) -> Match:
        pm = self.pattern.match(node, graph)
        if not isinstance(pm, PatternMatch):
            return failed(pm.reason, pm.depth)
        add = pm["skip_add"]
        m = _check_chain(pm, graph, add.outputs[0], centered=True)
        if not m:
            return m
        if opset(graph) >= LAYERNORM_OPSET:
            return failed("at opset >= 17 fuse-layernorm makes the chain a LayerNormalization first")
        rank = rank_of(add.outputs[0])
        if m["axis"] != (rank or 0) - 1:
            return failed("the chain does not normalize over the last axis only")
        parts = self.skip_parts(graph, add)
        if not parts:
            return parts
        nodes = [n for n in pm.nodes if n is not add]
        return Match(True, "", {**_skip_match(parts, [*nodes, add], node.outputs[0], add.outputs[0], None, None,
                                              m["eps"], len(pm.nodes)).bindings}, len(pm.nodes))

    def make(self, b: Builder, m: Match) -> Sequence[Value]:
        gamma = b.const(np.ones(m["width"], np.float32), "gamma")
        return self.make_skip(b, m, gamma, None, m["eps"])


@register
@dataclass(frozen=True)
class FuseSkipLayerNorm(RewritePass):
    """LayerNormalization(a + b [+ bias]) (or its decomposed chain below opset 17) -> com.microsoft
    SkipLayerNormalization, with the sum as its 4th output where it is read elsewhere."""

    name: ClassVar[str] = "fuse-skip-layernorm"
    summary: ClassVar[str] = "LayerNormalization(a + b [+ bias]) -> com.microsoft SkipLayerNormalization (sum output kept)"
    repeat: ClassVar[bool] = False  # see passes.fusion.chains: after cleanup has settled the shapes
    rules: ClassVar[tuple[Rule, ...]] = (_SkipLayerNorm(), *[_SkipLayerNormChain(p) for p in _norm_patterns(_skip_x, True)],
                                         *_affine_rules())
