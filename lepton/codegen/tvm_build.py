"""Build a Relax module for a target and export it into an artifact folder.

Kernels: GPU targets use TVM's default GPU pipeline, which schedules every kernel with the
`tvm.s_tir.dlight` GPU rules (unscheduled TIR is not valid GPU code). CPU targets use the
same legalize/fuse/lower steps as TVM's CPU pipeline; kernels are scheduled at
`cpu_schedule_passes`: tuning databases first (`lepton.tuning`), then Lepton's own CPU
schedules, then the `dlight.cpu` GEMV and Reduction rules.

Export per `target.export`:
- `shared-library`: `model.so`, runnable on a matching host.
- `cross-library`: aarch64 object code linked into `model.so` with `aarch64-linux-gnu-gcc`
  when it is on PATH, else `model.tar` (object files to link on the device) plus a note.
- `cuda`: `model.so` (host code, CUDA kernels embedded as source, which is what TVM 0.27
  serializes) and `model.fatbin`, the kernels compiled ahead of time by nvcc for the
  target's arch (cubin + PTX); `lepton.load` hands the fatbin to TVM instead of compiling
  at load time.
- `opencl-source`: `model.so` and `kernels/model.cl`, the OpenCL C source of every kernel,
  compiled with PoCL (or any OpenCL implementation here) to prove it valid where one exists.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
from collections import Counter
from dataclasses import dataclass, field

import numpy as np
import tvm
from tvm import relax

from lepton.codegen import layout_ops, vector_math, weights
from lepton.codegen.conv_transpose import lower_conv2d_transpose
from lepton.codegen.failures import error_line, tool_failure, tvm_failures
from lepton.codegen.opencl_check import check_opencl, opencl_unavailable
from lepton.codegen.provenance import Provenance
from lepton.codegen.schedules import cpu_rules
from lepton.codegen.tuning_databases import apply_passes
from lepton.codegen.winograd import winograd_conv2d
from lepton.errors import CodegenError
from targets import Target


@dataclass
class Library:
    """What `export` wrote: the library file, its format, extra files and notes, all relative to the folder."""

    path: str
    format: str  # "shared-library" | "tar"
    files: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    kernels: dict[str, str] = field(default_factory=dict)  # device kind -> relative path of its kernel file


#: Layouts of CPU kernels for a target whose preferred layout is NHWC: channels-last activations and HWIO
#: weights, so a convolution vectorizes over output channels (wide at every depth, unlike the spatial width
#: 7 or 14 of late ResNet stages) and reads each weight vector contiguously. The weights are transposed once,
#: at compile time (constant folding). Transposed 2-d convolutions go NHWC too and are lowered by
#: `lepton.codegen.conv_transpose` (TVM 0.27 legalizes them only in NCHW). The other ops named here keep the
#: frontend's layouts, with transposes at their edges: left to itself, TVM's layout inference hands them the
#: layout of their input, which reaches 1-d and 3-d ops through Squeeze/Unsqueeze as NWC or "NHDWC" layouts
#: that their legalization cannot take (conv1d/conv3d_transpose, resize3d) or that break their shapes (conv3d).
#: Ops not named follow their inputs' layouts, which TVM lowers correctly (tests/test_layout_matrix.py): conv1d
#: (NWC), pooling (also NWC/NHDWC), 2-d resize, normalization, elementwise, concat/split/slice, reductions, pad.
CHANNELS_LAST = {
    "relax.nn.conv2d": ["NHWC", "HWIO"],
    "relax.nn.conv2d_transpose": ["NHWC", "IOHW"],
    "relax.nn.conv1d_transpose": ["NCW", "IOW"],
    "relax.nn.conv3d": ["NCDHW", "OIDHW"],
    "relax.nn.conv3d_transpose": ["NCDHW", "IODHW"],
    "relax.image.resize3d": ["NCDHW"],
}


def cpu_prepare_passes(target: Target, notes: list[str] | None = None) -> list[tvm.transform.Pass]:
    """Layout conversion (to the target's preferred layout; with NHWC, transposed 2-d convolutions become
    sub-pixel convolutions, `lepton.codegen.conv_transpose`, and 3x3 stride-1 convolutions Winograd F(2x2, 3x3),
    `lepton.codegen.winograd`), library dispatch, legalization (float32 exp, erf, tanh and
    sigmoid as vector polynomials, `lepton.codegen.vector_math`) and fusion on CPU
    targets: they make the functions that kernel scheduling sees, so tuning (`lepton.tuning.extract_tasks`)
    runs exactly these to find its workloads. The model's signature keeps its layout: transposes sit at its
    inputs and outputs. What the layout passes changed is appended to `notes`."""
    from tvm.relax.backend.cpu_generic import pipeline as cpu

    tvm_target = target.tvm_target()
    nhwc = [_channels_last(notes), lower_conv2d_transpose(notes), winograd_conv2d(notes)]
    layout = nhwc if target.layout == "NHWC" else []
    legalize = [  # TVM's CPU legalize_passes, with vectorizable float32 exp/erf/tanh/sigmoid
        relax.transform.LegalizeOps(vector_math.legalize_map()),
        relax.transform.AnnotateTIROpPattern(),
        relax.transform.FoldConstant(),
        relax.transform.FuseOps(),
        relax.transform.FuseTIR(),
    ]
    return [*layout, *cpu.library_dispatch_passes(tvm_target), *legalize]


def cpu_schedule_passes(target: Target) -> list[tvm.transform.Pass]:
    """Kernel scheduling for CPU targets (after fusion, before lowering): the target's tuning databases
    (shipped, then local; none exist: no pass), then Lepton's rules, then dlight's."""
    from tvm.s_tir import dlight as dl

    lanes = target.vector_lanes or 4
    return [*apply_passes(target), dl.ApplyDefaultSchedule(*cpu_rules(lanes, target.vector_registers), dl.cpu.GEMV(), dl.cpu.Reduction())]


def cpu_prepack_passes(notes: list[str] | None = None) -> list[tvm.transform.Pass]:
    """Weight prepacking for CPU targets (after scheduling): every constant a scheduled kernel reads is
    stored in the order that kernel's loops read it (TVM's `RewriteLayout` over the final schedule, so it
    follows tuned tiles too); the reordering is split out of the kernel and evaluated at compile time, so
    a call reads each weight panel contiguously and never repacks. Streaming 50 MB of BERT-small weights
    with one 4 KB page per row of a tile cost ~3 ms of 21 per call. How many kernels changed goes to `notes`."""
    return [_rewrite_weight_layouts(notes), relax.transform.FoldConstant(), relax.transform.DeadCodeElimination()]


def _rewrite_weight_layouts(notes: list[str] | None) -> tvm.transform.Pass:
    """MetaSchedule's `RewriteLayout` postprocessor on each scheduled kernel with parameters that are constant
    at every call (its "layout-free buffers"), then TVM's `SplitLayoutRewritePreproc` moves each reordering into
    a function of its own, called on the constant. A kernel it cannot rewrite keeps its layouts. TVM's
    `AttachAttrLayoutFreeBuffers` is not used: it re-creates every kernel and drops symbolic shape variables
    (cumsum over a dynamic length then fails to build); and the split pass sees only the rewritten kernels, as it
    rejects some it has nothing to do with (an opaque block alone under the root)."""
    from tvm import s_tir, tirx
    from tvm.s_tir.meta_schedule.postproc import RewriteLayout

    @tvm.transform.module_pass(opt_level=0, name="LeptonPrepackWeights")
    def _pass(mod: tvm.IRModule, _ctx: tvm.transform.PassContext) -> tvm.IRModule:
        rewrite, split, changed = RewriteLayout(), relax.transform.SplitLayoutRewritePreproc(), {}
        for gv, params in _constant_params(mod).items():
            func = mod[gv]
            if not (func.attrs and func.attrs.get("tirx.is_scheduled", False)):
                continue
            unpackable = _unpackable_params(func)
            params = [i for i in params if i not in unpackable]
            if not params:
                continue
            sch = s_tir.Schedule(func.with_attr("layout_free_buffers", params))
            try:
                if rewrite.apply(sch):
                    rewritten = sch.mod["main"]
                    split(tvm.IRModule({gv: rewritten}))  # the kernel alone must split
                    changed[gv] = rewritten
            except Exception:  # noqa: BLE001 - s_tir raises several types for access patterns it cannot rewrite
                continue
        if not changed:
            return mod
        others = {gv: f for gv, f in mod.functions_items() if isinstance(f, tirx.PrimFunc) and gv not in changed}
        out = split(tvm.IRModule({gv: changed.get(gv, f) for gv, f in mod.functions_items() if gv not in others},
                                 attrs=mod.attrs))
        for gv, func in others.items():
            out[gv] = func
        if notes is not None:
            notes.append(layout_ops.StepNote(
                f"weights of {len(changed)} kernel(s) prepacked at compile time in the order their loops read them",
                "prepack-weights", {"kernels": len(changed)}, sorted(str(gv.name_hint) for gv in changed)))
        return out

    return _pass


def _unpackable_params(func: tvm.tirx.PrimFunc) -> set[int]:
    """Indices of the parameters of `func` that some block reads outside a reduction (no reduction axis, no
    init). Prepacking is for the weights a matmul or convolution reduces over; `RewriteLayout` derives a
    parameter's layout from the loops of the block reading it, which is wrong for other readers: a copy that
    flips indices (conv2d_transpose's kernel flip lost an axis of weights with one output channel per group,
    DBNet's 24 -> 1 upsampling) or a gather (GatherND's constant index pairs were re-laid out dropping the
    parallel loop, so two 8-lane chunks read the same elements). Both gave wrong results."""
    from tvm import s_tir

    sch, found = s_tir.Schedule(func), set()
    stack = list(sch.get_child_blocks(sch.get_sblock("root")))
    while stack:
        rv = stack.pop()
        block = sch.get(rv)
        reduces = block.init is not None or any(int(iv.iter_type) == 2 for iv in block.iter_vars)  # CommReduce
        if not reduces:
            read = [r.source for r in block.reads]
            found.update(i for i, p in enumerate(func.params) if any(s.same_as(p) for s in read))
        stack.extend(sch.get_child_blocks(rv))
    return found


def _constant_params(mod: tvm.IRModule) -> dict[tvm.ir.GlobalVar, list[int]]:
    """For each PrimFunc the Relax functions call, the indices of its parameters that are the same at every
    call: constants, and values computed from the weights only (`lepton.codegen.weights.weight_derived`)."""
    call_tir, sites = tvm.ir.Op.get("relax.call_tir"), {}
    for func in mod.functions.values():
        if not isinstance(func, relax.Function):
            continue
        derived = weights.weight_derived(func)
        for e in _relax_calls(tvm.IRModule({"f": func}), call_tir):
            if isinstance(e.args[1], relax.Tuple):
                constant = {i for i, a in enumerate(e.args[1].fields)
                            if isinstance(a, tvm.ir.expr.Constant) or (isinstance(a, relax.Var) and a in derived)}
                sites.setdefault(e.args[0], []).append(constant)
    return {gv: sorted(set.intersection(*found)) for gv, found in sites.items()}


def _relax_calls(mod: tvm.IRModule, op: tvm.ir.Op | None = None) -> list[relax.Call]:
    """Every call of the operator `op` (of any operator, if None) in the Relax functions of `mod`."""
    found: list[relax.Call] = []

    def visit(e: relax.Expr) -> None:
        if isinstance(e, relax.Call) and isinstance(e.op, tvm.ir.Op) and (op is None or e.op.same_as(op)):
            found.append(e)

    for func in mod.functions.values():
        if isinstance(func, relax.Function):
            relax.analysis.post_order_visit(func, visit)
    return found


def _channels_last(notes: list[str] | None = None) -> tvm.transform.Pass:
    """`ConvertLayout(CHANNELS_LAST)` on modules with a 2-d (transposed) convolution; the layout each
    layout-carrying op ended up in goes to `notes`. TVM's layout inference refuses some graphs (ops of unknown
    rank next to converted ones); those keep their layouts, which is correct, only slower."""

    @tvm.transform.module_pass(opt_level=0, name="LeptonChannelsLast")
    def _pass(mod: tvm.IRModule, _ctx: tvm.transform.PassContext) -> tvm.IRModule:
        if layout_ops.laid_out(mod):  # Lepton's convert-layout did it: ops it left in NCHW stay there
            if notes is not None:
                notes.append(_layout_note("layouts after Lepton's convert-layout (TVM's ConvertLayout skipped)", mod))
            return mod
        if not any(op in ("relax.nn.conv2d", "relax.nn.conv2d_transpose") for op, _ in _layouts(mod)):
            return mod
        try:
            converted = relax.transform.ConvertLayout(CHANNELS_LAST)(mod)
        except Exception as e:  # noqa: BLE001 - TVM's layout inference fails with several error types
            if notes is not None:
                notes.append(f"convolutions kept NCHW: TVM's layout conversion failed ({_first_line(e)[:200]})")
            return mod
        if notes is not None:
            notes.append(_layout_note("layouts after channels-last conversion", converted))
        return converted

    return _pass


def _layout_note(title: str, mod: tvm.IRModule) -> str:
    """`title (HWIO conv2d weights): 3 conv2d NHWC, ...`: each layout-carrying op's layout in `mod`."""
    return f"{title} (HWIO conv2d weights): " + ", ".join(
        f"{n} {op.removeprefix('relax.').removeprefix('nn.').removeprefix('image.')} {layout}"
        for (op, layout), n in sorted(_layouts(mod).items()))


