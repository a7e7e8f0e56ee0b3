"""`lepton.compile(model, target)`: import, optimize for the target, lower to TVM, build, export, verify.

Steps (each reported to `progress`): import -> pin input shapes -> the target's pass
pipeline (plus `expand-functions` for ops TVM lacks) -> unsupported-op check (all nodes at
once) -> Relax -> TVM build -> artifact folder (library, optimized ONNX, verification
bundle, manifest) -> load and verify where the target runs here.

Artifacts are built in a fresh folder and only then copied to `output_dir`, so a failed
compile never leaves a half-written artifact there. A compile cache (keyed by the model's
content hash, the target, the options and tool versions) returns a previous build at once.
"""

from __future__ import annotations

import atexit
import hashlib
import os
import shutil
import tempfile
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import onnx
import onnx.version_converter

import lepton_ir
import targets
from lepton import artifact, cache
from lepton.codegen import build, export, to_relax, unsupported_nodes
from lepton.codegen.layout_ops import StepNote
from lepton.codegen.lowering import with_lowering
from lepton.codegen.provenance import Provenance
from lepton.codegen.tuning_databases import fingerprint
from lepton.errors import CodegenError, SourceNode, UnsupportedOpsError, VerificationError
from lepton.input_shapes import InputShapes, pin_input_shapes, symbolic_inputs
from lepton.module import CompiledModule
from lepton.torch_export import export_torch
from lepton.verify import InputsLike, Reference, Samples, VerifyReport, choose_policy, live_cases
from lepton.verify.policy import INT8, policy_metric
from lepton_ir import Graph, UserError
from lepton_ir.types import dtype_name, np_dtype
from passes import PassContext, PassManager, PipelineResult
from passes.base import parse_pipeline
from passes.lowering.quantized import is_quantized
from passes.quantize import Quantize
from passes.quantize.budget import Budget
from passes.quantize.static import DEFAULT_BLOCK, INT4_IR, INT4_OPSET, MODES

Progress = Callable[[str], None]
ModelLike = Any  # path, bytes, onnx.ModelProto, lepton_ir.Graph or torch.nn.Module


@dataclass
class Compiled:
    """A compiled model: its artifact folder, what was done, and a runnable module where the target runs here."""

    path: str
    target: targets.Target
    manifest: artifact.Manifest
    module: CompiledModule | None
    passes: list[dict[str, Any]] = field(default_factory=list)
    verify_report: VerifyReport | None = None
    cached: bool = False
    seconds: float = 0.0

    def run(self, *args: Mapping[str, np.ndarray], **inputs: np.ndarray) -> dict[str, np.ndarray]:
        """Run the module (outputs by name); only where the target runs on this machine."""
        if self.module is None:
            raise UserError(
                f"the module was built for {self.target.name!r} ({self.target.kind}), which does not run on this "
                f"machine; copy {self.path} to such a device and use `lepton run` / `lepton verify` there"
            )
        return self.module.run(*args, **inputs)

    __call__ = run


