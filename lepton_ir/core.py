"""The IR: `Value`, `Node`, `Graph`.

Invariants (checked by `lepton_ir.verifier.verify`):
- A `Value` is produced by at most one node output, or is a graph input, or an initializer.
- `value.uses` lists exactly the `(node, input_index)` pairs of nodes *linked into a graph*
  whose input is that value, in insertion order, including nodes inside subgraphs that capture
  it from an outer scope. A node that was built but never inserted (or was removed) is not a
  use, so a rewrite that builds nodes and then drops them leaves no phantom uses.
- `value.graph_outputs` lists the graphs whose outputs hold that value; `Graph.outputs` is
  assigned as a whole (it is a tuple) so the back-references stay current.
- Edges change only through `Node.replace_input` and `Value.replace_all_uses_with`, which
  keep use lists current on both ends.
- `Graph` keeps its nodes in topological order; iteration is over a snapshot, so a pass may
  insert or remove nodes while iterating.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterable, Iterator, Sequence
from typing import Any

import numpy as np
import onnx

from lepton_ir.errors import IRError
from lepton_ir.structure import topological_indices
from lepton_ir.tensor import Tensor
from lepton_ir.types import Shape, dtype_name, format_shape, np_to_onnx_dtype


class Value:
    """A tensor flowing along the graph's edges."""

    __slots__ = ("name", "dtype", "shape", "producer", "output_index", "const_value", "doc", "_uses", "_output_of")

    def __init__(
        self,
        name: str = "",
        dtype: int | None = None,
        shape: Shape = None,
        *,
        const_value: Tensor | None = None,
    ) -> None:
        self.name = name
        self.dtype = dtype
        self.shape = shape
        self.producer: Node | None = None
        self.output_index: int = 0
        self.const_value = const_value
        self.doc = ""
        self._uses: list[tuple[Node, int]] = []
        self._output_of: list[Graph] = []

    @property
    def uses(self) -> tuple[tuple[Node, int], ...]:
        """`(node, input_index)` pairs reading this value, in the order they were made."""
        return tuple(self._uses)

    def users(self) -> list[Node]:
        """Distinct nodes reading this value, in use order."""
        seen: dict[int, Node] = {}
        for node, _ in self._uses:
            seen.setdefault(id(node), node)
        return list(seen.values())

    @property
    def graph_outputs(self) -> tuple[Graph, ...]:
        """The graphs (this one's or nested ones capturing it) that list this value among their outputs."""
        return tuple(self._output_of)

    def is_used(self) -> bool:
        """Whether a linked node reads this value or a graph lists it as an output."""
        return bool(self._uses or self._output_of)

    def replace_all_uses_with(self, other: Value) -> None:
        """Make every node reading `self` read `other`. Graph-output slots are not touched:
        `lepton_ir.Rewriter.replace_uses` moves those too, keeping output names stable."""
        if other is self:
            return
        for node, index in list(self._uses):
            node.replace_input(index, other)

    def _add_use(self, node: Node, index: int) -> None:
        self._uses.append((node, index))

    def _remove_use(self, node: Node, index: int) -> None:
        for i, (n, j) in enumerate(self._uses):
            if n is node and j == index:
                del self._uses[i]
                return
        raise IRError(f"use ({node.name}, {index}) missing from value {self.name!r}")

    def __repr__(self) -> str:
        return f"%{self.name}: {dtype_name(self.dtype)}{format_shape(self.shape)}"


