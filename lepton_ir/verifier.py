"""IR invariant checks: topological order, unique names, two-way use lists, defined inputs, op schemas."""

from __future__ import annotations

import functools

import onnx

from lepton_ir.core import Graph, Node, Value
from lepton_ir.errors import IRError

_SCHEMA_DOMAINS = {"", "ai.onnx.ml"}


def verify(graph: Graph) -> None:
    """Raise `IRError` describing the first broken invariant of `graph` (and its subgraphs)."""
    names: dict[str, tuple[int, str]] = {}
    node_names: set[str] = set()
    _verify_graph(graph, graph.opset_imports, outer=set(), names=names, node_names=node_names)


def _claim(names: dict[str, tuple[int, str]], value: Value, what: str) -> None:
    """Record `value`'s name; a second, different value with that name is an error."""
    if not value.name:
        return
    prior = names.get(value.name)
    if prior is not None and prior[0] != id(value):
        raise IRError(f"value name {value.name!r} is used twice ({prior[1]} and {what})")
    names[value.name] = (id(value), what)


def _verify_graph(
    graph: Graph, opsets: dict[str, int], outer: set[int], names: dict[str, tuple[int, str]], node_names: set[str]
) -> None:
    defined: set[int] = set(outer)
    for v in graph.initializers.values():
        if v.const_value is None:
            raise IRError(f"initializer {v.name!r} has no value")
        if v.producer is not None:
            raise IRError(f"initializer {v.name!r} also has a producer node")
        _claim(names, v, f"initializer of {graph.name}")
        defined.add(id(v))
    for v in graph.inputs:
        if v.producer is not None:
            raise IRError(f"graph input {v.name!r} has a producer node {v.producer.name!r}")
        _claim(names, v, f"input of {graph.name}")
        defined.add(id(v))
    for node in graph:
        if node.graph is not graph:
            raise IRError(f"node {node.name!r} does not point back to graph {graph.name!r}")
        if node.name in node_names:
            raise IRError(f"node name {node.name!r} is used twice")
        node_names.add(node.name)
        for i, v in enumerate(node.inputs):
            if v is None:
                continue
            if id(v) not in defined:
                raise IRError(
                    f"node {node.name!r} input {i} {v.name!r} is not defined before the node (order or dangling value)"
                )
            if not any(n is node and j == i for n, j in v.uses):
                raise IRError(f"value {v.name!r} lacks the use ({node.name!r}, {i})")
        for sub in node.subgraphs():
            if sub.parent is not node:
                raise IRError(f"subgraph {sub.name!r} of {node.name!r} does not point back to its node")
            _verify_graph(sub, opsets, defined, names, node_names)
        for i, out in enumerate(node.outputs):
            if out.producer is not node or out.output_index != i:
                raise IRError(f"output {i} {out.name!r} of node {node.name!r} does not point back to it")
            _claim(names, out, f"output of {node.name}")
            defined.add(id(out))
        _check_schema(node, opsets)
    for v in graph.outputs:
        if id(v) not in defined:
            raise IRError(f"graph output {v.name!r} of {graph.name!r} is not defined")
        if not any(g is graph for g in v.graph_outputs):
            raise IRError(f"graph output {v.name!r} of {graph.name!r} does not point back to the graph")
    for v in _values(graph):
        for user, i in v.uses:
            if not _in_model(user):
                raise IRError(f"value {v.name!r} is used by removed node {user.name!r}")
            if i >= len(user.inputs) or user.inputs[i] is not v:
                raise IRError(f"value {v.name!r} lists use ({user.name!r}, {i}) but that input is something else")
        for g in v.graph_outputs:
            if not any(o is v for o in g.outputs):
                raise IRError(f"value {v.name!r} claims to be an output of graph {g.name!r}, which does not list it")


def _in_model(node: Node) -> bool:
    """False when `node`, or a node whose subgraph holds it, has been removed."""
    g = node.graph
    while g is not None and g.parent is not None:
        g = g.parent.graph
    return g is not None


def _values(graph: Graph) -> list[Value]:
    out = list(graph.inputs) + list(graph.initializers.values())
    for n in graph:
        out.extend(n.outputs)
    return out


@functools.lru_cache(maxsize=4096)
def _schema(op_type: str, version: int, domain: str) -> onnx.defs.OpSchema | None:
    try:
        return onnx.defs.get_schema(op_type, version, domain)
    except onnx.defs.SchemaError:
        return None


def _check_schema(node: Node, opsets: dict[str, int]) -> None:
    if node.domain not in _SCHEMA_DOMAINS or node.domain not in opsets:
        return
    schema = _schema(node.op_type, opsets[node.domain], node.domain)
    if schema is None:
        raise IRError(f"node {node.name!r}: {node.op_type} does not exist at opset {opsets[node.domain]}")
    n_in = len(node.inputs)
    if not schema.min_input <= n_in <= schema.max_input:
        raise IRError(f"node {node.name!r} ({node.op_type}) has {n_in} inputs; schema allows {schema.min_input}..{schema.max_input}")
    n_out = len(node.outputs)
    if not schema.min_output <= n_out <= schema.max_output:
        raise IRError(f"node {node.name!r} ({node.op_type}) has {n_out} outputs; schema allows {schema.min_output}..{schema.max_output}")
    for name, a in schema.attributes.items():
        if a.required and name not in node.attributes:
            raise IRError(f"node {node.name!r} ({node.op_type}) lacks required attribute {name!r}")


