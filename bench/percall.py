"""Per-call cost of small compiled models: Lepton vs onnxruntime, batch 1, one process (issue #13, part 4).

    python -m bench.percall [--models digits_cnn,silero_vad_16k,conv_gru,resnet18] [--repeat 15]
                            [--inner 300] [--out bench/results/percall.json] [--no-breakdown]

Models (x86, fp32, batch 1):
- `digits_cnn`: the shipped `make demo` CNN (bench/models/digits_cnn.onnx), one 8x8 image;
- `silero_vad_16k`: the Silero VAD 16 kHz model the `silero-vad` package ships in its static
  (OpenVINO) variant, 576-sample chunks (512 new samples + 64 of context), LSTM state fed back;
- `conv_gru`: a streaming keyword-spotting-sized model built here (`conv_gru`): three strided Conv1d
  + ReLU over a 512-sample chunk, a GRU over the 8 frames with its state fed back, Linear + Sigmoid;
- `resnet18`: the bench ResNet-18 (bench/models.py), a big model, to show the per-call changes do not
  slow it (its figure is the latency of a compute-bound call, not a per-call cost).

Streaming models are timed as a stream: each call takes the state the previous call returned, in both
runtimes. Each tool's outputs are compared with onnxruntime's before timing (rtol 1e-4, atol 1e-5).
After `--warmup-s` seconds of calls per tool (Lepton chooses its thread count on its first calls),
timing is `bench.latency.time_blocks`: blocks of `--inner` consecutive calls, the tools alternating
block by block, `--repeat` blocks each, the figure being the median of the block medians (a runtime's
thread pool spins after each call; timing call by call would hand the cores to whoever runs next);
the ratio is the median over rounds of the round's Lepton / onnxruntime (`bench.fusion.paired_ratio`).
Before timing each model the bench waits up to `--quiet-wait` seconds for other processes to leave the
cores, and it records the cores they used while it timed (`other_cores_while_timing`).
onnxruntime runs with all graph optimizations and intra-op threads = the x86 target's core count.

The breakdown times the pieces of a call on the same module, each on its own (medians of 2000 calls):
the VM call on TVM tensors made beforehand, on one thread and on all CPUs; handing the inputs over as
`tvm.runtime.tensor` copies (what Lepton did before) and as copies into kept staging tensors (what it
does now); getting the outputs back with `Tensor.numpy()` (before) and `np.from_dlpack(t).copy()` (now).

Writes the results JSON (`--out`) and prints a Markdown table.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

HERE = os.path.dirname(__file__)
RESULTS = os.path.join(HERE, "results")
DEFAULT_MODELS = ("digits_cnn", "silero_vad_16k", "conv_gru", "resnet18")


# ----- the streaming model built here ------------------------------------------------------------


def conv_gru(chunk: int = 512, hidden: int = 64, seed: int = 0) -> onnx.ModelProto:
    """A streaming audio model: chunk[1, chunk] and state[1, 1, hidden] -> prob[1, 1], state_out[1, 1, hidden].

    Conv1d(1->16, k8, s4) -> Conv1d(16->32, k4, s4) -> Conv1d(32->hidden, k4, s4), each + ReLU (chunk/64
    frames), a GRU (linear_before_reset, PyTorch's form) over those frames from `state`, and
    Linear(hidden->1) + Sigmoid on its last hidden state. Random weights scaled by 1/sqrt(fan-in).
    """
    if chunk % 64:
        raise ValueError(f"chunk must be a multiple of 64 (three stride-4 convolutions), not {chunk}")
    rng = np.random.default_rng(seed)
    inits: list[onnx.TensorProto] = []

    def weight(name: str, *shape: int, scale: float | None = None) -> str:
        fan_in = int(np.prod(shape[1:])) if len(shape) > 1 else 1
        a = rng.standard_normal(shape) * (scale if scale is not None else 1 / np.sqrt(fan_in))
        inits.append(numpy_helper.from_array(a.astype(np.float32), name))
        return name

    def ints(name: str, values: list[int]) -> str:
        inits.append(numpy_helper.from_array(np.asarray(values, np.int64), name))
        return name

    nodes = [helper.make_node("Unsqueeze", ["chunk", ints("axis1", [1])], ["x0"])]
    x, cin = "x0", 1
    for i, (cout, k, s) in enumerate([(16, 8, 4), (32, 4, 4), (hidden, 4, 4)]):
        pad = k - s
        nodes += [
            helper.make_node("Conv", [x, weight(f"conv{i}.weight", cout, cin, k), weight(f"conv{i}.bias", cout, scale=0.1)],
                             [f"conv{i}"], kernel_shape=[k], strides=[s], pads=[pad // 2, pad - pad // 2]),
            helper.make_node("Relu", [f"conv{i}"], [f"relu{i}"]),
        ]
        x, cin = f"relu{i}", cout
    nodes += [
        helper.make_node("Transpose", [x], ["frames"], perm=[2, 0, 1]),  # [T, 1, hidden]
        helper.make_node("GRU", ["frames", weight("gru.W", 1, 3 * hidden, hidden), weight("gru.R", 1, 3 * hidden, hidden),
                                 weight("gru.B", 1, 6 * hidden, scale=0.1), "", "state"], ["", "state_out"],
                         hidden_size=hidden, linear_before_reset=1),
        helper.make_node("Squeeze", ["state_out", ints("axis0", [0])], ["last"]),
        helper.make_node("Gemm", ["last", weight("head.weight", 1, hidden), weight("head.bias", 1, scale=0.1)], ["logit"],
                         transB=1),
        helper.make_node("Sigmoid", ["logit"], ["prob"]),
    ]
    graph = helper.make_graph(
        nodes, "conv_gru_stream",
        [helper.make_tensor_value_info("chunk", TensorProto.FLOAT, [1, chunk]),
         helper.make_tensor_value_info("state", TensorProto.FLOAT, [1, 1, hidden])],
        [helper.make_tensor_value_info("prob", TensorProto.FLOAT, [1, 1]),
         helper.make_tensor_value_info("state_out", TensorProto.FLOAT, [1, 1, hidden])],
        inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.checker.check_model(model, full_check=True)
    return model


# ----- the models timed ---------------------------------------------------------------------------


@dataclass(frozen=True)
class Case:
    """A model, its first call's inputs, and which output feeds which input on the next call (streaming)."""

    name: str
    description: str
    model: onnx.ModelProto
    feeds: dict[str, np.ndarray]
    state: dict[str, str]  # output name -> input name it feeds


def _digits() -> Case:
    model = onnx.load(os.path.join(HERE, "models", "digits_cnn.onnx"))
    images = np.load(os.path.join(HERE, "models", "digits_test.npz"))["images"]
    return Case("digits_cnn", "make demo's digits CNN (bench/models/digits_cnn.onnx), one 8x8 image", model,
                {model.graph.input[0].name: images[:1]}, {})


def _silero() -> Case:
    from bench.corpus import package_file

    model = onnx.load(package_file("silero_vad", "data", "silero_vad_openvino_16k.onnx"))
    rng = np.random.default_rng(0)
    feeds = {"input": (0.1 * rng.standard_normal((1, 576))).astype(np.float32), "state": np.zeros((2, 1, 128), np.float32)}
    return Case("silero_vad_16k", "Silero VAD 16 kHz, static OpenVINO variant (silero-vad package), 576-sample chunks",
                model, feeds, {"stateN": "state"})


def _conv_gru() -> Case:
    rng = np.random.default_rng(0)
    feeds = {"chunk": (0.1 * rng.standard_normal((1, 512))).astype(np.float32), "state": np.zeros((1, 1, 64), np.float32)}
    return Case("conv_gru", "streaming Conv1d x3 + GRU(64) + Linear (bench.percall.conv_gru), 512-sample chunks",
                conv_gru(), feeds, {"state_out": "state"})


def _resnet18() -> Case:
    from bench.models import resnet18, synth_inputs

    model = resnet18()
    return Case("resnet18", "bench ResNet-18 (bench/models.py), 1x3x224x224: a big model, for contrast", model,
                synth_inputs(model), {})


CASES: dict[str, Callable[[], Case]] = {"digits_cnn": _digits, "silero_vad_16k": _silero, "conv_gru": _conv_gru,
                                        "resnet18": _resnet18}


def streaming(run: Callable[[dict[str, np.ndarray]], dict[str, np.ndarray]], case: Case) -> Callable[[], object]:
    """A no-argument call of `run` that feeds each call's state outputs into the next call's inputs."""
    feeds = dict(case.feeds)

    def call() -> object:
        out = run(feeds)
        for o, i in case.state.items():
            feeds[i] = out[o]
        return out

    return call


# ----- the breakdown ------------------------------------------------------------------------------


def _median_us(fn: Callable[[], object], n: int = 2000) -> float:
    for _ in range(n // 10):
        fn()
    times = []
    for _ in range(n):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times) * 1e6


def breakdown(artifact_dir: str, feeds: dict[str, np.ndarray], threads: int | None) -> dict[str, float]:
    """Microseconds of each piece of a call, measured on its own (see the module docstring)."""
    import tvm

    from lepton.artifact import read_manifest
    from lepton.codegen.weights import load_weights
    from lepton.threads import available_cpus, use_threads

    manifest = read_manifest(artifact_dir)
    dev = tvm.cpu()
    vm = tvm.relax.VirtualMachine(tvm.runtime.load_module(os.path.join(artifact_dir, manifest.library)), dev)
    main, weights = vm["main"], load_weights(vm)
    arrays = [feeds[t.name] for t in manifest.signature.inputs]
    tensors = [tvm.runtime.tensor(a, dev) for a in arrays]
    staged = [tvm.runtime.empty(a.shape, str(a.dtype), dev) for a in arrays]
    views = [np.from_dlpack(t) for t in staged]
    out = main(*tensors, *weights)
    outs = [out] if isinstance(out, tvm.runtime.Tensor) else list(out)

    def stage() -> None:
        for v, a in zip(views, arrays, strict=True):
            v[...] = a

    row: dict[str, float] = {}
    cpus = len(available_cpus())
    for n in sorted({1, cpus}):
        use_threads(n)
        row[f"vm_call_{n}_threads_us"] = _median_us(lambda: main(*tensors, *weights))
    use_threads(threads or cpus)
    row["inputs_tvm_tensor_us"] = _median_us(lambda: [tvm.runtime.tensor(a, dev) for a in arrays])
    row["inputs_staging_copy_us"] = _median_us(stage)
    row["outputs_numpy_us"] = _median_us(lambda: [t.numpy() for t in outs])
    row["outputs_dlpack_copy_us"] = _median_us(lambda: [np.from_dlpack(t).copy() for t in outs])
    return row


# ----- the benchmark -----------------------------------------------------------------------------


def _close(ref: dict[str, np.ndarray], got: dict[str, np.ndarray]) -> float | None:
    """The largest absolute difference, or None when an output is missing, misshapen or out of tolerance."""
    worst = 0.0
    for name, x in ref.items():
        y = got.get(name)
        if y is None or y.shape != x.shape or not np.allclose(y, x, rtol=1e-4, atol=1e-5, equal_nan=True):
            return None
        worst = max(worst, float(np.max(np.abs(x.astype(np.float64) - y.astype(np.float64)), initial=0.0)))
    return worst


def bench_case(case: Case, args: argparse.Namespace) -> dict[str, Any]:
    import lepton
    import targets
    from bench.fusion import OtherWork, paired_ratio, wait_quiet
    from bench.latency import ort_runner, time_blocks

    target = targets.resolve("x86")
    cores = int(target.options.get("num_cores", os.cpu_count() or 1))
    out_dir = os.path.join(args.build_dir, case.name)
    if os.path.isdir(out_dir):
        import shutil

        shutil.rmtree(out_dir)
    t0 = time.perf_counter()
    compiled = lepton.compile(case.model, target, use_cache=False, output_dir=out_dir)
    row: dict[str, Any] = {"model": case.name, "description": case.description, "compile_s": time.perf_counter() - t0,
                           "inputs": {k: [list(v.shape), str(v.dtype)] for k, v in case.feeds.items()},
                           "streaming_state": case.state}
    ort = ort_runner(case.model, cores)
    module = compiled.module
    err = _close(ort(dict(case.feeds)), module.run(dict(case.feeds)))
    if err is None:
        row["error"] = "Lepton's outputs differ from onnxruntime's"
        return row
    row["max_abs_err"] = err
    runners = {"onnxruntime": streaming(ort, case), "lepton": streaming(module.run, case)}
    for run in runners.values():  # warm-up, long enough for Lepton to choose its thread count (lepton.threads)
        deadline = time.perf_counter() + args.warmup_s
        while time.perf_counter() < deadline:
            run()
    if args.quiet_wait > 0:
        waited, others = wait_quiet(args.quiet_wait)
        row["quiet_wait_s"] = round(waited, 1)
        print(f"  waited {waited:.0f} s for other work to stop (other processes at {others:.2f} cores)", flush=True)
    inner = max(1, args.inner // 30) if case.name == "resnet18" else args.inner
    other = OtherWork().start()
    rounds = time_blocks(runners, args.repeat, dict.fromkeys(runners, inner))
    row["other_cores_while_timing"] = round(other.cores(), 2)
    row["tools"] = {t: {"ms": statistics.median(ms), "rounds_ms": ms,
                        "ratio_vs_onnxruntime": paired_ratio(ms, rounds["onnxruntime"])} for t, ms in rounds.items()}
    threads = getattr(module, "threads", None)
    if callable(threads):  # the thread count Lepton chose for these shapes (None: not chosen)
        row["lepton_threads"] = threads(**({k: v.shape for k, v in case.feeds.items()} if _symbolic(module) else {}))
    if args.breakdown:
        row["breakdown_us"] = breakdown(out_dir, dict(case.feeds), row.get("lepton_threads"))
    return row


def _symbolic(module: Any) -> bool:
    return any(isinstance(d, str) for t in module.inputs if t.shape is not None for d in t.shape)


def table(rows: list[dict[str, Any]]) -> str:
    lines = ["| model | onnxruntime ms | Lepton ms | ratio | Lepton threads | other cores |", "|---|---:|---:|---:|---:|---:|"]
    for r in rows:
        if "tools" not in r:
            lines.append(f"| {r['model']} | - | - | - | {r.get('error')} | - |")
            continue
        o, lp = r["tools"]["onnxruntime"], r["tools"]["lepton"]
        lines.append(f"| {r['model']} | {o['ms']:.4f} | {lp['ms']:.4f} | {lp['ratio_vs_onnxruntime']:.2f} | "
                     f"{r.get('lepton_threads', '-')} | {r['other_cores_while_timing']:.2f} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--models", default=",".join(DEFAULT_MODELS), help=f"comma-separated, of {', '.join(CASES)}")
    p.add_argument("--repeat", type=int, default=15, help="blocks per tool")
    p.add_argument("--inner", type=int, default=300, help="calls per block (ResNet-18: a 30th)")
    p.add_argument("--warmup-s", type=float, default=1.0, help="seconds of calls per tool before timing")
    p.add_argument("--quiet-wait", type=float, default=60.0, metavar="S",
                   help="before timing each model, wait up to S seconds for other processes to leave the cores")
    p.add_argument("--out", default=os.path.join(RESULTS, "percall.json"))
    p.add_argument("--build-dir", default=os.path.join("build", "percall"))
    p.add_argument("--no-breakdown", dest="breakdown", action="store_false")
    args = p.parse_args(argv)
    unknown = [m for m in args.models.split(",") if m not in CASES]
    if unknown:
        p.error(f"unknown model(s) {', '.join(unknown)}; choose from {', '.join(CASES)}")
    from targets import host

    meta = {"started": datetime.now(UTC).isoformat(timespec="seconds"), "cpu_model": host.cpu_model(),
            "cpus": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count(),
            "repeat": args.repeat, "inner": args.inner}
    rows = []
    for name in args.models.split(","):
        print(f"benchmarking {name} ...", flush=True)
        rows.append(bench_case(CASES[name](), args))
    os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
    with open(args.out, "w") as f:
        json.dump({**meta, "rows": rows}, f, indent=2)
    print(table(rows))


if __name__ == "__main__":
    main()
