"""Human-readable and JSON reports of what a pipeline did."""

from __future__ import annotations

import dataclasses
from typing import Any

import sys

from rich.console import Console
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
