"""Structural checks on a raw `GraphProto`, before anything trusts it.

Finds, with the offending node or tensor named: duplicate definitions, duplicate graph
outputs, undefined inputs (missing initializers), outputs nothing produces, and cycles.
Returns the nodes in a topological order (stable: a sorted graph keeps its order).
"""

from __future__ import annotations

import heapq
from collections.abc import Collection, Iterator, Sequence

import onnx

from lepton_ir.errors import InvalidModelError


def _label(node: onnx.NodeProto, index: int) -> str:
    return f"node {node.name or f'#{index}'!r} ({node.op_type})"


def node_subgraphs(node: onnx.NodeProto) -> list[onnx.GraphProto]:
    """The graphs `node`'s GRAPH and GRAPHS attributes hold (not nested ones)."""
    out: list[onnx.GraphProto] = []
    for a in node.attribute:
        if a.type == onnx.AttributeProto.GRAPH:
            out.append(a.g)
        elif a.type == onnx.AttributeProto.GRAPHS:
            out.extend(a.graphs)
    return out


def all_graphs(graph: onnx.GraphProto) -> Iterator[onnx.GraphProto]:
    """`graph` and every subgraph in it (GRAPH / GRAPHS attributes, recursively), outermost first."""
    yield graph
    for node in graph.node:
        for sub in node_subgraphs(node):
            yield from all_graphs(sub)


def all_node_protos(graph: onnx.GraphProto) -> Iterator[onnx.NodeProto]:
    """Every node of `graph` and of its subgraphs."""
    for g in all_graphs(graph):
        yield from g.node


def captured_names(graph: onnx.GraphProto) -> set[str]:
    """Names a (sub)graph reads that it does not define itself."""
    defined = {v.name for v in graph.input} | {t.name for t in graph.initializer}
    needed: set[str] = set()
    for node in graph.node:
        needed.update(n for n in node.input if n and n not in defined)
        for sub in node_subgraphs(node):
            needed.update(n for n in captured_names(sub) if n not in defined)
        defined.update(node.output)
    needed.update(o.name for o in graph.output if o.name not in defined)
    return needed


def check_and_sort(graph: onnx.GraphProto, outer: frozenset[str] = frozenset()) -> list[onnx.NodeProto]:
    """Check `graph` (and its subgraphs, recursively) and return its nodes topologically sorted."""
    where = f"graph {graph.name!r}" if graph.name else "the graph"
    defined: dict[str, str] = {}
    for t in graph.initializer:
        if t.name in defined:
            raise InvalidModelError(f"{where}: initializer {t.name!r} is defined twice")
        defined[t.name] = f"initializer {t.name!r}"
    seen_inputs: set[str] = set()
    for vi in graph.input:
        if vi.name in seen_inputs:
            raise InvalidModelError(f"{where}: graph input {vi.name!r} is listed twice")
        seen_inputs.add(vi.name)
        defined.setdefault(vi.name, f"graph input {vi.name!r}")
    producer: dict[str, int] = {}
    for i, node in enumerate(graph.node):
        for out in node.output:
            if not out:
                continue
            if out in defined:
                raise InvalidModelError(
                    f"{where}: {_label(node, i)} output {out!r} is already defined by {defined[out]}; "
                    "every value must have exactly one definition"
                )
            defined[out] = _label(node, i)
            producer[out] = i
    scope = outer | frozenset(defined)
    deps: list[set[int]] = []
    for i, node in enumerate(graph.node):
        needed = [n for n in node.input if n]
        for sub in node_subgraphs(node):
            check_and_sort(sub, scope)
            needed.extend(captured_names(sub))
        mine: set[int] = set()
        for pos, name in enumerate(needed):
            if name in producer:
                mine.add(producer[name])
            elif name not in defined and name not in outer:
                kind = f"input {pos} {name!r}" if pos < len(node.input) else f"a subgraph's captured value {name!r}"
                raise InvalidModelError(
                    f"{where}: {_label(node, i)} reads {kind}, which no node, graph input or initializer "
                    "defines (a missing initializer, or a truncated model)"
                )
        deps.append(mine)
    out_names: set[str] = set()
    for vi in graph.output:
        if vi.name in out_names:
            raise InvalidModelError(f"{where}: graph output {vi.name!r} is listed twice (duplicate output names)")
        out_names.add(vi.name)
        if vi.name not in defined and vi.name not in outer:
            raise InvalidModelError(f"{where}: graph output {vi.name!r} is not produced by any node, input or initializer")
    return [graph.node[i] for i in _toposort(graph, deps, where)]


def topological_indices(deps: Sequence[Collection[int]]) -> tuple[list[int], list[int]]:
    """A stable topological order of items `0..n-1`, item i depending on the items `deps[i]`.

    Stable: among the items that are ready, the lowest index goes first, so an order that is
    already topological is kept. Returns `(order, cycle)`; `cycle` is empty when there is
    none. Otherwise `order` is partial (the items that depend on no cycle) and `cycle` is one
    dependency loop, found by walking back along unresolved dependencies until an item repeats
    (items merely downstream of a loop are left out). Serves the proto-level check here and
    `lepton_ir.core.topological_order` (the IR's `Graph.sort`).
    """
    n = len(deps)
    users: list[list[int]] = [[] for _ in range(n)]
    indegree = [0] * n
    for i, ds in enumerate(deps):
        for d in ds:
            users[d].append(i)
        indegree[i] = len(ds)
    ready = [i for i in range(n) if indegree[i] == 0]
    heapq.heapify(ready)
    order: list[int] = []
    while ready:
        i = heapq.heappop(ready)
        order.append(i)
        for u in users[i]:
            indegree[u] -= 1
            if indegree[u] == 0:
                heapq.heappush(ready, u)
    if len(order) == n:
        return order, []
    path: list[int] = []
    seen: dict[int, int] = {}
    i = next(i for i in range(n) if indegree[i] > 0)
    while i not in seen:
        seen[i] = len(path)
        path.append(i)
        i = min(d for d in deps[i] if indegree[d] > 0)
    return order, path[seen[i]:][::-1]


def _toposort(graph: onnx.GraphProto, deps: list[set[int]], where: str) -> list[int]:
    order, cycle = topological_indices(deps)
    if cycle:
        names = ", ".join(_label(graph.node[j], j) for j in cycle[:10])
        raise InvalidModelError(f"{where} has a cycle: these nodes depend on each other's outputs: {names}")
    return order