class Attr:
    """A node attribute: its ONNX type and value (python scalar/list, `Tensor` or `Graph`)."""

    __slots__ = ("type", "value")

    def __init__(self, type: int, value: Any) -> None:
        self.type = type
        self.value = value

    @classmethod
    def infer(cls, value: Any) -> Attr:
        """Guess the ONNX attribute type of a python value (ints, floats, strings, lists, tensors)."""
        A = onnx.AttributeProto
        if isinstance(value, Attr):
            return value
        if isinstance(value, bool | int | np.integer):
            return cls(A.INT, int(value))
        if isinstance(value, float | np.floating):
            return cls(A.FLOAT, float(value))
        if isinstance(value, str | bytes):
            return cls(A.STRING, value.encode() if isinstance(value, str) else value)
        if isinstance(value, Tensor):
            return cls(A.TENSOR, value)
        if isinstance(value, np.ndarray):
            return cls(A.TENSOR, Tensor.from_numpy(value))
        if isinstance(value, Graph):
            return cls(A.GRAPH, value)
        if isinstance(value, list | tuple):
            items = list(value)
            if all(isinstance(v, bool | int | np.integer) for v in items):
                return cls(A.INTS, [int(v) for v in items])
            if all(isinstance(v, int | float | np.number) for v in items):
                return cls(A.FLOATS, [float(v) for v in items])
            if all(isinstance(v, str | bytes) for v in items):
                return cls(A.STRINGS, [v.encode() if isinstance(v, str) else v for v in items])
        raise IRError(f"cannot infer an ONNX attribute type for {value!r}; pass an Attr")

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Attr) or other.type != self.type:
            return False
        if isinstance(self.value, Tensor):
            return isinstance(other.value, Tensor) and tensors_equal(self.value, other.value)
        if isinstance(self.value, Graph) or isinstance(self.value, list) and self.value and isinstance(self.value[0], Graph):
            return self.value is other.value
        return _attr_key(self.value) == _attr_key(other.value)

    def __hash__(self) -> int:
        if isinstance(self.value, Tensor | Graph) or isinstance(self.value, list) and self.value and isinstance(self.value[0], Graph):
            return hash(self.type)
        return hash((self.type, _attr_key(self.value)))

    def __repr__(self) -> str:
        return f"Attr({onnx.AttributeProto.AttributeType.Name(self.type)}, {self.value!r})"


def _attr_key(value: Any) -> Any:
    """A hashable key that tells NaN floats apart bit-exactly."""
    if isinstance(value, float):
        return np.float32(value).tobytes()
    if isinstance(value, list):
        return tuple(_attr_key(v) for v in value)
    return value


def tensors_equal(a: Tensor, b: Tensor) -> bool:
    """Bit-identical dtype, shape and data (NaN payloads included)."""
    if a is b:
        return True
    if a.dtype != b.dtype or a.shape != b.shape:
        return False
    return a.numpy().tobytes() == b.numpy().tobytes()


