"""Tuning a model: find its conv/matmul workloads, measure Lepton's template on them within a wall-clock budget.

`extract_tasks` runs the compile path up to kernel scheduling (the target's passes, the lowering
passes, Relax legalization and fusion: `cpu_prepare_passes`) and keeps the functions Lepton's
`TiledReduction` rule takes, as MetaSchedule tasks (`relax_integration.extract_tasks`: one per
distinct workload, weighted by its number of calls). So their workloads are exactly the ones
compile later looks up.

`tune` measures each task's decision grid (`lepton.tuning.space`) in rounds with MetaSchedule's
builder and runner (`LocalRunner`, or `RPCRunner` on a device registered with a TVM RPC tracker)
and commits every measurement to a MetaSchedule JSONDatabase as it comes, so an interrupted or
budget-limited session resumes where it stopped. Each round goes to the tasks with the most
model time at stake (calls x best latency so far; unmeasured tasks first) and is sized to end
within the budget. The rounds are Lepton's own loop rather than `ms.tune_tasks`: its
`TuneContext` imports every tensor intrinsic TVM has (~30 s) and its task scheduler has no
wall-clock stop.
"""

from __future__ import annotations

import dataclasses
import os
import re
import shutil
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import onnx
import tvm
from tvm.s_tir import meta_schedule as ms

import lepton_ir
import targets
import targets.host
from lepton.codegen import to_relax
from lepton.codegen import tuning_databases as dbs
from lepton.codegen.failures import tvm_failures
from lepton.codegen.provenance import Provenance
from lepton.codegen.schedules import TiledReduction
from lepton.codegen.tvm_build import cpu_prepare_passes
from lepton.compiler import optimize_for
from lepton.input_shapes import InputShapes, pin_input_shapes
from lepton.threads import use_available_cpus
from lepton.tuning import measure
from lepton.tuning.space import DecisionPath, GridWalk, decision_paths, mean_secs, trace_choices, trace_path
from lepton_ir import Graph, UserError
from targets import Target

ModelLike = str | os.PathLike[str] | bytes | onnx.ModelProto | Graph
_FAILED = 1e10  # MetaSchedule's run time for a candidate that failed to build or run
_PER_TASK = 4  # candidates of one task per round: small, so the walk follows the best point closely
# Each candidate: a warm-up run, then 3 repeats of >= 30 ms each (short kernels run many times per repeat).
EVALUATOR = ms.runner.EvaluatorConfig(number=3, repeat=3, min_repeat_ms=30, enable_cpu_cache_flush=False)


@dataclass(frozen=True)
class Task:
    """One workload to tune: a fused conv/matmul function (normalized as MetaSchedule keys it) and its calls."""

    name: str
    mod: tvm.IRModule
    weight: int


@dataclass(frozen=True)
class Remote:
    """A device registered with a TVM RPC tracker (`HOST:PORT:KEY`)."""

    host: str
    port: int
    key: str

    def __str__(self) -> str:
        return f"{self.host}:{self.port}:{self.key}"


@dataclass
class TaskStatus:
    """Where one task stands: `grid` points in its space, `measured` of them measured (earlier sessions'
    successes and this session's trials, `failed` of which did not build or run), best and default latency."""

    name: str
    weight: int
    grid: int = 0
    measured: int = 0
    trials: int = 0
    failed: int = 0
    default_secs: float | None = None
    best_secs: float | None = None
    best_choices: tuple[int, ...] = ()
    shipped: bool = False

    @property
    def done(self) -> bool:
        return self.shipped or self.measured >= self.grid


@dataclass
class TuneReport:
    """A tuning session: per-task status and totals; `estimated_*` are calls-weighted kernel time sums."""

    model: str
    target: str
    tuning_key: str
    database: str
    budget_seconds: float
    rpc: str | None = None
    elapsed: float = 0.0
    trials: int = 0
    tasks: list[TaskStatus] = field(default_factory=list)

    @property
    def estimated_default(self) -> float:
        return sum(t.weight * t.default_secs for t in self.tasks if t.default_secs is not None and t.best_secs)

    @property
    def estimated_best(self) -> float:
        return sum(t.weight * t.best_secs for t in self.tasks if t.default_secs is not None and t.best_secs)

    def to_json(self) -> dict[str, Any]:
        data = dataclasses.asdict(self)
        data["estimated_default_ms"] = round(self.estimated_default * 1e3, 4)
        data["estimated_best_ms"] = round(self.estimated_best * 1e3, 4)
        return data