def compile(  # noqa: A001 - the public name the issue asks for
    model: ModelLike,
    target: str | os.PathLike | targets.Target = "auto",
    *,
    input_shapes: InputShapes | None = None,
    passes: str | None = None,
    output_dir: str | os.PathLike | None = None,
    verify: bool = True,
    verify_samples: int = 1,
    verify_inputs: InputsLike | None = None,
    use_cache: bool = True,
    bundle: bool = True,
    example_inputs: Sequence[Any] | None = None,
    progress: Progress | None = None,
    quantize: str | None = None,
    calibration: InputsLike | None = None,
    accuracy_budget: str | Budget | None = None,
    validation: InputsLike | None = None,
) -> Compiled:
    """Compile `model` for `target` and return the result (see the module docstring for the steps).

    Verification (`verify`, where the target runs here) checks the module against onnxruntime on the
    artifact's bundle — the first of `verify_inputs` (a dict, an .npz path, or an iterable of those), else
    one synthesized sample — and then on every other given sample, or `verify_samples - 1` more synthesized
    ones; VerificationError with the report when an output leaves the policy (`lepton.verify.policy`).
    `bundle=False` (honoured only with `verify=False`) skips onnxruntime altogether, for callers that
    check outputs themselves (`lepton.backend`): the artifact's bundle then holds zeros and no outputs.
    With `verify_inputs` the module is built afresh, neither from nor into the compile cache, so that its
    bundle holds the first given sample.

    `quantize="dynamic"` quantizes Gemm/MatMul weights to int8 and their activations per call, and
    `quantize="weight-int8"` the weights of Conv/ConvTranspose/Gemm/MatMul (and embedding tables) only (activations
    stay float: a quarter of the size), `quantize="weight-int4"` those weights as int4 in blocks of 64 along the
    reduction axis (an eighth of the size plus a scale per block; a model below opset 21 is converted to opset 21
    first); none of these takes calibration data, and the budget below is fitted where `validation` is given. `quantize="int8"` appends the `quantize` pass (static
    int8, QDQ) to the pipeline, calibrated on `calibration`
    (a dict of arrays by input name, an .npz path, or an iterable of those: one batch each). The most sensitive
    layers return to float until the int8 verification policy holds on `validation` (same forms; default: the
    calibration data), and `accuracy_budget` (`"cos=0.995"`, `"top1=0.99"`, both joined by a comma, or a
    `passes.quantize.budget.Budget`) as well. A quantized module is verified against the float model under the
    int8 policy on the first validation batches unless `verify_inputs` is given, and is never cached (the
    calibration data is part of the build).
    """
    t0 = time.perf_counter()
    say = progress or (lambda _msg: None)
    tgt = targets.resolve(target)
    say("importing the model")
    graph = import_model(model, example_inputs)
    reference = lepton_ir.to_onnx(graph)
    prequantized = is_quantized(graph)  # quantized before (QDQ or QOperator): judged by the int8 policy
    plan = quantize_plan(graph, quantize, calibration, accuracy_budget, validation, say)
    compile_notes: list[str] = []
    if quantize == "weight-int4":
        graph, compile_notes = _opset_at_least(graph, INT4_OPSET, "int4 weights and blocked DequantizeLinear", say)
    if plan is not None:
        pipeline = passes if passes is not None else tgt.pipeline
        if not any(isinstance(p, Quantize) for p in parse_pipeline(pipeline)):  # unless `passes` places it itself
            passes = f"{pipeline},{plan.spec}"
        use_cache = False
        if verify_inputs is None and plan.verify_inputs:
            verify_inputs = plan.verify_inputs
    samples = Samples(graph, verify_inputs, verify_samples)
    use_cache = use_cache and not samples.given  # a cached artifact's bundle would hold another compile's sample
    source_sha = hashlib.sha256(reference.SerializeToString(deterministic=True)).hexdigest()
    options = {"input_shapes": {k: list(map(int, v)) for k, v in (input_shapes or {}).items()}, "passes": passes}
    options["tuning"] = fingerprint(tgt)  # the tuning databases compile would apply are part of the build
    key = cache.cache_key(source_sha, tgt.key(), options)
    if use_cache:
        hit = cache.lookup(key)
        if hit is not None:
            say("found in the compile cache")
            return _finish(str(hit), tgt, output_dir, verify, say, t0, cached=True, reference=reference, samples=samples)

    if input_shapes:
        pin_input_shapes(graph, input_shapes)
    say(f"optimizing for {tgt.name}")
    log = optimize_for(graph, tgt, passes, ctx=PassContext(target=tgt, data=plan.data if plan else {}))
    missing = unsupported_nodes(graph)
    if missing:
        raise UnsupportedOpsError(tgt.name, missing)
    say("lowering to TVM Relax")
    provenance = Provenance()
    mod = to_relax(graph, provenance)
    say(f"building with TVM for {tgt.name} ({tgt.kind})")
    codegen_notes: list[str] = []
    try:
        executable = build(mod, tgt, codegen_notes, provenance)
    except CodegenError as e:
        dynamic = symbolic_inputs(graph)
        if not dynamic:
            raise
        raise e.with_hint(
            f"The model still has symbolic input dims ({'; '.join(dynamic)}); TVM may need them static: "
            "pin them with --input-shape NAME:D1,D2,... (input_shapes= in Python)"
        ) from None

    work = tempfile.mkdtemp(prefix="lepton-build-")
    try:
        say("writing the artifact")
        lib = export(executable, tgt, work)
        lepton_ir.save(graph, os.path.join(work, "model.opt.onnx"))
        sig = signature(graph)
        notes = compile_notes + codegen_notes + list(lib.notes)
        if bundle or verify:
            say("running onnxruntime for the verification bundle")
            feeds = samples.first({t.name: t.shape for t in sig.inputs}, guess_shapes=not verify)
            expected = Reference(reference).run(feeds)
            if not verify and not samples.given and samples.shape_inputs:
                notes.append(f"the verification bundle's values for {', '.join(samples.shape_inputs)} were guessed (they "
                             "set shapes and the compile was not verified); rebuild with verify_inputs= for a meaningful bundle")
        else:  # the caller checks outputs itself (lepton.backend): onnxruntime need not run, or even load, the model
            feeds, expected = _placeholder_inputs(graph), {}
            notes.append("compiled with bundle=False: verify/ holds zero inputs and no expected outputs")
        artifact.write_artifact(
            work,
            library=lib.path,
            library_format=lib.format,
            target=tgt,
            source_sha256=source_sha,
            source_name=_model_name(model),
            signature=sig,
            passes=_pass_log(log) + _codegen_log(codegen_notes, len(graph), provenance),
            verify_inputs=feeds,
            verify_expected=expected,
            tolerance=INT8 if prequantized or _quantized(log) else choose_policy(t.dtype for t in sig.outputs),
            notes=notes,
        )
        final = str(cache.store(key, work)) if use_cache else _keep(work)
    finally:
        if os.path.isdir(work) and use_cache:
            shutil.rmtree(work, ignore_errors=True)
    return _finish(final, tgt, output_dir, verify, say, t0, cached=False, reference=reference, samples=samples)


