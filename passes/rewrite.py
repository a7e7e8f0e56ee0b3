"""Rewrite-rule engine: rules, pattern rules, and the worklist driver.

A `Rule` is pattern / check / rewrite. `check` returns a `Match` that carries a reason when it
fails and the bindings the rewrite needs when it succeeds; a rule holds no state between the
two. `rewrite` edits the graph only through the `Rewriter` it is given. A `PatternRule` is
declared as a DAG pattern (`passes.pattern`) plus an optional `condition` and a `build` that
makes the replacement with a `Builder`; the engine checks the swap is safe (an intermediate
read outside the match, or a graph output, blocks it) before it fires.

`RewritePass` drives its rules with a worklist: every node of every (sub)graph once, then the
nodes a rewrite inserted or modified, and the producers of what it erased, until nothing
changes; so a pass reaches its own fixed point without a loop of its own. Per-rule counts
(tried, matched, seconds) go into the pass result. Dead nodes are removed by the
`eliminate-dead-code` pass, not by rules.
"""

from __future__ import annotations

import time
from collections import Counter, deque
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar

from lepton_ir import Graph, InternalError, Node, UserError, Value
from lepton_ir.rewriter import Builder, Event, Rewriter, replace_problem

from passes.base import Pass, PassContext, PassResult, RuleStats
from passes.pattern import Pattern, PatternMatch


@dataclass(frozen=True)
class Match:
    """Result of `Rule.check`: truthy on success (with `bindings`), falsy with a `reason`.

    `depth` is how many pattern nodes matched before a pattern rule failed (its closest partial match)."""

    ok: bool
    reason: str = ""
    bindings: Mapping[str, Any] = field(default_factory=dict)
    depth: int = 0

    def __bool__(self) -> bool:
        return self.ok

    def __getitem__(self, key: str) -> Any:
        return self.bindings[key]


def matched(**bindings: Any) -> Match:
    return Match(True, "", bindings)


def failed(reason: str, depth: int = 0) -> Match:
    return Match(False, reason, depth=depth)


class Rule:
    """One rewrite: applies to nodes of `domain` whose op type is in `op_types`."""

    name: ClassVar[str]
    op_types: ClassVar[tuple[str, ...]]
    domain: ClassVar[str] = ""

    def check(self, node: Node, graph: Graph) -> Match:
        raise NotImplementedError

    def rewrite(self, rw: Rewriter, node: Node, m: Match) -> None:
        raise NotImplementedError


class PatternRule(Rule):
    """A rule declared as a `Pattern`: `build` returns the values that replace the roots' outputs.

    Subclasses set `pattern` and `build`, optionally `condition` (checks beyond the pattern:
    shapes, dtypes, constant contents). `build` gets a `Builder` whose nodes become the
    replacement; it returns one value per pattern root (the value replacing the root's
    matched output), and may return None for "cannot rewrite after all" only if it built nothing.
    """

    pattern: ClassVar[Pattern]

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        if "pattern" in cls.__dict__:
            cls.op_types = cls.pattern.anchor_ops
            cls.domain = cls.pattern.anchor_domain

    def condition(self, pm: PatternMatch, graph: Graph) -> Match:
        return matched()

    def build(self, b: Builder, pm: PatternMatch, m: Match) -> Sequence[Value]:
        raise NotImplementedError

    def check(self, node: Node, graph: Graph) -> Match:
        pm = self.pattern.match(node, graph)
        if not isinstance(pm, PatternMatch):
            return failed(pm.reason, pm.depth)
        m = self.condition(pm, graph)
        if not m:
            return failed(m.reason, len(pm.nodes))
        problem = replace_problem(pm.nodes, {out: out for out in _root_outputs(self.pattern, pm)}, ignore_targets=True)
        if problem is not None:
            return failed(problem, len(pm.nodes))
        return Match(True, "", {**m.bindings, "pattern": pm})

    def rewrite(self, rw: Rewriter, node: Node, m: Match) -> None:
        pm: PatternMatch = m["pattern"]
        assert node.graph is not None
        b = Builder(node.graph, node.name or node.op_type.lower())
        results = self.build(b, pm, m)
        value_map = dict(zip(_root_outputs(self.pattern, pm), results, strict=True))
        rw.replace(pm.nodes, b.nodes, value_map)


def _root_outputs(pattern: Pattern, pm: PatternMatch) -> list[Value]:
    return [root.outputs[p.output] for p, root in zip(pattern.roots, pm.roots, strict=True)]


