"""The one graph-edit API: a `Rewriter` that passes change the IR through, and a typed `Builder`.

Every edit a pass makes goes through a `Rewriter`, which keeps these invariants:
- Graph outputs are uses. A value that a graph (this one or a nested one capturing it) lists as
  an output is never left dangling: `replace_uses` moves the output slot to the new value, and
  the output keeps its name (the new value takes it, or an `Identity` carries it when the new
  value cannot be renamed: a graph input, an initializer, or already another output).
- `replace` swaps a set of nodes for new ones through a value map, or refuses with a reason
  and leaves the graph untouched: every output of a replaced node that is read outside the set
  (by another node or as a graph output) must be mapped. New values take over the names,
  dtypes and shapes of the values they replace where they have none of their own.
- Nodes built by a `Builder` but never inserted leave no uses behind (`lepton_ir.core`).
- Each insertion, modification and erasure is reported to the listener as an `Event`, which
  is how the rewrite driver's worklist revisits what a rewrite touched.
"""

from __future__ import annotations

import enum
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

import numpy as np
import onnx

from lepton_ir.core import Attr, Graph, Node, Value
from lepton_ir.errors import IRError
from lepton_ir.tensor import Tensor
from lepton_ir.types import Shape, np_to_onnx_dtype

T = onnx.TensorProto


class Event(enum.Enum):
    """What happened to a node: inserted, modified (an input or attribute changed), or erased."""

    INSERT = "insert"
    MODIFY = "modify"
    ERASE = "erase"


Listener = Callable[[Event, Node], None]


class RewriteRefused(IRError):
    """`Rewriter.replace` cannot make the edit safely; the graph is unchanged. The message says why."""


