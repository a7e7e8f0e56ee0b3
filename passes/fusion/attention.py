"""`fuse-attention` and `merge-qkv`: scaled-dot-product attention -> one op; Q/K/V projections -> one MatMul.

`fuse-attention` (`attention`, anchored at the context MatMul, float32, static shapes):

    context = MatMul(P, V)            P = Softmax(logits, last axis) [, then Where(IsNaN(P), 0, P)]
    logits  = scores [+ bias]  |  Where(mask, scores, fill) | Where(mask, fill, scores)
    scores  = MatMul(Q, K^T) [* or / scalar constants]

Q, K^T and V are traced back through data movement (Reshape, Transpose, Squeeze, Unsqueeze, Split, Slice,
Gather with constant indices, and scalar Mul/Div, `passes.fusion.chains`) to their sources, and the context
forward through Transpose/Reshape to where it is `[batch, sequence, heads * head_size]` again. Element-index
tracing decides what the chains do, whatever ops the exporter wrote: the rule fires where Q is the source's
hidden axis split into N heads of H and moved before the sequence (`[B, N, S, H]`), K^T the same moved to
`[B, N, H, T]`, V `[B, N, T, Hv]`, each a window of the source's last axis, with the source's rows in
batch-major (`[B, S, ...]`) or sequence-major (`[S, B, ...]`, nn.MultiheadAttention) order. The forms seen:
Hugging Face BERT/DistilBERT (sdpa: sqrt(scale) on Q and on K^T; TorchScript transposes K to [0, 2, 3, 1],
dynamo reshapes it to 3-d, transposes and reshapes back), GPT-2 (one packed projection split three ways,
causal and padding mask as Where(mask, 0, min) added, the sdpa NaN guard), torchvision ViT (packed
projection, sequence-major, heads selected by Gather), DETR (nn.MultiheadAttention, separate inputs).

The fused op is an onnxruntime contrib op at every opset: onnxruntime runs it and
`lepton.codegen.fused_transformer` lowers it. ONNX's own Attention (opset 23) is not emitted even where the
model's opset has it: none of today's exports is at 23, TVM 0.27's frontend reads the op type Attention as
the contrib op (`lepton.codegen.frontend.MISREAD_OPS`), and compile's `expand-functions` therefore inlines
every ONNX Attention into its function body, which would undo the fusion before the codegen sees it
(keeping the configurations Lepton lowers needs a per-configuration choice there).
- `com.microsoft.Attention(x, W_qkv, b_qkv, , , attention_bias)` where Q, K and V are projections
  (MatMul by a constant, with an optional constant bias; or Gemm) of one input x, read by nothing else: the
  projection is part of the op (three weights packed into one; a missing bias is zeros: onnxruntime's
  kernel needs one).
- else `com.microsoft.MultiHeadAttention(q, k, v, , , attention_bias)` on the sources' `[B, S, hidden]` views.
Both with `num_heads` and `scale` (the product of every scalar met; Softmax's input is `scale * Q K^T + bias`).
`attention_bias` is the added mask made 4-d and expanded to `[., ., S, T]`; a Where mask becomes
`Where(mask, 0, fill)` added, only for a fill <= -1e30 or -inf (then `s + fill` is `fill` in float32 for
|s| < 2^99, so the two agree: a smaller fill would change fully masked rows). The NaN guard after Softmax is
absorbed only where the bias is finite (then no row is NaN); with inputs that are NaN or inf, the guard
would have zeroed a row the fused op leaves NaN.

`merge-qkv` (`merge-projections`): MatMuls reading one input x (rank >= 2) with constant 2-d weights of one
K (each optionally followed by an Add of one constant per output column) -> one MatMul by the concatenated
weights (+ one Add) and a Split of its last axis. Q/K/V projections are the common case; any siblings
qualify (gate/up projections too).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np

from lepton_ir import Graph, Node, Value
from lepton_ir.constants import constant_value
from lepton_ir.rewriter import Builder

from passes.base import register
from passes.fusion.chains import (CONTRIB, ReplaceRule, T, Trace, float32, internal_nodes, opset, rank_of,
                                  rows_and_columns, scalar_of, static, trace_back, trace_forward, use_contrib,
                                  without_producers)
from passes.rewrite import Match, RewritePass, Rule, failed

#: A Where mask's fill must be at most this (or -inf) to be an additive bias (see the module docstring).
FILL_LIMIT = -1e30


@dataclass(frozen=True)
class _Side:
    """One of Q, K, V (`kind`): the source value, the `[B, S, hidden]` window of it (order, column offset, width)."""

    kind: str
    trace: Trace
    order: str
    offset: int
    width: int


def _index3(kind: str, index: np.ndarray) -> np.ndarray:
    """Q `[B, N, S, H]`, K^T `[B, N, H, T]` or V `[B, N, T, Hv]` index arrays as `[B, L, N * H]`."""
    b, n = index.shape[:2]
    moved = index.transpose(0, 3, 1, 2) if kind == "k" else index.transpose(0, 2, 1, 3)
    return moved.reshape(b, moved.shape[1], -1)


def _scores(graph: Graph, v: Value | None) -> tuple[Node, float, list[Node]] | None:
    """`(matmul, scale, nodes)` when `v` is MatMul(., .) times/divided by scalar constants."""
    scale, nodes = 1.0, []
    while v is not None:
        p = v.producer
        if p is None or p.graph is not graph or p.domain:
            return None
        if p.op_type == "MatMul":
            return p, scale, [*nodes, p]
        if p.op_type in ("Mul", "Div") and len(p.inputs) == 2:
            rank = rank_of(v)
            for i in ((0, 1) if p.op_type == "Mul" else (0,)):
                k = scalar_of(graph, p.inputs[1 - i], rank)
                if k is not None and k != 0 and static(p.inputs[i]) == static(v):
                    scale *= k if p.op_type == "Mul" else 1.0 / k
                    nodes.append(p)
                    v = p.inputs[i]
                    break
            else:
                return None
            continue
        return None
    return None


def _softmax_axis(node: Node, graph: Graph) -> int:
    default = -1 if opset(graph) >= 13 else 1
    return int(node.attr("axis", default))


@dataclass(frozen=True)
class _Logits:
    """What Softmax reads: the score MatMul, the scale, the bias (a value, or a Where mask to rebuild)."""

    qk: Node
    scale: float
    nodes: list[Node]
    bias: Value | None = None
    where: tuple[Value, float, bool] | None = None  # (mask, fill, fill_when_true)


def _logits(graph: Graph, v: Value) -> _Logits | str:
    direct = _scores(graph, v)
    if direct is not None:
        return _Logits(*direct)
    p = v.producer
    if p is None or p.domain or p.graph is not graph:
        return f"{v.name!r} (Softmax's input) is not computed from a MatMul of Q and K"
    if p.op_type == "Add":
        for i in (0, 1):
            s = _scores(graph, p.inputs[i])
            if s is not None and static(p.inputs[i]) == static(v):
                return _Logits(s[0], s[1], [*s[2], p], bias=p.inputs[1 - i])
        return f"neither operand of {p.name!r} is the scores MatMul (with scalar scaling)"
    if p.op_type == "Where":
        cond = p.inputs[0]
        for i, fill_when_true in ((1, False), (2, True)):
            s = _scores(graph, p.inputs[i])
            other = p.inputs[3 - i]
            if s is None or static(p.inputs[i]) != static(v):
                continue
            fill = scalar_of(graph, other, rank_of(v))
            if fill is None or not (fill <= FILL_LIMIT or fill == -math.inf):
                return (f"the Where mask's fill {other.name!r} is not a constant <= {FILL_LIMIT:g} (or -inf): as an "
                        "additive bias it would change fully masked rows")
            return _Logits(s[0], s[1], [*s[2], p], where=(cond, fill, fill_when_true))  # type: ignore[arg-type]
        return f"neither branch of {p.name!r} is the scores MatMul"
    return f"{v.name!r} (Softmax's input) is made by {p.op_type}, not a MatMul, an Add of a bias or a Where mask"


def _window(t: Trace, index3: np.ndarray) -> tuple[str, int] | None:
    shape = static(t.source)
    return None if shape is None else rows_and_columns(index3, shape)


def _finite_bias(graph: Graph, lg: _Logits) -> bool:
    """Whether the bias is known finite (so Softmax rows cannot be NaN for finite scores)."""
    if lg.where is not None:
        return math.isfinite(lg.where[1])
    if lg.bias is None:
        return True
    arr = constant_value(graph, lg.bias)
    if arr is not None:
        return bool(np.all(np.isfinite(arr)))
    p = lg.bias.producer
    if p is not None and p.op_type == "Where" and not p.domain:
        branches = [constant_value(graph, x) for x in p.inputs[1:]]
        return all(b is not None and bool(np.all(np.isfinite(b))) for b in branches)
    return False


def _projection(graph: Graph, v: Value) -> tuple[Value, np.ndarray, np.ndarray | None, list[Node]] | None:
    """`(x, W [K, F], bias [F] or None, nodes)` when `v` is x @ W (+ bias) with constants W and bias."""
    p = v.producer
    if p is None or p.domain or p.graph is not graph:
        return None
    if p.op_type == "MatMul":
        w = constant_value(graph, p.inputs[1])
        if w is None or w.ndim != 2 or w.dtype != np.float32 or (rank_of(p.inputs[0]) or 0) < 2:
            return None
        return p.inputs[0], w, None, [p]  # type: ignore[return-value]
    if p.op_type == "Add":
        for i in (0, 1):
            inner = p.inputs[i]
            c = constant_value(graph, p.inputs[1 - i])
            if inner is None or c is None or c.dtype != np.float32 or len(inner.uses) != 1 or inner.graph_outputs:
                continue
            proj = _projection(graph, inner)
            if proj is None or proj[2] is not None or proj[3][0].op_type != "MatMul":
                continue
            f = proj[1].shape[1]
            if c.size != f or any(d != 1 for d in c.shape[:-1]) or c.ndim > (rank_of(inner) or 0):
                continue
            return proj[0], proj[1], c.reshape(-1), [p, *proj[3]]
        return None
    if p.op_type == "Gemm":
        if int(p.attr("transA", 0)) or float(p.attr("alpha", 1.0)) != 1.0:
            return None
        w = constant_value(graph, p.inputs[1])
        if w is None or w.ndim != 2 or w.dtype != np.float32:
            return None
        if int(p.attr("transB", 0)):
            w = w.T
        bias = None
        if len(p.inputs) > 2 and p.inputs[2] is not None:
            c = constant_value(graph, p.inputs[2])
            beta = float(p.attr("beta", 1.0))
            if c is None or c.dtype != np.float32 or c.ndim > 2 or (c.ndim == 2 and c.shape[0] != 1):
                return None
            bias = np.broadcast_to(c.reshape(-1) * np.float32(beta), (w.shape[1],)).astype(np.float32)
        return p.inputs[0], np.ascontiguousarray(w), bias, [p]  # type: ignore[return-value]
    return None


class _Attention(ReplaceRule):
    """Scaled-dot-product attention (the module docstring) -> com.microsoft Attention / MultiHeadAttention."""

    name = "attention"
    op_types = ("MatMul",)

    def find(self, node: Node, graph: Graph) -> Match:  # noqa: C901 - one matcher, step by step
        p_value, v_value = node.inputs
        if p_value is None or v_value is None:
            return failed("a MatMul input is omitted")
        core: list[Node] = [node]
        sm = p_value.producer
        guard = False
        if sm is not None and sm.op_type == "Where" and not sm.domain:
            cond, zero, inner = sm.inputs
            isnan = None if cond is None else cond.producer
            if isnan is None or isnan.op_type != "IsNaN" or isnan.inputs[0] is not inner or \
                    scalar_of(graph, zero, rank_of(inner)) != 0.0 or inner is None:
                return failed(f"{p_value.name!r} is a Where that is not the NaN guard Where(IsNaN(p), 0, p)", 1)
            core += [sm, isnan]
            guard = True
            sm = inner.producer
        if sm is None or sm.op_type != "Softmax" or sm.domain or sm.graph is not graph:
            return failed(f"{node.name!r} does not read a Softmax (it is not attention's context MatMul)", len(core) - 1)
        core.append(sm)
        logits = sm.inputs[0]
        shape4 = static(logits)
        if shape4 is None or len(shape4) != 4:
            return failed(f"the attention scores {logits.name!r} are not a static 4-d tensor", len(core))  # type: ignore[union-attr]
        if _softmax_axis(sm, graph) % 4 != 3:
            return failed(f"{sm.name!r} is not over the last axis", len(core))
        if not (float32(logits) and float32(v_value)):
            return failed("the attention is not float32", len(core))
        lg = _logits(graph, logits)  # type: ignore[arg-type]
        if isinstance(lg, str):
            return failed(lg, len(core))
        core += lg.nodes
        if guard and not _finite_bias(graph, lg):
            return failed("a NaN guard follows Softmax and the mask is not known finite: fusing could turn its zero "
                          "rows into NaN", len(core))
        q_value, k_value = lg.qk.inputs
        tq = trace_back(graph, q_value)  # type: ignore[arg-type]
        tk = trace_back(graph, k_value)  # type: ignore[arg-type]
        tv = trace_back(graph, v_value, scales=False)
        if tq is None or tk is None or tv is None:
            return failed("Q, K or V is not traced to a source of static shape", len(core))
        if tq.index.ndim != 4 or tk.index.ndim != 4 or tv.index.ndim != 4:
            return failed("Q, K^T and V are not 4-d [batch, heads, ...] tensors", len(core))
        B, N, S, H = tq.index.shape
        _, _, _, T = tk.index.shape
        Hv = tv.index.shape[3]
        if tk.index.shape != (B, N, H, T) or tv.index.shape != (B, N, T, Hv) or shape4 != (B, N, S, T):
            return failed(f"the shapes of Q {tq.index.shape}, K^T {tk.index.shape} and V {tv.index.shape} are not "
                          "[B, N, S, H], [B, N, H, T], [B, N, T, Hv]", len(core))
        sides = []
        for kind, t, width in (("q", tq, N * H), ("k", tk, N * H), ("v", tv, N * Hv)):
            w = _window(t, _index3(kind, t.index))
            if w is None:
                return failed(f"{t.source.name!r} -> {kind.upper()} is not the source's hidden axis split into {N} heads "
                              f"of {width // N} (batch- or sequence-major rows)", len(core))
            sides.append(_Side(kind, t, w[0], w[1], width))
        scale = tq.scale * tk.scale * lg.scale
        # the context, forward to its [B, S, N*Hv] form
        out = node.outputs[0]
        ends = trace_forward(graph, out)
        flat = np.arange(B * N * S * Hv).reshape(B, N, S, Hv)
        want = {"bs": flat.transpose(0, 2, 1, 3).reshape(-1), "sb": flat.transpose(2, 0, 1, 3).reshape(-1)}
        end, order, chain = out, "heads", ()
        for value, index, nodes in ends:
            for o, w in want.items():  # "bs" first: with a batch of 1 both orders are one, and "bs" needs no Transpose
                if np.array_equal(index.reshape(-1), w):
                    end, order, chain = value, o, nodes
                    break
        bias = self._bias(graph, lg, (B, N, S, T))
        if isinstance(bias, str):
            return failed(bias, len(core))
        everything = list({id(n): n for n in (*chain, *core, *tq.nodes, *tk.nodes, *tv.nodes)}.values())
        packed = self._packed(graph, sides, S, T)
        nodes = internal_nodes(everything + (packed["nodes"] if packed else []), [end])
        missing = [n for n in core if all(n is not m for m in nodes)]
        if missing:
            return failed(f"{missing[0].name!r} ({missing[0].op_type}) is read outside the attention (its scores or "
                          "probabilities are used elsewhere)", len(core))
        if packed and any(all(n is not m for m in nodes) for n in packed["nodes"]):
            packed = None  # a projection read elsewhere would be computed twice: the unpacked op instead
            nodes = internal_nodes(everything, [end])
        if packed is None:
            sides = [self._nearer(graph, s, end_value) for s, end_value in zip(sides, (q_value, k_value, v_value),
                                                                                  strict=True)]
        reads = [packed["x"]] if packed else [s.trace.source for s in sides]
        if bias is not None:
            reads.append(bias["value"])
        nodes = internal_nodes(without_producers(nodes, reads), [end])
        return Match(True, "", {"nodes": nodes, "outputs": [end], "sides": sides, "dims": (B, N, S, T, H, Hv),
                                "scale": scale, "order": order, "end": end, "bias": bias, "packed": packed},
                     len(nodes))

    @staticmethod
    def _nearer(graph: Graph, side: _Side, end: Value) -> _Side:
        """`side` traced back only to the nearest Split output when that output is the whole window (so the
        unpacked op reads the Split's outputs instead of slicing their source again)."""
        t = trace_back(graph, end, scales=side.kind != "v", splits=False)
        if t is None or t.source is side.trace.source or t.index.shape != side.trace.index.shape:
            return side
        w = _window(t, _index3(side.kind, t.index))
        shape = static(t.source)
        if w is None or w[0] != side.order or w[1] != 0 or shape is None or shape[-1] != side.width:
            return side
        return _Side(side.kind, t, side.order, 0, side.width)

    @staticmethod
    def _bias(graph: Graph, lg: _Logits, dims: tuple[int, int, int, int]) -> Any:
        """The bias source (value, or Where spec) with its static shape, checked to broadcast to `dims`."""
        source = lg.bias if lg.bias is not None else (lg.where[0] if lg.where is not None else None)
        if source is None:
            return None
        shape = static(source)
        if shape is None or len(shape) > 4:
            return f"the mask {source.name!r} has no static shape of rank <= 4"
        if lg.bias is not None and not float32(lg.bias):
            return f"the added mask {source.name!r} is not float32"
        full = (1,) * (4 - len(shape)) + shape
        if any(d not in (1, want) for d, want in zip(full, dims, strict=True)):
            return f"the mask {source.name!r} of shape {list(shape)} does not broadcast to the scores' {list(dims)}"
        return {"value": source, "shape": full, "where": lg.where}

    @staticmethod
    def _packed(graph: Graph, sides: list[_Side], S: int, T: int) -> dict[str, Any] | None:
        """The packed-projection form, when Q, K and V are constant projections of one input x."""
        if S != T or len({s.order for s in sides}) != 1:
            return None
        projs = [_projection(graph, s.trace.source) for s in sides]
        if any(p is None for p in projs):
            return None
        xs = {id(p[0]) for p in projs}  # type: ignore[index]
        if len(xs) != 1:
            return None
        ws, bs = [], []
        for s, p in zip(sides, projs, strict=True):
            _, w, bias, _ = p  # type: ignore[misc]
            ws.append(w[:, s.offset:s.offset + s.width])
            bs.append(np.zeros(s.width, np.float32) if bias is None else bias[s.offset:s.offset + s.width])
        if len({w.shape[0] for w in ws}) != 1:
            return None
        nodes: list[Node] = []
        for p in projs:
            for n in p[3]:  # type: ignore[index]
                if all(n is not m for m in nodes):
                    nodes.append(n)
        return {"x": projs[0][0], "w": np.ascontiguousarray(np.concatenate(ws, axis=1)),  # type: ignore[index]
                "b": np.ascontiguousarray(np.concatenate(bs)), "nodes": nodes}

    def make(self, b: Builder, m: Match) -> Sequence[Value]:
        B, N, S, T, H, Hv = m["dims"]
        sides: list[_Side] = m["sides"]
        order = sides[0].order
        attrs: dict[str, Any] = {"num_heads": N, "scale": float(m["scale"])}
        bias = self._make_bias(b, m["bias"], (B, N, S, T))
        use_contrib(b.graph)
        packed = m["packed"]
        if packed is not None:
            x = _rows(b, packed["x"], order, B, S)
            if Hv != H:
                attrs["qkv_hidden_sizes"] = [N * H, N * H, N * Hv]
            inputs: list[Value | None] = [x, b.const(packed["w"], "qkv_weight"), b.const(packed["b"], "qkv_bias")]
            op_type = "Attention"
        else:
            q, k, v = (_view(b, s, dims) for s, dims in zip(sides, ((B, S), (B, T), (B, T)), strict=True))
            inputs = [q, k, v]
            op_type = "MultiHeadAttention"
        if bias is not None:
            inputs += [None] * (5 - len(inputs)) + [bias]
        a = b.op(op_type, inputs, attrs, domain=CONTRIB, shape=(B, S, N * Hv), dtype=sides[0].trace.source.dtype)
        end: Value = m["end"]
        if m["order"] == "heads":  # the context as the MatMul made it: [B, N, S, Hv]
            r = b.Reshape(a, b.const(np.array([B, S, N, Hv], np.int64), "shape"), shape=(B, S, N, Hv))
            return [b.Transpose(r, perm=[0, 2, 1, 3], shape=(B, N, S, Hv))]
        y = a
        if m["order"] == "sb":
            y = b.Transpose(y, perm=[1, 0, 2], shape=(S, B, N * Hv))
        if static(end) != static(y):
            y = b.Reshape(y, b.const(np.array(static(end), np.int64), "shape"), shape=end.shape)
        return [y]

    @staticmethod
    def _make_bias(b: Builder, spec: dict[str, Any] | None, dims: tuple[int, int, int, int]) -> Value | None:
        if spec is None:
            return None
        v: Value = spec["value"]
        if spec["where"] is not None:
            cond, fill, fill_when_true = spec["where"]
            zero = b.const(np.array(0.0, np.float32), "zero")
            filler = b.const(np.array(fill, np.float32), "fill")
            v = b.op("Where", [cond, filler, zero] if fill_when_true else [cond, zero, filler], dtype=T.FLOAT,
                     shape=static(cond))
        full = spec["shape"]
        if static(v) != full:
            v = b.Reshape(v, b.const(np.array(full, np.int64), "shape"), shape=full)
        target = (full[0], full[1], dims[2], dims[3])
        if full != target:
            v = b.Expand(v, b.const(np.array(target, np.int64), "shape"), shape=target)
        return v


def _rows(b: Builder, x: Value, order: str, B: int, S: int) -> Value:
    """x (rows in `order`, last axis E) as [B, S, E]."""
    e = static(x)[-1]  # type: ignore[index]
    lead = (B, S) if order == "bs" else (S, B)
    if static(x) != (*lead, e):
        x = b.Reshape(x, b.const(np.array([*lead, e], np.int64), "shape"), shape=(*lead, e))
    if order == "sb":
        x = b.Transpose(x, perm=[1, 0, 2], shape=(B, S, e))
    return x


def _view(b: Builder, side: _Side, dims: tuple[int, int]) -> Value:
    """The `[B, L, hidden]` view of one side's source (reshape, column window, transpose)."""
    src = side.trace.source
    f = static(src)[-1]  # type: ignore[index]
    B, L = dims
    lead = (B, L) if side.order == "bs" else (L, B)
    v = src
    if static(v) != (*lead, f):
        v = b.Reshape(v, b.const(np.array([*lead, f], np.int64), "shape"), shape=(*lead, f))
    if side.offset != 0 or side.width != f:
        if opset(b.graph) >= 10:
            v = b.op("Slice", [v, b.const(np.array([side.offset], np.int64), "start"),
                               b.const(np.array([side.offset + side.width], np.int64), "end"),
                               b.const(np.array([2], np.int64), "axes")], shape=(*lead, side.width))
        else:
            v = b.op("Slice", [v], {"starts": [side.offset], "ends": [side.offset + side.width], "axes": [2]},
                     shape=(*lead, side.width))
    if side.order == "sb":
        v = b.Transpose(v, perm=[1, 0, 2], shape=(B, L, side.width))
    return v


@register
@dataclass(frozen=True)
class FuseAttention(RewritePass):
    """Scaled-dot-product attention with its head split/merge -> com.microsoft Attention (packed projections)
    or MultiHeadAttention."""

    name: ClassVar[str] = "fuse-attention"
    summary: ClassVar[str] = ("MatMul/scale/mask/Softmax/MatMul with the head Reshape/Transposes -> com.microsoft "
                              "Attention (projections packed in) or MultiHeadAttention")
    repeat: ClassVar[bool] = False  # see passes.fusion.chains: after cleanup has settled the shapes
    rules: ClassVar[tuple[Rule, ...]] = (_Attention(),)


# ----- merge-qkv ----------------------------------------------------------------------------------------------------


class _MergeProjections(ReplaceRule):
    """Sibling MatMuls of one input by constant weights (each + an optional bias Add) -> one MatMul + Split."""

    name = "merge-projections"
    op_types = ("MatMul",)

    def find(self, node: Node, graph: Graph) -> Match:
        x = node.inputs[0]
        if x is None or (rank_of(x) or 0) < 2 or not float32(x):
            return failed(f"{node.name!r} does not read a float32 input of rank >= 2")
        own = constant_value(graph, node.inputs[1])
        if own is None or own.ndim != 2:
            return failed(f"{node.name!r} does not multiply by a constant matrix")
        siblings = []
        for u in x.users():
            if u.op_type != "MatMul" or u.domain or u.graph is not graph or u.inputs[0] is not x or u.inputs[1] is x:
                continue
            w = constant_value(graph, u.inputs[1])
            if w is None or w.ndim != 2 or w.shape[0] != own.shape[0] or w.dtype != np.float32:
                continue
            if any(s[0] is u for s in siblings):
                continue
            siblings.append((u, w))
        if len(siblings) < 2:
            return failed(f"{x.name!r} is multiplied by no other constant matrix of {own.shape[0]} rows")
        if not any(s[0] is node for s in siblings):
            return failed(f"{node.name!r} is not one of the siblings")
        nodes: list[Node] = []
        outputs: list[Value] = []
        weights, biases, any_bias = [], [], False
        for u, w in siblings:
            y = u.outputs[0]
            nodes.append(u)
            bias = None
            if len(y.uses) == 1 and not y.graph_outputs:
                add = y.uses[0][0]
                if add.op_type == "Add" and not add.domain and add.graph is graph:
                    other = add.inputs[1] if add.inputs[0] is y else add.inputs[0]
                    c = constant_value(graph, other) if other is not y else None
                    if c is not None and c.dtype == np.float32 and c.size == w.shape[1] and \
                            all(d == 1 for d in c.shape[:-1]) and c.ndim <= (rank_of(y) or 0):
                        bias = c.reshape(-1)
                        nodes.append(add)
                        y = add.outputs[0]
            any_bias |= bias is not None
            weights.append(w)
            biases.append(np.zeros(w.shape[1], np.float32) if bias is None else bias)
            outputs.append(y)
        return Match(True, "", {"nodes": nodes, "outputs": outputs, "x": x,
                                "w": np.ascontiguousarray(np.concatenate(weights, axis=1)),
                                "b": np.ascontiguousarray(np.concatenate(biases)) if any_bias else None,
                                "sizes": [w.shape[1] for w in weights]}, len(nodes))

    def make(self, b: Builder, m: Match) -> Sequence[Value]:
        x = m["x"]
        outs: list[Value] = m["outputs"]
        shape = None if x.shape is None else (*x.shape[:-1], int(m["w"].shape[1]))
        y = b.MatMul(x, b.const(m["w"], "weight"), shape=shape)
        if m["b"] is not None:
            y = b.Add(y, b.const(m["b"], "bias"), shape=shape)
        sizes = np.array(m["sizes"], np.int64)
        axis = len(x.shape) - 1 if x.shape is not None else -1
        if opset(b.graph) >= 13:
            parts = b.op("Split", [y, b.const(sizes, "split")], {"axis": axis}, num_outputs=len(outs),
                         shapes=[o.shape for o in outs], dtypes=[o.dtype for o in outs])
        else:
            parts = b.op("Split", [y], {"axis": axis, "split": [int(s) for s in sizes]}, num_outputs=len(outs),
                         shapes=[o.shape for o in outs], dtypes=[o.dtype for o in outs])
        return list(parts)


@register
@dataclass(frozen=True)
class MergeQKV(RewritePass):
    """MatMuls of one input by constant weights (Q/K/V projections) -> one MatMul and a Split."""

    name: ClassVar[str] = "merge-qkv"
    summary: ClassVar[str] = "sibling MatMuls of one input by constant weights (Q/K/V) -> one MatMul (+ bias) and a Split"
    repeat: ClassVar[bool] = False  # see passes.fusion.chains: after cleanup has settled the shapes
    rules: ClassVar[tuple[Rule, ...]] = (_MergeProjections(),)
