"""`optimize()`: import a model and run a pass pipeline over it (no codegen)."""

from __future__ import annotations

import os
from dataclasses import dataclass

import onnx

import lepton_ir
from lepton_ir import Graph
from passes import IRDump, PassManager, PipelineResult
from passes.cleanup import CLEANUP_PIPELINE


@dataclass
class Optimized:
    """The optimized graph and the pass log that produced it."""

    graph: Graph
    log: PipelineResult
    nodes_before: int

    @property
    def nodes_after(self) -> int:
        return len(self.graph)


def optimize(
    model: str | os.PathLike | bytes | onnx.ModelProto | Graph,
    passes: str = CLEANUP_PIPELINE,
    *,
    dump_ir: str | None = None,
) -> Optimized:
    """Import `model` (unless it is already a Graph, which is then changed in place) and run `passes`."""
    graph = model if isinstance(model, Graph) else lepton_ir.load(model)
    before = len(graph)
    instruments = [] if dump_ir is None else [IRDump(dump_ir)]
    log = PassManager(passes, instruments=instruments).run(graph)
    return Optimized(graph, log, before)
