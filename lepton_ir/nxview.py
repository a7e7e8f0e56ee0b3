"""A read-only networkx view of a graph, for graph algorithms and drawings."""

from __future__ import annotations

import networkx as nx

from lepton_ir.core import Graph, Node


def to_networkx(graph: Graph) -> nx.MultiDiGraph:
    """A frozen MultiDiGraph: one vertex per node (key: node name, attribute `node`),
    one edge per use (`value`, `input_index`). Graph inputs, initializers and outputs are
    not vertices; they appear as `inputs`/`outputs` graph attributes. Top level only: a
    value read inside a node's subgraph (a use by an inner node, or a subgraph output
    naming it) is an edge to that node, with `input_index` None.
    """
    g = nx.MultiDiGraph(name=graph.name)
    for node in graph:
        g.add_node(node.name, node=node, op_type=node.op_type)
    for node in graph:
        for out in node.outputs:
            for user, index in out.uses:
                if user.graph is graph:
                    g.add_edge(node.name, user.name, value=out.name, input_index=index)
                else:
                    owner = _owner_in(user, graph)
                    if owner is not None:
                        g.add_edge(node.name, owner.name, value=out.name, input_index=None)
        for sub in node.subgraphs():
            for inner in sub.all_graphs():
                for v in inner.outputs:
                    if v.producer is not None and v.producer.graph is graph:
                        g.add_edge(v.producer.name, node.name, value=v.name, input_index=None)
    g.graph["inputs"] = [v.name for v in graph.inputs]
    g.graph["outputs"] = [v.name for v in graph.outputs]
    return nx.freeze(g)


def _owner_in(node: Node, graph: Graph) -> Node | None:
    """The node of `graph` whose subgraphs (at any depth) hold `node`; None if there is none."""
    while node.graph is not None and node.graph is not graph:
        parent = node.graph.parent
        if parent is None:
            return None
        node = parent
    return node if node.graph is graph else None
