"""A read-only networkx view of a graph, for graph algorithms and drawings."""

from __future__ import annotations

import networkx as nx

from lepton_ir.core import Graph


def to_networkx(graph: Graph) -> nx.MultiDiGraph:
    """A frozen MultiDiGraph: one vertex per node (key: node name, attribute `node`),
    one edge per use (`value`, `input_index`). Graph inputs, initializers and outputs are
    not vertices; they appear as `inputs`/`outputs` graph attributes. Top level only.
    """
    g = nx.MultiDiGraph(name=graph.name)
    for node in graph:
        g.add_node(node.name, node=node, op_type=node.op_type)
    for node in graph:
        for out in node.outputs:
            for user, index in out.uses:
                if user.graph is graph:
                    g.add_edge(node.name, user.name, value=out.name, input_index=index)
    g.graph["inputs"] = [v.name for v in graph.inputs]
    g.graph["outputs"] = [v.name for v in graph.outputs]
    return nx.freeze(g)
