"""Helpers the transformer fusions share (`fuse-gelu`, `fuse-layernorm`, `fuse-attention`, `merge-qkv`, ...).

- `opset(graph)`: the model's default-domain opset, which decides between a standard fused op and
  onnxruntime's contrib op (`CONTRIB`, domain com.microsoft: onnxruntime runs it, TVM's frontend converts it
  by op type, so it is a target form for the reference, `lepton bisect` and the codegen alike).
- `scalar_of`/`is_scalar`: a constant that is one number and cannot change a shape by broadcasting.
- `reduce_axes`: a Reduce* node's axes, from the attribute (opset < 18) or the constant input.
- Index tracing (`trace_back`, `trace_forward`, `apply_move`): a chain of pure data-movement ops
  (Reshape, Transpose, Squeeze, Unsqueeze, Flatten, Identity, Split, Slice, Gather with constant indices)
  applied to an array of flat indices. The array an end of the chain gets says, element by element, which
  element of the chain's source it holds, so one comparison decides whether a chain is, say, "split the
  hidden axis into heads and move the heads before the sequence", whatever ops an exporter wrote it with.
  Scalar multiplications and divisions met on the way are collected (they commute with data movement).
- `ReplaceRule`: a rule that replaces some values (not only its anchor's output) computed by a set of
  nodes; `internal_nodes` narrows a set of matched nodes to those no other node reads, which are the ones
  a rewrite may remove (the others stay: dead-code elimination or their other readers decide).

The transformer fusion passes are one-shot (`repeat = False`): the target pipeline names them after the
cleanup stage. ONNX shape inference (`infer-shapes`) knows no contrib op, so a contrib op inserted while
cleanup is still folding the exporters' shape computations would leave every value after it with the
symbolic dims it had then (a Gelu fused in the first cleanup round kept BERT's later layers at
`[unk, 16, 64]`, and their attention unfused).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import numpy as np
import onnx

from lepton_ir import Graph, Node, Value
from lepton_ir.constants import constant_value
from lepton_ir.rewriter import Builder, Rewriter, replace_problem

from passes.rewrite import Match, Rule, failed

T = onnx.TensorProto

#: onnxruntime's contrib domain.
CONTRIB = "com.microsoft"

#: Index arrays larger than this are not traced (a bound on the memory a match may use).
MAX_TRACE = 1 << 24

#: Ops `trace_back`/`trace_forward` see through.
MOVES = frozenset({"Reshape", "Transpose", "Squeeze", "Unsqueeze", "Flatten", "Identity", "Split", "Slice", "Gather"})


def opset(graph: Graph) -> int:
    """The default-domain opset of `graph`'s model."""
    imports = graph.root().opset_imports
    return int(imports.get("", imports.get("ai.onnx", 1)))


def use_contrib(graph: Graph) -> None:
    """Make `graph`'s model import onnxruntime's contrib domain (version 1)."""
    graph.root().opset_imports.setdefault(CONTRIB, 1)


def scalar_of(graph: Graph, v: Value | None, rank: int | None) -> float | None:
    """The number a constant `v` holds when it is one element that cannot broadcast a rank-`rank` tensor to
    a larger rank (`rank=None`: only a 0-d or one-element 1-d constant), else None."""
    arr = constant_value(graph, v)
    if arr is None or arr.size != 1 or arr.dtype.kind not in "fiu":
        return None
    if arr.ndim > (rank if rank is not None else 1):
        return None
    return float(arr.reshape(-1)[0])


def is_scalar(graph: Graph, v: Value | None, value: float, rank: int | None, rtol: float = 1e-6) -> bool:
    x = scalar_of(graph, v, rank)
    return x is not None and abs(x - value) <= rtol * abs(value)


def rank_of(v: Value | None) -> int | None:
    return None if v is None or v.shape is None else len(v.shape)


def static(v: Value | None) -> tuple[int, ...] | None:
    if v is None or v.shape is None or not all(isinstance(d, int) and d >= 0 for d in v.shape):
        return None
    return tuple(int(d) for d in v.shape)  # type: ignore[arg-type]


