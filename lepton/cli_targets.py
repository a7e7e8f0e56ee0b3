"""`lepton targets`: list the shipped targets, or show one resolved description."""

from __future__ import annotations

import json
import sys
from typing import Annotated

import typer
from rich.markup import escape
from rich.table import Table

from lepton.cli_errors import fail
from lepton.report import console
from lepton_ir import LeptonError
from passes.base import parse_pipeline
from targets import known, resolve

targets_app = typer.Typer(add_completion=False, help="List compilation targets or show one.")
out = console()


def _summary(cfg: dict[str, object]) -> str:
    """`kind key=value ...` of a TVM config dict (lists joined by commas)."""
    parts = [str(cfg["kind"])]
    for key, value in cfg.items():
        if key != "kind":
            parts.append(f"{key}={','.join(map(str, value)) if isinstance(value, list) else value}")
    return " ".join(parts)


@targets_app.callback(invoke_without_command=True)
def list_targets(ctx: typer.Context) -> None:
    """List the shipped targets: kind, TVM target, whether modules run on this machine."""
    if ctx.invoked_subcommand is not None:
        return
    table = Table(title="targets (also: auto, or a .toml file)", title_justify="left")
    for column in ("name", "kind", "runs here"):
        table.add_column(column, no_wrap=True)
    table.add_column("tvm target", ratio=3)
    table.add_column("description", ratio=2)
    try:
        for name in known():
            t = resolve(name)
            data = t.to_dict()
            tvm_text = _summary(data["tvm"]) + (f" (host {_summary(data['host'])})" if t.host is not None else "")
            table.add_row(name, t.kind, "yes" if t.runs_here() else "no", tvm_text, t.description)
    except LeptonError as e:
        fail(e)
    out.print(table)


@targets_app.command("show")
def show(
    name: Annotated[str, typer.Argument(help="target name, name{key=value}, 'auto' or a .toml file")],
    as_json: Annotated[bool, typer.Option("--json", help="print the description as JSON")] = False,
) -> None:
    """Print NAME's resolved description: every field, the TVM target and the pass pipeline."""
    try:
        t = resolve(name)
    except LeptonError as e:
        fail(e)
    data = t.to_dict()
    if as_json:
        sys.stdout.write(json.dumps(data, indent=2) + "\n")
        return
    for key, value in data.items():
        if key != "pipeline":
            text = "-" if value is None else json.dumps(value) if isinstance(value, list | dict) else value
            out.print(f"[bold]{key}:[/] {escape(str(text))}", highlight=False, soft_wrap=True)
    out.print(f"[bold]tvm target:[/] {escape(str(t.tvm_target()))}", highlight=False, soft_wrap=True)
    out.print(f"[bold]key:[/] {escape(t.key())}", highlight=False)
    out.print(f"[bold]runs here:[/] {'yes' if t.runs_here() else 'no'}", highlight=False)
    out.print("[bold]pipeline:[/]", highlight=False)
    for p in parse_pipeline(t.pipeline):
        out.print(f"  {p.spec()}", highlight=False, markup=False)
