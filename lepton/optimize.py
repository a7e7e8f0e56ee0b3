"""`optimize()`: import a model and run a pass pipeline over it (no codegen)."""

from __future__ import annotations

import os
from dataclasses import dataclass

import onnx

import lepton_ir
from lepton_ir import Graph
from passes import IRDump, PassManager, PipelineResult, parse_pipeline
from passes.rewrite import rule_owner
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


@dataclass(frozen=True)
class RuleExplanation:
    """What one rewrite rule did in a pipeline run: how often it fired, and if never, its closest
    partial match on the optimized graph (`node`, `reason`), if any node was a candidate."""

    rule: str
    pass_name: str
    fired: int
    node: str | None
    reason: str | None

    def text(self) -> str:
        if self.fired:
            return f"rule {self.rule} ({self.pass_name}) fired {self.fired} times"
        if self.node is None:
            return f"rule {self.rule} ({self.pass_name}) did not fire: no node of its op types is left"
        return f"rule {self.rule} ({self.pass_name}) did not fire; closest partial match at node {self.node!r}: {self.reason}"


def explain_rule(result: Optimized, passes: str, rule: str) -> RuleExplanation:
    """Explain `rule` (a rule of a rewrite pass in `passes`) for a finished `optimize` run."""
    owner = rule_owner(parse_pipeline(passes), rule)
    fired = sum(r.rules[rule].matched for r in result.log.records if rule in r.rules)
    closest = None if fired else owner.closest(result.graph, rule)
    return RuleExplanation(rule, owner.name, fired, *(closest or (None, None)))


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