def _layouts(mod: tvm.IRModule) -> Counter[tuple[str, str]]:
    """How many calls of each layout-carrying op (convolutions, pooling, resize) `mod` has, by op and data layout."""
    found: Counter[tuple[str, str]] = Counter()
    for call in _relax_calls(mod):
        field = next((f for f in ("data_layout", "layout") if call.attrs is not None and hasattr(call.attrs, f)), None)
        if field is not None:
            found[(call.op.name, str(getattr(call.attrs, field)))] += 1
    return found


def relax_pipeline(target: Target, notes: list[str] | None = None) -> tvm.transform.Pass:
    """The Relax pipeline Lepton uses for `target`; what its CPU layout passes changed goes to `notes`."""
    tvm_target = target.tvm_target()
    if target.device != "cpu":
        return relax.get_default_pipeline(tvm_target)
    from tvm.relax.backend.cpu_generic import pipeline as cpu

    @tvm.transform.module_pass(opt_level=0, name="LeptonCPUPipeline")
    def _pipeline(mod: tvm.IRModule, _ctx: tvm.transform.PassContext) -> tvm.IRModule:
        mod, values = weights.lift_quantized_weights(mod)  # integer weights stay integer (lepton.codegen.weights)
        with tvm_target:
            compute = tvm.transform.Sequential(
                cpu_prepare_passes(target, notes) + cpu_schedule_passes(target) + cpu_prepack_passes(notes))
            lower = tvm.transform.Sequential(cpu.dataflow_lower_passes(tvm_target) + cpu.finalize_passes(tvm_target))
            mod = weights.bind_transform(compute(mod), values)
            if values and notes is not None:
                notes.append(_weights_note(values))
            return lower(mod)

    return _pipeline


