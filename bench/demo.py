"""`make demo`: compile the shipped digits CNN for this machine, verify it, and time it next to onnxruntime.

Loads bench/models/digits_cnn.onnx (a CNN trained on scikit-learn's digits; see
bench/train_digits.py), compiles it with `lepton.compile(model, "auto")` into build/demo/
(the compile verifies the module against onnxruntime on synthesized inputs), then checks
accuracy on the shipped test images and times batch-1 inference in both runtimes.
"""

from __future__ import annotations

import os
import statistics
import time
from collections import Counter
from collections.abc import Callable

import numpy as np
import onnx

import lepton
import lepton_ir
from lepton.report import compile_summary
from lepton.report import console as make_console
from passes.ort import run_model

HERE = os.path.dirname(__file__)
MODEL = os.path.join(HERE, "models", "digits_cnn.onnx")
TEST_SET = os.path.join(HERE, "models", "digits_test.npz")
OUT_DIR = os.path.join("build", "demo")


def _test_set() -> tuple[np.ndarray, np.ndarray]:
    data = np.load(TEST_SET)
    images = next(data[k] for k in data.files if data[k].dtype == np.float32)
    labels = next(data[k] for k in data.files if np.issubdtype(data[k].dtype, np.integer))
    return images, labels


def median_ms(fn: Callable[[], object], runs: int = 300) -> float:
    """Median wall time of `fn()` in milliseconds, after warm-up."""
    for _ in range(20):
        fn()
    times = []
    for _ in range(runs):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times) * 1e3


def main() -> None:
    import onnxruntime as ort

    console = make_console()
    console.rule("[bold]Lepton demo: digits CNN")
    original = lepton_ir.load(MODEL)
    ops = Counter(n.op_type for n in original)
    console.print(f"model  {MODEL}: {len(original)} nodes, opset {original.opset_imports.get('', '?')}")
    console.print("ops    " + ", ".join(f"{op}×{k}" for op, k in ops.most_common()), highlight=False)

    if os.path.isdir(OUT_DIR):
        import shutil

        shutil.rmtree(OUT_DIR)
    with console.status("compiling", spinner="dots") as status:
        result = lepton.compile(MODEL, "auto", output_dir=OUT_DIR, use_cache=False, progress=status.update)
    compile_summary(console, result)

    images, labels = _test_set()
    name_in, name_out = original.inputs[0].name, original.outputs[0].name
    ref = run_model(onnx.load(MODEL), {name_in: images})[name_out]
    got = result.run({name_in: images})[name_out]
    err = float(np.abs(ref - got).max())
    same = bool(np.allclose(got, ref, rtol=1e-4, atol=1e-5))
    console.print(
        f"check  {len(labels)} test images, compiled module vs onnxruntime: max |diff| {err:.2e} "
        f"({'within' if same else 'OUTSIDE'} rtol 1e-4/atol 1e-5); accuracy {(ref.argmax(1) == labels).mean():.1%} "
        f"(onnxruntime) vs {(got.argmax(1) == labels).mean():.1%} (Lepton)"
    )

    one = {name_in: images[:1]}
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = result.target.options.get("num_cores", os.cpu_count() or 1)
    sess = ort.InferenceSession(MODEL, opts, providers=["CPUExecutionProvider"])
    ms_ort = median_ms(lambda: sess.run(None, one))
    ms_lepton = median_ms(lambda: result.run(one))
    console.print(
        f"speed  batch 1, median of 300: Lepton {ms_lepton:.3f} ms, onnxruntime {ms_ort:.3f} ms "
        f"(ratio {ms_lepton / ms_ort:.2f}×; on a model this small the TVM VM's per-call overhead dominates; "
        "bench/RESULTS.md has the bench models)"
    )
    if not same:
        raise SystemExit(1)


if __name__ == "__main__":
    main()
