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
  dead chains: linear in the number of nodes and edges. Liveness is `Value.is_used()`; nodes
  and initializers go through the `Rewriter` (`erase`: what a removed node's subgraphs read or
  returned stops counting as used; `erase_initializer`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from lepton_ir import Graph
from lepton_ir.rewriter import Rewriter

from passes.base import Pass, PassContext, PassResult, register


@register
@dataclass(frozen=True)
class EliminateDeadCode(Pass):
    """Remove unused nodes (subgraphs included), then unused non-input initializers."""

    name: ClassVar[str] = "eliminate-dead-code"
    summary: ClassVar[str] = "remove nodes and initializers whose results are never used"

    def run(self, graph: Graph, ctx: PassContext) -> PassResult:
        rw = Rewriter()
        nodes_removed = _sweep(rw, graph)
        inits_removed = 0
        for g in list(graph.all_graphs()):
            input_ids = {id(v) for v in g.inputs}
            for v in list(g.initializers.values()):
                if not v.is_used() and id(v) not in input_ids:
                    rw.erase_initializer(g, v)
                    inits_removed += 1
        stats = {"nodes_removed": nodes_removed, "initializers_removed": inits_removed}
        return PassResult(bool(nodes_removed or inits_removed), stats)


def _sweep(rw: Rewriter, graph: Graph) -> int:
    """Remove dead nodes of `graph` in reverse order (subgraphs first); return the count, the
    nodes inside a removed node's subgraphs included."""
    removed = 0
    for node in reversed(graph.nodes):
        for sub in node.subgraphs():
            removed += _sweep(rw, sub)
        if any(out.is_used() for out in node.outputs):
            continue
        removed += 1 + sum(len(h) for sub in node.subgraphs() for h in sub.all_graphs())
        rw.erase(node)
    return removed
