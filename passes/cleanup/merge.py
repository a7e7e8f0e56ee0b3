"""Merge chains of layout ops: Transpose∘Transpose and Reshape-like∘Reshape.

Invariants:
- Rewrites are in place on the second node (it keeps its output `Value` and name; its input
  and attributes change through the `Rewriter`), which then reads the first node's input
  directly. The first node stays while it has other readers or is a graph output, and is
  erased once the rewrite leaves it unused. The first node may be in an enclosing graph (a
  subgraph's node reading a captured value), which is why these are plain rules and not
  `PatternRule`s: a pattern matches inside one graph and replaces its intermediate nodes,
  where these rules must also fire when the first node has other readers.
- A Transpose pair that composes to the identity is replaced by its input through the
  `Rewriter`, so graph-output names never change; when the input cannot take over an output
  name the pair is left alone (never traded for an Identity).
- The worklist driver revisits the nodes a rewrite touched, so a chain collapses in one run,
  even past a link that cannot be rewritten itself (idempotent).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import numpy as np

from lepton_ir import Graph, Node, Value
from lepton_ir.constants import constant_value
from lepton_ir.rewriter import Builder, Rewriter, replace_uses_problem

from passes.base import register
from passes.rewrite import Match, RewritePass, Rule, failed, matched


def _producer(value: Value | None, op_types: tuple[str, ...]) -> Node | None:
    """The default-domain node producing `value` if its op type is one of `op_types`."""
    node = value.producer if value is not None else None
    if node is None or node.domain or node.op_type not in op_types or node.graph is None:
        return None
    return node


def _erase_if_dead(rw: Rewriter, node: Node) -> None:
    """Erase `node` when none of its outputs is read or is a graph output."""
    if node.graph is not None and not any(o.is_used() for o in node.outputs):
        rw.erase(node)


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
            if replace_uses_problem(out, x, allow_identity=False) is not None:
                return failed(f"result is the input {x.name!r} but {out.name!r} is a graph output that cannot take it over")
        return matched(first=first, x=x, perm=perm, identity=identity)

    def rewrite(self, rw: Rewriter, node: Node, m: Match) -> None:
        first: Node = m["first"]
        if m["identity"]:
            rw.replace([node], [], {node.outputs[0]: m["x"]})
        else:
            rw.set_input(node, 0, m["x"])
            rw.set_attribute(node, "perm", list(m["perm"]))
        _erase_if_dead(rw, first)


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
        assert node.graph is not None
        first: Node = m["first"]
        rw.set_input(node, 0, first.inputs[0])
        if m["shape"] is not None:
            rw.set_input(node, 1, Builder(node.graph, node.name or "reshape").const(m["shape"], "shape"))
        _erase_if_dead(rw, first)


@register
@dataclass(frozen=True)
class MergeTransposes(RewritePass):
    """Compose consecutive Transposes into one (or none)."""

    name: ClassVar[str] = "merge-transposes"
    summary: ClassVar[str] = "compose Transpose(Transpose(x)) into one Transpose, or drop an identity pair"
    rules: ClassVar[tuple[Rule, ...]] = (ComposeTransposes(),)


@register
@dataclass(frozen=True)
class MergeReshapes(RewritePass):
    """Collapse Reshape chains into the last Reshape."""

    name: ClassVar[str] = "merge-reshapes"
    summary: ClassVar[str] = "collapse Reshape/Flatten/Squeeze/Unsqueeze followed by Reshape into one Reshape"
    rules: ClassVar[tuple[Rule, ...]] = (CollapseReshapes(),)
