"""Declarative DAG patterns, written as the subgraph looks: `op.Relu(op.Add(op.Conv(x, w), b))`.

- `var("x")` matches any value (optionally one satisfying a predicate) and binds it; a name
  used twice must bind the same value (so `op.Mul(x, op.Sigmoid(x))` is SiLU).
- `const("w")` matches a compile-time constant (initializer or `Constant` output) and binds
  it; `m.const("w")` gives its array. A predicate can constrain the array.
- `op.Conv(x, w, ...)` matches a node of that op type whose inputs match in order; a trailing
  `...` lets the node have more (optional) inputs than the pattern names. `op["Add", "Sub"]`
  matches either op type. Keyword options: `name=` binds the node, `attrs={"k": value or
  predicate}`, `domain=`, `output=` (which output of the node the value must be), and
  `commute=` (default: true for commutative binary ops, which are then tried both ways).
- `Pattern(root, *others)` is a multi-output pattern: each other root is found among the
  readers of values the first root bound (e.g. three MatMuls sharing an input).

Matching is a backtracking search over every way commutative inputs can pair up. A failed
match keeps the deepest partial match's reason, so a rule that did not fire can say why.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from lepton_ir import Graph, Node, Value
from lepton_ir.constants import constant_value

COMMUTATIVE = frozenset({"Add", "Mul", "Max", "Min", "Sum", "Mean", "And", "Or", "Xor", "Equal"})


class Pat:
    """A pattern node: matches a value."""


@dataclass(frozen=True, eq=False)
class Var(Pat):
    name: str
    where: Callable[[Value], bool] | None = None


@dataclass(frozen=True, eq=False)
class Const(Pat):
    name: str
    where: Callable[[np.ndarray], bool] | None = None


@dataclass(frozen=True, eq=False)
class Op(Pat):
    op_types: tuple[str, ...]
    inputs: tuple[Pat | None, ...]
    more: bool = False
    name: str = ""
    attrs: Mapping[str, Any] = field(default_factory=dict)
    domain: str = ""
    output: int = 0
    commute: bool | None = None

    def commutes(self) -> bool:
        if self.commute is not None:
            return self.commute
        return len(self.inputs) == 2 and all(t in COMMUTATIVE for t in self.op_types)


def var(name: str, where: Callable[[Value], bool] | None = None) -> Var:
    return Var(name, where)


def const(name: str, where: Callable[[np.ndarray], bool] | None = None) -> Const:
    return Const(name, where)


class _OpFactory:
    """`op.Conv(...)`, `op["Add", "Sub"](...)`."""

    def __getattr__(self, op_type: str) -> Callable[..., Op]:
        if not op_type[:1].isupper():
            raise AttributeError(op_type)
        return self[op_type]

    def __getitem__(self, op_types: str | tuple[str, ...]) -> Callable[..., Op]:
        types = (op_types,) if isinstance(op_types, str) else tuple(op_types)

        def make(*inputs: Any, name: str = "", attrs: Mapping[str, Any] | None = None, domain: str = "",
                 output: int = 0, commute: bool | None = None) -> Op:
            more = bool(inputs) and inputs[-1] is Ellipsis
            pats = tuple(inputs[:-1] if more else inputs)
            return Op(types, pats, more, name, dict(attrs or {}), domain, output, commute)

        return make


op = _OpFactory()


class Pattern:
    """One or more roots; `match(node, graph)` anchors the first root's node at `node`."""

    def __init__(self, root: Op, *others: Op) -> None:
        self.roots = (root, *others)

    @property
    def anchor_ops(self) -> tuple[str, ...]:
        return self.roots[0].op_types

    @property
    def anchor_domain(self) -> str:
        return self.roots[0].domain

    def match(self, node: Node, graph: Graph) -> PatternMatch | Miss:
        """The first complete match anchored at `node`, else the deepest partial miss."""
        best = Miss(0, f"{node.op_type} {node.name!r} is not {'/'.join(self.roots[0].op_types)}")
        search = _Search(graph)
        for state in search.node(self.roots[0], node, _State()):
            for full in search.others(self.roots[1:], state):
                return PatternMatch(full.nodes, full.values, full.named, (node, *full.roots))
        return search.miss if search.miss.depth >= best.depth and search.miss.reason else best


@dataclass(frozen=True)
class Miss:
    """A failed match: how many pattern nodes matched before the failure, and why it failed."""

    depth: int
    reason: str

    def __bool__(self) -> bool:
        return False


@dataclass(frozen=True)
class PatternMatch:
    """A match: `nodes` (every matched node, each once), bound values and named nodes, and the
    root nodes in pattern order (`roots[0]` is the anchor)."""

    nodes: tuple[Node, ...]
    values: Mapping[str, Value]
    named: Mapping[str, Node]
    roots: tuple[Node, ...]

    def __bool__(self) -> bool:
        return True

    def __getitem__(self, key: str) -> Any:
        if key in self.values:
            return self.values[key]
        return self.named[key]

    def const(self, key: str) -> np.ndarray:
        """The array bound by `const(key)` (or a constant `var(key)`)."""
        v = self.values[key]
        graph = self.roots[0].graph
        assert graph is not None
        arr = constant_value(graph, v)
        assert arr is not None, f"{key} is not a constant"
        return arr


@dataclass(frozen=True)
class _State:
    nodes: tuple[Node, ...] = ()
    values: Mapping[str, Value] = field(default_factory=dict)
    named: Mapping[str, Node] = field(default_factory=dict)
    roots: tuple[Node, ...] = ()

    def bind(self, name: str, v: Value) -> _State | None:
        old = self.values.get(name)
        if old is not None:
            return self if old is v else None
        return _State(self.nodes, {**self.values, name: v}, self.named, self.roots)