class Node:
    """An operator application. Outputs are owned `Value`s; inputs may be `None` (omitted optional)."""

    __slots__ = (
        "name", "domain", "op_type", "overload", "attributes", "doc", "graph", "_inputs", "_outputs", "_prev", "_next",
        "_registered",
    )

    def __init__(
        self,
        domain: str,
        op_type: str,
        inputs: Sequence[Value | None] = (),
        attributes: dict[str, Any] | None = None,
        *,
        outputs: Sequence[Value] | None = None,
        num_outputs: int = 1,
        name: str = "",
    ) -> None:
        self.name = name
        self.domain = "" if domain == "ai.onnx" else domain
        self.op_type = op_type
        self.overload = ""
        self.attributes: dict[str, Attr] = {k: Attr.infer(v) for k, v in (attributes or {}).items()}
        self.doc = ""
        self.graph: Graph | None = None
        self._prev: Node | None = None
        self._next: Node | None = None
        self._inputs: list[Value | None] = list(inputs)  # uses are registered when the node is linked
        self._registered = False
        outs = list(outputs) if outputs is not None else [Value() for _ in range(num_outputs)]
        for i, v in enumerate(outs):
            if v.producer is not None:
                raise IRError(f"value {v.name!r} already has a producer ({v.producer.name})")
            v.producer = self
            v.output_index = i
        self._outputs = outs

    @property
    def inputs(self) -> tuple[Value | None, ...]:
        return tuple(self._inputs)

    @property
    def outputs(self) -> tuple[Value, ...]:
        return tuple(self._outputs)

    def attr(self, name: str, default: Any = None) -> Any:
        """The python value of attribute `name`, or `default` when absent."""
        a = self.attributes.get(name)
        return default if a is None else a.value

    def replace_input(self, index: int, value: Value | None) -> None:
        """Point input `index` at `value`, updating both use lists."""
        old = self._inputs[index]
        if old is value:
            return
        linked = self._registered
        if old is not None and linked:
            old._remove_use(self, index)
        self._inputs[index] = value
        if value is not None and linked:
            value._add_use(self, index)

    def set_inputs(self, values: Sequence[Value | None]) -> None:
        """Replace the whole input list (use lists updated)."""
        linked = self._registered
        if linked:
            self._unregister_uses()
        self._inputs = list(values)
        if linked:
            self._register_uses()

    def subgraphs(self) -> Iterator[Graph]:
        """Graphs held in GRAPH / GRAPHS attributes."""
        for a in self.attributes.values():
            if isinstance(a.value, Graph):
                yield a.value
            elif a.type == onnx.AttributeProto.GRAPHS:
                yield from a.value

    def _register_uses(self) -> None:
        if self._registered:
            return
        self._registered = True
        for i, v in enumerate(self._inputs):
            if v is not None:
                v._add_use(self, i)

    def _unregister_uses(self) -> None:
        if not self._registered:
            return
        self._registered = False
        for i, v in enumerate(self._inputs):
            if v is not None:
                v._remove_use(self, i)

    def __repr__(self) -> str:
        return f"Node({self.name!r}, {self.op_type})"


