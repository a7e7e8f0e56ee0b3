"""`fold-empty-inputs`: a graph input whose static shape has a 0 dim is read as a constant.

Such an input can only ever hold the empty tensor of its type and shape, so its value is known
at compile time. ONNX models pass "no axes" (reduce over all axes) and empty pads, scales or
split sizes that way, and TVM's frontend needs those operands constant. The input stays in the
graph's signature (callers still pass it); its readers read an empty initializer instead.

Invariants: only inputs of the main graph with a dtype and a fully static shape containing 0;
an input that is also an initializer (an overridable default) is left alone. Outputs are
unchanged for every valid feed. `stats["folded"]` counts inputs folded.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import numpy as np

from lepton_ir import Graph
from lepton_ir.rewriter import Builder, Rewriter
from lepton_ir.types import np_dtype

from passes.base import Pass, PassContext, PassResult, register
from passes.rewrite import static_shape


@register
@dataclass(frozen=True)
class FoldEmptyInputs(Pass):
    """Readers of graph inputs that can only be empty read an empty constant instead."""

    name: ClassVar[str] = "fold-empty-inputs"
    summary: ClassVar[str] = "graph inputs with a static 0 dim become empty constants for their readers"

    def run(self, graph: Graph, ctx: PassContext) -> PassResult:
        folded = 0
        rw = Rewriter()
        for v in graph.inputs:
            shape = static_shape(v)
            if shape is None or 0 not in shape or v.dtype is None or not v.uses or v.const_value is not None:
                continue
            try:
                dtype = np_dtype(v.dtype)
            except (KeyError, TypeError, ValueError):
                continue
            if dtype.hasobject:
                continue
            empty = Builder(graph, v.name).const(np.zeros(shape, dtype=dtype), "empty")
            for user, i in v.uses:  # readers only: a graph output that is the input stays the input
                rw.set_input(user, i, empty)
            folded += 1
        return PassResult(folded > 0, {"folded": folded} if folded else {})