def reduce_axes(node: Node, graph: Graph) -> tuple[int, ...] | None:
    """The axes a ReduceMean/ReduceSum node reduces (normalized, sorted), or None when not known or when it
    reduces nothing: axes omitted (every axis, unless noop_with_empty_axes) are returned as every axis."""
    x = node.inputs[0]
    rank = rank_of(x)
    if rank is None:
        return None
    if len(node.inputs) > 1 and node.inputs[1] is not None:
        arr = constant_value(graph, node.inputs[1])
        if arr is None:
            return None
        axes = [int(a) for a in arr.reshape(-1)]
    else:
        axes = list(node.attr("axes", []) or [])
    if not axes:
        if int(node.attr("noop_with_empty_axes", 0)):
            return None
        return tuple(range(rank))
    if any(not -rank <= a < rank for a in axes):
        return None
    return tuple(sorted({a % rank for a in axes}))


def keeps_dims(node: Node) -> bool:
    return int(node.attr("keepdims", 1)) == 1


# ----- index tracing ------------------------------------------------------------------------------------------


def _ints(graph: Graph, node: Node, input_index: int, attr: str) -> list[int] | None:
    """A list of ints from input `input_index` (constant) or, when that input is absent, attribute `attr`."""
    if len(node.inputs) > input_index and node.inputs[input_index] is not None:
        arr = constant_value(graph, node.inputs[input_index])
        return None if arr is None else [int(a) for a in arr.reshape(-1)]
    a = node.attr(attr)
    return None if a is None else [int(x) for x in (a if isinstance(a, list | tuple) else [a])]


