"""The `lepton` command line. Exit codes: 0 ok, 1 verification failed, 2 user error, 3 internal error."""

from __future__ import annotations

import json
from contextlib import nullcontext
import os
import sys
from typing import Annotated

import typer
from lepton.report import console
from lepton_ir import LeptonError, UserError

app = typer.Typer(add_completion=False, no_args_is_help=True, help="Lepton: compile ONNX models, verified against onnxruntime.")
err = console(stderr=True)
out = console()


def _fail(e: Exception) -> None:
    if isinstance(e, LeptonError):
        err.print(f"[bold red]error:[/] {e}", highlight=False)
        raise typer.Exit(e.exit_code)
    err.print(f"[bold red]internal error:[/] {type(e).__name__}: {e}\nplease report this with the model", highlight=False)
    raise typer.Exit(3)


@app.command()
def optimize(
    model: Annotated[str, typer.Argument(help="ONNX model file")],
    output: Annotated[str, typer.Option("-o", "--output", help="where to write the optimized .onnx")],
    passes: Annotated[str | None, typer.Option("--passes", help="pipeline text, e.g. 'fold-constants,eliminate-dead-code'")] = None,
    dump_ir: Annotated[str | None, typer.Option("--dump-ir", help="folder for the IR after each pass (NNN_<pass>.onnx)")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="print a JSON report on stdout")] = False,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="print nothing but errors")] = False,
) -> None:
    """Run the cleanup pipeline (or --passes) over MODEL and write the result."""
    from lepton.optimize import optimize as run_optimize
    from lepton.report import pass_json, pass_table
    from lepton_ir import save
    from passes.cleanup import CLEANUP_PIPELINE

    try:
        if os.path.isdir(output):
            raise UserError(f"output {output!r} is a folder; give a file name ending in .onnx")
        with err.status("optimizing", spinner="dots") if not (quiet or as_json) else nullcontext():
            result = run_optimize(model, passes or CLEANUP_PIPELINE, dump_ir=dump_ir)
        out_dir = os.path.dirname(os.path.abspath(output))
        os.makedirs(out_dir, exist_ok=True)
        files = save(result.graph, output)
    except Exception as e:  # noqa: BLE001 - mapped to exit codes
        _fail(e)
        return
    if as_json:
        report = pass_json(result)
        report["files"] = files
        sys.stdout.write(json.dumps(report, indent=2) + "\n")
    elif not quiet:
        out.print(pass_table(result))
        out.print(f"wrote {', '.join(files)}")


@app.command("passes")
def list_passes() -> None:
    """List the registered passes and the default cleanup pipeline."""
    import passes.cleanup as cleanup
    from passes import REGISTRY

    for name in sorted(REGISTRY):
        out.print(f"[bold]{name}[/]  {REGISTRY[name].summary}", highlight=False)
    out.print(f"\ndefault cleanup pipeline: {cleanup.CLEANUP_PIPELINE}", highlight=False)


def main() -> None:
    app()
