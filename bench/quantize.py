"""int8 quantization (static, dynamic, weight-only): accuracy, output similarity, size and latency, Lepton vs
onnxruntime, one run.

    python -m bench.quantize [--models resnet18,bert_small] [--repeat 5] [--inner 10]

1. The shipped trained models, the digits CNN (`bench/models/digits_cnn.onnx`) and the digits transformer
   encoder (`bench/models/digits_transformer.onnx`, `bench/train_digits_transformer.py`): top-1 accuracy on
   all 450 held-out images (`bench/digits_split.py`) for the float model, Lepton int8 (the compiled TVM
   module; calibration methods minmax, percentile, entropy; minmax with the accuracy budget `top1=0.999`
   judged on 347 training images not used for calibration; dynamic; weight-only int8), onnxruntime `quantize_static` (QDQ, per channel, the
   same 512 calibration images, its MinMax/Percentile/Entropy methods, after `quant_pre_process` as its
   docs recommend) and `quantize_dynamic`.
2. Exported architectures with random weights (`bench/models.py`): cosine similarity to the float
   model's outputs on 4 synthesized samples after calibrating on 8 others, Lepton vs onnxruntime's
   `quantize_static` (QDQ, per channel, MinMax) on the same data; artifact sizes; batch-1 latency of
   Lepton fp32, Lepton int8, Lepton weight-only int8 (no budget: every weight and embedding int8),
   onnxruntime fp32 and onnxruntime on its int8 QDQ graph, tools alternating
   block by block (`bench.latency.time_blocks`), medians over rounds; for the BERT models also dynamic int8
   (Lepton `quantize="dynamic"` fitted on the 4 held-out samples, onnxruntime `quantize_dynamic`).

Writes bench/results/quantize.json and quantize.png and prints Markdown tables.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import tempfile
import time
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import onnx

from bench import models as bench_models
from bench.digits_split import load
from bench.latency import RESULTS, ort_runner, time_blocks

MODELS_DIR = os.path.join(os.path.dirname(__file__), "models")
TRAINED = {"digits_cnn": os.path.join(MODELS_DIR, "digits_cnn.onnx"),
           "digits_transformer": os.path.join(MODELS_DIR, "digits_transformer.onnx")}
Feeds = dict[str, np.ndarray]
PRE_PROCESS_FAILURES: dict[str, str] = {}
"""Models whose `quant_pre_process` raised (they were quantized without it), with the error."""


def cpu_name() -> str:
    with open("/proc/cpuinfo") as f:
        for line in f:
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor()


def ort_quantized(path: str, calib: Sequence[Feeds], out: str, method: str = "MinMax") -> str:
    """onnxruntime's recommended path: `quant_pre_process` (shape inference, BatchNorm folding, graph
    optimization), then quantize_static (QDQ, per-channel int8 weights, uint8 activations)."""
    from onnxruntime.quantization import CalibrationDataReader, CalibrationMethod, QuantFormat, quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process

    class Reader(CalibrationDataReader):
        def __init__(self) -> None:
            self.items = iter(calib)

        def get_next(self) -> Feeds | None:
            return next(self.items, None)

    pre = out.replace(".onnx", "_pre.onnx")
    try:
        quant_pre_process(path, pre)
    except Exception as e:  # noqa: BLE001 - its symbolic shape inference asserts on some exports
        PRE_PROCESS_FAILURES[os.path.basename(path)] = f"{type(e).__name__} {e}".strip()
        pre = path  # quantize the export as it is, as a user whose pre-processing fails would
    quantize_static(pre, out, Reader(), quant_format=QuantFormat.QDQ, per_channel=True,
                    calibrate_method=getattr(CalibrationMethod, method))
    return out


def cosine(a: Mapping[str, np.ndarray], b: Mapping[str, np.ndarray]) -> float:
    """The worst cosine similarity over the float outputs."""
    worst = 1.0
    for k, e in a.items():
        if e.dtype.kind == "f":
            x, y = e.astype(np.float64).ravel(), b[k].astype(np.float64).ravel()
            worst = min(worst, float(x @ y / (np.linalg.norm(x) * np.linalg.norm(y) + 1e-30)))
    return worst


def digits(work: str) -> list[dict[str, Any]]:
    """Accuracy rows of both shipped digits models (the CNN and the transformer encoder)."""
    return [row for name in TRAINED for row in trained(name, work)]


def trained(name: str, work: str) -> list[dict[str, Any]]:
    import lepton
    from onnxruntime.quantization import quantize_dynamic

    path = TRAINED[name]
    d = load()
    calib = [{"image": d["train_images"][i : i + 64]} for i in range(0, 512, 64)]
    val = [{"image": d["train_images"][1000:]}]
    test, labels = {"image": d["test_images"]}, d["test_labels"]
    rows = []

    def acc(logits: np.ndarray) -> float:
        return round(100.0 * float((logits.argmax(1) == labels).mean()), 2)

    def row(tool: str, logits: np.ndarray, left_float: int | None = None) -> None:
        rows.append({"model": name, "tool": tool, "accuracy": acc(logits), "left_float": left_float})

    row("float32 (onnxruntime)", ort_runner(onnx.load(path), 1)(test)["logits"])
    for method in ("minmax", "percentile", "entropy"):
        c = lepton.compile(path, "x86", quantize="int8", calibration=calib, use_cache=False, passes=_with_method(method))
        row(f"lepton int8 {method}", c.run(test)["logits"], _left_float(c.passes))
    c = lepton.compile(path, "x86", quantize="int8", calibration=calib, accuracy_budget="top1=0.999", validation=val,
                       use_cache=False)
    row("lepton int8 minmax + budget top1>=0.999", c.run(test)["logits"], _left_float(c.passes))
    for mode in ("dynamic", "weight-int8"):
        c = lepton.compile(path, "x86", quantize=mode, validation=val, use_cache=False)
        row(f"lepton {mode}", c.run(test)["logits"], _left_float(c.passes))
    for method in ("MinMax", "Percentile", "Entropy"):
        q = ort_quantized(path, calib, os.path.join(work, f"{name}_{method}.onnx"), method)
        row(f"onnxruntime quantize_static {method}", ort_runner(onnx.load(q), 1)(test)["logits"])
    dyn = os.path.join(work, f"{name}_dynamic.onnx")
    quantize_dynamic(path, dyn)
    row("onnxruntime quantize_dynamic", ort_runner(onnx.load(dyn), 1)(test)["logits"])
    return rows


def _with_method(method: str) -> str:
    import targets

    return f"{targets.resolve('x86').pipeline},quantize{{method={method}}}"


def _left_float(passes: Sequence[Mapping[str, Any]]) -> int:
    return sum(int(p["stats"].get("left_float", 0)) for p in passes if p["pass"] == "quantize")


def architecture(name: str, work: str, repeat: int, inner: int) -> dict[str, Any]:
    import lepton

    model = getattr(bench_models, name)()
    path = os.path.join(work, f"{name}.onnx")
    onnx.save(model, path)
    calib = [bench_models.synth_inputs(model, seed=s) for s in range(8)]
    held = [bench_models.synth_inputs(model, seed=100 + s) for s in range(4)]
    t0 = time.perf_counter()
    fp32 = lepton.compile(path, "x86", use_cache=False, output_dir=os.path.join(work, f"{name}_fp32"))
    t1 = time.perf_counter()
    int8 = lepton.compile(path, "x86", quantize="int8", calibration=calib, validation=held,
                          output_dir=os.path.join(work, f"{name}_int8"))
    t2 = time.perf_counter()
    weights = lepton.compile(path, "x86", quantize="weight-int8", output_dir=os.path.join(work, f"{name}_weights"))
    ort_q = onnx.load(ort_quantized(path, calib, os.path.join(work, f"{name}_ort_qdq.onnx")))
    threads = os.cpu_count() or 1
    ref, ort_fp32, ort_int8 = ort_runner(model, 1), ort_runner(model, threads), ort_runner(ort_q, threads)
    refs = [ref(f) for f in held]
    tools: dict[str, Any] = {"lepton fp32": fp32.run, "lepton int8": int8.run, "lepton weight-int8": weights.run,
                             "onnxruntime fp32": ort_fp32, "onnxruntime int8": ort_int8}
    if name.startswith("bert"):  # transformers: dynamic int8 too, Lepton's and onnxruntime's quantize_dynamic
        from onnxruntime.quantization import quantize_dynamic

        dyn = lepton.compile(path, "x86", quantize="dynamic", validation=held, output_dir=os.path.join(work, f"{name}_dyn"))
        ort_dyn = os.path.join(work, f"{name}_ort_dyn.onnx")
        quantize_dynamic(path, ort_dyn)
        tools |= {"lepton dynamic": dyn.run, "onnxruntime dynamic": ort_runner(onnx.load(ort_dyn), threads)}
    cos = {t: min(cosine(r, tools[t](f)) for r, f in zip(refs, held, strict=True)) for t in tools if "fp32" not in t}
    feeds = held[0]
    runners = {t: (lambda fn=fn: fn(feeds)) for t, fn in tools.items()}
    rounds = time_blocks(runners, repeat, dict.fromkeys(runners, inner))
    ms = {k: statistics.median(v) for k, v in rounds.items()}

    def size(folder: str) -> int:
        return sum(os.path.getsize(os.path.join(folder, f)) for f in ("model.so", "model.opt.onnx"))

    return {
        "model": name, "cosine": cos, "ms": ms,
        "sites": next(p["stats"]["sites"] for p in int8.passes if p["pass"] == "quantize"),
        "left_float": _left_float(int8.passes),
        "compile_s": {"fp32": round(t1 - t0, 1), "int8": round(t2 - t1, 1)},
        "bytes": {"lepton fp32 so": os.path.getsize(os.path.join(fp32.path, "model.so")),
                  "lepton int8 so": os.path.getsize(os.path.join(int8.path, "model.so")),
                  "lepton weight-int8 so": os.path.getsize(os.path.join(weights.path, "model.so")),
                  "lepton int8 opt.onnx": os.path.getsize(os.path.join(int8.path, "model.opt.onnx")),
                  "fp32 onnx": os.path.getsize(path), "onnxruntime int8 onnx": len(ort_q.SerializeToString()),
                  "lepton fp32 total": size(fp32.path), "lepton int8 total": size(int8.path)},
    }


def tables(digit_rows: Sequence[Mapping[str, Any]], arch_rows: Sequence[Mapping[str, Any]]) -> str:
    out = ["| model (450 held-out images) | tool | top-1 % | layers left float |", "|---|---|---|---|"]
    out += [f"| {r['model']} | {r['tool']} | {r['accuracy']:.2f} | {'' if r['left_float'] is None else r['left_float']} |"
            for r in digit_rows]
    out += ["", "| model | tool | int8 / float layers | cosine to fp32 | batch-1 ms |", "|---|---|---|---|---|"]
    for r in arch_rows:
        for tool, ms in r["ms"].items():
            layers = f"{r['sites']} / {r['left_float']}" if tool == "lepton int8" else ""
            cos = f"{r['cosine'][tool]:.4f}" if tool in r["cosine"] else "1 (reference)"
            out.append(f"| {r['model']} | {tool} | {layers} | {cos} | {ms:.2f} |")
    out += ["", "| model | Lepton model.so fp32 / int8 / weight-int8 MB | int8 / fp32: Lepton model.so, Lepton artifact "
            "(model.so + model.opt.onnx), onnxruntime .onnx |", "|---|---|---|"]
    for r in arch_rows:
        b = r["bytes"]
        out.append(f"| {r['model']} | {b['lepton fp32 so'] / 1e6:.1f} / {b['lepton int8 so'] / 1e6:.1f} / "
                   f"{b['lepton weight-int8 so'] / 1e6:.1f} | {b['lepton int8 so'] / b['lepton fp32 so']:.2f}, "
                   f"{b['lepton int8 total'] / b['lepton fp32 total']:.2f}, {b['onnxruntime int8 onnx'] / b['fp32 onnx']:.2f} |")
    return "\n".join(out)


def plot(digit_rows: Sequence[Mapping[str, Any]], arch_rows: Sequence[Mapping[str, Any]], path: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (left, right) = plt.subplots(1, 2, figsize=(13, 6), gridspec_kw={"width_ratios": [3, 2]})
    names = [f"{r['model'].removeprefix('digits_')}: " + r["tool"].replace("onnxruntime ", "ORT ").replace("quantize_", "q_")
             for r in digit_rows]
    left.barh(names, [r["accuracy"] for r in digit_rows],
              color=["gray" if "float32" in r["tool"] else "tab:blue" if "lepton" in r["tool"] else "tab:orange"
                     for r in digit_rows])
    left.set_xlim(min(r["accuracy"] for r in digit_rows) - 1.0, 100)
    left.set_xlabel("top-1 % on 450 held-out digits")
    left.tick_params(axis="y", labelsize=7)
    left.invert_yaxis()
    tools = list(dict.fromkeys(t for r in arch_rows for t in r["ms"]))
    width = 0.8 / len(tools)
    for i, tool in enumerate(tools):
        right.bar([x + i * width for x in range(len(arch_rows))], [r["ms"].get(tool, 0.0) for r in arch_rows], width,
                  label=tool)
    right.set_xticks([x + 0.4 - width / 2 for x in range(len(arch_rows))], [r["model"] for r in arch_rows])
    right.set_ylabel("batch-1 ms (lower is better)")
    right.legend(fontsize=8)
    fig.suptitle(f"static int8: accuracy and latency ({cpu_name()})")
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", default="resnet18,bert_small")
    ap.add_argument("--repeat", type=int, default=5)
    ap.add_argument("--inner", type=int, default=10)
    args = ap.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="lepton-bench-quantize-") as work:
        digit_rows = digits(work)
        arch_rows = [architecture(m, work, args.repeat, args.inner) for m in args.models.split(",") if m]
    result = {"command": "python -m bench.quantize " + " ".join(argv or []), "cpu": cpu_name(), "cores": os.cpu_count(),
              "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), "digits": digit_rows, "architectures": arch_rows,
              "quant_pre_process_failures": PRE_PROCESS_FAILURES}
    os.makedirs(RESULTS, exist_ok=True)
    with open(os.path.join(RESULTS, "quantize.json"), "w") as f:
        json.dump(result, f, indent=2)
    plot(digit_rows, arch_rows, os.path.join(RESULTS, "quantize.png"))
    print(tables(digit_rows, arch_rows))


if __name__ == "__main__":
    main()
