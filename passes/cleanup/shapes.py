"""Shape folding: shape computations whose answer the static shapes already give.

Rewrites (default domain, every graph and subgraph):
- `Shape(x)` (opset-15 `start`/`end` applied, negative values and clamping as the spec says)
  when every selected dim of x is a static int -> int64 constant.
- `Size(x)` when x's shape is fully static -> int64 scalar constant.
- `Gather(Shape(x), constant indices)` (axis 0) and `Slice(Shape(x), constant starts/ends/
  axes/steps)` when the dims they pick are static, even if x's other dims are symbolic
  (a PyTorch export's `[N,3,224,224]` -> Gather index 1 -> `3`).

Invariants:
- Shapes are the import-time inferred ones; a dim that is None or a str is never trusted.
- One rule per op on the worklist driver; the rewritten node's output is replaced through
  the `Rewriter` by `fold.replace_by_constant` (an initializer, or a `Constant` node that
  keeps a graph output's name); the node is erased, and so is the `Shape` node feeding a
  Gather/Slice when nothing reads it any more. Values that another graph lists as its output
  are left alone, and so are dead nodes (`eliminate-dead-code`'s business).
- Everything else (Unsqueeze/Concat of the results, ...) is left to `fold-constants`.
- One run reaches the fixed point: a second run changes nothing.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import ClassVar

import numpy as np

from lepton_ir import Graph, Node
from lepton_ir.constants import constant_value
from lepton_ir.rewriter import Rewriter
from lepton_ir.types import Dim

from passes.base import register
from passes.cleanup.fold import listed_elsewhere, replace_by_constant
from passes.rewrite import Match, RewritePass, Rule, failed, matched


def shape_dims(node: Node) -> list[Dim] | None:
    """The dims a `Shape` node returns (`start`/`end` applied), or None when the rank is unknown."""
    x = node.inputs[0] if node.inputs else None
    if x is None or x.shape is None:
        return None
    rank = len(x.shape)

    def clamp(i: int) -> int:
        return min(max(i + rank if i < 0 else i, 0), rank)

    return list(x.shape[clamp(int(node.attr("start", 0))) : clamp(int(node.attr("end", rank)))])


def _ints(dims: Sequence[Dim]) -> list[int] | None:
    """`dims` if every one is a known non-negative int (never a str or None)."""
    ok = all(isinstance(d, int) and not isinstance(d, bool) and d >= 0 for d in dims)
    return [int(d) for d in dims] if ok else None  # type: ignore[arg-type]


def _fold_shape(g: Graph, node: Node) -> np.ndarray | None:
    dims = shape_dims(node)
    ints = None if dims is None else _ints(dims)
    return None if ints is None else np.array(ints, dtype=np.int64)


def _fold_size(g: Graph, node: Node) -> np.ndarray | None:
    x = node.inputs[0]
    ints = None if x is None or x.shape is None else _ints(x.shape)
    return None if ints is None else np.array(math.prod(ints), dtype=np.int64)


def _source_dims(node: Node) -> list[Dim] | None:
    """The dims held by `node`'s data input when a `Shape` node produces it."""
    src = node.inputs[0].producer if node.inputs and node.inputs[0] is not None else None
    if src is None or src.op_type != "Shape" or src.domain:
        return None
    return shape_dims(src)


def _fold_gather(g: Graph, node: Node) -> np.ndarray | None:
    dims = _source_dims(node)
    if dims is None or len(node.inputs) < 2 or int(node.attr("axis", 0)) not in (0, -1):
        return None
    idx = constant_value(g, node.inputs[1])
    if idx is None or idx.dtype.kind not in "iu":
        return None
    n = len(dims)
    flat = [int(i) for i in np.asarray(idx).reshape(-1)]
    if any(not -n <= i < n for i in flat):
        return None
    ints = _ints([dims[i] for i in flat])
    return None if ints is None else np.array(ints, dtype=np.int64).reshape(idx.shape)


