"""The lowering passes `compile` runs after the target's pipeline, before handing the graph to TVM.

Each rewrites something TVM 0.27's ONNX frontend cannot take (or takes wrongly) into ops it
converts correctly, and must preserve onnxruntime's outputs like every other pass. Add a
pass here (in the order it must run) when it is ready.

The lowering passes lean on the pipeline's cleanup: an expanded function body, an unrolled Scan or
a lowered op brings shape computations (Shape/Gather/Sub/Max/Cast of shapes), Constant nodes and
empty-tensor reductions that only fold-shapes, infer-shapes and fold-constants turn into what
TVM's frontend takes. `with_lowering(pipeline)` is what compile and bisect run: the pipeline, then
one fixed-point stage of the lowering passes together with every repeatable pass of the pipeline.
Appending the lowering passes alone is not enough: they join the pipeline's last stage only, and
where one-shot passes (the transformer fusions, convert-layout, ...) come before a short cleanup
tail, that stage lacks the folding passes.
"""

from __future__ import annotations

from collections.abc import Sequence

from passes import Pass
from passes.lowering.dynamic_shapes import CanonicalizeDynamicShapes
from passes.lowering.empty_inputs import FoldEmptyInputs
from passes.lowering.expand import ExpandFunctions
from passes.lowering.misconverted import ExpandMisconverted
from passes.lowering.ops import LowerOps
from passes.lowering.preview import ExpandPreview
from passes.lowering.quantized import LowerQuantizedOps
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
        LowerQuantizedOps(),
        LowerRecurrent(),
        CanonicalizeDynamicShapes(),
        UnrollScan(),
    ]


def with_lowering(pipeline: Sequence[Pass]) -> list[Pass]:
    """`pipeline`, then the lowering passes in one fixed-point stage with the pipeline's repeatable
    passes (each once, in pipeline order; those already in a repeatable last stage are not repeated).
    A pipeline of repeatable passes only gives `[*pipeline, *lowering_passes()]`, one stage."""
    passes = list(pipeline)
    tail: list[Pass] = []
    for p in reversed(passes):  # the pipeline's last stage, where it is a repeatable one
        if not p.repeat:
            break
        tail.append(p)
    have = {p.spec() for p in tail}
    extra: list[Pass] = []
    for p in passes:
        if p.repeat and p.spec() not in have:
            have.add(p.spec())
            extra.append(p)
    return [*passes, *extra, *lowering_passes()]