class Rewriter:
    """Edits graphs and reports each edit to `listener` (called before an erasure, after the rest)."""

    def __init__(self, listener: Listener | None = None) -> None:
        self.listener = listener

    def _emit(self, event: Event, node: Node) -> None:
        if self.listener is not None:
            self.listener(event, node)

    # ----- single edits -------------------------------------------------------------------
    def insert_before(self, anchor: Node, nodes: Node | Sequence[Node]) -> None:
        """Insert `nodes` (in order) just before `anchor`, in `anchor`'s graph."""
        assert anchor.graph is not None
        batch = [nodes] if isinstance(nodes, Node) else list(nodes)
        anchor.graph.insert_before(anchor, batch)
        for n in batch:
            self._emit(Event.INSERT, n)

    def insert_after(self, anchor: Node, nodes: Node | Sequence[Node]) -> None:
        """Insert `nodes` (in order) just after `anchor`, in `anchor`'s graph."""
        assert anchor.graph is not None
        batch = [nodes] if isinstance(nodes, Node) else list(nodes)
        anchor.graph.insert_after(anchor, batch)
        for n in batch:
            self._emit(Event.INSERT, n)

    def append(self, graph: Graph, nodes: Node | Sequence[Node]) -> None:
        """Append `nodes` (in order) at the end of `graph`."""
        batch = [nodes] if isinstance(nodes, Node) else list(nodes)
        graph.extend(batch)
        for n in batch:
            self._emit(Event.INSERT, n)

    def set_input(self, node: Node, index: int, value: Value | None) -> None:
        """Point input `index` of `node` at `value`."""
        if node.inputs[index] is value:
            return
        node.replace_input(index, value)
        self._emit(Event.MODIFY, node)

    def set_inputs(self, node: Node, values: Sequence[Value | None]) -> None:
        """Replace `node`'s whole input list."""
        node.set_inputs(values)
        self._emit(Event.MODIFY, node)

    def set_attribute(self, node: Node, name: str, value: Any) -> None:
        """Set (or, with `value=None`, delete) attribute `name` of `node`."""
        if value is None:
            node.attributes.pop(name, None)
        else:
            node.attributes[name] = Attr.infer(value)
        self._emit(Event.MODIFY, node)

    def erase(self, node: Node) -> None:
        """Remove `node`; refuses (IRError, graph untouched) while an output is read or is a graph output.

        Values its subgraphs read or return from enclosing graphs lose those uses (`Graph.remove`)."""
        assert node.graph is not None
        for out in node.outputs:
            if out.is_used():
                where = ", ".join(repr(n.name) for n in out.users()) or f"graph {out.graph_outputs[0].name!r}"
                raise IRError(f"cannot erase node {node.name!r}: output {out.name!r} is still used by {where}")
        self._emit(Event.ERASE, node)
        node.graph.remove(node)

    def can_replace_uses(self, old: Value, new: Value, *, allow_identity: bool = True) -> str | None:
        """Why `replace_uses(old, new)` would be wrong, or None (see `replace_uses_problem`)."""
        return replace_uses_problem(old, new, allow_identity=allow_identity)

    def replace_uses(self, old: Value, new: Value, *, keep: Node | None = None) -> None:
        """Make every reader of `old` read `new`, graph-output slots included (names kept stable).

        A graph input listed as a graph output stays that output (it passes through; renaming it
        would change the model's signature).

        `keep` (typically the node computing `new` from `old`, inserted after it) goes on reading `old`."""
        if old is new:
            return
        if new.dtype is None:
            new.dtype = old.dtype
        if new.shape is None:
            new.shape = old.shape
        users = [u for u in old.users() if u is not keep]
        for u, i in list(old.uses):
            if u is not keep:
                u.replace_input(i, new)
        for u in users:
            self._emit(Event.MODIFY, u)
        if old.producer is None and old.const_value is None:
            return  # a graph input that is also an output passes through: its name is the signature's
        name = old.name
        named = False  # whether `name` has been handed on (a value of several graphs' outputs keeps it once)

        def home(g: Graph) -> bool:
            return new.producer is not None and new.producer.graph is g

        # `new`'s own graph first (it takes the name there), then the main graph (whose names callers see)
        graphs = dict.fromkeys(old.graph_outputs)  # a graph listing `old` twice is handled once
        for g in sorted(graphs, key=lambda g: (not home(g), g.parent is not None)):
            if old.name == name:
                old.name = g.fresh_name(f"{name}_replaced")
            if not named and home(g) and not new.graph_outputs:
                new.name = name  # `new` takes over the slot and the name
                named = True
                g.outputs = [new if v is old else v for v in g.outputs]
                continue
            # `new` cannot be renamed (a graph input, an initializer, another output, or a value
            # of an outer graph, which ONNX does not let a subgraph return): an Identity carries the name
            carry = Value(name if not named else g.fresh_name(name), new.dtype, new.shape)
            named = True
            node = Node("", "Identity", [new], outputs=[carry], name=g.fresh_name(f"{name}_identity"))
            self.append(g, node)
            g.outputs = [carry if v is old else v for v in g.outputs]

    def erase_initializer(self, graph: Graph, value: Value) -> None:
        """Drop initializer `value` from `graph`; refuses (IRError, graph untouched) while it is read,
        is a graph output, or is an (overridable) input of `graph`."""
        if graph.initializers.get(value.name) is not value:
            raise IRError(f"{value.name!r} is not an initializer of graph {graph.name!r}")
        if value.is_used():
            where = ", ".join(repr(n.name) for n in value.users()) or f"graph {value.graph_outputs[0].name!r}"
            raise IRError(f"cannot erase initializer {value.name!r}: it is still used by {where}")
        if graph.is_graph_input(value):
            raise IRError(f"cannot erase initializer {value.name!r}: it is an input of graph {graph.name!r}")
        del graph.initializers[value.name]

    # ----- the structural edit ------------------------------------------------------------
    def check_replace(self, old_nodes: Sequence[Node], value_map: Mapping[Value, Value | None],
                      new_nodes: Sequence[Node] = ()) -> str | None:
        """Why `replace(old_nodes, new_nodes, value_map)` would be unsafe, or None when it is safe."""
        return replace_problem(old_nodes, value_map, new_nodes)

    def replace(self, old_nodes: Sequence[Node], new_nodes: Sequence[Node],
                value_map: Mapping[Value, Value | None], *, inherit: bool = False) -> None:
        """Replace `old_nodes` (one graph) by `new_nodes`: each `old -> new` of `value_map` takes
        over the old value's readers and graph-output slots; then the old nodes are erased.

        New nodes are inserted just before the last old node in graph order; the graph is
        re-sorted only when a mapped value has readers between the first and the last old node.
        With `inherit`, each mapped value computed by `new_nodes` becomes the old value in all
        but identity: it takes the old value's dtype and shape where those are known (over its
        own) and its name, graph output or not (a lowering that expands one node keeps the
        node's output names; a value mapped from several old ones takes the first one's name).
        Raises `RewriteRefused` (graph untouched) when `check_replace` finds the edit unsafe.
        """
        reason = self.check_replace(old_nodes, value_map, new_nodes)
        if reason is not None:
            raise RewriteRefused(reason)
        g = old_nodes[0].graph
        assert g is not None
        span = _span(g, old_nodes)
        self.insert_before(span[-1], list(new_nodes))
        in_span = {id(n) for n in span}
        fresh = {id(o) for n in new_nodes for o in n.outputs}
        names = {id(old): old.name for old in value_map}
        if inherit:
            for old, new in value_map.items():
                if new is not None and id(new) in fresh:
                    new.dtype = old.dtype if old.dtype is not None else new.dtype
                    new.shape = old.shape if old.shape is not None else new.shape
        resort = False
        for old, new in value_map.items():
            if new is None or new is old:
                continue
            if id(new) in fresh and any(id(_ancestor_in(g, u)) in in_span for u in old.users()):
                resort = True  # a reader between the first and the last old node now reads a later node
            self.replace_uses(old, new)
        doomed = {id(n) for n in old_nodes}
        for n in reversed(span):
            if id(n) in doomed:
                self.erase(n)
        if inherit:
            renamed: set[int] = set()
            for old, new in value_map.items():
                name = names[id(old)]
                if new is None or id(new) not in fresh or id(new) in renamed or not name:
                    continue
                renamed.add(id(new))
                if new.name != name and old.name == name:  # not handed on with a graph-output slot
                    old.name = g.fresh_name(f"{name}_replaced")
                    new.name = name
        if resort:
            g.sort()


