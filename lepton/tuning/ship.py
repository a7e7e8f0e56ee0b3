"""Build the shipped tuning database for this machine's target from the models it is given.

The shipped database is tuned on the bench models: `python -m bench.ship_tuning` passes them in
(and their inputs) and holds the command line.

For each model: tune (resumable, into `<work>/<tuning_key>/`, shipped workloads included),
then write the pruned database (best record per workload) to `targets/tuning/<tuning_key>/`
and `MANIFEST.json` there: TVM version, target, CPU, trials and time per model, and end-to-end
latency of the compiled model with the default schedules and with the shipped database
(interleaved runs, median), next to onnxruntime's. Run it on the reference machine.
"""

from __future__ import annotations

import contextlib
import datetime
import importlib.metadata
import json
import os
import platform
import statistics
import tempfile
import time
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any

import numpy as np
import onnx

import lepton
import targets
from lepton.codegen import tuning_databases as dbs
from lepton.tuning.tuner import EVALUATOR, TuneReport, tune
from targets.host import cpu_model

ModelMaker = Callable[[], onnx.ModelProto]
Inputs = Callable[[onnx.ModelProto], dict[str, np.ndarray]]


def ship(models: Mapping[str, ModelMaker], minutes: Mapping[str, float], work: Path, target: str = "x86", *,
         inputs: Inputs) -> dict[str, Any]:
    """Tune, prune, measure and write the shipped database and its manifest; returns the manifest.

    `models` makes each model by name; `minutes` names the models to tune and the minutes for each;
    `inputs` gives a model's inputs for the latency runs."""
    tgt = targets.resolve(target)
    load_at_start = os.getloadavg()
    full = work / tgt.tuning_key
    entries: dict[str, dict[str, Any]] = {}
    for name, mins in minutes.items():
        model = models[name]()
        report = tune(model, tgt, budget_seconds=mins * 60, database_dir=full, include_shipped=True, progress=_say(name))
        entries[name] = _model_entry(report, mins)
    out = dbs.shipped_dir(tgt)
    dbs.write(dbs.open_database(full), out)
    for name in minutes:
        entries[name]["latency_ms"] = _latencies(models[name](), tgt, inputs)
        print(f"{name}: {entries[name]['latency_ms']}", flush=True)
    pruned = dbs.open_database(out)
    manifest = {
        "tuning_key": tgt.tuning_key,
        "created": datetime.date.today().isoformat(),
        "tools": {d: importlib.metadata.version(d) for d in ("apache-tvm", "apache-tvm-ffi")},
        "target": tgt.to_dict() | {"source": os.path.basename(tgt.source)},
        "cpu": {"model": cpu_model(), "features": list(tgt.features), "cores": os.cpu_count(), "machine": platform.machine()},
        "evaluator": EVALUATOR._asdict(),
        "workloads": len(pruned.get_all_tuning_records()),  # pruned: one record per workload
        "models": entries,
        "load_average": {"start": load_at_start, "end": os.getloadavg()},  # 1/5/15-minute: how quiet the machine was
    }
    (out / dbs.MANIFEST).write_text(json.dumps(manifest, indent=2) + "\n")
    return manifest


def _model_entry(report: TuneReport, minutes: float) -> dict[str, Any]:
    return {
        "tasks": len(report.tasks),
        "grid_points": sum(t.grid for t in report.tasks),
        "measured_points": sum(t.measured for t in report.tasks),
        "trials_this_run": report.trials,
        "budget_minutes": minutes,
        "tuning_seconds": round(report.elapsed, 1),
        "kernel_ms_default": round(report.estimated_default * 1e3, 3),
        "kernel_ms_tuned": round(report.estimated_best * 1e3, 3),
    }


def _latencies(model: onnx.ModelProto, tgt: targets.Target, inputs: Inputs, seconds: float = 20.0,
               calls: int = 5) -> dict[str, float | int]:
    """Median end-to-end latency (ms) of the model compiled with the default schedules and with the shipped
    database only, and in onnxruntime. Rounds for `seconds`, each tool `calls` times in a row per round, so
    load from other work hits all alike and no tool is always the one right after another's spinning
    threads (onnxruntime's and TVM's pools spin for a while after a call)."""
    import onnxruntime as ort

    feeds = inputs(model)
    with _env(LEPTON_NO_TUNING="1"):
        default = lepton.compile(model, tgt, use_cache=False)
    with tempfile.TemporaryDirectory() as empty, _env(LEPTON_TUNING_DIR=empty):
        tuned = lepton.compile(model, tgt, use_cache=False)
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    runs: dict[str, Callable[[], object]] = {
        "default": lambda: default.run(feeds),
        "tuned": lambda: tuned.run(feeds),
        "onnxruntime": lambda: session.run(None, feeds),
    }
    times: dict[str, list[float]] = {k: [] for k in runs}
    for run in runs.values():
        run()
    end = time.monotonic() + seconds
    while time.monotonic() < end or min(len(v) for v in times.values()) < calls:
        for key, run in runs.items():
            for _ in range(calls):
                t0 = time.perf_counter()
                run()
                times[key].append(time.perf_counter() - t0)
    return {k: round(statistics.median(v) * 1e3, 3) for k, v in times.items()} | {"runs": min(len(v) for v in times.values())}


@contextlib.contextmanager
def _env(**values: str) -> Iterator[None]:
    saved = {k: os.environ.get(k) for k in values}
    os.environ.update(values)
    try:
        yield
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def _say(name: str) -> Callable[[TuneReport], None]:
    def say(report: TuneReport) -> None:
        done = sum(t.done for t in report.tasks)
        print(f"{name}: {report.elapsed:6.0f}s {report.trials:5d} trials, {done}/{len(report.tasks)} tasks done, "
              f"kernels {report.estimated_default * 1e3:.2f} -> {report.estimated_best * 1e3:.2f} ms", flush=True)

    return say
