"""`expand-misconverted`: expand function ops in the configurations TVM 0.27's frontend gets wrong.

`expand-functions` leaves the ops TVM's ONNX frontend has converters for. Some of those
converters only handle part of the op, and compute something else for the rest, silently:

- `LayerNormalization` returns a scalar 0 placeholder for its optional outputs `Mean` and
  `InvStdDev`, ignores `stash_type` (it normalizes in the input's type), and derives the
  normalized axes from the scale's rank (wrong for a broadcast scale).
- `RMSNormalization` fails to build with a broadcast scale, or normalizing over every axis.
- `Elu`, `Selu` build float32 constants: other input types fail to build.

For a node in such a configuration this pass inlines the op's ONNX function body (the same
machinery and invariants as `expand-functions`), which TVM converts op by op. Nodes in
configurations the converter handles are left alone, so the common case keeps TVM's fused
kernel. `stats` counts expanded nodes per op type and the nodes ONNX has no body for.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import ClassVar

import onnx

from lepton_ir import Graph, Node

from passes.base import Pass, PassContext, PassResult, register
from passes.lowering.expand import expand_selected, function_schema
from passes.rewrite import static_shape


def _scale_not_normalized_shape(node: Node) -> bool:
    """The scale's shape is known not to be the normalized dims' shape (ONNX lets it broadcast; TVM's
    kernels need it whole, and the LayerNormalization converter derives the axes from the scale's
    rank). Unknown shapes (symbolic dims of real exports) are not judged: the converter keeps them."""
    x, scale = node.inputs[0], node.inputs[1] if len(node.inputs) > 1 else None
    ss = static_shape(scale)
    if x is None or x.shape is None or ss is None:
        return False
    axis = int(node.attr("axis", -1))
    if not -len(x.shape) <= axis < len(x.shape):
        return False
    normalized = x.shape[axis % len(x.shape):]
    if len(normalized) != len(ss):
        return True
    return any(isinstance(d, int) and d != s for d, s in zip(normalized, ss, strict=True))


def _layer_norm(node: Node) -> str | None:
    if any(o.name for o in node.outputs[1:]):
        return "mean_or_inv_std_dev_output"
    x = node.inputs[0]
    stash = int(node.attr("stash_type", 1))
    if x is not None and x.dtype is not None and x.dtype != stash:
        return "stash_type"
    if _scale_not_normalized_shape(node):
        return "broadcast_scale"
    return None


def _rms_norm(node: Node) -> str | None:
    if _scale_not_normalized_shape(node):
        return "broadcast_scale"
    x = node.inputs[0]
    if x is None or x.shape is None or int(node.attr("axis", -1)) % max(len(x.shape), 1) == 0:
        return "all_axes"  # the kernel's reduction to rank 0 fails to build
    return None


def _not_float32(node: Node) -> str | None:
    x = node.inputs[0]
    return "not_float32" if x is None or x.dtype != onnx.TensorProto.FLOAT else None


#: op type -> why a node of that op must be expanded (None: TVM converts this node correctly).
MISCONVERTED: dict[str, Callable[[Node], str | None]] = {
    "LayerNormalization": _layer_norm,
    "RMSNormalization": _rms_norm,
    "Elu": _not_float32,  # float32 constants in the converter: other types fail to build
    "Selu": _not_float32,
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
        stats = expand_selected(
            graph, opset,
            lambda n: not n.domain and (check := MISCONVERTED.get(n.op_type)) is not None and check(n) is not None,
            lambda n: function_schema(n.op_type, opset),
        )
        expanded = sum(v for k, v in stats.items() if not k.startswith("skipped_"))
        return PassResult(expanded > 0, dict(stats))


__all__ = ["MISCONVERTED", "ExpandMisconverted"]