Progress = Callable[[TuneReport], None]


def parse_budget(text: str) -> float:
    """`"90s"`, `"30m"`, `"1h"`, `"1h30m"` or plain seconds (`"45"`) -> seconds (> 0); UserError otherwise."""
    spec = text.strip().lower()
    if re.fullmatch(r"\d+(\.\d+)?", spec):
        seconds = float(spec)
    else:
        parts = re.findall(r"(\d+(?:\.\d+)?)\s*([hms])", spec)
        if not parts or re.sub(r"(\d+(?:\.\d+)?)\s*([hms])", "", spec).strip():
            raise UserError(f"--budget {text!r}: expected a duration like 90s, 30m, 1h or 1h30m")
        seconds = sum(float(n) * {"h": 3600, "m": 60, "s": 1}[unit] for n, unit in parts)
    if seconds <= 0:
        raise UserError(f"--budget {text!r}: the budget must be positive")
    return seconds


def parse_rpc(text: str) -> Remote:
    """`HOST:PORT:KEY` (the tracker's address and the device key) -> Remote; UserError otherwise."""
    host, _, rest = text.rpartition(":")
    host, _, port = host.rpartition(":")
    if not host or not port.isdigit() or not rest:
        raise UserError(f"--rpc {text!r}: expected TRACKER_HOST:TRACKER_PORT:DEVICE_KEY, e.g. 127.0.0.1:9190:rasp4")
    return Remote(host, int(port), rest)


def extract_tasks(model: ModelLike, target: str | Target, input_shapes: InputShapes | None = None) -> list[Task]:
    """The model's workloads Lepton's tiled template takes, as compile will see them for `target` (a CPU target)."""
    tgt = _cpu_target(target)
    graph = lepton_ir.load(lepton_ir.to_onnx(model)) if isinstance(model, Graph) else lepton_ir.load(model)
    if input_shapes:
        pin_input_shapes(graph, input_shapes)
    optimize_for(graph, tgt)
    tvm_target = tgt.tvm_target()
    provenance = Provenance()
    mod = to_relax(graph, provenance)
    with tvm_target, tvm_failures(tgt.name, provenance):
        mod = tvm.transform.Sequential(cpu_prepare_passes(tgt))(mod)
    rule = TiledReduction(tgt.vector_lanes or 4, tgt.vector_registers)
    tasks = []
    for task in ms.relax_integration.extract_tasks(mod, tvm_target):
        workload = task.dispatched[0]
        if rule.apply(workload["main"], tvm_target, False) is not None:
            tasks.append(Task(str(task.task_name), workload, int(task.weight)))
    return tasks


