"""Lowering passes: rewrite what the TVM frontend cannot take into what it can.

Importing this package registers every lowering pass. `unlowered_reason(node)` says why a
lowering pass leaves a node the frontend cannot convert (for the unsupported-op report).
"""

from __future__ import annotations

from lepton_ir import Node

from passes.lowering import dynamic_shapes, empty_inputs, expand, misconverted, ops, preview, quantized, recurrent, unroll


def unlowered_reason(node: Node) -> str | None:
    """Why no lowering pass rewrote `node` (None when no lowering pass handles its op)."""
    return recurrent.reason(node)


__all__ = ["dynamic_shapes", "empty_inputs", "expand", "misconverted", "ops", "preview", "quantized", "recurrent", "unlowered_reason",
           "unroll"]
