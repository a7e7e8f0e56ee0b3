"""`lepton tune`: tune a model's conv/matmul kernels for a CPU target, with a live progress table."""

from __future__ import annotations

import json
import sys
import time
from contextlib import nullcontext
from typing import TYPE_CHECKING, Annotated

import typer
from rich.console import Group, JustifyMethod
from rich.live import Live
from rich.table import Table
from rich.text import Text

from lepton.cli_errors import Verbose, fail
from lepton.input_shapes import parse_input_shape
from lepton.report import console

if TYPE_CHECKING:
    from lepton.tuning import TuneReport

err = console(stderr=True)
out = console()


def tune_cmd(
    model: Annotated[str, typer.Argument(help="ONNX model file")],
    target: Annotated[str, typer.Option("--target", "-t", help="CPU target: name (lepton targets), NAME{opt=v}, .toml, or auto")] = "auto",
    budget: Annotated[str, typer.Option("--budget", "-b", help="wall-clock budget: 90s, 30m, 1h, 1h30m")] = "10m",
    rpc: Annotated[str | None, typer.Option("--rpc", help="measure on a device registered with a TVM RPC tracker: HOST:PORT:KEY")] = None,
    input_shape: Annotated[list[str] | None, typer.Option("--input-shape", help="pin an input's shape: NAME:D1,D2,... (repeatable)")] = None,
    db: Annotated[str | None, typer.Option("--db", help="database folder (default: the local one compile applies)")] = None,
    trials: Annotated[int | None, typer.Option("--trials", min=1, help="stop after this many measurements")] = None,
    include_shipped: Annotated[bool, typer.Option("--include-shipped", help="also tune workloads the shipped database has")] = False,
    as_json: Annotated[bool, typer.Option("--json", help="print the final report as JSON on stdout")] = False,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="print nothing but errors")] = False,
    verbose: Verbose = False,
) -> None:
    """Tune MODEL's conv/matmul kernels (Lepton's tile sizes) for a CPU target within a wall-clock budget.

    Measurements go to a resumable database (~/.cache/lepton/tuning/<tuning key>/, or $LEPTON_TUNING_DIR/<key>/)
    that `lepton compile` applies after the shipped one and before the default schedules. Run it again to go on.
    """
    from lepton.tuning import parse_budget, tune  # imports TVM

    try:
        seconds = parse_budget(budget)
        shapes = dict(parse_input_shape(s) for s in input_shape or [])
        display = _Display()
        live = Live(display, console=err, refresh_per_second=1, transient=False) if not (quiet or as_json) else None
        with live if live is not None else nullcontext():
            report = tune(model, target, budget_seconds=seconds, database_dir=db, input_shapes=shapes, rpc=rpc,
                          progress=display.update, max_trials=trials, include_shipped=include_shipped)
        if live is not None:
            err.line()  # the live table leaves the cursor at the end of its last row
    except KeyboardInterrupt:
        err.print("[yellow]interrupted[/]: every measurement so far is in the database; run the command again to go on")
        raise typer.Exit(130) from None
    except Exception as e:  # noqa: BLE001 - mapped to exit codes
        fail(e, as_json=as_json, verbose=verbose)
        return
    if as_json:
        sys.stdout.write(json.dumps(report.to_json(), indent=2) + "\n")
    elif not quiet:
        out.print(_summary(report), highlight=False)


class _Display:
    """The live view: the latest report, its clock running between reports (which come once a round)."""

    def __init__(self) -> None:
        self.report: TuneReport | None = None
        self.at = time.monotonic()

    def update(self, report: TuneReport) -> None:
        self.report, self.at = report, time.monotonic()

    def __rich__(self) -> Group | Text:
        if self.report is None:
            return Text("finding the model's conv/matmul workloads")
        return render(self.report, self.report.elapsed + time.monotonic() - self.at)


def render(report: TuneReport, elapsed: float) -> Group:
    """The progress display: a header (time used of the budget, trials) and one row per task."""
    from lepton.tuning.space import describe_tiles  # imports TVM

    header = Text.from_markup(
        f"[bold]tuning[/] {report.model} for [bold]{report.target}[/] ({report.tuning_key}): "
        f"{_duration(elapsed)} of {_duration(report.budget_seconds)}, "
        f"{_duration(max(0.0, report.budget_seconds - elapsed))} left, {report.trials} trials"
        + (f" on {report.rpc}" if report.rpc else "")
    )
    table = Table(title_justify="left", show_edge=False)
    columns: list[tuple[str, JustifyMethod]] = [("task", "left"), ("calls", "right"), ("measured", "right"),
                                                 ("default ms", "right"), ("best ms", "right"), ("speedup", "right"),
                                                 ("tiles", "left")]
    for name, justify in columns:
        wide = name == "task"
        table.add_column(name, justify=justify, no_wrap=True, overflow="ellipsis",
                         max_width=36 if wide else None, min_width=None if wide else len(name))
    for t in report.tasks:
        if t.shipped:
            table.add_row(t.name, str(t.weight), "shipped", "", _ms(t.best_secs), "", describe_tiles(t.best_choices))
            continue
        speedup = f"{t.default_secs / t.best_secs:.2f}x" if t.default_secs and t.best_secs else ""
        table.add_row(
            t.name, str(t.weight), f"{t.measured}/{t.grid}" + (" done" if t.done else ""),
            _ms(t.default_secs), _ms(t.best_secs), speedup, describe_tiles(t.best_choices),
        )
    return Group(header, table)


def _summary(report: TuneReport) -> str:
    before, after = report.estimated_default, report.estimated_best
    lines = [f"database: {report.database}"]
    if after:
        lines.append(f"conv/matmul kernel time (calls x latency): {before * 1e3:.3f} ms default -> {after * 1e3:.3f} ms tuned")
    shipped = sum(t.shipped for t in report.tasks)
    if shipped:
        lines.append(f"{shipped} task(s) come from the shipped database, which compile applies first "
                     "(--include-shipped tunes them too)")
    done = sum(t.done and not t.shipped for t in report.tasks)
    if shipped < len(report.tasks):
        lines.append(f"{done}/{len(report.tasks) - shipped} tuned task(s) fully measured"
                     + ("" if done + shipped == len(report.tasks) else "; run again to go on"))
    return "\n".join(lines)


def _ms(secs: float | None) -> str:
    return f"{secs * 1e3:.4f}" if secs is not None else ""


def _duration(secs: float) -> str:
    secs = int(round(secs))
    return f"{secs // 3600}h{secs % 3600 // 60:02d}m" if secs >= 3600 else f"{secs // 60}m{secs % 60:02d}s"
