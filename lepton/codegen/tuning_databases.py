"""Tuning databases: where they live, applying them at compile time, pruning them for shipping.

Part of codegen (kernel scheduling applies them, `tvm_build.cpu_schedule_passes`); `lepton.tuning`, which
fills them, re-exports what users need.

A database is a MetaSchedule `JSONDatabase` folder (`database_workload.json`,
`database_tuning_record.json`) keyed by the target's `tuning_key`:

- shipped: `targets/tuning/<tuning_key>/` (pruned: the best record per workload, plus MANIFEST.json);
- local: `$LEPTON_TUNING_DIR/<tuning_key>/`, else `$XDG_CACHE_HOME/lepton/tuning/<tuning_key>/`,
  else `~/.cache/lepton/tuning/<tuning_key>/` (everything `lepton tune` measured; resumable).

Compile applies the shipped database, then the local one, then the default rules: a function
takes the best record of the first database that has its workload (same structure as the
function tuning extracted: same passes, same legalization). A workload no database has, or a
record whose trace no longer applies, leaves the function to Lepton's default schedules.
`LEPTON_NO_TUNING=1` turns the databases off (to compare against the default schedules).
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import shutil
import struct
import tempfile
import warnings
from pathlib import Path

import tvm
from tvm import IRModule, s_tir, tirx
from tvm.s_tir import meta_schedule as ms

import targets
from lepton_ir import UserError
from targets import Target

WORKLOADS = "database_workload.json"
RECORDS = "database_tuning_record.json"
MANIFEST = "MANIFEST.json"

_SCHEDULED = "tirx.is_scheduled"
_loaded: dict[tuple[str, int, int, int, int], ms.database.JSONDatabase] = {}


def shipped_dir(target: Target) -> Path:
    """The shipped database folder for the target's tuning key (it may not exist)."""
    return Path(targets.__file__).resolve().parent / "tuning" / target.tuning_key


def local_dir(target: Target) -> Path:
    """The local database folder `lepton tune` writes for the target's tuning key (it may not exist)."""
    if os.environ.get("LEPTON_TUNING_DIR"):
        root = Path(os.environ["LEPTON_TUNING_DIR"])
    else:
        root = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "lepton" / "tuning"
    return root / target.tuning_key


def exists(directory: Path) -> bool:
    """Whether `directory` holds a database (both JSON files)."""
    return (directory / WORKLOADS).is_file() and (directory / RECORDS).is_file()


def open_database(directory: Path) -> ms.database.JSONDatabase:
    """The JSONDatabase in `directory`, created (with its folders) when missing; records are appended as committed.
    UserError when its files cannot be read."""
    directory.mkdir(parents=True, exist_ok=True)
    try:
        return ms.database.JSONDatabase(str(directory / WORKLOADS), str(directory / RECORDS), allow_missing=True)
    except Exception as e:  # noqa: BLE001 - TVM reports a damaged file as RuntimeError/ValueError/...
        raise UserError(
            f"the tuning database in {directory} cannot be read ({e}); a session killed while writing leaves a "
            f"partial last line in {RECORDS}: delete that line, or move the folder away to start afresh"
        ) from None


def databases_for(target: Target) -> list[tuple[Path, ms.database.JSONDatabase]]:
    """The existing databases compile applies for `target`, in order: shipped, then local. Empty for GPU targets
    and under LEPTON_NO_TUNING=1. Loaded once per process while the files stay unchanged; one that cannot be
    read (a session killed mid-write) is left out with a warning."""
    if target.device != "cpu" or os.environ.get("LEPTON_NO_TUNING", "") not in ("", "0"):
        return []
    found = []
    for directory in dict.fromkeys((shipped_dir(target), local_dir(target))):
        if exists(directory):
            try:
                found.append((directory, _load(directory)))
            except Exception as e:  # noqa: BLE001 - TVM reports a damaged file as RuntimeError/ValueError/...
                warnings.warn(f"tuning database {directory} cannot be read ({e}); compiling without it", stacklevel=2)
    return found


