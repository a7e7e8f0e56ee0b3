"""Rewrite-rule engine and the small graph-edit helpers every pass shares.

A `Rule` is pattern (op types) / check / rewrite. `check` returns a `Match` that carries a
reason when it fails and the bindings the rewrite needs when it succeeds; a rule holds no
state between the two. `RewritePass` applies its rules to every node of every (sub)graph.
Dead nodes left behind are removed by the `eliminate-dead-code` pass, not by rules.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, ClassVar

import numpy as np

from lepton_ir import Graph, Node, Value

from passes.base import Pass, PassContext, PassResult


@dataclass(frozen=True)
class Match:
    """Result of `Rule.check`: truthy on success (with `bindings`), falsy with a `reason`."""

    ok: bool
    reason: str = ""
    bindings: Mapping[str, Any] = field(default_factory=dict)

    def __bool__(self) -> bool:
        return self.ok

    def __getitem__(self, key: str) -> Any:
        return self.bindings[key]


def matched(**bindings: Any) -> Match:
    return Match(True, "", bindings)


def failed(reason: str) -> Match:
    return Match(False, reason)


class Rule:
    """One rewrite: applies to nodes whose op type is in `op_types` (default domain)."""

    name: ClassVar[str]
    op_types: ClassVar[tuple[str, ...]]

    def check(self, node: Node, graph: Graph) -> Match:
        raise NotImplementedError

    def rewrite(self, node: Node, graph: Graph, m: Match) -> None:
        raise NotImplementedError


class RewritePass(Pass):
    """Applies `rules` to every node (subgraphs included); counts applications per rule."""

    rules: ClassVar[tuple[Rule, ...]] = ()

    def run(self, graph: Graph, ctx: PassContext) -> PassResult:
        by_op: dict[str, list[Rule]] = {}
        for rule in self.rules:
            for op in rule.op_types:
                by_op.setdefault(op, []).append(rule)
        stats: Counter[str] = Counter()
        for g in list(graph.all_graphs()):
            for node in g:
                if node.domain or node.graph is None:
                    continue
                for rule in by_op.get(node.op_type, ()):
                    m = rule.check(node, g)
                    if m:
                        rule.rewrite(node, g, m)
                        stats[rule.name] += 1
                        break
        return PassResult(bool(stats), dict(stats))

    def explain(self, graph: Graph) -> list[tuple[str, str, str]]:
        """`(node, rule, reason)` for every rule that was considered and did not match."""
        out = []
        for g in graph.all_graphs():
            for node in g:
                for rule in self.rules:
                    if node.op_type in rule.op_types and not node.domain:
                        m = rule.check(node, g)
                        if not m:
                            out.append((node.name, rule.name, m.reason))
        return out


# ----- shared helpers ------------------------------------------------------------------


def constant_value(graph: Graph, value: Value | None) -> np.ndarray | None:
    """The value's array if it is a compile-time constant: an initializer that is not an
    overridable graph input (in `graph` or an enclosing graph), or a `Constant` node's output."""
    if value is None:
        return None
    if value.const_value is not None:
        g: Graph | None = graph
        while g is not None:
            if g.is_graph_input(value):
                return None
            g = g.parent.graph if g.parent is not None else None
        return value.const_value.numpy()
    node = value.producer
    if node is not None and node.op_type == "Constant" and not node.domain:
        return constant_node_value(node)
    return None


def constant_node_value(node: Node) -> np.ndarray | None:
    """The value of a `Constant` node (any of its attribute forms; sparse not handled)."""
    for key, a in node.attributes.items():
        if key == "value":
            return a.value.numpy()
        if key == "value_float":
            return np.array(a.value, dtype=np.float32)
        if key == "value_floats":
            return np.array(a.value, dtype=np.float32)
        if key == "value_int":
            return np.array(a.value, dtype=np.int64)
        if key == "value_ints":
            return np.array(a.value, dtype=np.int64)
    return None


def is_constant(graph: Graph, value: Value | None) -> bool:
    return constant_value(graph, value) is not None


def static_shape(v: Value | None) -> tuple[int, ...] | None:
    """`v`'s shape when every dim is a known int, else None."""
    if v is None or v.shape is None or not all(isinstance(d, int) for d in v.shape):
        return None
    return tuple(v.shape)  # type: ignore[arg-type]


def can_replace_value(graph: Graph, old: Value, new: Value) -> bool:
    """Whether `replace_value(graph, old, new)` would succeed."""
    if old is new or not graph.is_graph_output(old):
        return True
    return new.producer is not None and new.producer.graph is graph and not graph.is_graph_output(new)


def replace_value(graph: Graph, old: Value, new: Value) -> bool:
    """Make every reader of `old` read `new`; keep graph-output names stable.

    When `old` is an output of `graph`, `new` takes over its slot and its name — possible
    only if `new` is a node output that is not itself a graph input, initializer or
    output. Returns False (graph untouched) when that is not possible.
    """
    if not can_replace_value(graph, old, new):
        return False
    if old is not new and graph.is_graph_output(old):
        old_name = old.name
        old.name = graph.fresh_name(old_name + "_replaced")
        new.name = old_name
        if new.dtype is None:
            new.dtype = old.dtype
        if new.shape is None:
            new.shape = old.shape
        graph.outputs = [new if v is old else v for v in graph.outputs]
    old.replace_all_uses_with(new)
    return True


def replace_node_output(graph: Graph, node: Node, new: Value) -> bool:
    """Replace `node`'s single output by `new` and remove `node` when that succeeds."""
    if not replace_value(graph, node.outputs[0], new):
        return False
    graph.remove(node)
    return True
