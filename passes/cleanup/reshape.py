"""Shape refresh and Reshape-target folding.

`infer-shapes`: re-runs ONNX shape inference on the current graph (`lepton_ir.shape_inference.
refresh_shapes`) so that shape computations other passes folded into constants make the
values behind them static. Only makes types more specific (never touches graph inputs or
an int dim); `modified` exactly when a value's type changed (types are exported as
value_info). Idempotent: a second inference over the refined types finds nothing new.

`fold-reshape-targets`: the PyTorch flatten `x.view(x.size(0), -1)` exports as
`Reshape(x, Concat(Unsqueeze(Gather(Shape(x), 0), [0]), [-1]))`, which cannot fold while
the batch dim is symbolic. With `allowzero=0`, a 0 in Reshape's target copies the input's
dim at that position, so such a target is rewritten to the constant `[0, -1]`.

Rule (default domain, every graph and subgraph): `Reshape(x, s)`, allowzero=0, `s =
Concat(parts, axis=0)`, each part either
- a constant 1-D int64 tensor (kept as is: its -1 and 0 entries mean what they meant), or
- one dim of a `Shape(y)` (its `start`/`end` applied): `Unsqueeze(Gather(Shape(y), j),
  [0])` or `Reshape(Gather(Shape(y), j), [1])` with j a constant scalar, or
  `Gather(Shape(y), [j])` with a one-element 1-D constant index, or
- `Shape(y)` itself (every dim it returns),
and at least one part is not constant. Every dim entry landing at target position i must
be dim i of x: y is x and the dim index (normalized with the rank) is i, or y's dim and
x's dim i are the same symbol (same `dim_param`; symbols are trusted to name equal dims).
Then input 1 becomes a new int64 constant with 0 at those positions (or x's dim itself
where that is a static int, the value fold-shapes would give). The old Concat chain is
left to `eliminate-dead-code`. Never applied with allowzero=1.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import numpy as np

from lepton_ir import Graph, Node, Value
from lepton_ir.constants import constant_value
from lepton_ir.rewriter import Builder, Rewriter
from lepton_ir.shape_inference import refresh_shapes

from passes.base import Pass, PassContext, PassResult, register
from passes.rewrite import Match, RewritePass, Rule, failed, matched


@register
@dataclass(frozen=True)
class InferShapes(Pass):
    """Re-run ONNX shape inference; make value types more specific where it knows more."""

    name: ClassVar[str] = "infer-shapes"
    summary: ClassVar[str] = "re-run ONNX shape inference and refine value types (never graph inputs or int dims)"

    def run(self, graph: Graph, ctx: PassContext) -> PassResult:
        refined = refresh_shapes(graph)
        return PassResult(refined > 0, {"values_refined": refined} if refined else {})


# An entry of a Reshape target: ("const", value) or ("dim", y, k) for dim k (>= 0) of y.
_Entry = tuple[str, int] | tuple[str, Value, int]


class ReshapeTargetFromDims(Rule):
    """`Reshape(x, Concat(..dims of x..))` -> `Reshape(x, [0, .., -1])` (allowzero=0)."""

    name = "reshape_targets_folded"
    op_types = ("Reshape",)

    def check(self, node: Node, graph: Graph) -> Match:
        if len(node.inputs) < 2 or node.inputs[0] is None or node.inputs[1] is None:
            return failed("no shape input (opset < 5 Reshape)")
        if int(node.attr("allowzero", 0)) != 0:
            return failed("allowzero=1: a 0 in the target means a zero-sized dim, not a copy")
        x, s = node.inputs[0], node.inputs[1]
        if constant_value(graph, s) is not None:
            return failed("target is already constant")
        concat = s.producer
        if concat is None or concat.op_type != "Concat" or concat.domain:
            return failed("target is not produced by a Concat")
        if int(concat.attr("axis", 0)) not in (0, -1):
            return failed("Concat is not along axis 0")
        entries: list[_Entry] = []
        dynamic = False
        for p in concat.inputs:
            if p is None:
                return failed("Concat has an omitted input")
            got = _part_entries(graph, p)
            if isinstance(got, str):
                return failed(got)
            dynamic |= any(e[0] == "dim" for e in got)
            entries.extend(got)
        if not dynamic:
            return failed("every Concat part is constant (fold-constants' job)")
        target: list[int] = []
        for i, e in enumerate(entries):
            if e[0] == "const":
                target.append(e[1])
            elif _same_dim(x, i, e[1], e[2]):
                d = x.shape[i] if x.shape is not None and i < len(x.shape) else None
                target.append(d if isinstance(d, int) else 0)  # a static dim as itself, as fold-shapes would
            else:
                return failed(f"target entry {i} is dim {e[2]} of {e[1].name!r}, not provably dim {i} of the data input")
        return matched(target=np.array(target, dtype=np.int64))

    def rewrite(self, rw: Rewriter, node: Node, m: Match) -> None:
        assert node.graph is not None
        rw.set_input(node, 1, Builder(node.graph, node.name or "reshape").const(m["target"], "target"))


def _same_dim(x: Value, i: int, y: Value, k: int) -> bool:
    """Whether dim k of y is dim i of x."""
    if y is x and k == i:
        return True
    if x.shape is None or y.shape is None or i >= len(x.shape) or k >= len(y.shape):
        return False
    a, b = x.shape[i], y.shape[k]
    return isinstance(a, str) and bool(a) and a == b


def _part_entries(graph: Graph, p: Value) -> list[_Entry] | str:
    """The target entries one Concat part stands for, or the reason it is not understood."""
    arr = constant_value(graph, p)
    if arr is not None:
        if arr.dtype != np.int64 or arr.ndim != 1:
            return f"constant part {p.name!r} is not a 1-D int64 tensor"
        return [("const", int(v)) for v in arr]
    n = p.producer
    if n is None or n.domain:
        return f"part {p.name!r} is neither constant nor a dim of a Shape"
    if n.op_type == "Shape":
        dims = _shape_range(n)
        if dims is None:
            return f"part {p.name!r} is a Shape of unknown rank"
        return [("dim", n.inputs[0], k) for k in range(*dims)]
    if n.op_type == "Gather":  # Gather(Shape(y), [j])
        idx = constant_value(graph, n.inputs[1]) if len(n.inputs) > 1 else None
        if idx is None or idx.shape != (1,):
            return f"part {p.name!r} is a Gather whose index is not a constant 1-element 1-D tensor"
        return _gathered_dim(graph, n, idx.reshape(()))
    if n.op_type in ("Unsqueeze", "Reshape"):
        g = n.inputs[0].producer if n.inputs and n.inputs[0] is not None else None
        if g is None or g.op_type != "Gather" or g.domain:
            return f"part {p.name!r} is a {n.op_type} of something other than a Gather"
        if not _to_one_element(graph, n):
            return f"part {p.name!r}: the {n.op_type} does not make a 1-element 1-D tensor of a scalar"
        idx = constant_value(graph, g.inputs[1]) if len(g.inputs) > 1 else None
        if idx is None or idx.shape != ():
            return f"part {p.name!r}: the Gather index is not a constant scalar"
        return _gathered_dim(graph, g, idx)
    return f"part {p.name!r} is produced by {n.op_type}, not a constant or a dim of a Shape"


def _to_one_element(graph: Graph, n: Node) -> bool:
    """`Unsqueeze(s, axes=[0])` or `Reshape(s, [1])` (a scalar s to shape [1])."""
    if n.op_type == "Unsqueeze":
        if len(n.inputs) > 1 and n.inputs[1] is not None:
            axes = constant_value(graph, n.inputs[1])
            axes = None if axes is None else [int(a) for a in np.asarray(axes).reshape(-1)]
        else:
            axes = n.attr("axes")
            axes = None if axes is None else [int(a) for a in axes]
        return axes in ([0], [-1])
    shape = constant_value(graph, n.inputs[1]) if len(n.inputs) > 1 else None
    if shape is None or shape.dtype != np.int64:
        return False
    return [int(d) for d in shape.reshape(-1)] in ([1], [-1])


def _gathered_dim(graph: Graph, gather: Node, idx: np.ndarray) -> list[_Entry] | str:
    """The dim `Gather(Shape(y), idx)` picks (idx a scalar array), as a one-entry list."""
    if int(gather.attr("axis", 0)) not in (0, -1):
        return "the Gather is not along axis 0"
    if idx.dtype.kind not in "iu":
        return "the Gather index is not an integer"
    src = gather.inputs[0].producer if gather.inputs and gather.inputs[0] is not None else None
    if src is None or src.op_type != "Shape" or src.domain:
        return "the Gather does not read a Shape"
    j = int(idx)
    dims = _shape_range(src)
    if dims is None:  # rank unknown: only the plain Shape with a non-negative index is understood
        if j < 0 or "start" in src.attributes or "end" in src.attributes:
            return "the Gather picks from a Shape of unknown rank with a negative index or start/end"
        return [("dim", src.inputs[0], j)]
    start, end = dims
    n = end - start
    if not -n <= j < n:
        return f"the Gather index {j} is out of range for {n} dims"
    return [("dim", src.inputs[0], start + (j + n if j < 0 else j))]


def _shape_range(shape_node: Node) -> tuple[int, int] | None:
    """`(start, end)` dims of its input a `Shape` node returns; None when the rank is unknown."""
    x = shape_node.inputs[0] if shape_node.inputs else None
    if x is None or x.shape is None:
        return None
    rank = len(x.shape)

    def clamp(i: int) -> int:
        return min(max(i + rank if i < 0 else i, 0), rank)

    start = clamp(int(shape_node.attr("start", 0)))
    end = clamp(int(shape_node.attr("end", rank)))
    return start, max(start, end)


@register
@dataclass(frozen=True)
class FoldReshapeTargets(RewritePass):
    """Reshape targets built from the data input's own dims -> constants with 0 (copy) entries."""

    name: ClassVar[str] = "fold-reshape-targets"
    summary: ClassVar[str] = "rewrite Reshape(x, Concat(dims of x, consts)) to Reshape(x, const with 0 = copy dim)"
    rules: ClassVar[tuple[Rule, ...]] = (ReshapeTargetFromDims(),)