def tune(
    model: ModelLike,
    target: str | Target,
    *,
    budget_seconds: float,
    database_dir: str | os.PathLike[str] | None = None,
    input_shapes: InputShapes | None = None,
    rpc: str | Remote | None = None,
    progress: Progress | None = None,
    max_trials: int | None = None,
    include_shipped: bool = False,
    batch: int = 16,
    evaluator: ms.runner.EvaluatorConfig = EVALUATOR,
) -> TuneReport:
    """Tune `model`'s conv/matmul workloads for `target` until `budget_seconds` (wall clock, everything included)
    are spent, `max_trials` candidates are measured, or every grid is. Every measurement is committed to the
    database in `database_dir` (default: `database.local_dir(target)`) as it comes.

    Workloads the shipped database already has are skipped unless `include_shipped` (compile prefers its record).
    `rpc` measures on a remote device; otherwise the target must run on this machine. `progress` gets the
    report after setup and after every round. Returns the final report.
    """
    start = time.monotonic()
    deadline = start + budget_seconds
    tgt = _cpu_target(target)
    remote = parse_rpc(rpc) if isinstance(rpc, str) else rpc
    if remote is None and not tgt.runs_here():
        raise UserError(
            f"target {tgt.name!r} does not run on this machine, so its kernels cannot be measured here; "
            "measure them on the device with --rpc TRACKER_HOST:PORT:KEY (a TVM RPC tracker the device is registered with)"
        )
    directory = Path(database_dir) if database_dir is not None else dbs.local_dir(tgt)
    report = TuneReport(_model_name(model), tgt.name, tgt.tuning_key, str(directory), budget_seconds,
                        rpc=str(remote) if remote else None)
    tasks = extract_tasks(model, tgt, input_shapes)
    database = dbs.open_database(directory)
    shipped = _shipped(tgt, directory) if not include_shipped else None
    lanes = tgt.vector_lanes or 4
    tvm_target = tgt.tvm_target()
    walks: list[GridWalk | None] = []
    workloads: list[ms.database.Workload | None] = []
    for i, task in enumerate(tasks):
        status = TaskStatus(task.name, task.weight)
        report.tasks.append(status)
        record = shipped.query_tuning_record(task.mod, tvm_target, "main") if shipped is not None else None
        if record is not None:
            status.shipped = True
            status.best_secs, status.best_choices = mean_secs(record.run_secs), trace_choices(record.trace)
            walks.append(None)
            workloads.append(None)
            continue
        workload = database.commit_workload(task.mod)
        records = database.get_top_k(workload, 1 << 30)
        measured = {trace_path(r.trace): s for r in records if (s := mean_secs(r.run_secs)) is not None}
        grid = list(decision_paths(task.mod, lanes, tgt.vector_registers))
        status.grid, status.measured = len(grid), sum(path in measured for path, _ in grid)
        walks.append(GridWalk(grid, measured, seed=i))
        workloads.append(workload)
        _resume(status, records)
    report.elapsed = time.monotonic() - start
    say = progress or (lambda _report: None)
    say(report)
    if all(status.done for status in report.tasks):
        return report

    builder = ms.builder.LocalBuilder(
        max_workers=max(1, min(4, os.cpu_count() or 1)), timeout_sec=120, f_build=measure.build, f_export=_exporter(tgt)
    )
    runner = _runner(remote, evaluator)
    per_candidate = 2.0  # seconds; a first guess, then what the last round took
    trials_left = max_trials if max_trials is not None else 1 << 62
    try:
        while True:
            now = time.monotonic()
            left = deadline - now
            active = [i for i, walk in enumerate(walks) if walk is not None and walk.remaining]
            if not active or left <= 0 or trials_left <= 0:
                break
            chosen = _choose(active, walks, report.tasks, max(1, min(batch, trials_left, int(left / per_candidate))))
            trials_left -= len(chosen)
            _measure(chosen, tasks, workloads, walks, report, database, builder, runner, tvm_target)
            per_candidate = (time.monotonic() - now) / len(chosen)
            report.elapsed = time.monotonic() - start
            say(report)
    finally:
        runner.pool.shutdown(wait=False)  # type: ignore[attr-defined]  # Local/RPCRunner keep a worker pool
    report.elapsed = time.monotonic() - start
    return report


def _choose(
    active: list[int], walks: Sequence[GridWalk | None], statuses: Sequence[TaskStatus], n: int
) -> list[tuple[int, DecisionPath, tvm.s_tir.Schedule]]:
    """Up to `n` candidates: tasks never measured first (their default alone, so every task gets one soon), then
    by calls x best time, `_PER_TASK` at a time; passes repeat while candidates are left and room is."""

    def stake(i: int) -> float:
        best = statuses[i].best_secs
        return float("inf") if best is None else statuses[i].weight * best

    order = [(i, walk) for i in sorted(active, key=stake, reverse=True) if (walk := walks[i]) is not None]
    chosen: list[tuple[int, DecisionPath, tvm.s_tir.Schedule]] = []
    first = True
    while len(chosen) < n and any(walk.remaining for _, walk in order):
        for i, walk in order:
            share = 1 if first and not walk.measured else _PER_TASK
            chosen += [(i, path, sch) for path, sch in walk.take(min(share, n - len(chosen)))]
        first = False
    return chosen


