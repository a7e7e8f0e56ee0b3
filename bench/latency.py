"""Inference latency: onnxruntime vs TVM's default pipeline vs Lepton, same model, one run, interleaved.

    python -m bench.latency [--models resnet18,resnet50,mobilenet_v2,bert_small,bert_base]
                            [--repeat 5] [--inner 10] [--no-tvm-default]

For each bench model (batch 1, fp32, random weights, real architectures; `bench/models.py`):
- `onnxruntime`: all graph optimizations, intra-op threads = the x86 target's core count;
- `tvm-default`: `tvm.relax.frontend.onnx.from_onnx` + `tvm.compile` with TVM's default CPU
  pipeline (skipped when one run takes longer than `--tvm-default-limit` seconds);
- `lepton-untuned`: `lepton.compile(model, "x86")` with `LEPTON_NO_TUNING=1` (Lepton's default
  schedules only);
- `lepton`: `lepton.compile(model, "x86")` as a user gets it (the shipped tuning database for
  this target's tuning key, then the local one, then the default schedules).
Each measurement is the median of `--inner` calls; tools alternate within each of
`--repeat` rounds, and the reported figure is the median over rounds. Every tool's outputs
are compared with onnxruntime's (rtol 1e-4, atol 1e-4 — accumulation order differs between
runtimes); a tool whose outputs differ is reported as a mismatch, not timed as a success.

GFLOP/s uses `lepton inspect`'s FLOP count (2 per multiply-add) on the cleaned-up graph
(shape computations folded, so every MatMul has static shapes). The fraction of peak
assumes 2 FMA pipes x the target's fp32 lanes x 2 FLOP per cycle per core at the
`cpu MHz` /proc/cpuinfo reports: an upper bound, not a measured roofline.

Writes bench/results/latency.json and latency.png and prints a Markdown table.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time
from collections.abc import Callable, Mapping
from typing import Any

import numpy as np
import onnx

DEFAULT_MODELS = ("resnet18", "resnet50", "mobilenet_v2", "bert_small", "bert_base")
RESULTS = os.path.join(os.path.dirname(__file__), "results")
Runner = Callable[[], dict[str, np.ndarray]]


def _median_ms(fn: Runner, inner: int) -> float:
    times = []
    for _ in range(inner):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times) * 1e3


def time_blocks(
    runners: Mapping[str, Callable[[], object]], repeat: int, inner: Mapping[str, int]
) -> dict[str, list[float]]:
    """Per tool, the median ms of each of its `repeat` blocks of `inner[tool]` consecutive calls.

    One warm-up call each, then tools alternate block by block: a runtime's thread pool spins after
    each call, so timing call by call would steal the cores from whichever tool runs next.
    """
    rounds: dict[str, list[float]] = {t: [] for t in runners}
    for fn in runners.values():
        fn()  # warm-up
    for _ in range(repeat):
        for tool, fn in runners.items():
            rounds[tool].append(_median_ms(fn, inner[tool]))
    return rounds


def outputs_close(ref: Mapping[str, np.ndarray], got: Mapping[str, np.ndarray]) -> tuple[bool, float]:
    """Whether `got` matches `ref` (same names and shapes, rtol/atol 1e-4, NaN where NaN), and the worst abs error."""
    worst = 0.0
    for name, x in ref.items():
        y = got.get(name)
        if y is None or y.shape != x.shape:
            return False, float("inf")
        worst = max(worst, float(np.max(np.abs(x.astype(np.float64) - y.astype(np.float64)), initial=0.0)))
        if not np.allclose(y, x, rtol=1e-4, atol=1e-4, equal_nan=True):
            return False, worst
    return True, worst


def peak_gflops(cores: int, lanes: int) -> float | None:
    """2 FMA pipes x lanes x 2 FLOP x cores x GHz (from /proc/cpuinfo), or None if the clock is unknown."""
    try:
        with open("/proc/cpuinfo") as f:
            mhz = max(float(line.split(":")[1]) for line in f if line.startswith("cpu MHz"))
    except (OSError, ValueError):
        return None
    return 2 * lanes * 2 * cores * mhz / 1e3


def ort_runner(model: onnx.ModelProto, threads: int) -> Callable[[dict[str, np.ndarray]], dict[str, np.ndarray]]:
    """An onnxruntime CPU session (all graph optimizations, `threads` intra-op threads) as feeds -> outputs by name."""
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    opts.intra_op_num_threads = threads
    opts.inter_op_num_threads = 1
    sess = ort.InferenceSession(model.SerializeToString(), opts, providers=["CPUExecutionProvider"])
    names = [o.name for o in sess.get_outputs()]
    return lambda feeds: dict(zip(names, sess.run(names, feeds), strict=True))


def _tvm_default(model: onnx.ModelProto, target: Any) -> Callable[[dict[str, np.ndarray]], dict[str, np.ndarray]]:
    import tvm
    from tvm import relax
    from tvm.relax.frontend.onnx import from_onnx

    from lepton.threads import use_available_cpus

    ex = tvm.compile(from_onnx(model), target=target.tvm_target())
    vm = relax.VirtualMachine(ex, tvm.cpu())
    in_names = [i.name for i in model.graph.input]
    out_names = [o.name for o in model.graph.output]

    def run(feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        use_available_cpus()  # as Lepton does: TVM's default pool would use half the cores
        out = vm["main"](*[tvm.runtime.tensor(feeds[n]) for n in in_names])
        outs = [out] if isinstance(out, tvm.runtime.Tensor) else list(out)
        return {n: o.numpy() for n, o in zip(out_names, outs, strict=True)}

    return run


def bench_model(name: str, args: argparse.Namespace) -> dict[str, Any]:
    import lepton
    import lepton_ir
    import targets
    from bench.models import BENCH_MODELS, synth_inputs
    from lepton.inspect import inspect_model

    model = BENCH_MODELS[name]()
    feeds = synth_inputs(model)
    target = targets.resolve("x86")
    cores = int(target.options.get("num_cores", os.cpu_count() or 1))
    flops = inspect_model(lepton.optimize(lepton_ir.load(model)).graph).flops  # shapes folded: every MatMul counted
    row: dict[str, Any] = {"model": name, "gflop": flops / 1e9, "tools": {}}

    runners: dict[str, Callable[[dict[str, np.ndarray]], dict[str, np.ndarray]]] = {"onnxruntime": ort_runner(model, cores)}
    os.environ["LEPTON_NO_TUNING"] = "1"
    try:
        t0 = time.perf_counter()
        untuned = lepton.compile(model, target, use_cache=False)
        row["lepton_untuned_compile_s"] = time.perf_counter() - t0
    finally:
        del os.environ["LEPTON_NO_TUNING"]
    t0 = time.perf_counter()
    compiled = lepton.compile(model, target, use_cache=False)
    row["lepton_compile_s"] = time.perf_counter() - t0
    runners["lepton-untuned"] = lambda f: untuned.run(f)
    runners["lepton"] = lambda f: compiled.run(f)
    if args.tvm_default:
        try:
            t0 = time.perf_counter()
            run = _tvm_default(model, target)
            row["tvm_default_compile_s"] = time.perf_counter() - t0
            t0 = time.perf_counter()
            run(feeds)
            once = time.perf_counter() - t0
            if once > args.tvm_default_limit:
                row["tools"]["tvm-default"] = {"skipped": f"one run took {once:.1f} s (> {args.tvm_default_limit:g} s)",
                                              "ms": once * 1e3}
            else:
                runners["tvm-default"] = run
        except Exception as e:  # noqa: BLE001 - TVM failing on a model is a result
            row["tools"]["tvm-default"] = {"error": f"{type(e).__name__}: {str(e).strip().splitlines()[-1][:200]}"}

    ref = runners["onnxruntime"](feeds)
    live: dict[str, Runner] = {}
    for tool, run in runners.items():
        ok, err = outputs_close(ref, run(feeds))
        if not ok:
            row["tools"][tool] = {"error": f"outputs differ from onnxruntime (max abs err {err:.3g})"}
        else:
            row["tools"][tool] = {"max_abs_err": err}
            live[tool] = (lambda r: lambda: r(feeds))(run)
    inner = {t: args.inner if t != "tvm-default" else max(1, min(args.inner, 3)) for t in live}
    rounds = time_blocks(live, args.repeat, inner)
    base = statistics.median(rounds["onnxruntime"]) if "onnxruntime" in rounds else None
    peak = peak_gflops(cores, target.vector_lanes)
    for tool, ms in rounds.items():
        med = statistics.median(ms)
        gflops = flops / (med / 1e3) / 1e9
        row["tools"][tool].update(
            ms=med, rounds_ms=ms, ratio_vs_onnxruntime=med / base if base else None, gflops=gflops,
            peak_fraction=gflops / peak if peak else None,
        )
    row["peak_gflops"] = peak
    return row


def table(rows: list[dict[str, Any]]) -> str:
    lines = ["| model | GFLOP | tool | median ms | ratio vs onnxruntime | GFLOP/s | % of peak |",
             "|---|---:|---|---:|---:|---:|---:|"]
    for row in rows:
        for tool, r in row["tools"].items():
            if "ms" in r and "ratio_vs_onnxruntime" in r:
                pf = f"{100 * r['peak_fraction']:.0f}%" if r.get("peak_fraction") else "-"
                lines.append(f"| {row['model']} | {row['gflop']:.2f} | {tool} | {r['ms']:.1f} | "
                             f"{r['ratio_vs_onnxruntime']:.2f} | {r['gflops']:.1f} | {pf} |")
            else:
                lines.append(f"| {row['model']} | {row['gflop']:.2f} | {tool} | - | - | - | "
                             f"{r.get('error') or r.get('skipped')} |")
    return "\n".join(lines)


def plot(rows: list[dict[str, Any]], path: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    tools = ["onnxruntime", "tvm-default", "lepton-untuned", "lepton"]
    fig, ax = plt.subplots(figsize=(9, 4.5))
    width = 0.8 / len(tools)
    for i, tool in enumerate(tools):
        ys = [r["tools"].get(tool, {}).get("ratio_vs_onnxruntime") or 0 for r in rows]
        ax.bar([x + i * width for x in range(len(rows))], ys, width, label=tool)
    ax.set_xticks([x + width for x in range(len(rows))], [r["model"] for r in rows])
    ax.set_yscale("log")
    ax.axhline(1.0, color="gray", lw=0.8)
    ax.set_ylabel("latency / onnxruntime (log; lower is better)")
    ax.set_title("batch-1 fp32 latency relative to onnxruntime, same run")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--models", default=",".join(DEFAULT_MODELS))
    p.add_argument("--repeat", type=int, default=5)
    p.add_argument("--inner", type=int, default=10)
    p.add_argument("--no-tvm-default", dest="tvm_default", action="store_false")
    p.add_argument("--tvm-default-limit", type=float, default=10.0, help="skip TVM's default build above this many s/run")
    args = p.parse_args(argv)
    rows = []
    for name in args.models.split(","):
        print(f"benchmarking {name} ...", flush=True)
        rows.append(bench_model(name, args))
    os.makedirs(RESULTS, exist_ok=True)
    with open(os.path.join(RESULTS, "latency.json"), "w") as f:
        json.dump(rows, f, indent=2)
    plot(rows, os.path.join(RESULTS, "latency.png"))
    print(table(rows))


if __name__ == "__main__":
    main()