def _weights_note(values: list[tvm.runtime.Tensor]) -> layout_ops.StepNote:
    stored = sum(weights.stored_bytes(v) for v in values)
    floats = sum(int(np.prod(v.shape)) * 4 for v in values)
    return layout_ops.StepNote(
        f"{len(values)} quantized weight tensor(s) stored as integers ({stored / 1e6:.2f} MB instead of "
        f"{floats / 1e6:.2f} MB of float32), dequantized once when the module is loaded",
        "integer-weights", {"tensors": len(values), "bytes": stored, "float32_bytes": floats}, [])


def build(mod: tvm.IRModule, target: Target, notes: list[str] | None = None,
          provenance: Provenance | None = None) -> relax.VMExecutable:
    """Compile a Relax module for `target`; layout rewrites are noted in `notes`. A TVM failure becomes a
    `CodegenError` naming the ONNX nodes behind what TVM's text names (by `provenance`, filled by `to_relax`),
    TVM's reason and the failing pass (`lepton.codegen.failures`)."""
    with tvm_failures(target.name, provenance):
        return tvm.compile(mod, target=target.tvm_target(), relax_pipeline=relax_pipeline(target, notes))


def export(executable: relax.VMExecutable, target: Target, out_dir: str) -> Library:
    """Write the compiled module for `target` into `out_dir` (which must exist)."""
    try:
        if target.export == "cross-library":
            return _export_cross(executable, out_dir)
        executable.export_library(os.path.join(out_dir, "model.so"))
        lib = Library("model.so", "shared-library")
        if target.export == "cuda":
            _add_cuda_binary(executable, target, out_dir, lib)
        elif target.export == "opencl-source":
            _add_opencl_source(executable, out_dir, lib)
        return lib
    except CodegenError:
        raise
    except Exception as e:  # noqa: BLE001
        raise tool_failure(f"exporting the module for target {target.name!r} failed", f"{type(e).__name__}: {e}") from None