class RewritePass(Pass):
    """Applies `rules` with a worklist over every node (subgraphs included) to a local fixed point.

    Invariant: when `run` returns, no rule matches any node (up to `max_rewrites`, a guard
    against rules that undo each other, which raises `InternalError` naming the busiest rules)."""

    rules: ClassVar[tuple[Rule, ...]] = ()
    max_rewrites_per_node: ClassVar[int] = 16

    def run(self, graph: Graph, ctx: PassContext) -> PassResult:
        by_op: dict[tuple[str, str], list[Rule]] = {}
        for rule in self.rules:
            for op in rule.op_types:
                by_op.setdefault((rule.domain, op), []).append(rule)
        work: deque[Node] = deque()
        queued: set[int] = set()

        def push(node: Node) -> None:
            if id(node) not in queued and (node.domain, node.op_type) in by_op:
                queued.add(id(node))
                work.append(node)

        def on_event(event: Event, node: Node) -> None:
            if event is Event.ERASE:
                for v in node.inputs:  # a producer whose reader went away may match now
                    if v is not None and v.producer is not None:
                        push(v.producer)
                return
            push(node)
            for sub in node.subgraphs():
                for inner in sub.all_nodes():
                    push(inner)

        for g in list(graph.all_graphs()):
            for node in g:
                push(node)
        rw = Rewriter(on_event)
        tried: Counter[str] = Counter()
        fired: Counter[str] = Counter()
        seconds: Counter[str] = Counter()
        budget = self.max_rewrites_per_node * (len(work) + 1)
        while work:
            node = work.popleft()
            queued.discard(id(node))
            g = node.graph
            if g is None:
                continue
            for rule in by_op[(node.domain, node.op_type)]:
                start = time.perf_counter()
                tried[rule.name] += 1
                m = rule.check(node, g)
                if m:
                    rule.rewrite(rw, node, m)
                    fired[rule.name] += 1
                seconds[rule.name] += time.perf_counter() - start
                if m:
                    break
            if sum(fired.values()) > budget:
                busiest = ", ".join(f"{k} x{v}" for k, v in fired.most_common(3))
                raise InternalError(f"{self.name}: rules keep rewriting each other's output ({busiest}); "
                                    "a rule pair undoes itself")
        rules = {r.name: RuleStats(tried[r.name], fired[r.name], seconds[r.name]) for r in self.rules if tried[r.name]}
        return PassResult(bool(fired), {k: v for k, v in fired.items()}, rules)

    def explain(self, graph: Graph) -> list[tuple[str, str, str]]:
        """`(node, rule, reason)` for every rule that was considered and did not match."""
        out = []
        for g in graph.all_graphs():
            for node in g:
                for rule in self.rules:
                    if node.op_type in rule.op_types and node.domain == rule.domain:
                        m = rule.check(node, g)
                        if not m:
                            out.append((node.name, rule.name, m.reason))
        return out

    def closest(self, graph: Graph, rule_name: str) -> tuple[str, str] | None:
        """For a rule that fires nowhere: `(node, reason)` of its closest partial match (most
        pattern nodes matched), or None when it matches somewhere or has no candidate node."""
        rule = next(r for r in self.rules if r.name == rule_name)
        best: tuple[int, str, str] | None = None
        for g in graph.all_graphs():
            for node in g:
                if node.op_type in rule.op_types and node.domain == rule.domain:
                    m = rule.check(node, g)
                    if m:
                        return None
                    if best is None or m.depth > best[0]:
                        best = (m.depth, node.name, m.reason)
        return None if best is None else (best[1], best[2])


def rule_owner(passes: Sequence[Pass], rule_name: str) -> RewritePass:
    """The pass of `passes` whose rules include `rule_name`; `UserError` listing the known rules otherwise."""
    for p in passes:
        if isinstance(p, RewritePass) and any(r.name == rule_name for r in p.rules):
            return p
    known = sorted(r.name for p in passes if isinstance(p, RewritePass) for r in p.rules)
    raise UserError(f"no pass of the pipeline has a rule named {rule_name!r}; its rules: {', '.join(known) or 'none'}")


# ----- shared helpers ------------------------------------------------------------------


def static_shape(v: Value | None) -> tuple[int, ...] | None:
    """`v`'s shape when every dim is a known int, else None."""
    if v is None or v.shape is None or not all(isinstance(d, int) for d in v.shape):
        return None
    return tuple(v.shape)  # type: ignore[arg-type]
