"""Lepton's passes, the pass manager and the rewrite-rule engine."""

from passes.base import REGISTRY, Pass, PassContext, PassResult, PipelineSyntaxError, RuleStats, parse_pipeline, register
from passes.manager import IRDump, PassError, PassManager, PassRecord, PipelineResult
import passes.cleanup  # noqa: F401, E402 - registers the cleanup passes
import passes.fusion  # noqa: F401, E402 - registers the fusion passes
import passes.lowering  # noqa: F401, E402 - registers the lowering passes (expand-functions)
import passes.layout  # noqa: F401, E402 - registers the layout pass (convert-layout)
import passes.quantize  # noqa: F401, E402 - registers the quantization pass (quantize)

__all__ = [
    "REGISTRY", "IRDump", "Pass", "PassContext", "PassError", "PassManager", "PassRecord", "PassResult",
    "PipelineResult", "PipelineSyntaxError", "RuleStats", "parse_pipeline", "register",
]
