"""Cleanup-pipeline benchmark: Lepton vs onnxoptimizer vs onnxsim, file to file, one run.

For each bench model, each tool reads the same .onnx file, optimizes it and writes the
result; tools are interleaved and each is timed `--repeat` times (median reported). Every
tool's output is run in onnxruntime and compared with the original model's outputs; a tool
whose output does not match is reported as such, not timed as a success.

    python -m bench.cleanup [--models resnet50,bert_base,generated_10k] [--repeat 3]

Writes bench/results/cleanup.json and cleanup.png and prints a Markdown table.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import tempfile
import time
from collections.abc import Callable
from typing import Any

import numpy as np
import onnx

DEFAULT_MODELS = ("resnet50", "bert_base", "generated_10k")
RESULTS = os.path.join(os.path.dirname(__file__), "results")


def _nodes(path: str) -> int:
    return len(onnx.load(path, load_external_data=False).graph.node)


def run_lepton(src: str, dst: str) -> dict[str, float]:
    import lepton_ir
    from passes import PassManager
    from passes.cleanup import CLEANUP_PIPELINE

    t0 = time.perf_counter()
    graph = lepton_ir.load(src)
    t1 = time.perf_counter()
    PassManager(CLEANUP_PIPELINE).run(graph)
    t2 = time.perf_counter()
    lepton_ir.save(graph, dst)
    t3 = time.perf_counter()
    return {"import": t1 - t0, "optimize": t2 - t1, "export": t3 - t2}


def run_onnxoptimizer(src: str, dst: str, skip: tuple[str, ...] = ()) -> dict[str, float]:
    """onnxoptimizer's default (fuse and elimination) passes, less `skip`."""
    import onnxoptimizer

    passes = [p for p in onnxoptimizer.get_fuse_and_elimination_passes() if p not in skip]
    t0 = time.perf_counter()
    model = onnx.load(src)
    t1 = time.perf_counter()
    model = onnxoptimizer.optimize(model, passes)
    t2 = time.perf_counter()
    onnx.save(model, dst)
    t3 = time.perf_counter()
    return {"import": t1 - t0, "optimize": t2 - t1, "export": t3 - t2}


def run_onnxsim(src: str, dst: str) -> dict[str, float]:
    import onnxsim

    t0 = time.perf_counter()
    model = onnx.load(src)
    t1 = time.perf_counter()
    model, ok = onnxsim.simplify(model, check_n=0)
    t2 = time.perf_counter()
    onnx.save(model, dst)
    t3 = time.perf_counter()
    return {"import": t1 - t0, "optimize": t2 - t1, "export": t3 - t2}


TOOLS: dict[str, Callable[[str, str], dict[str, float]]] = {
    "lepton": run_lepton,
    "onnxoptimizer": run_onnxoptimizer,
    # onnxoptimizer 0.4.2's eliminate_shape_gather asserts on negative Gather indices
    # (indices_val < dims.size()); this variant still gives a time and node count there.
    "onnxoptimizer-no-shape-gather": lambda src, dst: run_onnxoptimizer(src, dst, skip=("eliminate_shape_gather",)),
    "onnxsim": run_onnxsim,
}


def _inputs(model: onnx.ModelProto) -> dict[str, np.ndarray]:
    """Deterministic inputs: token ids for int64 inputs (BERT), normal floats otherwise."""
    rng = np.random.default_rng(0)
    out: dict[str, np.ndarray] = {}
    inits = {t.name for t in model.graph.initializer}
    for vi in model.graph.input:
        if vi.name in inits:
            continue
        tt = vi.type.tensor_type
        shape = [d.dim_value or 1 for d in tt.shape.dim]
        if tt.elem_type == onnx.TensorProto.INT64:
            out[vi.name] = (rng.integers(0, 2, shape) if "mask" in vi.name else rng.integers(0, 1000, shape)).astype(np.int64)
        else:
            out[vi.name] = rng.standard_normal(shape).astype(onnx.helper.tensor_dtype_to_np_dtype(tt.elem_type))
    return out


def _outputs_match(src: str, dst: str, inputs: dict[str, np.ndarray]) -> tuple[bool, float]:
    from passes.ort import run_model

    a = run_model(onnx.load(src), inputs)
    try:
        b = run_model(onnx.load(dst), inputs)
    except Exception:  # noqa: BLE001 - a broken optimized model is a failed result
        return False, float("inf")
    worst = 0.0
    for name, x in a.items():
        y = b.get(name)
        if y is None or y.shape != x.shape:
            return False, float("inf")
        worst = max(worst, float(np.max(np.abs(x.astype(np.float64) - y.astype(np.float64)), initial=0.0)))
        if not np.allclose(y, x, rtol=1e-4, atol=1e-5, equal_nan=True):
            return False, worst
    return True, worst


