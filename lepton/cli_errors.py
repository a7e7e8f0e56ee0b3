"""How the `lepton` commands report a failure: the message on stderr, TVM's full text with --verbose, a JSON
object with --json, and the exit code of the error's class (3 for an exception that is no LeptonError)."""

from __future__ import annotations

import json
import sys
from typing import Annotated, NoReturn

import typer
from rich.markup import escape

from lepton.report import console
from lepton_ir import LeptonError

err = console(stderr=True)

#: The CLI's --verbose option (commands that run TVM's codegen).
Verbose = Annotated[bool, typer.Option("--verbose", "-v", help="on a failure, also print the full text of TVM's error")]


def fail(e: Exception, *, as_json: bool = False, verbose: bool = False) -> NoReturn:
    """Print `e` on stderr (its `details`, a tool's full text, only if `verbose`) and, with `as_json`, as a JSON
    object {"error": {...}} on stdout; exit with its code (3 for an exception that is no LeptonError)."""
    if isinstance(e, LeptonError):
        err.print(f"[bold red]error:[/] {escape(str(e))}", highlight=False, soft_wrap=True)
        if e.details and verbose:
            err.print(e.details, markup=False, highlight=False, soft_wrap=True)
        elif e.details:
            err.print("[dim](--verbose prints the full text of the error)[/]", highlight=False)
        report, code = e.to_json(), e.exit_code
    else:
        err.print(f"[bold red]internal error:[/] {escape(f'{type(e).__name__}: {e}')}\nplease report this with the model",
                  highlight=False, soft_wrap=True)
        report, code = {"type": type(e).__name__, "exit_code": 3, "message": str(e)}, 3
    if as_json:
        if verbose and isinstance(e, LeptonError) and e.details:
            report["details"] = e.details
        sys.stdout.write(json.dumps({"error": report}, indent=2) + "\n")
    raise typer.Exit(code)