class Builder:
    """Builds typed nodes for one graph, named after `prefix`; `nodes` are the ones built, in order.

    `b.op("Add", [x, y])` or `b.Add(x, y)` returns the new output `Value` (a tuple when
    `num_outputs > 1`). The output dtype is `dtype` when given, else inferred: fixed for ops
    that always produce one type (comparisons → bool, Shape → int64), `to` for Cast, the
    second input's for CastLike; then the builder's `dtype` when it has one (a lowering that
    computes in one type), else the branches' for Where and otherwise the first typed input's.
    Shapes are `shape` or unknown.
    """

    _BOOL = frozenset({"Equal", "Less", "Greater", "LessOrEqual", "GreaterOrEqual", "Not", "And", "Or", "Xor",
                       "IsNaN", "IsInf"})
    _INT64 = frozenset({"Shape", "Size", "ArgMax", "ArgMin", "NonZero"})

    def __init__(self, graph: Graph, prefix: str, *, dtype: int | None = None) -> None:
        self.graph = graph
        self.prefix = prefix
        self.dtype = dtype
        self.nodes: list[Node] = []

    def op(self, op_type: str, inputs: Sequence[Value | None], attrs: Mapping[str, Any] | None = None, *,
           domain: str = "", dtype: int | None = None, shape: Shape = None, num_outputs: int = 1,
           dtypes: Sequence[int | None] | None = None, shapes: Sequence[Shape] | None = None) -> Any:
        """A new `op_type` node reading `inputs`; returns its output (or outputs)."""
        attrs = dict(attrs or {})
        g = self.graph
        outs = []
        for i in range(num_outputs):
            dt = dtypes[i] if dtypes is not None else dtype if dtype is not None else \
                self._infer(op_type, inputs, attrs, self.dtype)
            sh = shapes[i] if shapes is not None else shape
            outs.append(Value(g.fresh_name(f"{self.prefix}_{op_type.lower()}"), dt, None if sh is None else tuple(sh)))
        node = Node(domain, op_type, list(inputs), attrs, outputs=outs, name=g.fresh_name(f"{self.prefix}_{op_type}"))
        self.nodes.append(node)
        return outs[0] if num_outputs == 1 else tuple(outs)

    def __getattr__(self, op_type: str) -> Callable[..., Any]:
        if not op_type[:1].isupper():
            raise AttributeError(op_type)

        def build(*inputs: Value | None, dtype: int | None = None, shape: Shape = None, **attrs: Any) -> Any:
            return self.op(op_type, inputs, attrs, dtype=dtype, shape=shape)

        return build

    def const(self, array: Any, name: str = "c", dtype: np.dtype | type | None = None) -> Value:
        """A new initializer of the graph holding `array` (removed by dead-code elimination if unused)."""
        arr = np.asarray(array, dtype=dtype)
        return self.graph.add_constant(arr, f"{self.prefix}_{name}")

    def tensor(self, t: Tensor, name: str = "c") -> Value:
        """A new initializer sharing the immutable tensor `t` (no copy)."""
        v = Value(self.graph.fresh_name(f"{self.prefix}_{name}"), t.dtype, t.shape, const_value=t)
        return self.graph.add_initializer(v)

    @classmethod
    def _infer(cls, op_type: str, inputs: Sequence[Value | None], attrs: Mapping[str, Any],
               default: int | None = None) -> int | None:
        if op_type in cls._BOOL:
            return T.BOOL
        if op_type in cls._INT64:
            return T.INT64
        if op_type == "Cast":
            to = attrs.get("to")
            return int(to.value if isinstance(to, Attr) else to) if to is not None else None
        if op_type == "CastLike" and len(inputs) > 1 and inputs[1] is not None:
            return inputs[1].dtype
        if op_type == "Constant":
            v = attrs.get("value")
            v = v.value if isinstance(v, Attr) else v
            if isinstance(v, Tensor):
                return v.dtype
            if isinstance(v, np.ndarray):
                return np_to_onnx_dtype(v.dtype)
            return None
        if default is not None:
            return default
        if op_type == "Where":  # the condition is bool; the branches carry the type
            return next((v.dtype for v in inputs[1:] if v is not None and v.dtype is not None), None)
        return next((v.dtype for v in inputs if v is not None and v.dtype is not None), None)


