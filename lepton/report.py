"""Human-readable and JSON reports of what a pipeline did."""

from __future__ import annotations

import dataclasses
from typing import Any

from rich.table import Table

from lepton.optimize import Optimized


def pass_table(result: Optimized) -> Table:
    """One row per pass: runs, nodes removed, what it changed, time."""
    table = Table(title=f"passes: {result.nodes_before} -> {result.nodes_after} nodes", title_justify="left")
    for col in ("pass", "runs", "changed", "nodes removed", "what", "ms"):
        table.add_column(col, justify="right" if col in ("runs", "changed", "nodes removed", "ms") else "left")
    for row in result.log.summary():
        stats: dict[str, int] = row["stats"]  # type: ignore[assignment]
        what = ", ".join(f"{k.replace('_', ' ')} {v}" for k, v in stats.items() if v) or "-"
        table.add_row(
            str(row["pass"]), str(row["runs"]), str(row["modified"]), str(row["nodes_removed"]), what,
            f"{float(row['seconds']) * 1e3:.1f}",  # type: ignore[arg-type]
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
