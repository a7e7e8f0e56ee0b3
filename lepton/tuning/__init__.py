"""Tuning Lepton's CPU conv/matmul template with MetaSchedule (`lepton tune`), and the databases compile applies.

- `extract_tasks(model, target)`: the model's conv/matmul workloads, exactly as compile sees them.
- `tune(model, target, budget_seconds=...)`: measure the template's tile decisions on them within a
  wall-clock budget (locally, or on a device through a TVM RPC tracker), resumably, into the local
  database (`local_dir(target)`).
- `databases_for(target)`: the shipped and local databases compile applies, in that order, before
  Lepton's default schedules; `prune`/`write` make a shippable database (best record per workload).
"""

from lepton.codegen.tuning_databases import (
    databases_for,
    fingerprint,
    local_dir,
    open_database,
    prune,
    shipped_dir,
    write,
)
from lepton.tuning.tuner import (
    Remote,
    Task,
    TaskStatus,
    TuneReport,
    extract_tasks,
    parse_budget,
    parse_rpc,
    tune,
)

__all__ = [
    "Remote",
    "Task",
    "TaskStatus",
    "TuneReport",
    "databases_for",
    "extract_tasks",
    "fingerprint",
    "local_dir",
    "open_database",
    "parse_budget",
    "parse_rpc",
    "prune",
    "shipped_dir",
    "tune",
    "write",
]
