"""Human-readable and JSON reports of what a pipeline did."""

from __future__ import annotations

import dataclasses
from typing import Any

import os
import sys

from rich.console import Console
from rich.markup import escape
from rich.table import Table

from lepton.optimize import Optimized


def console(stderr: bool = False) -> Console:
    """A console that is 110 columns wide when writing to a file or pipe (CI logs), so tables fit."""
    stream = sys.stderr if stderr else sys.stdout
    return Console(stderr=stderr, width=None if stream.isatty() else 110)


def pass_table(result: Optimized) -> Table:
    """One row per pass: runs, nodes removed, what it changed, time."""
    table = Table(title=f"passes: {result.nodes_before} -> {result.nodes_after} nodes", title_justify="left")
    table.add_column("pass", no_wrap=True)
    table.add_column("runs", justify="right", no_wrap=True)
    table.add_column("removed", justify="right", no_wrap=True)
    table.add_column("ms", justify="right", no_wrap=True)
    table.add_column("what changed", min_width=20)
    for row in result.log.summary():
        stats: dict[str, int] = row["stats"]  # type: ignore[assignment]
        what = ", ".join(f"{k.replace('_', ' ')} {v}" for k, v in stats.items() if v) or "-"
        table.add_row(
            str(row["pass"]), str(row["runs"]), str(row["nodes_removed"]),
            f"{float(row['seconds']) * 1e3:.1f}", what,  # type: ignore[arg-type]
        )
    return table


def rule_table(records: list[dict[str, Any]]) -> Table | None:
    """Per rewrite rule that fired (manifest-form pass log): its pass, nodes it was tried on, times
    it fired, time spent. None when no rule fired."""
    rows: dict[tuple[str, str], list[float]] = {}
    for r in records:
        for rule, st in r.get("rules", {}).items():
            acc = rows.setdefault((r["pass"], rule), [0, 0, 0.0])
            acc[0] += st["tried"]
            acc[1] += st["matched"]
            acc[2] += st["seconds"]
    fired = {k: v for k, v in rows.items() if v[1]}
    if not fired:
        return None
    table = Table(title="rewrite rules that fired", title_justify="left")
    for col in ("pass", "rule", "tried", "fired", "ms"):
        table.add_column(col, justify="right" if col in ("tried", "fired", "ms") else "left", no_wrap=True)
    for (pname, rule), (tried, hits, secs) in fired.items():
        table.add_row(pname, rule, str(int(tried)), str(int(hits)), f"{secs * 1e3:.1f}")
    return table


def pass_json(result: Optimized) -> dict[str, Any]:
    """The same information for machines, plus the full per-run log."""
    return {
        "nodes_before": result.nodes_before,
        "nodes_after": result.nodes_after,
        "iterations": result.log.iterations,
        "converged": result.log.converged,
        "passes": result.log.summary(),
        "log": [dataclasses.asdict(r) for r in result.log.records],
    }


def compile_summary(out: Console, result: Any) -> None:
    """What `lepton compile` did, for people: passes, artifact files, notes, verification."""
    m = result.manifest
    out.print(
        f"[bold]compiled[/] for [bold]{result.target.name}[/] ({result.target.kind}) in {result.seconds:.1f} s"
        + (" [dim](from the compile cache)[/]" if result.cached else ""),
        highlight=False,
    )
    out.print(log_table(result.passes))
    rules = rule_table(result.passes)
    if rules is not None:
        out.print(rules)
    files = Table(title=f"artifact {result.path}", title_justify="left")
    files.add_column("file")
    files.add_column("bytes", justify="right")
    files.add_column("sha256", no_wrap=True)
    for rel, digest in sorted(m.files.items()):
        size = os.path.getsize(os.path.join(result.path, rel))
        files.add_row(rel, f"{size:,}", digest[:16])
    out.print(files)
    for r in result.passes:
        for note in r.get("notes", ()):
            out.print(f"[cyan]{escape(r['pass'])}:[/] {escape(note)}", highlight=False)
    for note in m.notes:
        out.print(f"[yellow]note:[/] {escape(note)}", highlight=False)
    if result.verify_report is not None:
        out.print(result.verify_report.table())
        out.print(f"[green]verified[/]: {escape(result.verify_report.summary())}", highlight=False)
    elif result.module is None:
        out.print(f"not verified here: {result.target.name} modules do not run on this machine; "
                  f"run `lepton verify {result.path}` on the device", highlight=False)
    else:
        out.print("[yellow]not verified (--no-verify)[/]")


def log_table(records: list[dict[str, Any]]) -> Table:
    """Per pass name, from a pass log (manifest form): runs, nodes before/after, time, what changed."""
    rows: dict[str, dict[str, Any]] = {}
    for r in records:
        row = rows.setdefault(r["pass"], {"runs": 0, "removed": 0, "seconds": 0.0, "stats": {}})
        row["runs"] += 1
        row["removed"] += r["nodes_before"] - r["nodes_after"]
        row["seconds"] += r["seconds"]
        for k, v in r.get("stats", {}).items():
            row["stats"][k] = row["stats"].get(k, 0) + v
    first = records[0]["nodes_before"] if records else 0
    last = records[-1]["nodes_after"] if records else 0
    table = Table(title=f"passes: {first} -> {last} nodes", title_justify="left")
    for col in ("pass", "runs", "removed", "ms", "what changed"):
        table.add_column(col, justify="right" if col in ("runs", "removed", "ms") else "left")
    for name, row in rows.items():
        what = ", ".join(f"{k.replace('_', ' ')} {v}" for k, v in row["stats"].items() if v) or "-"
        table.add_row(name, str(row["runs"]), str(row["removed"]), f"{row['seconds'] * 1e3:.1f}", what)
    return table


def compile_json(result: Any) -> dict[str, Any]:
    """The compile result for machines."""
    return {
        "artifact": result.path,
        "target": result.target.to_dict(),
        "cached": result.cached,
        "seconds": round(result.seconds, 3),
        "library": result.manifest.library,
        "files": result.manifest.files,
        "notes": result.manifest.notes,
        "passes": result.passes,
        "verified": None if result.verify_report is None else result.verify_report.ok,
        "verify": None if result.verify_report is None else result.verify_report.to_json(),
    }


def outputs_json(outputs: dict[str, Any]) -> dict[str, Any]:
    """Name -> dtype, shape and summary statistics of each output array."""
    import numpy as np

    res = {}
    for name, a in outputs.items():
        entry: dict[str, Any] = {"dtype": str(a.dtype), "shape": list(a.shape)}
        if a.size and np.issubdtype(a.dtype, np.number):
            entry.update(min=float(a.min()), max=float(a.max()), mean=float(a.astype(np.float64).mean()))
        res[name] = entry
    return res


def outputs_table(outputs: dict[str, Any]) -> Table:
    """One row per output with a few leading values."""
    table = Table(title="outputs", title_justify="left")
    for col in ("output", "dtype", "shape", "first values"):
        table.add_column(col)
    for name, a in outputs.items():
        head = ", ".join(f"{v:.4g}" if isinstance(v, float) else str(v) for v in a.reshape(-1)[:6].tolist())
        table.add_row(name, str(a.dtype), str(list(a.shape)), head + (" ..." if a.size > 6 else ""))
    return table
