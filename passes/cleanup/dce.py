"""Dead-code elimination: drop nodes and initializers whose results nobody reads.

Invariants:
- A value is live when it has a use (node input, including nodes inside subgraphs that
  capture it) or is an output of any graph (subgraph outputs included, also when a
  subgraph output names an outer-scope value).
- A node is dead when none of its outputs is live. Removing it removes its subgraphs'
  nodes too, so values they captured lose those uses.
- Initializers that are graph inputs (overridable) are never removed: they are part of the
  model's signature.
- One reverse sweep per graph (subgraphs of a node swept before the node) removes whole
  dead chains: linear in the number of nodes and edges.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from typing import ClassVar

from lepton_ir import Graph, Node

from passes.base import Pass, PassContext, PassResult, register


@register
@dataclass(frozen=True)
class EliminateDeadCode(Pass):
    """Remove unused nodes (subgraphs included), then unused non-input initializers."""

    name: ClassVar[str] = "eliminate-dead-code"
    summary: ClassVar[str] = "remove nodes and initializers whose results are never used"

    def run(self, graph: Graph, ctx: PassContext) -> PassResult:
        # How many graph-output slots (of any graph in the model) name each value.
        out_refs: Counter[int] = Counter(id(v) for g in graph.all_graphs() for v in g.outputs)
        nodes_removed = _sweep(graph, out_refs)
        inits_removed = 0
        for g in list(graph.all_graphs()):
            input_ids = {id(v) for v in g.inputs}
            for name, v in list(g.initializers.items()):
                if not v.uses and id(v) not in input_ids and not out_refs[id(v)]:
                    del g.initializers[name]
                    inits_removed += 1
        stats = {"nodes_removed": nodes_removed, "initializers_removed": inits_removed}
        return PassResult(bool(nodes_removed or inits_removed), stats)


def _sweep(graph: Graph, out_refs: Counter[int]) -> int:
    """Remove dead nodes of `graph` in reverse order (subgraphs first); return the count."""
    removed = 0
    for node in reversed(graph.nodes):
        for sub in node.subgraphs():
            removed += _sweep(sub, out_refs)
        if any(out.uses or out_refs[id(out)] for out in node.outputs):
            continue
        removed += _drop_subgraphs(node, out_refs)
        graph.remove(node, safe=False)  # checked above: no uses, not an output of any graph
        removed += 1
    return removed


def _drop_subgraphs(node: Node, out_refs: Counter[int]) -> int:
    """Empty the subgraphs of a node about to be removed, releasing the outer values they read."""
    removed = 0
    for sub in node.subgraphs():
        for g in list(sub.all_graphs()):
            out_refs.subtract(id(v) for v in g.outputs)
        for g in reversed(list(sub.all_graphs())):
            for inner in reversed(g.nodes):
                g.remove(inner, safe=False)
                removed += 1
    return removed
