"""Run ONNX's backend node suite through Lepton and print the pass count.

    python -m tests.conformance.run_suite                 # all 1884 cases, results in bench/results/conformance.json
    python -m tests.conformance.run_suite --subset        # the fixed subset `make test` runs
    python -m tests.conformance.run_suite -k conv -k gemm # cases whose name contains any of these
    python -m tests.conformance.run_suite --tvm-only      # TVM's ONNX frontend alone, for comparison

Each case runs in a worker process (`--jobs`, default: the cores, at most 4); a case that kills
its worker is recorded as "crash", one that runs past `--timeout` seconds as "timeout", and the
worker is replaced. Workers are forked from this process after the cases are generated (this
process never imports TVM; where it has, they are spawned) and are recycled every `--recycle`
cases to bound memory.

Exit status: 0 when every case outside expected_failures.toml passes, every listed case fails,
and the pass count is at least the floor (floor.txt); 1 otherwise. `--update-floor` raises the
floor to the current pass count (never lowers it).
"""

from __future__ import annotations

import argparse
import datetime as dt
import fnmatch
import functools
import json
import multiprocessing as mp
import os
import shutil
import sys
import tempfile
import time
from collections import Counter
from multiprocessing.connection import Connection, wait
from pathlib import Path

from . import suite

RESULTS = Path(__file__).resolve().parents[2] / "bench" / "results" / "conformance.json"


# ----- workers --------------------------------------------------------------------------