def _fold_slice(g: Graph, node: Node) -> np.ndarray | None:
    dims = _source_dims(node)
    if dims is None:
        return None
    if len(node.inputs) > 1:  # opset >= 10: starts, ends, axes, steps are inputs
        raw = (list(node.inputs) + [None] * 4)[1:5]
        params = [None if v is None else constant_value(g, v) for v in raw]
        if any(v is not None and p is None for v, p in zip(raw, params, strict=True)):
            return None  # a given starts/ends/axes/steps input is not constant
        starts, ends, axes, steps = ([int(x) for x in np.asarray(p).reshape(-1)] if p is not None else None for p in params)
    else:
        starts, ends, axes = node.attr("starts"), node.attr("ends"), node.attr("axes")
        steps = None
    if starts is None or ends is None or len(starts) != 1 or len(ends) != 1:
        return None
    if axes is not None and list(axes) not in ([0], [-1]):
        return None
    step = 1 if steps is None else (steps[0] if len(steps) == 1 else 0)
    if step == 0:
        return None
    n = len(dims)
    start, end = starts[0] + n if starts[0] < 0 else starts[0], ends[0] + n if ends[0] < 0 else ends[0]
    if step > 0:
        start, end = min(max(start, 0), n), min(max(end, 0), n)
    else:
        start, end = min(max(start, 0), n - 1), min(max(end, -1), n - 1)
    ints = _ints([dims[i] for i in range(start, end, step)])
    return None if ints is None else np.array(ints, dtype=np.int64)


# ----- the rules and the pass ------------------------------------------------------------


class _FoldToConstant(Rule):
    """Replaces the node's output by the constant `fold` computes; the rule name is the stat key."""

    fold: Callable[[Graph, Node], np.ndarray | None]
    unknown: ClassVar[str]

    def check(self, node: Node, graph: Graph) -> Match:
        out = node.outputs[0]
        if not out.is_used():
            return failed("the output is not read (eliminate-dead-code's business)")
        if listed_elsewhere(graph, out):
            return failed(f"{out.name!r} is the output of another graph, so it keeps its producer")
        arr = self.fold(graph, node)
        if arr is None:
            return failed(self.unknown)
        return matched(value=arr)

    def rewrite(self, rw: Rewriter, node: Node, m: Match) -> None:
        g = node.graph
        assert g is not None
        replace_by_constant(rw, g, node.outputs[0], m["value"])
        src = node.inputs[0].producer if node.op_type in ("Gather", "Slice") and node.inputs[0] else None
        rw.erase(node)
        if src is not None and src.graph is not None and not any(o.is_used() for o in src.outputs):
            rw.erase(src)


class FoldShape(_FoldToConstant):
    """`Shape(x)` whose selected dims are all static."""

    name = "shapes_folded"
    op_types = ("Shape",)
    unknown = "a selected dim of the input is not a static int (or the rank is unknown)"
    fold = staticmethod(_fold_shape)


class FoldSize(_FoldToConstant):
    """`Size(x)` of a fully static shape."""

    name = "sizes_folded"
    op_types = ("Size",)
    unknown = "the input shape is not fully static"
    fold = staticmethod(_fold_size)


class FoldShapeGather(_FoldToConstant):
    """`Gather(Shape(x), constant indices)` (axis 0) picking static dims."""

    name = "shape_gathers_folded"
    op_types = ("Gather",)
    unknown = "not a Gather of a Shape along axis 0 with constant in-range indices picking static dims"
    fold = staticmethod(_fold_gather)


class FoldShapeSlice(_FoldToConstant):
    """`Slice(Shape(x), constant starts/ends/axes/steps)` picking static dims."""

    name = "shape_slices_folded"
    op_types = ("Slice",)
    unknown = "not a Slice of a Shape with constant parameters picking static dims"
    fold = staticmethod(_fold_slice)


@register
@dataclass(frozen=True)
class FoldShapes(RewritePass):
    """Replace Shape/Size (and Gather/Slice of a Shape) by constants where shapes are static."""

    name: ClassVar[str] = "fold-shapes"
    summary: ClassVar[str] = "replace Shape/Size and Gather/Slice of Shape by constants where the dims are static"
    rules: ClassVar[tuple[Rule, ...]] = (FoldShape(), FoldSize(), FoldShapeGather(), FoldShapeSlice())
