"""The `lepton` command line. Exit codes: 0 ok, 1 verification failed, 2 user error, 3 internal error."""

from __future__ import annotations

import dataclasses
import json
from contextlib import nullcontext
import os
import sys
from typing import Annotated

import numpy as np
import typer
from rich.markup import escape

import lepton_ir
from lepton.artifact import load as load_artifact
from lepton.artifact import read_verify_bundle, verify_artifact
from lepton.cli_errors import Verbose, fail
from lepton.cli_targets import targets_app
from lepton.cli_tune import tune_cmd
from lepton.input_shapes import parse_input_shape
from lepton.inspect import inspect_model
from lepton.optimize import explain_rule
from lepton.optimize import optimize as run_optimize
from lepton.report import compile_json, compile_summary, console, outputs_json, outputs_table, pass_json, pass_table
from lepton_ir import UserError
from passes import REGISTRY
from passes.cleanup import CLEANUP_PIPELINE
from targets import resolve

app = typer.Typer(add_completion=False, no_args_is_help=True, help="Lepton: compile ONNX models, verified against onnxruntime.")
err = console(stderr=True)
out = console()


@app.command()
def optimize(
    model: Annotated[str, typer.Argument(help="ONNX model file")],
    output: Annotated[str, typer.Option("-o", "--output", help="where to write the optimized .onnx")],
    passes: Annotated[str | None, typer.Option("--passes", help="pipeline text, e.g. 'fold-constants,eliminate-dead-code'")] = None,
    dump_ir: Annotated[str | None, typer.Option("--dump-ir", help="folder for the IR after each pass (NNN_<pass>.onnx)")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="print a JSON report on stdout")] = False,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="print nothing but errors")] = False,
    explain: Annotated[list[str] | None, typer.Option("--explain", help="rewrite rule to explain: where it fired, or its closest partial match and why it failed (repeatable)")] = None,
) -> None:
    """Run the cleanup pipeline (or --passes) over MODEL and write the result."""
    try:
        if os.path.isdir(output):
            raise UserError(f"output {output!r} is a folder; give a file name ending in .onnx")
        with err.status("optimizing", spinner="dots") if not (quiet or as_json) else nullcontext():
            result = run_optimize(model, passes or CLEANUP_PIPELINE, dump_ir=dump_ir)
        explained = [explain_rule(result, passes or CLEANUP_PIPELINE, r) for r in explain or ()]
        out_dir = os.path.dirname(os.path.abspath(output))
        os.makedirs(out_dir, exist_ok=True)
        files = lepton_ir.save(result.graph, output)
    except Exception as e:  # noqa: BLE001 - mapped to exit codes
        fail(e, as_json=as_json)
        return
    if as_json:
        report = pass_json(result)
        report["files"] = files
        if explained:
            report["explain"] = [dataclasses.asdict(e) for e in explained]
        sys.stdout.write(json.dumps(report, indent=2) + "\n")
    elif not quiet:
        out.print(pass_table(result))
        for e in explained:
            out.print(escape(e.text()), highlight=False)
        out.print(f"wrote {', '.join(files)}")


