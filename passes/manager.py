"""The pass manager: runs a pipeline in stages and calls instruments.

The pipeline is cut into stages in order: each run of consecutive repeatable passes
(`Pass.repeat`, cleanup and rewrites) is a stage run to a bounded fixed point; each one-shot
pass (layout, quantize, prune) is a stage of its own, run once where the pipeline names it.

Per pass run it records a `PassRecord` (stage, iteration, modified, seconds, node counts,
stats, per-rule work): that log is what `lepton` prints and what artifacts store. With
`verify_ir=True` (or `LEPTON_DEBUG=1`) the IR verifier runs after every pass.
"""

from __future__ import annotations

import os
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Protocol

from lepton_ir import Graph, InternalError, LeptonError, verify
from lepton_ir.exporter import save

from passes.base import Pass, PassContext, PassResult, RuleStats, parse_pipeline


class PassError(InternalError):
    """A pass raised; the message names it and the passes that ran before it."""


@dataclass(frozen=True)
class PassRecord:
    """One run of one pass."""

    name: str
    iteration: int
    modified: bool
    seconds: float
    nodes_before: int
    nodes_after: int
    stats: dict[str, int] = field(default_factory=dict)
    stage: int = 0
    rules: dict[str, RuleStats] = field(default_factory=dict)
    notes: tuple[str, ...] = ()


@dataclass
class PipelineResult:
    """All pass runs in order; `modified` if any changed the graph."""

    records: list[PassRecord]
    iterations: int
    converged: bool
    stages: list[list[str]] = field(default_factory=list)

    @property
    def modified(self) -> bool:
        return any(r.modified for r in self.records)

    def summary(self) -> list[dict[str, object]]:
        """Per pass name: runs, total seconds, node delta and summed stats, in first-run order."""
        rows: dict[str, dict[str, object]] = {}
        for r in self.records:
            row = rows.setdefault(r.name, {"pass": r.name, "runs": 0, "modified": 0, "seconds": 0.0, "nodes_removed": 0,
                                           "stats": {}, "rules": {}})
            row["runs"] = int(row["runs"]) + 1  # type: ignore[call-overload]
            row["modified"] = int(row["modified"]) + int(r.modified)  # type: ignore[call-overload]
            row["seconds"] = float(row["seconds"]) + r.seconds  # type: ignore[arg-type]
            row["nodes_removed"] = int(row["nodes_removed"]) + r.nodes_before - r.nodes_after  # type: ignore[call-overload]
            stats: dict[str, int] = row["stats"]  # type: ignore[assignment]
            for k, v in r.stats.items():
                stats[k] = stats.get(k, 0) + v
            rules: dict[str, dict[str, float]] = row["rules"]  # type: ignore[assignment]
            for k, rs in r.rules.items():
                acc = rules.setdefault(k, {"tried": 0, "matched": 0, "seconds": 0.0})
                acc["tried"] += rs.tried
                acc["matched"] += rs.matched
                acc["seconds"] += rs.seconds
        return list(rows.values())


class Instrument(Protocol):
    """Hooks around each pass run. Either method may be omitted by an implementation."""

    def before_pass(self, p: Pass, graph: Graph, ctx: PassContext) -> None: ...

    def after_pass(self, p: Pass, graph: Graph, ctx: PassContext, record: PassRecord) -> None: ...


class IRDump:
    """Writes the graph after every modifying pass to `<folder>/NNN_<pass>.onnx` (NNN counts runs)."""

    def __init__(self, folder: str) -> None:
        self.folder = folder
        self.count = 0
        os.makedirs(folder, exist_ok=True)

    def before_pass(self, p: Pass, graph: Graph, ctx: PassContext) -> None:
        if self.count == 0:
            save(graph, os.path.join(self.folder, "000_input.onnx"))

    def after_pass(self, p: Pass, graph: Graph, ctx: PassContext, record: PassRecord) -> None:
        self.count += 1
        if record.modified:
            save(graph, os.path.join(self.folder, f"{self.count:03d}_{p.name}.onnx"))


def stages(passes: Sequence[Pass]) -> list[list[Pass]]:
    """Cut a pipeline into stages: maximal runs of repeatable passes, and each one-shot pass alone."""
    out: list[list[Pass]] = []
    for p in passes:
        if p.repeat and out and all(q.repeat for q in out[-1]):
            out[-1].append(p)
        else:
            out.append([p])
    return out


class PassManager:
    """Runs `passes` stage by stage: a repeatable stage until none of its passes modifies the
    graph or `max_iterations` is hit; a one-shot stage once."""

    def __init__(
        self,
        passes: Sequence[Pass] | str,
        *,
        max_iterations: int = 8,
        instruments: Sequence[object] = (),
        verify_ir: bool | None = None,
    ) -> None:
        self.passes = parse_pipeline(passes) if isinstance(passes, str) else list(passes)
        self.max_iterations = max_iterations
        self.instruments = list(instruments)
        self.verify_ir = os.environ.get("LEPTON_DEBUG") == "1" if verify_ir is None else verify_ir

    def run(self, graph: Graph, ctx: PassContext | None = None) -> PipelineResult:
        ctx = ctx or PassContext()
        records: list[PassRecord] = []
        plan = stages(self.passes)
        most, converged = 0, True
        for number, stage in enumerate(plan):
            limit = self.max_iterations if stage[0].repeat else 1
            for iteration in range(1, limit + 1):
                changed = False
                for p in stage:
                    record = self._run_one(p, graph, ctx, iteration, records, number)
                    records.append(record)
                    changed |= record.modified
                most = max(most, iteration)
                if not changed or not stage[0].repeat:
                    break
            else:
                converged = False
        return PipelineResult(records, most, converged, [[p.name for p in st] for st in plan])

    def _run_one(self, p: Pass, graph: Graph, ctx: PassContext, iteration: int, done: list[PassRecord],
                 stage: int = 0) -> PassRecord:
        for inst in self.instruments:
            if hasattr(inst, "before_pass"):
                inst.before_pass(p, graph, ctx)
        before = len(graph)
        start = time.perf_counter()
        try:
            result = p.run(graph, ctx)
            if not isinstance(result, PassResult):
                raise TypeError(f"run() returned {type(result).__name__}, not PassResult")
            if self.verify_ir:
                verify(graph)
        except LeptonError as e:
            if isinstance(e, InternalError) and not isinstance(e, PassError):
                raise self._error(p, done, e) from e
            raise
        except Exception as e:  # noqa: BLE001 - any bug in a pass is reported with its name
            raise self._error(p, done, e) from e
        record = PassRecord(
            p.name, iteration, result.modified, time.perf_counter() - start, before, len(graph), dict(result.stats),
            stage, dict(result.rules), tuple(result.notes),
        )
        for inst in self.instruments:
            if hasattr(inst, "after_pass"):
                inst.after_pass(p, graph, ctx, record)
        return record

    @staticmethod
    def _error(p: Pass, done: list[PassRecord], e: Exception) -> PassError:
        ran = ", ".join(dict.fromkeys(r.name for r in done)) or "none"
        return PassError(f"pass {p.spec()!r} failed: {type(e).__name__}: {e} (passes that ran before it: {ran})")
