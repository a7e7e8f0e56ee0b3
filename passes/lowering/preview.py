"""`expand-preview`: replace ops of ONNX's preview domain (`ai.onnx.preview`, e.g. FlexAttention) by
their ONNX function bodies, which are written in default-domain ops.

The same machinery and invariants as `expand-functions` (which handles the default domain only):
the body is ONNX's own definition, instantiated for the node's attributes and input types, at
the model's default-domain opset; a node whose body cannot be had is kept and counted
(`skipped_<reason>`), and the codegen then reports it as unsupported by name. Training ops
(`ai.onnx.preview.training`) have no bodies and are left alone.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import ClassVar

import onnx

from lepton_ir import Graph

from passes.base import Pass, PassContext, PassResult, register
from passes.lowering.expand import expand_selected

PREVIEW_DOMAIN = "ai.onnx.preview"


@functools.lru_cache(maxsize=256)
def _preview_schema(op_type: str, version: int) -> onnx.defs.OpSchema | None:
    try:
        schema = onnx.defs.get_schema(op_type, version, PREVIEW_DOMAIN)
    except onnx.defs.SchemaError:
        return None
    return schema if schema.has_function or schema.has_context_dependent_function else None


@register
@dataclass(frozen=True)
class ExpandPreview(Pass):
    """Inline the ONNX function body of `ai.onnx.preview` ops."""

    name: ClassVar[str] = "expand-preview"
    summary: ClassVar[str] = "replace ONNX preview-domain ops (FlexAttention) by their function bodies"

    def run(self, graph: Graph, ctx: PassContext) -> PassResult:
        root = graph.root()
        opset, version = root.opset_imports.get(""), root.opset_imports.get(PREVIEW_DOMAIN)
        if opset is None or version is None:
            return PassResult(False, {})
        stats = expand_selected(
            graph, opset, lambda n: n.domain == PREVIEW_DOMAIN, lambda n: _preview_schema(n.op_type, version)
        )
        expanded = sum(v for k, v in stats.items() if not k.startswith("skipped_"))
        return PassResult(expanded > 0, dict(stats))