def _load(directory: Path) -> ms.database.JSONDatabase:
    stats = [os.stat(directory / name) for name in (WORKLOADS, RECORDS)]
    key = (str(directory), *(s.st_size for s in stats), *(s.st_mtime_ns for s in stats))
    if key not in _loaded:
        _loaded[key] = ms.database.JSONDatabase(str(directory / WORKLOADS), str(directory / RECORDS), allow_missing=False)
    return _loaded[key]


def fingerprint(target: Target) -> str:
    """sha256 over the contents of the databases compile would apply for `target` (changes whenever they do)."""
    h = hashlib.sha256()
    for directory, _ in databases_for(target):
        for name in (WORKLOADS, RECORDS):
            h.update(name.encode())
            h.update(hashlib.sha256((directory / name).read_bytes()).digest())
    return h.hexdigest()


def apply_passes(target: Target) -> list[tvm.transform.Pass]:
    """The compile-time pass applying `target`'s databases (none when there are none)."""
    databases = [db for _, db in databases_for(target)]
    return [ApplyDatabases(databases)] if databases else []


@tvm.transform.module_pass(opt_level=0, name="LeptonApplyTuning")
class ApplyDatabases:
    """Schedule every unscheduled PrimFunc whose workload a database has, from its best record (first database
    wins); the function is marked scheduled, so the default rules leave it. Needs `Target.current()`."""

    def __init__(self, databases: list[ms.Database]) -> None:
        self.databases = databases

    def transform_module(self, mod: IRModule, _ctx: tvm.transform.PassContext) -> IRModule:
        target = tvm.target.Target.current(allow_none=False)
        updates = {}
        for gv, func in mod.functions_items():
            if isinstance(func, tirx.PrimFunc) and not func.attrs.get(_SCHEDULED, False):
                scheduled = self._schedule(func, target)
                if scheduled is not None:
                    updates[gv] = scheduled
        for gv, func in updates.items():
            mod[gv] = func
        return mod

    def _schedule(self, func: tirx.PrimFunc, target: tvm.target.Target) -> tirx.PrimFunc | None:
        workload = workload_of(func)
        for db in self.databases:
            record = db.query_tuning_record(workload, target, "main")
            if record is None:
                continue
            try:
                sch = s_tir.Schedule(func)  # the trace replays on the function itself: its attributes stay
                record.trace.apply_to_schedule(sch, remove_postproc=False)
            except Exception:  # noqa: BLE001 - a stale record (s_tir raises several types): the default rules take it
                continue
            return sch.mod["main"].with_attr(_SCHEDULED, True)
        return None


def workload_of(func: tirx.PrimFunc) -> IRModule:
    """The IRModule MetaSchedule keys a function's records by (what its task extraction normalizes it to)."""
    return tvm.get_global_func("tvm.s_tir.meta_schedule.normalize_mod")(func)


def prune(database: ms.Database) -> ms.database.MemoryDatabase:
    """A database holding, for every workload of `database` with a successful measurement, its best record."""
    pruned = ms.database.MemoryDatabase()
    database.dump_pruned(pruned)
    return pruned


def write(database: ms.Database, directory: Path) -> None:
    """Replace the database files in `directory` by the best record per workload of `database`, workloads stored
    compactly (made whole in a temporary folder first, then moved into place); other files in `directory` stay."""
    directory.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=".db-", dir=directory))
    try:
        database.dump_pruned(ms.database.JSONDatabase(str(staging / WORKLOADS), str(staging / RECORDS)))
        _compact_workloads(staging / WORKLOADS)
        for name in (WORKLOADS, RECORDS):
            os.replace(staging / name, directory / name)
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def _compact_workloads(path: Path) -> None:
    """Re-encode each workload without the JSON indentation TVM writes (half the size, same content).

    A workload line is `[structural hash, base64(u64 little-endian length + JSON of the IRModule)]`;
    a line in any other shape is kept as it is.
    """
    lines = []
    for line in path.read_text().splitlines():
        shash, payload = json.loads(line)
        raw = base64.b64decode(payload)
        if len(raw) >= 8 and struct.unpack_from("<Q", raw)[0] == len(raw) - 8:
            body = json.dumps(json.loads(raw[8:]), separators=(",", ":")).encode()
            payload = base64.b64encode(struct.pack("<Q", len(body)) + body).decode()
        lines.append(json.dumps([shash, payload]))
    path.write_text("".join(f"{line}\n" for line in lines))