def apply_move(graph: Graph, node: Node, x: np.ndarray, output_index: int = 0) -> np.ndarray | None:
    """What data-movement `node` does to its first input, applied to `x` (an array of that input's shape):
    the array its output `output_index` would be, or None when the node is not a pure data movement of its
    first input with constant parameters (the arrays hold flat indices, so this traces where elements go)."""
    t = node.op_type
    if node.domain:
        return None
    try:
        if t == "Identity":
            return x
        if t == "Transpose":
            perm = node.attr("perm")
            return np.transpose(x, None if perm is None else [int(p) for p in perm])
        if t == "Reshape":
            target = constant_value(graph, node.inputs[1]) if len(node.inputs) > 1 else None
            if target is None:
                return None
            dims = [int(d) for d in target.reshape(-1)]
            if not int(node.attr("allowzero", 0)):
                dims = [x.shape[i] if d == 0 else d for i, d in enumerate(dims)]
            return x.reshape(dims)
        if t == "Flatten":
            axis = int(node.attr("axis", 1)) % max(x.ndim, 1) if x.ndim else 0
            return x.reshape(int(np.prod(x.shape[:axis], dtype=np.int64)), -1)
        if t == "Squeeze":
            axes = _ints(graph, node, 1, "axes")
            if axes is None:
                return None
            return np.squeeze(x, axis=tuple(a % x.ndim for a in axes)) if axes else np.squeeze(x)
        if t == "Unsqueeze":
            axes = _ints(graph, node, 1, "axes")
            if not axes:
                return None
            out_rank = x.ndim + len(axes)
            return np.expand_dims(x, tuple(sorted(a % out_rank for a in axes)))
        if t == "Gather":
            idx = constant_value(graph, node.inputs[1]) if len(node.inputs) > 1 else None
            if idx is None or idx.dtype.kind not in "iu":
                return None
            axis = int(node.attr("axis", 0)) % x.ndim
            idx = np.where(idx < 0, idx + x.shape[axis], idx)
            return np.take(x, idx.astype(np.int64), axis=axis)
        if t == "Split":
            axis = int(node.attr("axis", 0)) % x.ndim
            sizes = _ints(graph, node, 1, "split")
            n = len(node.outputs)
            if not sizes:
                total = x.shape[axis]
                chunk = -(-total // n)
                sizes = [min(chunk, total - i * chunk) for i in range(n)]
            if len(sizes) != n or sum(sizes) != x.shape[axis]:
                return None
            start = sum(sizes[:output_index])
            return np.take(x, np.arange(start, start + sizes[output_index]), axis=axis)
        if t == "Slice":
            if len(node.inputs) == 1:  # opset < 10: attributes
                starts, ends = node.attr("starts"), node.attr("ends")
                axes = node.attr("axes")
                steps = None
            else:
                starts, ends = _ints(graph, node, 1, ""), _ints(graph, node, 2, "")
                axes = _ints(graph, node, 3, "") if len(node.inputs) > 3 and node.inputs[3] is not None else None
                steps = _ints(graph, node, 4, "") if len(node.inputs) > 4 and node.inputs[4] is not None else None
            if starts is None or ends is None:
                return None
            axes = list(range(len(starts))) if axes is None else [int(a) % x.ndim for a in axes]
            steps = [1] * len(starts) if steps is None else steps
            index: list[slice] = [slice(None)] * x.ndim
            for a, s, e, st in zip(axes, starts, ends, steps, strict=True):
                index[a] = slice(*slice(int(s), int(e), int(st)).indices(x.shape[a]))
            return x[tuple(index)]
    except (ValueError, IndexError, TypeError):
        return None
    return None


@dataclass(frozen=True)
class Trace:
    """A chain traced back from `end` to `source`: `index[i...]` is the flat index (into `source`) of element
    `i...` of `end`; `scale` is the product of the scalar factors met; `nodes` are the chain's nodes."""

    source: Value
    index: np.ndarray
    scale: float
    nodes: tuple[Node, ...]


def trace_back(graph: Graph, end: Value, *, scales: bool = True, splits: bool = True,
               stop: Iterable[Value] = ()) -> Trace | None:
    """Follow `end` back through data movement (and, with `scales`, Mul/Div by scalar constants; without
    `splits`, not through Split) to the first value that is not made by one (or is in `stop`). None when a
    shape on the way is not static, or the source is too large to trace."""
    stops = {id(v) for v in stop}
    chain: list[tuple[Node, int]] = []  # (node, output index), end first
    scale = 1.0
    v = end
    while id(v) not in stops:
        p = v.producer
        if p is None or p.graph is not graph or p.domain:
            break
        if p.op_type in MOVES and (splits or p.op_type != "Split"):
            chain.append((p, v.output_index))
            v = p.inputs[0]  # type: ignore[assignment]
            continue
        if scales and p.op_type in ("Mul", "Div") and len(p.inputs) == 2:
            r = rank_of(v)
            k = scalar_of(graph, p.inputs[1], r)
            if k is not None and k != 0 and _same_shape(p.inputs[0], v):
                chain.append((p, -1))
                scale *= k if p.op_type == "Mul" else 1.0 / k
                v = p.inputs[0]  # type: ignore[assignment]
                continue
            k = scalar_of(graph, p.inputs[0], r) if p.op_type == "Mul" else None
            if k is not None and _same_shape(p.inputs[1], v):
                chain.append((p, -1))
                scale *= k
                v = p.inputs[1]  # type: ignore[assignment]
                continue
        break
    shape = static(v)
    if shape is None or int(np.prod(shape, dtype=np.int64)) > MAX_TRACE:
        return None
    index = np.arange(int(np.prod(shape, dtype=np.int64)), dtype=np.int64).reshape(shape)
    for node, out in reversed(chain):
        if out < 0:
            continue
        index = apply_move(graph, node, index, out)  # type: ignore[assignment]
        if index is None:
            return None
    if static(end) is not None and tuple(index.shape) != static(end):
        return None
    return Trace(v, index, scale, tuple(n for n, _ in chain))


def _same_shape(a: Value | None, b: Value | None) -> bool:
    sa, sb = static(a), static(b)
    return sa is not None and sa == sb


FORWARD = frozenset({"Reshape", "Transpose", "Squeeze", "Unsqueeze", "Flatten", "Identity"})


def trace_forward(graph: Graph, start: Value) -> list[tuple[Value, np.ndarray, tuple[Node, ...]]]:
    """The values reached from `start` through single-reader data movement (Reshape, Transpose, Squeeze,
    Unsqueeze, Flatten, Identity), each with its index array into `start` and the nodes on the way; `start`
    itself first. A value that is a graph output ends the walk (its name is kept)."""
    shape = static(start)
    if shape is None or int(np.prod(shape, dtype=np.int64)) > MAX_TRACE:
        return []
    index = np.arange(int(np.prod(shape, dtype=np.int64)), dtype=np.int64).reshape(shape)
    out = [(start, index, ())]
    v, nodes = start, ()
    while not v.graph_outputs and len(v.uses) == 1:
        user = v.uses[0][0]
        if user.op_type not in FORWARD or user.domain or user.inputs[0] is not v or len(user.outputs) != 1:
            break
        index = apply_move(graph, user, index)  # type: ignore[assignment]
        if index is None:
            break
        v, nodes = user.outputs[0], (*nodes, user)
        out.append((v, index, nodes))
    return out


def rows_and_columns(index: np.ndarray, source_shape: Sequence[int]) -> tuple[str, int] | None:
    """Whether `index` (shape [B, S, C]: flat indices into a source of `source_shape`) is a window of the
    source's last axis: the source read as rows of its last dim F, element [b, s, c] is row r(b, s), column
    `offset + c`, with r(b, s) = b*S + s ("bs": batch-major rows) or s*B + b ("sb": sequence-major rows).
    Returns (order, offset) or None."""
    if index.ndim != 3 or not source_shape:
        return None
    b, s, c = index.shape
    f = int(source_shape[-1])
    rows = int(np.prod(source_shape[:-1], dtype=np.int64)) if len(source_shape) > 1 else 1
    if f <= 0 or rows != b * s or c > f:
        return None
    row, col = index // f, index % f
    offset = int(col.reshape(-1)[0]) if col.size else 0
    if not np.array_equal(col, np.broadcast_to(offset + np.arange(c), col.shape)):
        return None
    bs = np.arange(b)[:, None] * s + np.arange(s)[None, :]
    if np.array_equal(row, np.broadcast_to(bs[:, :, None], row.shape)):
        return "bs", offset
    sb = np.arange(s)[None, :] * b + np.arange(b)[:, None]
    if np.array_equal(row, np.broadcast_to(sb[:, :, None], row.shape)):
        return "sb", offset
    return None


# ----- rules that replace several values ----------------------------------------------------------------------


def internal_nodes(nodes: Iterable[Node], replaced: Iterable[Value]) -> list[Node]:
    """The nodes of `nodes` (one graph) that a rewrite replacing the values `replaced` may remove: none of
    their outputs is a graph output or read by a node outside the result (the values of `replaced` excepted,
    which the rewrite maps). Order kept."""
    cand = {id(n): n for n in nodes}
    mapped = {id(v) for v in replaced}
    changed = True
    while changed:
        changed = False
        for key, n in list(cand.items()):
            for out in n.outputs:
                if id(out) in mapped:
                    continue
                if out.graph_outputs or any(id(u) not in cand for u in out.users()):
                    del cand[key]
                    changed = True
                    break
    return [n for n in nodes if id(n) in cand]


def without_producers(nodes: Iterable[Node], keep: Iterable[Value | None]) -> list[Node]:
    """`nodes` less those that compute a value of `keep` (what the replacement reads), directly or through
    other nodes of `nodes`. Order kept."""
    cand = {id(n): n for n in nodes}
    todo = [v for v in keep if v is not None]
    while todo:
        v = todo.pop()
        p = v.producer
        if p is not None and id(p) in cand:
            del cand[id(p)]
            todo.extend(i for i in p.inputs if i is not None)
    return [n for n in nodes if id(n) in cand]


class ReplaceRule(Rule):
    """A rule that removes `bindings["nodes"]` and replaces the values `bindings["outputs"]` by what `make`
    builds (one value per output). `find` matches; the engine-side check that the swap is safe is done here."""

    def find(self, node: Node, graph: Graph) -> Match:
        raise NotImplementedError

    def make(self, b: Builder, m: Match) -> Sequence[Value]:
        raise NotImplementedError

    def check(self, node: Node, graph: Graph) -> Match:
        m = self.find(node, graph)
        if not m:
            return m
        problem = replace_problem(m["nodes"], {v: v for v in m["outputs"]}, ignore_targets=True)
        if problem is not None:
            return failed(problem, m.depth)
        return m

    def rewrite(self, rw: Rewriter, node: Node, m: Match) -> None:
        assert node.graph is not None
        b = Builder(node.graph, node.name or node.op_type.lower())
        results = self.make(b, m)
        rw.replace(m["nodes"], b.nodes, dict(zip(m["outputs"], results, strict=True)))


def float32(v: Value | None) -> bool:
    return v is not None and v.dtype == T.FLOAT