def _measure(
    chosen: list[tuple[int, DecisionPath, tvm.s_tir.Schedule]],
    tasks: Sequence[Task],
    workloads: Sequence[ms.database.Workload | None],
    walks: Sequence[GridWalk | None],
    report: TuneReport,
    database: ms.Database,
    builder: ms.Builder,
    runner: ms.Runner,
    tvm_target: tvm.target.Target,
) -> None:
    """Build and run one round of candidates, commit every result (failures as 1e10 s), update the statuses."""
    args = {i: ms.arg_info.ArgInfo.from_prim_func(tasks[i].mod["main"]) for i, _, _ in chosen}
    built = builder.build([ms.builder.BuilderInput(sch.mod, tvm_target) for _, _, sch in chosen])
    futures = {
        k: runner.run([ms.runner.RunnerInput(b.artifact_path, "cpu", args[chosen[k][0]])])[0]
        for k, b in enumerate(built) if b.error_msg is None
    }
    for k, (i, path, sch) in enumerate(chosen):
        result = futures[k].result() if k in futures else None
        secs = mean_secs(result.run_secs) if result is not None and result.error_msg is None else None
        run_secs = [float(s) for s in result.run_secs] if secs is not None else [_FAILED]
        workload, walk, status = workloads[i], walks[i], report.tasks[i]
        assert workload is not None and walk is not None
        database.commit_tuning_record(ms.database.TuningRecord(sch.trace, workload, run_secs, tvm_target, args[i]))
        walk.record(path, secs)
        status.trials += 1
        status.measured += 1
        status.failed += secs is None
        report.trials += 1
        if secs is not None and (status.best_secs is None or secs < status.best_secs):
            status.best_secs, status.best_choices = secs, trace_choices(sch.trace)
        if secs is not None and not any(path):
            status.default_secs = secs
        if built[k].artifact_path:
            shutil.rmtree(os.path.dirname(built[k].artifact_path), ignore_errors=True)


def _resume(status: TaskStatus, records: Sequence[ms.database.TuningRecord]) -> None:
    """Fill a task's status from the successful records an earlier session left (best first)."""
    status.default_secs = next((mean_secs(r.run_secs) for r in records if not any(trace_path(r.trace))), None)
    if records:
        status.best_secs, status.best_choices = mean_secs(records[0].run_secs), trace_choices(records[0].trace)


def _cpu_target(target: str | Target) -> Target:
    tgt = targets.resolve(target) if not isinstance(target, Target) else target
    if tgt.device != "cpu":
        raise UserError(
            f"target {tgt.name!r} is a {tgt.device} target; tuning covers CPU targets (x86, arm), whose conv/matmul "
            "kernels use Lepton's tunable template (GPU kernels come from TVM's dlight rules)"
        )
    return tgt


def _shipped(tgt: Target, directory: Path) -> ms.Database | None:
    shipped = dbs.shipped_dir(tgt)
    if not dbs.exists(shipped) or shipped.resolve() == directory.resolve():
        return None
    return ms.database.JSONDatabase(str(shipped / dbs.WORKLOADS), str(shipped / dbs.RECORDS), allow_missing=False)


def _exporter(tgt: Target) -> Callable[[tvm.runtime.Module], str] | None:
    """The builder's export: a shared library linked by the host compiler, or the aarch64 cross compiler for an
    aarch64 target on another host (else a .tar of objects, which the device links: MetaSchedule's default)."""
    triple = str(tgt.tvm.get("mtriple", ""))
    if triple.startswith("aarch64") and targets.host.cpu().kind != "arm":
        return measure.export_aarch64 if shutil.which(measure.CROSS_GCC) else None
    return measure.export_shared


def _runner(remote: Remote | None, evaluator: ms.runner.EvaluatorConfig) -> ms.Runner:
    if remote is None:
        return ms.runner.LocalRunner(timeout_sec=60, evaluator_config=evaluator, initializer=use_available_cpus)
    config = ms.runner.RPCConfig(remote.host, remote.port, remote.key, session_priority=1, session_timeout_sec=120)
    try:
        config.connect_tracker().summary()
    except Exception as e:  # noqa: BLE001 - socket and TVM errors alike mean the tracker is unusable
        raise UserError(f"--rpc {remote}: cannot reach the RPC tracker at {remote.host}:{remote.port}: {e}") from None
    return ms.runner.RPCRunner(config, evaluator_config=evaluator, max_workers=1)


def _model_name(model: ModelLike) -> str:
    if isinstance(model, str | os.PathLike):
        return os.path.basename(os.fspath(model))
    if isinstance(model, Graph):
        return model.name or "graph"
    if isinstance(model, onnx.ModelProto):
        return model.graph.name or "model"
    return "model"