# ----- helpers ------------------------------------------------------------------------------


def replace_uses_problem(old: Value, new: Value, *, allow_identity: bool = True) -> str | None:
    """Why `Rewriter.replace_uses(old, new)` would be wrong, or None.

    Wrong: `new` is computed from `old` (a cycle). With `allow_identity=False` also when a
    graph-output slot of `old` would need an `Identity` to carry its name because `new` cannot
    take the name over (a graph input, an initializer, already a graph output, a value of
    another graph, or `old` is an output of more than one graph): rules whose point is to
    remove a node ask this way, so they never trade the node for an Identity.
    """
    if old is new:
        return None
    for user in old.users():
        if new.producer is user:
            return f"{new.name!r} is computed from {old.name!r} by {user.name!r} (a cycle)"
    if allow_identity or (old.producer is None and old.const_value is None):
        return None  # a graph input keeps its output slots (`replace_uses`): no Identity either
    graphs = list(dict.fromkeys(old.graph_outputs))
    if len(graphs) > 1:
        return f"{old.name!r} is an output of {len(graphs)} graphs; {new.name!r} can take over the name in one only"
    if graphs and not (new.producer is not None and new.producer.graph is graphs[0] and not new.graph_outputs):
        return (f"{old.name!r} is an output of graph {graphs[0].name!r} and {new.name!r} cannot take over its name "
                "(a graph input, an initializer, another output or a value of another graph)")
    return None