def optimize_for(
    graph: Graph, tgt: targets.Target, passes: str | None = None, instruments: Sequence[object] = (),
    ctx: PassContext | None = None,
) -> PipelineResult:
    """Run the target's pipeline (or `passes`), then the codegen lowering passes to a fixed point together with
    the pipeline's repeatable passes (`lepton.codegen.lowering.with_lowering`)."""
    pipeline = parse_pipeline(passes if passes is not None else tgt.pipeline)
    return PassManager(with_lowering(pipeline), instruments=instruments).run(graph, ctx or PassContext(target=tgt))


@dataclass(frozen=True)
class QuantizePlan:
    """What `compile(quantize=...)` adds: the pass's pipeline text, its `ctx.data`, and the samples to verify on."""

    spec: str
    data: dict[str, Any]
    verify_inputs: list[dict[str, np.ndarray]]


POLICY_GUARD = 1.005
"""The budget fits the int8 policy 0.5 % inside its bounds (cosine >= 0.995, top-1 >= 0.995 where the policy asks
0.99): the budget is judged in onnxruntime, and the compiled module's rounding can differ from onnxruntime's by one
code at near-ties (for example inside DynamicQuantizeLinear), which moves the outputs a little."""
VERIFY_BATCHES = 4
"""A quantized module is verified on this many validation (else calibration) batches by default. The budget
reads all of them, so they are held in memory."""