def _export_cross(executable: relax.VMExecutable, out_dir: str) -> Library:
    gcc = shutil.which("aarch64-linux-gnu-gcc")
    if gcc:
        from tvm.support import cc

        executable.export_library(os.path.join(out_dir, "model.so"), fcompile=cc.cross_compiler(gcc))
        return Library("model.so", "shared-library")
    executable.export_library(os.path.join(out_dir, "model.tar"))
    return Library(
        "model.tar",
        "tar",
        notes=[
            "aarch64-linux-gnu-gcc was not found, so the aarch64 objects are shipped as model.tar; "
            "link them on the device (tvm.runtime.load_module accepts the .tar with a local compiler) "
            "or install gcc-aarch64-linux-gnu (`make system-deps`) and compile again"
        ],
    )


def device_modules(executable: relax.VMExecutable, kind: str) -> list[tvm.runtime.Module]:
    """The imported device modules of `kind` ("cuda", "opencl") inside an executable."""
    found, stack = [], [executable.mod]
    while stack:
        m = stack.pop()
        if m.kind == kind:
            found.append(m)
        stack.extend(m.imports)
    return found


def _add_opencl_source(executable: relax.VMExecutable, out_dir: str, lib: Library) -> None:
    source = "\n".join(m.inspect_source("cl") for m in device_modules(executable, "opencl"))
    os.makedirs(os.path.join(out_dir, "kernels"), exist_ok=True)
    rel = os.path.join("kernels", "model.cl")
    with open(os.path.join(out_dir, rel), "w") as f:
        f.write(source)
    lib.files.append(rel)
    lib.kernels["opencl"] = rel
    checked = check_opencl(source)
    lib.notes.append(checked.note() if checked else f"OpenCL kernels not compiled here: {opencl_unavailable()}")