def bench_model(name: str, repeat: int, workdir: str) -> dict[str, Any]:
    from bench.models import BENCH_MODELS

    model = BENCH_MODELS[name]()
    src = os.path.join(workdir, f"{name}.onnx")
    onnx.save(model, src)
    inputs = _inputs(model)
    row: dict[str, Any] = {"model": name, "nodes": len(model.graph.node), "bytes": os.path.getsize(src), "tools": {}}
    times: dict[str, list[dict[str, float]]] = {t: [] for t in TOOLS}
    for _ in range(repeat):
        for tool, fn in TOOLS.items():
            dst = os.path.join(workdir, f"{name}.{tool}.onnx")
            try:
                times[tool].append(fn(src, dst))
            except Exception as e:  # noqa: BLE001 - a tool failing is a result, not a crash
                row["tools"][tool] = {"error": f"{type(e).__name__}: {str(e)[:200]}"}
    for tool in TOOLS:
        if "error" in row["tools"].get(tool, {}):
            continue
        dst = os.path.join(workdir, f"{name}.{tool}.onnx")
        ok, err = _outputs_match(src, dst, inputs)
        totals = [sum(t.values()) for t in times[tool]]
        row["tools"][tool] = {
            "seconds_median": statistics.median(totals),
            "seconds_runs": totals,
            "phases_median": {k: statistics.median(t[k] for t in times[tool]) for k in times[tool][0]},
            "nodes_after": _nodes(dst),
            "outputs_match": ok,
            "max_abs_error": err,
        }
    base = row["tools"].get("onnxoptimizer", {}).get("seconds_median") or row["tools"].get(
        "onnxoptimizer-no-shape-gather", {}
    ).get("seconds_median")
    for tool, r in row["tools"].items():
        if base and "seconds_median" in r:
            r["time_ratio_vs_onnxoptimizer"] = r["seconds_median"] / base
    return row


def markdown(rows: list[dict[str, Any]]) -> str:
    lines = [
        "| model | nodes | tool | nodes after | median s (file to file) | ratio vs onnxoptimizer | outputs match |",
        "|---|---:|---|---:|---:|---:|---|",
    ]
    for row in rows:
        for tool, r in row["tools"].items():
            if "error" in r:
                lines.append(f"| {row['model']} | {row['nodes']} | {tool} | - | failed: {r['error'][:60]} | - | - |")
                continue
            lines.append(
                f"| {row['model']} | {row['nodes']} | {tool} | {r['nodes_after']} | {r['seconds_median']:.3f} | "
                f"{r.get('time_ratio_vs_onnxoptimizer', float('nan')):.2f} | {'yes' if r['outputs_match'] else 'NO'} |"
            )
    return "\n".join(lines)


def plot(rows: list[dict[str, Any]], path: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    tools = list(TOOLS)
    width = 0.8 / len(tools)
    for i, tool in enumerate(tools):
        xs = [j + i * width for j in range(len(rows))]
        secs = [r["tools"].get(tool, {}).get("seconds_median", 0.0) for r in rows]
        nodes = [r["tools"].get(tool, {}).get("nodes_after", 0) for r in rows]
        axes[0].bar(xs, secs, width, label=tool)
        axes[1].bar(xs, nodes, width, label=tool)
    for ax, title in zip(axes, ("median seconds, file to file (lower is better)", "nodes after cleanup (lower is better)"), strict=True):
        ax.set_xticks([j + 0.4 - width / 2 for j in range(len(rows))], [r["model"] for r in rows])
        ax.set_title(title, fontsize=10)
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--models", default=",".join(DEFAULT_MODELS))
    ap.add_argument("--repeat", type=int, default=3)
    args = ap.parse_args(argv)
    os.makedirs(RESULTS, exist_ok=True)
    rows = []
    with tempfile.TemporaryDirectory() as work:
        for name in args.models.split(","):
            print(f"benchmarking {name} ...", flush=True)
            rows.append(bench_model(name, args.repeat, work))
    with open(os.path.join(RESULTS, "cleanup.json"), "w") as f:
        json.dump(rows, f, indent=2)
    plot(rows, os.path.join(RESULTS, "cleanup.png"))
    print(markdown(rows))


if __name__ == "__main__":
    main()