def quantize_plan(graph: Graph, mode: str | None, calibration: InputsLike | None, budget: str | Budget | None,
                  validation: InputsLike | None, say: Progress) -> QuantizePlan | None:
    """The quantize step of a compile, or None without `mode`; UserError for options that do not fit together."""
    if mode is None:
        if calibration is not None or budget is not None or validation is not None:
            raise UserError("calibration data, an accuracy budget or validation data were given without quantize=; "
                            "add quantize=\"int8\" (--quantize int8)")
        return None
    if mode not in MODES:
        raise UserError(f"unknown quantization mode {mode!r}; Lepton quantizes to: int8 (static, calibrated), "
                        "dynamic (int8 Gemm/MatMul, activations quantized per call), weight-int8 (weights only), "
                        f"weight-int4 (weights only, int4 in blocks of {DEFAULT_BLOCK})")
    policy_budget = Budget(((policy_metric(INT8), POLICY_GUARD),))  # what verification judges, with a guard band
    user_budget = Budget.parse(budget) if isinstance(budget, str) else budget
    fitted = policy_budget if user_budget is None else user_budget & policy_budget
    if mode != "int8":  # dynamic, weight-only: nothing to calibrate
        if calibration is not None:
            why = "activations are quantized per call" if mode == "dynamic" else "activations stay float"
            raise UserError(f"quantize=\"{mode}\" takes no calibration data ({why}); "
                            "give validation= to fit the accuracy budget")
        if validation is None:
            if budget is not None:
                raise UserError("an accuracy budget needs data to judge it on: give validation=")
            return QuantizePlan(f"quantize{{mode={mode}}}", {"progress": say}, [])
        held_out = list(Samples(graph, validation).all())
        return QuantizePlan(f"quantize{{mode={mode}}}", {"progress": say, "validation": held_out, "accuracy_budget": fitted},
                            held_out[:VERIFY_BATCHES])
    if calibration is None:
        raise UserError("quantize=\"int8\" needs calibration data: calibration= a dict of arrays by input name, an "
                        ".npz path or an iterable of those (--calibration data.npz)")
    if validation is None and not isinstance(calibration, Mapping | str | os.PathLike | Sequence):
        raise UserError("give the calibration data as a dict, an .npz path or a list (a one-shot iterator cannot "
                        "be read for calibration and again for the accuracy budget), or pass validation=")
    held_out = list(Samples(graph, validation if validation is not None else calibration).all())
    data = {"progress": say, "calibration": Samples(graph, calibration).all(), "validation": held_out,
            "accuracy_budget": fitted}
    return QuantizePlan("quantize{mode=int8}", data, held_out[:VERIFY_BATCHES])


def _opset_at_least(graph: Graph, opset: int, needs: str, say: Progress) -> tuple[Graph, list[str]]:
    """`graph`, converted by onnx's version converter to `opset` where it is older, and the note that says so;
    UserError when the converter fails."""
    have = graph.opset_imports.get("", 1)
    if have >= opset:
        return graph, []
    say(f"converting the model from opset {have} to {opset} ({needs} need it)")
    try:
        converted = onnx.version_converter.convert_version(lepton_ir.to_onnx(graph), opset)
    except Exception as e:  # noqa: BLE001 - the converter raises bare RuntimeErrors naming the op it has no adapter for
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise UserError(f"{needs} need opset >= {opset}, and onnx's version converter could not convert the model "
                        f"from opset {have}: {first}; convert it yourself, or quantize with weight-int8") from None
    converted.ir_version = max(converted.ir_version, INT4_IR)
    return lepton_ir.load(converted), [f"converted from opset {have} to {opset} by onnx's version converter ({needs} "
                                       f"need opset {opset})"]


def _quantized(log: PipelineResult) -> bool:
    return any(r.name == "quantize" and r.modified for r in log.records)


def signature(graph: Graph) -> artifact.Signature:
    """Names, dtypes and shapes of the graph's inputs and outputs."""

    def spec(v: lepton_ir.Value) -> artifact.TensorSpec:
        return artifact.TensorSpec(v.name, dtype_name(v.dtype), tuple(v.shape) if v.shape is not None else None)

    return artifact.Signature(tuple(spec(v) for v in graph.inputs), tuple(spec(v) for v in graph.outputs))