@app.command("compile")
def compile_cmd(
    model: Annotated[str, typer.Argument(help="ONNX model file")],
    target: Annotated[str, typer.Option("--target", "-t", help="target name (lepton targets), NAME{opt=v}, a .toml file, or auto")] = "auto",
    output: Annotated[str, typer.Option("-o", "--output", help="artifact folder to write (must be empty or absent)")] = "build/lepton",
    input_shape: Annotated[list[str] | None, typer.Option("--input-shape", help="pin an input's shape: NAME:D1,D2,... (repeatable)")] = None,
    passes: Annotated[str | None, typer.Option("--passes", help="pass pipeline instead of the target's")] = None,
    no_verify: Annotated[bool, typer.Option("--no-verify", help="do not check the module against onnxruntime")] = False,
    no_cache: Annotated[bool, typer.Option("--no-cache", help="build even if the compile cache has this build")] = False,
    bisect: Annotated[bool, typer.Option("--bisect", help="first check the graph after every pass against onnxruntime; stop at the first that breaks it")] = False,
    quantize: Annotated[str | None, typer.Option("--quantize", help="int8 (static, calibrated; needs --calibration), dynamic (int8 Gemm/MatMul, activations per call), weight-int8 (int8 weights, float activations) or weight-int4 (int4 weights in blocks of 64)")] = None,
    calibration: Annotated[list[str] | None, typer.Option("--calibration", help="calibration batch: .npz of arrays by input name (repeatable)")] = None,
    budget: Annotated[str | None, typer.Option("--budget", help="accuracy budget for --quantize, e.g. cos=0.99 or top1=0.99")] = None,
    validation: Annotated[list[str] | None, typer.Option("--validation", help="held-out batch (.npz) to judge the budget and verify on (repeatable; default: the calibration data)")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="print a JSON report on stdout")] = False,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="print nothing but errors")] = False,
    verbose: Verbose = False,
) -> None:
    """Compile MODEL for a target into an artifact folder (library, manifest, optimized model, verification bundle)."""
    from lepton.compiler import compile as run_compile  # imports TVM

    try:
        shapes = dict(parse_input_shape(s) for s in input_shape or [])
        if bisect and not _bisect_ok(model, target, shapes, passes, as_json, quiet):
            result = None
        else:
            with err.status("compiling", spinner="dots") if not (quiet or as_json) else nullcontext() as status:
                def progress(msg: str) -> None:
                    if status is not None:
                        status.update(msg)

                result = run_compile(
                    model, target, input_shapes=shapes, passes=passes, output_dir=output,
                    verify=not no_verify, use_cache=not no_cache, progress=progress, quantize=quantize,
                    calibration=calibration or None, accuracy_budget=budget, validation=validation or None,
                )
    except Exception as e:  # noqa: BLE001 - mapped to exit codes
        fail(e, as_json=as_json, verbose=verbose)
        return
    if result is None:  # the bisection found a pass or the codegen changing the outputs
        raise typer.Exit(1)
    if as_json:
        sys.stdout.write(json.dumps(compile_json(result), indent=2) + "\n")
    elif not quiet:
        compile_summary(out, result)


def _bisect_ok(model: str, target: str, shapes: dict[str, list[int]], passes: str | None, as_json: bool, quiet: bool) -> bool:
    """Run the bisection and print its report; whether no pass and no codegen step broke the outputs."""
    from lepton.bisect import bisect as run_bisect  # imports TVM

    with err.status("bisecting", spinner="dots") if not (quiet or as_json) else nullcontext() as status:
        report = run_bisect(model, target, input_shapes=shapes, passes=passes,
                            progress=(lambda m: status.update(m)) if status is not None else None)
    if as_json and not report.ok:
        sys.stdout.write(json.dumps({"bisect": report.to_json()}, indent=2) + "\n")
    elif not quiet:
        (out if not as_json else err).print(report.table())
        (out if not as_json else err).print(report.verdict(), highlight=False)
    return report.ok


@app.command("bisect")
def bisect_cmd(
    model: Annotated[str, typer.Argument(help="ONNX model file")],
    target: Annotated[str, typer.Option("--target", "-t", help="target name, NAME{opt=v}, a .toml file, or auto")] = "auto",
    input_shape: Annotated[list[str] | None, typer.Option("--input-shape", help="pin an input's shape: NAME:D1,D2,... (repeatable)")] = None,
    passes: Annotated[str | None, typer.Option("--passes", help="pass pipeline instead of the target's")] = None,
    inputs: Annotated[str | None, typer.Option("--inputs", help=".npz file with the inputs to check on (default: synthesized)")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="print the report as JSON")] = False,
    verbose: Verbose = False,
) -> None:
    """Find the first pass that changes MODEL's outputs beyond tolerance, else check the TVM module (exit 1 on a finding)."""
    from lepton.bisect import bisect as run_bisect  # imports TVM

    try:
        shapes = dict(parse_input_shape(s) for s in input_shape or [])
        with err.status("bisecting", spinner="dots") if not as_json else nullcontext() as status:
            report = run_bisect(model, target, input_shapes=shapes, passes=passes, inputs=inputs,
                                progress=(lambda m: status.update(m)) if status is not None else None)
    except Exception as e:  # noqa: BLE001
        fail(e, as_json=as_json, verbose=verbose)
        return
    if as_json:
        sys.stdout.write(json.dumps(report.to_json(), indent=2) + "\n")
    else:
        out.print(report.table())
        out.print(report.verdict(), highlight=False)
    if not report.ok:
        raise typer.Exit(1)


