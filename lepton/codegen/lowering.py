"""The lowering passes `compile` runs after the target's pipeline, before handing the graph to TVM.

Each rewrites something TVM 0.27's ONNX frontend cannot take (or takes wrongly) into ops it
converts correctly, and must preserve onnxruntime's outputs like every other pass. Add a
pass here (in the order it must run) when it is ready; the pass manager repeats the whole
list, target pipeline included, to a fixed point.
"""

from __future__ import annotations

from passes import Pass
from passes.lowering.dynamic_shapes import CanonicalizeDynamicShapes
from passes.lowering.empty_inputs import FoldEmptyInputs
from passes.lowering.expand import ExpandFunctions
from passes.lowering.misconverted import ExpandMisconverted
from passes.lowering.ops import LowerOps
from passes.lowering.preview import ExpandPreview
from passes.lowering.recurrent import LowerRecurrent
from passes.lowering.unroll import UnrollScan

from lepton.codegen.frontend import CONVERTED_OPS


def lowering_passes() -> list[Pass]:
    """Fresh instances of the codegen lowering passes, in order."""
    return [
        FoldEmptyInputs(),
        ExpandPreview(),
        ExpandFunctions(keep=CONVERTED_OPS),
        ExpandMisconverted(),
        LowerOps(),
        LowerRecurrent(),
        CanonicalizeDynamicShapes(),
        UnrollScan(),
    ]