def _finish(
    path: str, tgt: targets.Target, output_dir: str | os.PathLike | None, verify: bool, say: Progress, t0: float, *,
    cached: bool, reference: onnx.ModelProto, samples: Samples,
) -> Compiled:
    """Copy to `output_dir`, load where the target runs here, and verify: the bundle, then `samples.rest()`."""
    if output_dir is not None:
        out = os.fspath(output_dir)
        if os.path.abspath(out) != os.path.abspath(path):
            cache.copy_artifact(path, out)
            path = out
    manifest = artifact.read_manifest(path)
    module, report = None, None
    if tgt.runs_here():
        say("loading and verifying the module against onnxruntime" if verify else "loading the module")
        module = artifact.load(path)
        if verify:
            more = samples.rest({t.name: t.shape for t in module.inputs})
            report = artifact.verify_module(module, live_cases(Reference(reference), more, start=1))
            if not report.ok:
                raise VerificationError(
                    f"the module built in {path} does not compute what onnxruntime computes, under policy "
                    f"{report.policy.describe()} on {report.samples} sample(s):\n{report.summary()}",
                    report,
                )
    return Compiled(path, tgt, manifest, module, manifest.passes, report, cached, time.perf_counter() - t0)


def import_model(model: ModelLike, example_inputs: Sequence[Any] | None) -> Graph:
    """A fresh graph of `model` (never the caller's graph itself); a torch module is exported with `example_inputs`."""
    if isinstance(model, Graph):
        return lepton_ir.load(lepton_ir.to_onnx(model))  # never change the caller's graph
    if _is_torch_module(model):
        return lepton_ir.load(export_torch(model, example_inputs))
    if isinstance(model, (str, os.PathLike, bytes, onnx.ModelProto)):
        return lepton_ir.load(model)
    raise UserError(
        f"cannot compile a {type(model).__name__}: pass a path to an .onnx file, its bytes, an onnx.ModelProto, "
        "a lepton_ir.Graph, or a torch.nn.Module with example_inputs="
    )


def _is_torch_module(model: object) -> bool:
    return any(c.__module__.startswith("torch.nn") and c.__name__ == "Module" for c in type(model).__mro__)


def _model_name(model: ModelLike) -> str:
    if isinstance(model, (str, os.PathLike)):
        return os.path.basename(os.fspath(model))
    return type(model).__name__


def _pass_log(log: PipelineResult) -> list[dict[str, Any]]:
    return [
        {"pass": r.name, "stage": r.stage, "iteration": r.iteration, "modified": r.modified,
         "seconds": round(r.seconds, 6), "nodes_before": r.nodes_before, "nodes_after": r.nodes_after,
         "stats": dict(r.stats),
         "rules": {k: {"tried": v.tried, "matched": v.matched, "seconds": round(v.seconds, 6)} for k, v in r.rules.items()},
         **({"notes": list(r.notes)} if r.notes else {})}
        for r in log.records
    ]


def _codegen_log(notes: Sequence[str], nodes: int, provenance: Provenance) -> list[dict[str, Any]]:
    """Pass-log records of the codegen steps that say where they applied (`layout_ops.StepNote`: Winograd,
    weight prepacking), after the passes': `where` names ONNX nodes (kernels through `provenance`)."""
    out = []
    for n in notes:
        if isinstance(n, StepNote):
            where = list(dict.fromkeys(s.name for k in n.where for s in provenance.kernel_nodes(k) or [SourceNode(k, "")]))
            out.append({"pass": f"codegen:{n.step}", "stage": "codegen", "iteration": 1, "modified": True, "seconds": 0.0,
                        "nodes_before": nodes, "nodes_after": nodes, "stats": dict(n.stats), "rules": {}, "where": where})
    return out


def _placeholder_inputs(graph: Graph) -> dict[str, np.ndarray]:
    """Zeros of each input's dtype and shape (symbolic dims 1) for an artifact without a real bundle."""
    return {v.name: np.zeros([d if isinstance(d, int) else 1 for d in v.shape or ()], np_dtype(v.dtype))
            for v in graph.inputs}


def _keep(work: str) -> str:
    """An uncached build with no output_dir lives until the process exits."""
    atexit.register(shutil.rmtree, work, ignore_errors=True)
    return work