@app.command("run")
def run_cmd(
    artifact_dir: Annotated[str, typer.Argument(help="artifact folder written by lepton compile")],
    inputs: Annotated[list[str] | None, typer.Option("--input", "-i", help="NAME=file.npy (repeatable), or one .npz file")] = None,
    save: Annotated[str | None, typer.Option("--save", help="write the outputs to this .npz file")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="print outputs' names, dtypes, shapes and stats as JSON")] = False,
) -> None:
    """Run a compiled artifact on inputs from .npy/.npz files (default: its bundled verification inputs)."""
    try:
        module = load_artifact(artifact_dir)
        feeds = _read_inputs(inputs) if inputs else read_verify_bundle(module.manifest)[0]
        outputs = module.run(feeds)
        if save:
            np.savez(save, **outputs)
    except Exception as e:  # noqa: BLE001
        fail(e, as_json=as_json)
        return
    if as_json:
        sys.stdout.write(json.dumps(outputs_json(outputs), indent=2) + "\n")
    else:
        out.print(outputs_table(outputs))


@app.command("verify")
def verify_cmd(
    artifact_dir: Annotated[str, typer.Argument(help="artifact folder written by lepton compile")],
    as_json: Annotated[bool, typer.Option("--json", help="print the report as JSON")] = False,
) -> None:
    """Run the artifact on its bundled inputs and compare with onnxruntime's bundled outputs under the artifact's
    tolerance policy (exit 1 on mismatch): per output max abs/rel and mean error, cosine, top-1, NaN/Inf."""
    try:
        report = verify_artifact(artifact_dir)
    except Exception as e:  # noqa: BLE001
        fail(e, as_json=as_json)
        return
    if as_json:
        sys.stdout.write(json.dumps(report.to_json(), indent=2) + "\n")
    else:
        out.print(report.table())
        if report.ok:
            out.print(f"[green]verified[/]: {report.summary()}", highlight=False)
        else:
            out.print("[bold red]outputs differ beyond tolerance[/]", highlight=False)
            out.print(report.summary(), highlight=False, markup=False)
    if not report.ok:
        raise typer.Exit(1)


@app.command("inspect")
def inspect_cmd(
    model: Annotated[str, typer.Argument(help="ONNX model file")],
    target: Annotated[str | None, typer.Option("--target", "-t", help="also report the ops this target cannot take")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="print the report as JSON")] = False,
) -> None:
    """Ops, parameters, FLOPs, and which ops a target cannot compile."""
    try:
        info = inspect_model(lepton_ir.load(model), resolve(target) if target else None)
    except Exception as e:  # noqa: BLE001
        fail(e, as_json=as_json)
        return
    if as_json:
        sys.stdout.write(json.dumps(info.to_json(), indent=2) + "\n")
    else:
        info.render(out)


def _read_inputs(specs: list[str]) -> dict[str, np.ndarray]:
    """`NAME=file.npy` items, or a single `.npz` whose keys are the input names."""
    if len(specs) == 1 and "=" not in specs[0] and specs[0].endswith(".npz"):
        with np.load(specs[0], allow_pickle=False) as data:
            return {k: data[k] for k in data.files}
    feeds: dict[str, np.ndarray] = {}
    for spec in specs:
        name, sep, path = spec.rpartition("=")
        if not sep or not name:
            raise UserError(f"--input {spec!r}: expected NAME=file.npy or one file.npz")
        try:
            feeds[name] = np.load(path, allow_pickle=False)
        except (OSError, ValueError) as e:
            raise UserError(f"--input {spec!r}: cannot read {path!r} as a .npy array: {e}") from None
    return feeds


@app.command("passes")
def list_passes() -> None:
    """List the registered passes and the default cleanup pipeline."""
    for name in sorted(REGISTRY):
        out.print(f"[bold]{name}[/]  {REGISTRY[name].summary}", highlight=False)
    out.print(f"\ndefault cleanup pipeline: {CLEANUP_PIPELINE}", highlight=False)


app.add_typer(targets_app, name="targets")
app.command("tune")(tune_cmd)


def main() -> None:
    app()