def replace_problem(old_nodes: Sequence[Node], value_map: Mapping[Value, Value | None], new_nodes: Sequence[Node] = (),
                    *, ignore_targets: bool = False) -> str | None:
    """Why replacing `old_nodes` through `value_map` would be unsafe, or None.

    Unsafe: the nodes are not all in one graph; an output of theirs that is read outside the
    set, or is a graph output, is not mapped; a mapped value is replaced by another value the
    edit removes; a new node reads a removed value. With `ignore_targets` only the keys of
    `value_map` matter (a rule asks before it has built its replacement).
    """
    if not old_nodes:
        return "nothing to replace"
    g = old_nodes[0].graph
    old = {id(n) for n in old_nodes}
    for n in old_nodes:
        if n.graph is not g or g is None:
            return f"node {n.name!r} is not in the same graph as {old_nodes[0].name!r}"
    inner = _nested_ids(old_nodes)
    produced_by_old = {id(o) for n in old_nodes for o in n.outputs}
    for n in old_nodes:
        for out in n.outputs:
            escapes = [u for u in out.users() if id(u) not in old and id(u) not in inner]
            if out.graph_outputs:
                escapes_to = f"an output of graph {out.graph_outputs[0].name!r}"
            elif escapes:
                escapes_to = f"read by {escapes[0].name!r} ({escapes[0].op_type}) outside the match"
            else:
                continue
            if out not in value_map or value_map[out] is None:
                return f"{out.name!r} (from {n.name!r}) is {escapes_to} and the rewrite does not replace it"
            if not ignore_targets and id(value_map[out]) in produced_by_old:
                return f"{out.name!r} would be replaced by {value_map[out].name!r}, which the rewrite removes too"
    for key in value_map:
        if id(key) not in produced_by_old:
            return f"value map key {key.name!r} is not an output of a replaced node"
    for nn in new_nodes:
        for v in nn.inputs:
            if v is not None and id(v) in produced_by_old:
                return f"new node {nn.name or nn.op_type!r} reads {v.name!r}, which the rewrite removes"
    return None


def _nested_ids(nodes: Iterable[Node]) -> set[int]:
    """Ids of the nodes inside the subgraphs of `nodes` (they go with their owner)."""
    out: set[int] = set()
    for n in nodes:
        for sub in n.subgraphs():
            out.update(id(m) for m in sub.all_nodes())
    return out


def _ancestor_in(g: Graph, node: Node) -> Node:
    """`node`, or the node of `g` whose subgraph (transitively) holds it."""
    while node.graph is not g and node.graph is not None and node.graph.parent is not None:
        node = node.graph.parent
    return node


def _span(g: Graph, nodes: Sequence[Node]) -> list[Node]:
    """The nodes of `g` from the first to the last of `nodes`, in graph order.

    Walks outward from `nodes[0]` in both directions at once, so the cost is about twice the
    span's length, not the graph's."""
    want = {id(n) for n in nodes}
    first = last = nodes[0]
    found = 1
    fwd: Any = nodes[0]._next
    back: Any = nodes[0]._prev
    while found < len(want) and (isinstance(fwd, Node) or isinstance(back, Node)):
        if isinstance(fwd, Node):
            if id(fwd) in want:
                found, last = found + 1, fwd
            fwd = fwd._next
        if isinstance(back, Node):
            if id(back) in want:
                found, first = found + 1, back
            back = back._prev
    if found < len(want):
        raise IRError("nodes to replace are not all in one graph")
    out = [first]
    while out[-1] is not last:
        out.append(out[-1]._next)
    return out