def cuda_sources(executable: relax.VMExecutable) -> list[str]:
    """The CUDA C source of every CUDA module in the executable."""
    return [m.inspect_source("") for m in device_modules(executable, "cuda")]


def _add_cuda_binary(executable: relax.VMExecutable, target: Target, out_dir: str, lib: Library) -> None:
    sources = cuda_sources(executable)
    if len(sources) != 1:
        raise CodegenError(f"expected one CUDA module in the build, found {len(sources)}")
    arch = str(target.tvm_target().attrs.get("arch", "sm_80"))
    with open(os.path.join(out_dir, "model.fatbin"), "wb") as f:
        f.write(compile_cuda(sources[0], arch))
    with open(os.path.join(out_dir, "model.cu"), "w") as f:
        f.write(sources[0])
    lib.files += ["model.fatbin", "model.cu"]
    lib.kernels["cuda"] = "model.fatbin"


def compile_cuda(source: str, arch: str) -> bytes:
    """Compile CUDA C source with nvcc into a fatbin holding `arch` cubin and its PTX."""
    nvcc = shutil.which("nvcc")
    if nvcc is None:
        raise CodegenError("the CUDA target needs nvcc (the CUDA toolkit) on PATH to compile kernels ahead of time")
    sm = arch.removeprefix("sm_")
    with tempfile.TemporaryDirectory(prefix="lepton-nvcc-") as tmp:
        src, out = os.path.join(tmp, "model.cu"), os.path.join(tmp, "model.fatbin")
        with open(src, "w") as f:
            f.write(source)
        cmd = [nvcc, "--fatbin", "-O3", f"-gencode=arch=compute_{sm},code=[sm_{sm},compute_{sm}]", "-o", out, src]
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
        if proc.returncode != 0:
            stderr = proc.stderr.replace(tmp + os.sep, "").strip()  # the temporary folder is gone by then
            raise tool_failure(f"nvcc failed to compile the CUDA kernels for {arch}", stderr)
        with open(out, "rb") as f:
            return f.read()


def _first_line(e: BaseException) -> str:
    """The line of TVM's message that states the error (`lepton.codegen.failures.error_line`)."""
    return (error_line(str(e)) or type(e).__name__)[:800]
