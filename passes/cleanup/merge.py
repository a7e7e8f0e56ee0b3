"""Merge chains of layout ops: Transpose∘Transpose and Reshape-like∘Reshape.

Invariants:
- Rewrites are in place on the second node (it keeps its output `Value` and name), which
  then reads the first node's input directly. The first node stays while it has other
  readers or is a graph output, and is removed once the rewrite leaves it unused.
- A Transpose pair that composes to the identity is replaced by its input (`replace_value`,
  so graph-output names never change; when that is refused the pair is left alone).
- Nodes are visited in topological order and sweeps repeat until none applies, so a chain
  collapses even past a link that cannot be rewritten itself (idempotent).
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from typing import ClassVar

import numpy as np
import onnx

from lepton_ir.rewriter import Rewriter
from lepton_ir import Attr, Graph, Node, Value

from passes.base import PassContext, PassResult, register
from passes.rewrite import Match, Rule, RewritePass, constant_value, failed, matched, replace_value


def _producer(value: Value | None, op_types: tuple[str, ...]) -> Node | None:
    """The default-domain node producing `value` if its op type is one of `op_types`."""
    node = value.producer if value is not None else None
    if node is None or node.domain or node.op_type not in op_types or node.graph is None:
        return None
    return node


def _drop_if_dead(node: Node) -> None:
    """Remove `node` when none of its outputs is read or is a graph output."""
    g = node.graph
    if g is not None and all(not o.uses and not g.is_graph_output(o) for o in node.outputs):
        g.remove(node)


def compose_perms(p1: list[int], p2: list[int]) -> list[int]:
    """The perm of `Transpose(Transpose(x, p1), p2)`: out axis i is x axis p1[p2[i]]."""
    return [p1[j] for j in p2]


class ComposeTransposes(Rule):
    """`Transpose(Transpose(x, p1), p2)` -> `Transpose(x, p1∘p2)`, or `x` when that is the identity."""

    name: ClassVar[str] = "compose-transposes"
    op_types: ClassVar[tuple[str, ...]] = ("Transpose",)

    def check(self, node: Node, graph: Graph) -> Match:
        first = _producer(node.inputs[0], ("Transpose",))
        if first is None:
            return failed("input is not produced by a Transpose")
        x = first.inputs[0]
        assert x is not None
        p1, p2 = first.attr("perm"), node.attr("perm")
        if p1 is None and p2 is None:
            perm: list[int] = []  # reversed twice: the identity whatever the rank
        else:
            rank = len(p1 if p1 is not None else p2)  # a missing perm reverses the axes
            p1 = list(p1) if p1 is not None else list(reversed(range(rank)))
            p2 = list(p2) if p2 is not None else list(reversed(range(rank)))
            if len(p1) != len(p2):
                return failed(f"perm lengths differ ({len(p1)} vs {len(p2)})")
            perm = compose_perms(p1, p2)
        identity = perm == list(range(len(perm)))
        if identity:
            out = node.outputs[0]
            if graph.is_graph_output(out) and (
                x.producer is None or x.producer.graph is not graph or graph.is_graph_output(x)
            ):
                return failed(f"result is the input {x.name!r} but {out.name!r} is a graph output that cannot take it over")
        return matched(first=first, x=x, perm=perm, identity=identity)

    def rewrite(self, rw: Rewriter, node: Node, m: Match) -> None:
        graph = node.graph
        assert graph is not None
        first: Node = m["first"]
        if m["identity"]:
            ok = replace_value(graph, node.outputs[0], m["x"])
            assert ok
            graph.remove(node)
        else:
            node.replace_input(0, m["x"])
            node.attributes["perm"] = Attr(onnx.AttributeProto.INTS, list(m["perm"]))
        _drop_if_dead(first)


#: Ops whose output has the input's elements in the same order, only the shape differs.
RESHAPE_LIKE = ("Reshape", "Flatten", "Squeeze", "Unsqueeze")


class CollapseReshapes(Rule):
    """`Reshape(R(x, ...), s)` -> `Reshape(x, s')` for R in Reshape/Flatten/Squeeze/Unsqueeze.

    `s'` is `s` with `0` entries (copy-this-dim, allowzero=0) resolved from the
    intermediate's static shape, or from the first Reshape's constant shape.
    """

    name: ClassVar[str] = "collapse-reshapes"
    op_types: ClassVar[tuple[str, ...]] = ("Reshape",)

    def check(self, node: Node, graph: Graph) -> Match:
        first = _producer(node.inputs[0], RESHAPE_LIKE)
        if first is None:
            return failed("input is not produced by Reshape/Flatten/Squeeze/Unsqueeze")
        shape = constant_value(graph, node.inputs[1] if len(node.inputs) > 1 else None)
        if shape is None or shape.ndim != 1 or shape.dtype != np.int64:
            return failed("target shape is not a constant int64 vector")
        if node.attr("allowzero", 0) or not (shape == 0).any():
            return matched(first=first, shape=None)
        mid = node.inputs[0]
        assert mid is not None
        known = list(mid.shape) if mid.shape is not None else None
        s1 = constant_value(first.graph, first.inputs[1]) if first.op_type == "Reshape" and len(first.inputs) > 1 else None
        resolved = shape.copy()
        for i in np.flatnonzero(shape == 0):
            dim = known[i] if known is not None and i < len(known) else None
            if not isinstance(dim, int) and s1 is not None and s1.ndim == 1 and i < len(s1) and s1[i] > 0:
                dim = int(s1[i])
            if not isinstance(dim, int) or dim <= 0:
                return failed(f"target shape entry {i} is 0 and the intermediate's dim {i} is not a known positive size")
            resolved[i] = dim
        return matched(first=first, shape=resolved)

    def rewrite(self, rw: Rewriter, node: Node, m: Match) -> None:
        graph = node.graph
        assert graph is not None
        first: Node = m["first"]
        node.replace_input(0, first.inputs[0])
        if m["shape"] is not None:
            node.replace_input(1, graph.add_constant(m["shape"], "shape"))
        _drop_if_dead(first)


class _UntilStable(RewritePass):
    """Repeats the rule sweep until nothing applies; stats are summed over the sweeps."""

    def run(self, graph: Graph, ctx: PassContext) -> PassResult:
        total: Counter[str] = Counter()
        while (res := super().run(graph, ctx)).modified:
            total.update(res.stats)
        return PassResult(bool(total), dict(total))


@register
@dataclass(frozen=True)
class MergeTransposes(_UntilStable):
    """Compose consecutive Transposes into one (or none)."""

    name: ClassVar[str] = "merge-transposes"
    summary: ClassVar[str] = "compose Transpose(Transpose(x)) into one Transpose, or drop an identity pair"
    rules: ClassVar[tuple[Rule, ...]] = (ComposeTransposes(),)


@register
@dataclass(frozen=True)
class MergeReshapes(_UntilStable):
    """Collapse Reshape chains into the last Reshape."""

    name: ClassVar[str] = "merge-reshapes"
    summary: ClassVar[str] = "collapse Reshape/Flatten/Squeeze/Unsqueeze followed by Reshape into one Reshape"
    rules: ClassVar[tuple[Rule, ...]] = (CollapseReshapes(),)