class _Search:
    def __init__(self, graph: Graph) -> None:
        self.graph = graph
        self.miss = Miss(0, "")

    def fail(self, depth: int, reason: str) -> None:
        if depth > self.miss.depth or not self.miss.reason:  # the first of the deepest misses
            self.miss = Miss(depth, reason)

    def value(self, pat: Pat | None, v: Value | None, st: _State) -> Iterator[_State]:
        if pat is None:  # an omitted optional input in the pattern
            if v is None:
                yield st
            return
        if v is None:
            self.fail(len(st.nodes), "an input the pattern needs is omitted")
            return
        if isinstance(pat, Var):
            if pat.where is not None and not pat.where(v):
                self.fail(len(st.nodes), f"{v.name!r} does not satisfy the condition on {pat.name!r}")
                return
            nxt = st.bind(pat.name, v)
            if nxt is None:
                self.fail(len(st.nodes), f"{pat.name!r} must be one value, found {st.values[pat.name].name!r} and {v.name!r}")
                return
            yield nxt
            return
        if isinstance(pat, Const):
            arr = constant_value(self.graph, v)
            if arr is None:
                self.fail(len(st.nodes), f"{v.name!r} ({pat.name!r}) is not a constant")
                return
            if pat.where is not None and not pat.where(arr):
                self.fail(len(st.nodes), f"constant {v.name!r} ({pat.name!r}) does not satisfy the condition")
                return
            nxt = st.bind(pat.name, v)
            if nxt is not None:
                yield nxt
            return
        assert isinstance(pat, Op)
        p = v.producer
        if p is None or p.graph is not self.graph:
            self.fail(len(st.nodes), f"{v.name!r} is not computed by a node of this graph (expected {'/'.join(pat.op_types)})")
            return
        if v.output_index != pat.output:
            self.fail(len(st.nodes), f"{v.name!r} is output {v.output_index} of {p.name!r}, expected output {pat.output}")
            return
        yield from self.node(pat, p, st)

    def node(self, pat: Op, n: Node, st: _State) -> Iterator[_State]:
        depth = len(st.nodes)
        if n.op_type not in pat.op_types or n.domain != pat.domain:
            self.fail(depth, f"{n.name!r} is {n.op_type}, expected {'/'.join(pat.op_types)}")
            return
        if any(m is n for m in st.nodes):
            if pat.name and st.named.get(pat.name) is n:
                yield st
            else:
                self.fail(depth, f"{n.name!r} would be matched twice")
            return
        for key, want in pat.attrs.items():
            have = n.attr(key)
            ok = want(have) if callable(want) else have == want
            if not ok:
                self.fail(depth, f"{n.name!r} ({n.op_type}) has {key}={have!r}, the pattern needs {_describe(want)}")
                return
        ins = n.inputs
        count = len(pat.inputs)
        if len(ins) < count and not all(p is None for p in pat.inputs[len(ins):]) or (len(ins) > count and not pat.more
                                                                                         and any(v is not None for v in ins[count:])):
            self.fail(depth, f"{n.name!r} ({n.op_type}) has {len(ins)} inputs, the pattern names {count}")
            return
        named = {**st.named, pat.name: n} if pat.name else st.named
        base = _State((*st.nodes, n), st.values, named, st.roots)
        padded = list(ins[:count]) + [None] * (count - len(ins))
        orders = [tuple(range(count))]
        if pat.commutes():
            orders.append((1, 0))
        for order in orders:
            yield from self._inputs(pat, [padded[i] for i in order], 0, base)

    def _inputs(self, pat: Op, values: list[Value | None], i: int, st: _State) -> Iterator[_State]:
        if i == len(pat.inputs):
            yield st
            return
        for nxt in self.value(pat.inputs[i], values[i], st):
            yield from self._inputs(pat, values, i + 1, nxt)

    def others(self, roots: Sequence[Op], st: _State) -> Iterator[_State]:
        if not roots:
            yield st
            return
        first, rest = roots[0], roots[1:]
        tried: set[int] = set()
        for v in list(st.values.values()):
            for cand in v.users():
                if id(cand) in tried or cand.graph is not self.graph or any(cand is m for m in st.nodes):
                    continue
                tried.add(id(cand))
                for nxt in self.node(first, cand, st):
                    with_root = _State(nxt.nodes, nxt.values, nxt.named, (*nxt.roots, cand))
                    yield from self.others(rest, with_root)
        self.fail(len(st.nodes), f"no reader of the matched values is a {'/'.join(first.op_types)} that fits")


def _describe(want: Any) -> str:
    if callable(want):
        return getattr(want, "__doc__", None) or getattr(want, "__name__", "a condition")
    return repr(want)


def scalar(value: float, rtol: float = 0.0) -> Callable[[np.ndarray], bool]:
    """A constant predicate: every element equals `value` (within `rtol`)."""

    def check(arr: np.ndarray) -> bool:
        if arr.size == 0 or arr.dtype.kind not in "fiu":
            return False
        a = arr.astype(np.float64)
        return bool(np.all(np.abs(a - value) <= rtol * abs(value)))

    check.__doc__ = f"the constant {value}"
    return check


__all__ = ["COMMUTATIVE", "Const", "Miss", "Op", "Pat", "Pattern", "PatternMatch", "Var", "const", "op", "scalar", "var"]