class Graph:
    """An ordered list of nodes with inputs, outputs and initializers; may be a subgraph of a node."""

    __slots__ = (
        "name",
        "inputs",
        "initializers",
        "opset_imports",
        "ir_version",
        "producer_name",
        "producer_version",
        "model_version",
        "model_domain",
        "model_doc",
        "metadata_props",
        "doc",
        "parent",
        "_outputs",
        "_outputs_linked",
        "_head",
        "_count",
        "_counter",
        "_names",
    )

    def __init__(
        self,
        name: str = "main",
        inputs: Iterable[Value] = (),
        outputs: Iterable[Value] = (),
        nodes: Iterable[Node] = (),
        initializers: Iterable[Value] = (),
        *,
        opset_imports: dict[str, int] | None = None,
        ir_version: int = 8,
    ) -> None:
        self.name = name
        self.inputs: list[Value] = list(inputs)
        self._outputs: tuple[Value, ...] = ()
        self._outputs_linked = True  # False while the node holding this subgraph is removed
        self.outputs = tuple(outputs)
        self.initializers: dict[str, Value] = {}
        self.opset_imports: dict[str, int] = dict(opset_imports or {"": 17})
        self.ir_version = ir_version
        self.producer_name = "lepton"
        self.producer_version = ""
        self.model_version = 0
        self.model_domain = ""
        self.model_doc = ""
        self.metadata_props: dict[str, str] = {}
        self.doc = ""
        self.parent: Node | None = None
        self._head = _Sentinel()
        self._count = 0
        self._counter = itertools.count()
        self._names: set[str] | None = None
        for v in initializers:
            self.add_initializer(v)
        self.extend(nodes)

    @property
    def outputs(self) -> tuple[Value, ...]:
        """The graph's outputs, in order. Assign a new sequence to change them (back-references follow)."""
        return self._outputs

    @outputs.setter
    def outputs(self, values: Iterable[Value]) -> None:
        new = tuple(values)
        if self._outputs_linked:
            self._unlink_outputs()
            self._outputs = new
            self._link_outputs()
        else:
            self._outputs = new

    def _link_outputs(self) -> None:
        self._outputs_linked = True
        for v in self._outputs:
            v._output_of.append(self)

    def _unlink_outputs(self) -> None:
        self._outputs_linked = False
        for v in self._outputs:
            v._output_of.remove(self)

    # ----- node list (doubly linked; O(1) insert and remove) ---------------------------
    def __iter__(self) -> Iterator[Node]:
        """Iterate over a snapshot; nodes removed during iteration are skipped."""
        for node in self.nodes:
            if node.graph is self:
                yield node

    def __len__(self) -> int:
        return self._count

    @property
    def nodes(self) -> list[Node]:
        """The nodes in order (a new list)."""
        out = []
        n = self._head._next
        while n is not self._head:
            out.append(n)
            n = n._next
        return out

    def append(self, node: Node) -> Node:
        self._link(node, self._head._prev)
        return node

    def extend(self, nodes: Iterable[Node]) -> None:
        for n in nodes:
            self.append(n)

    def insert_before(self, anchor: Node, nodes: Node | Sequence[Node]) -> None:
        """Insert `nodes` (in order) just before `anchor`."""
        self._check_anchor(anchor)
        prev = anchor._prev
        for n in [nodes] if isinstance(nodes, Node) else nodes:
            self._link(n, prev)
            prev = n

    def insert_after(self, anchor: Node, nodes: Node | Sequence[Node]) -> None:
        """Insert `nodes` (in order) just after `anchor`."""
        self._check_anchor(anchor)
        prev = anchor
        for n in [nodes] if isinstance(nodes, Node) else nodes:
            self._link(n, prev)
            prev = n

    def _check_anchor(self, anchor: Node) -> None:
        if anchor.graph is not self:
            raise IRError(f"anchor node {anchor.name!r} is not in graph {self.name!r}")

    def _link(self, node: Node, prev: Node) -> None:
        if node.graph is not None:
            raise IRError(f"node {node.name!r} already belongs to graph {node.graph.name!r}")
        node.graph = self
        if not node.name:
            node.name = self.fresh_name(node.op_type.lower())
        for out in node._outputs:
            if not out.name:
                out.name = self.fresh_name(f"{node.name}_out")
        names = self.root()._names
        if names is not None:  # explicit names given after the names were collected
            names.add(node.name)
            names.update(o.name for o in node._outputs)
        node._register_uses()
        for sub in node.subgraphs():
            sub.parent = node
            for h in sub.all_graphs():  # a node moved back in: its subgraphs' captures and outputs count again
                if not h._outputs_linked:
                    h._link_outputs()
                for inner in h.nodes:
                    inner._register_uses()
        nxt = prev._next
        node._prev, node._next = prev, nxt
        prev._next = node
        nxt._prev = node
        self._count += 1

    def remove(self, node: Node, *, safe: bool = True) -> None:
        """Remove `node`. With `safe`, refuse (graph untouched) if an output is read by a linked node
        or is an output of any graph (this one or a nested one).

        Its inputs are kept (a removed node reads them but is not their use). Its subgraphs'
        nodes and outputs stop counting too, so outer values they read or returned lose those
        uses; re-inserting the node restores them.
        """
        if node.graph is not self:
            raise IRError(f"node {node.name!r} is not in graph {self.name!r}")
        if safe:
            for out in node.outputs:
                if out._uses:
                    users = ", ".join(repr(n.name) for n in out.users())
                    raise IRError(f"cannot remove node {node.name!r}: output {out.name!r} is used by {users}")
                if out._output_of:
                    raise IRError(f"cannot remove node {node.name!r}: {out.name!r} is an output of graph {out._output_of[0].name!r}")
        node._unregister_uses()
        for sub in node.subgraphs():  # values captured (read or returned) from outer scopes lose those uses
            for h in sub.all_graphs():
                if h._outputs_linked:
                    h._unlink_outputs()
                for inner in h.nodes:
                    inner._unregister_uses()
        node._prev._next = node._next
        node._next._prev = node._prev
        node._prev = node._next = None
        node.graph = None
        self._count -= 1

    def sort(self) -> None:
        """Reorder nodes topologically (stable); raise `IRError` naming the nodes on a cycle."""
        order = topological_order(self)
        head = self._head
        prev = head
        for n in order:
            prev._next, n._prev = n, prev
            prev = n
        prev._next, head._prev = head, prev

    # ----- values ---------------------------------------------------------------------
    def fresh_name(self, prefix: str) -> str:
        """A node/value name not yet used in the model (names present at the first call are collected then)."""
        root = self.root()
        if root._names is None:
            root._names = set()
            for g in root.all_graphs():
                root._names.update(v.name for v in g.inputs)
                root._names.update(g.initializers)
                for n in g.nodes:
                    root._names.add(n.name)
                    root._names.update(o.name for o in n.outputs)
        while True:
            name = f"{prefix}__{next(root._counter)}"
            if name not in root._names:
                root._names.add(name)
                return name

    def root(self) -> Graph:
        g = self
        while g.parent is not None and g.parent.graph is not None:
            g = g.parent.graph
        return g

    def add_initializer(self, value: Value) -> Value:
        if value.const_value is None:
            raise IRError(f"initializer {value.name!r} has no const_value")
        if value.name in self.initializers and self.initializers[value.name] is not value:
            raise IRError(f"duplicate initializer name {value.name!r}")
        self.initializers[value.name] = value
        names = self.root()._names
        if names is not None:  # a name given after the names were collected
            names.add(value.name)
        return value

    def add_constant(self, array: np.ndarray, prefix: str = "const") -> Value:
        """A new initializer holding `array` (name made unique)."""
        tensor = Tensor.from_numpy(array)
        v = Value(self.fresh_name(prefix), np_to_onnx_dtype(tensor.numpy().dtype), tensor.shape, const_value=tensor)
        tensor.name = v.name
        return self.add_initializer(v)

    def is_graph_input(self, value: Value) -> bool:
        return any(value is v for v in self.inputs)

    def is_graph_output(self, value: Value) -> bool:
        return any(value is v for v in self.outputs)

    def all_graphs(self) -> Iterator[Graph]:
        """This graph and every nested subgraph, parents first."""
        yield self
        for node in self.nodes:
            for sub in node.subgraphs():
                yield from sub.all_graphs()

    def all_nodes(self) -> Iterator[Node]:
        """Every node of this graph and its subgraphs."""
        for g in self.all_graphs():
            yield from g.nodes

    def __repr__(self) -> str:
        return f"Graph({self.name!r}, {self._count} nodes)"


class _Sentinel:
    """Head of a graph's circular node list."""

    __slots__ = ("_prev", "_next")

    def __init__(self) -> None:
        self._prev: Any = self
        self._next: Any = self


def topological_order(graph: Graph) -> list[Node]:
    """A stable topological order of `graph`'s nodes (captured values of subgraphs count as inputs);
    `IRError` naming the nodes of a cycle."""
    nodes = graph.nodes
    index = {id(n): i for i, n in enumerate(nodes)}
    deps = [{index[id(v.producer)] for v in _node_reads(n) if v.producer is not None and id(v.producer) in index}
            for n in nodes]
    order, cycle = topological_indices(deps)
    if cycle:
        names = ", ".join(repr(nodes[i].name) for i in cycle[:10])
        raise IRError(f"graph {graph.name!r} has a cycle through nodes {names}")
    return [nodes[i] for i in order]


def _node_reads(node: Node) -> list[Value]:
    """Values `node` reads: its inputs, and what its subgraphs read or return from outer scopes."""
    out = [v for v in node.inputs if v is not None]
    for sub in node.subgraphs():
        for inner in sub.all_nodes():
            out.extend(v for v in inner.inputs if v is not None)
        out.extend(sub.outputs)
    return out
