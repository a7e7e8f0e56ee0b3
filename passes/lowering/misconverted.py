"""`expand-misconverted`: expand function ops in the configurations TVM 0.27's frontend gets wrong.

`expand-functions` leaves the ops TVM's ONNX frontend has converters for. Some of those
converters only handle part of the op, and compute something else for the rest, silently:

- `LayerNormalization` returns a scalar 0 placeholder for its optional outputs `Mean` and
  `InvStdDev`, and ignores `stash_type` (it normalizes in the input's type).

For a node in such a configuration this pass inlines the op's ONNX function body (the same
machinery and invariants as `expand-functions`), which TVM converts op by op. Nodes in
configurations the converter handles are left alone, so the common case keeps TVM's fused
kernel. `stats` counts expanded nodes per op type and the nodes ONNX has no body for.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from typing import ClassVar

from lepton_ir import Graph, Node

from passes.base import Pass, PassContext, PassResult, register
from passes.cleanup.fold import output_owners
from passes.lowering.expand import _body_for, _function_schema, _splice


def _layer_norm(node: Node) -> str | None:
    if any(o.name for o in node.outputs[1:]):
        return "mean_or_inv_std_dev_output"
    x = node.inputs[0]
    stash = int(node.attr("stash_type", 1))
    if x is not None and x.dtype is not None and x.dtype != stash:
        return "stash_type"
    return None


#: op type -> why a node of that op must be expanded (None: TVM converts this node correctly).
MISCONVERTED: dict[str, Callable[[Node], str | None]] = {
    "LayerNormalization": _layer_norm,
}


@register
@dataclass(frozen=True)
class ExpandMisconverted(Pass):
    """Inline the ONNX function body of nodes TVM's frontend would convert wrongly (see MISCONVERTED)."""

    name: ClassVar[str] = "expand-misconverted"
    summary: ClassVar[str] = "expand function ops in configurations TVM's converters get wrong (LayerNormalization outputs, ...)"

    def run(self, graph: Graph, ctx: PassContext) -> PassResult:
        opset = graph.root().opset_imports.get("")
        if opset is None:
            return PassResult(False, {})
        stats: Counter[str] = Counter()
        owners = None
        cache: dict[bytes, object] = {}
        for g in list(graph.all_graphs()):
            for node in list(g):
                check = MISCONVERTED.get(node.op_type)
                if node.domain or check is None or node.graph is not g or check(node) is None:
                    continue
                schema = _function_schema(node.op_type, opset)
                body = _body_for(schema, node, opset, cache) if schema is not None else "no_body"  # type: ignore[arg-type]
                if isinstance(body, str):
                    stats[f"skipped_{body}"] += 1
                    continue
                if owners is None:
                    owners = output_owners(graph)
                _splice(g, node, body, owners)
                stats[node.op_type] += 1
        expanded = sum(v for k, v in stats.items() if not k.startswith("skipped_"))
        return PassResult(expanded > 0, dict(stats))


__all__ = ["MISCONVERTED", "ExpandMisconverted"]