def _worker(conn: Connection, tmp: str, tvm_only: bool, specialize: bool) -> None:
    os.environ["TMPDIR"] = tmp
    tempfile.tempdir = tmp
    # TVM's C++ warnings go to a log (its tail is reported when the worker dies), not the progress lines
    log = os.open(os.path.join(tmp, "worker.log"), os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
    os.dup2(log, 1)
    os.dup2(log, 2)
    os.close(log)
    run = suite.run_case_tvm_only if tvm_only else functools.partial(suite.run_case, specialize=specialize)
    try:
        while True:
            name = conn.recv()
            if name is None:
                break
            conn.send(run(name).as_dict())
    except (EOFError, KeyboardInterrupt):
        pass
    finally:
        conn.close()


class _Worker:
    def __init__(self, ctx: mp.context.BaseContext, tmp: str, tvm_only: bool, specialize: bool) -> None:
        self.tmp = tempfile.mkdtemp(dir=tmp)
        parent, child = ctx.Pipe()
        self.proc = ctx.Process(target=_worker, args=(child, self.tmp, tvm_only, specialize), daemon=True)
        self.proc.start()
        child.close()
        self.conn = parent
        self.case: str | None = None
        self.started = 0.0
        self.done = 0

    def give(self, name: str) -> None:
        self.case, self.started = name, time.monotonic()
        self.conn.send(name)

    def log_tail(self) -> str:
        try:
            with open(os.path.join(self.tmp, "worker.log"), errors="replace") as f:
                lines = [ln.strip() for ln in f.read()[-4000:].splitlines() if ln.strip()]
        except OSError:
            return ""
        return f": {lines[-1][:200]}" if lines else ""

    def stop(self, kill: bool = False) -> None:
        if not kill:
            try:
                self.conn.send(None)
            except (BrokenPipeError, OSError):
                kill = True
        self.proc.join(timeout=None if not kill else 0)
        if self.proc.is_alive():
            self.proc.kill()
            self.proc.join()
        self.conn.close()
        shutil.rmtree(self.tmp, ignore_errors=True)


def run_cases(
    names: list[str], jobs: int, timeout: float, recycle: int = 150, tvm_only: bool = False, progress: bool = True,
    specialize: bool = True,
) -> list[suite.CaseResult]:
    """Run `names` in `jobs` forked workers; results in the order of `names`."""
    # Fork (workers inherit the generated cases) unless this process has loaded TVM, whose threads
    # make fork unsafe (under pytest other tests may have); then spawn, and each worker generates them.
    ctx = mp.get_context("spawn" if "tvm" in sys.modules else "fork")
    if ctx.get_start_method() == "fork":
        suite.all_cases()
    root = tempfile.mkdtemp(prefix="lepton-conformance-")
    todo = list(reversed(names))
    results: dict[str, suite.CaseResult] = {}
    workers = [_Worker(ctx, root, tvm_only, specialize) for _ in range(min(jobs, len(names)) or 1)]
    t0 = time.monotonic()
    try:
        for w in workers:
            if todo:
                w.give(todo.pop())
        while any(w.case for w in workers):
            busy = [w for w in workers if w.case]
            soonest = min(w.started + timeout for w in busy) - time.monotonic()
            ready = wait([w.conn for w in busy], timeout=max(0.0, soonest))
            for i, w in enumerate(workers):
                if w.case is None:
                    continue
                result = None
                if w.conn in ready:
                    try:
                        data = w.conn.recv()
                        data["specialized"] = tuple(data.get("specialized", ()))
                        result = suite.CaseResult(**data)
                    except (EOFError, OSError):
                        w.proc.join(timeout=5)
                        code = w.proc.exitcode
                        result = suite.CaseResult(w.case, "crash", f"worker died (exit code {code}){w.log_tail()}",
                                                  time.monotonic() - w.started)
                elif time.monotonic() - w.started > timeout:
                    result = suite.CaseResult(w.case, "timeout", f"ran past {timeout:g} s", time.monotonic() - w.started)
                if result is None:
                    continue
                results[result.name] = result
                if progress:
                    _progress(len(results), len(names), result, time.monotonic() - t0)
                w.done += 1
                w.case = None
                if result.status in ("crash", "timeout") or w.done >= recycle:
                    w.stop(kill=result.status in ("crash", "timeout"))
                    w = workers[i] = _Worker(ctx, root, tvm_only, specialize)
                if todo:
                    w.give(todo.pop())
    finally:
        for w in workers:
            w.stop(kill=w.case is not None)
        shutil.rmtree(root, ignore_errors=True)
    return [results[n] for n in names]


def _progress(done: int, total: int, r: suite.CaseResult, elapsed: float) -> None:
    mark = {"pass": ".", "fail": "F", "error": "E", "crash": "C", "timeout": "T"}[r.status]
    line = f"[{done:4d}/{total}] {elapsed:6.0f}s {mark} {r.name}"
    if r.status != "pass":
        line += f"  -- {r.reason[:160]}"
    print(line, file=sys.stderr, flush=True)


# ----- the report ---------------------------------------------------------------------------


def judge(results: list[suite.CaseResult], expected: dict[str, tuple[str, str]]) -> dict[str, list[str]]:
    """Cases that fail but are not listed, and listed cases that pass."""
    return {
        "unexpected_failures": [r.name for r in results if not r.passed and r.name not in expected],
        "unexpected_passes": [r.name for r in results if r.passed and r.name in expected],
    }


def report(results: list[suite.CaseResult], total: int, command: str, seconds: float, tvm_only: bool) -> dict[str, object]:
    expected = suite.expected_failures()
    status = Counter(r.status for r in results)
    by_category: Counter[str] = Counter()
    for r in results:
        if not r.passed:
            by_category[expected[r.name][0] if r.name in expected else "(not listed)"] += 1
    return {
        "what": "TVM's ONNX frontend alone (from_onnx + tvm.compile)" if tvm_only else "Lepton (lepton.backend.LeptonBackend, x86)",
        "date": dt.datetime.now(dt.UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "command": command,
        "versions": _versions(),
        "total_cases": total,
        "executed": len(results),
        "passed": status["pass"],
        "passed_with_specialization": sum(1 for r in results if r.passed and r.specialized),
        "status": dict(sorted(status.items())),
        "failures_by_category": dict(by_category.most_common()),
        "floor": suite.floor(),
        "seconds": round(seconds, 1),
        **({} if tvm_only else judge(results, expected)),
        "cases": [r.as_dict() | {"seconds": round(r.seconds, 3)} for r in results],
    }


def _versions() -> dict[str, str]:
    from importlib.metadata import version

    return {p: version(p) for p in ("onnx", "onnxruntime", "apache-tvm", "apache-tvm-ffi")}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m tests.conformance.run_suite", description=__doc__.splitlines()[0])
    ap.add_argument("--subset", action="store_true", help="only the fixed subset make test runs (subset.txt)")
    ap.add_argument("-k", dest="patterns", action="append", default=[], help="cases whose name contains this (or matches this glob); repeatable")
    ap.add_argument("--jobs", "-j", type=int, default=suite.default_jobs())
    ap.add_argument("--timeout", type=float, default=120.0, help="seconds per case (default 120)")
    ap.add_argument("--recycle", type=int, default=150, help="replace a worker after this many cases")
    ap.add_argument("--no-specialize", action="store_true", help="no value specialization of shape-setting inputs (lepton.backend)")
    ap.add_argument("--tvm-only", action="store_true", help="TVM's ONNX frontend alone, no Lepton passes (baseline)")
    ap.add_argument("--json", default=None, help=f"results file (default {RESULTS.relative_to(Path.cwd()) if RESULTS.is_relative_to(Path.cwd()) else RESULTS} for a full run, none otherwise)")
    ap.add_argument("--update-floor", action="store_true", help="raise floor.txt to this run's pass count (full runs only)")
    ap.add_argument("--quiet", "-q", action="store_true")
    args = ap.parse_args(argv)

    names = suite.case_names()
    total = len(names)
    full = not args.subset and not args.patterns
    if args.subset:
        names = suite.subset()
    if args.patterns:
        names = [n for n in names if any(p in n or fnmatch.fnmatch(n, p) for p in args.patterns)]
    t0 = time.monotonic()
    results = run_cases(names, args.jobs, args.timeout, args.recycle, args.tvm_only, progress=not args.quiet,
                        specialize=not args.no_specialize)
    seconds = time.monotonic() - t0
    command = "python -m tests.conformance.run_suite " + " ".join(argv if argv is not None else sys.argv[1:])
    rep = report(results, total, command.strip(), seconds, args.tvm_only)
    out = args.json or (str(RESULTS.with_name("conformance_tvm_only.json") if args.tvm_only else RESULTS) if full else None)
    if out:
        Path(out).parent.mkdir(parents=True, exist_ok=True)
        Path(out).write_text(json.dumps(rep, indent=1) + "\n")

    print(f"\n{rep['what']}: {rep['passed']} of {len(results)} cases passed ({total} in the suite) in {seconds:.0f} s")
    print("status: " + ", ".join(f"{k} {v}" for k, v in rep["status"].items()))
    if args.tvm_only:
        return 0
    for k in ("unexpected_failures", "unexpected_passes"):
        if rep[k]:
            print(f"{k.replace('_', ' ')} ({len(rep[k])}): " + ", ".join(rep[k][:40]) + (" ..." if len(rep[k]) > 40 else ""))
    ok = not rep["unexpected_failures"] and not rep["unexpected_passes"]
    if full:
        print(f"floor: {rep['floor']} (recorded pass count)")
        ok = ok and rep["passed"] >= rep["floor"] and len(results) >= suite.MIN_EXECUTED
        if args.update_floor and rep["passed"] > rep["floor"]:
            suite.FLOOR.write_text(suite.FLOOR.read_text().replace(str(rep["floor"]), str(rep["passed"]), 1))
            print(f"floor raised to {rep['passed']}")
    if out:
        print(f"results: {out}")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
