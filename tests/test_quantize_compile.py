"""Quantized compiles end to end: `lepton.compile(quantize="int8")`, the CLI, and models onnxruntime quantized.

The accuracy test is the issue's bar: on the digits CNN's 450 held-out images, Lepton's int8 module loses at
most 0.5 accuracy points against the float model.
"""

from __future__ import annotations

import json
import os

import numpy as np
import onnx
import pytest
from typer.testing import CliRunner

import lepton
from bench.digits_split import load
from lepton.cli import app
from lepton_ir import UserError
from passes.ort import run_model

DEMO = os.path.join(os.path.dirname(__file__), "..", "bench", "models", "digits_cnn.onnx")
runner = CliRunner()


@pytest.fixture(scope="module")
def digits() -> dict[str, np.ndarray]:
    return load()


def batches(images: np.ndarray, size: int = 64, count: int = 8) -> list[dict[str, np.ndarray]]:
    return [{"image": images[i : i + size]} for i in range(0, size * count, size)]


def accuracy(logits: np.ndarray, labels: np.ndarray) -> float:
    return float((logits.argmax(1) == labels).mean())


def test_int8_digits_cnn_keeps_accuracy_and_matches_its_quantized_graph(digits, tmp_path):
    c = lepton.compile(DEMO, "x86", quantize="int8", calibration=batches(digits["train_images"]),
                       output_dir=tmp_path / "art")
    assert c.manifest.policy.name == "int8" and c.verify_report is not None and c.verify_report.ok
    quant = [p for p in c.passes if p["pass"] == "quantize"]
    assert len(quant) == 1 and quant[0]["stats"]["sites"] == 4
    test = {"image": digits["test_images"]}
    fp32 = accuracy(run_model(onnx.load(DEMO), test)["logits"], digits["test_labels"])
    got = c.run(test)["logits"]
    assert accuracy(got, digits["test_labels"]) >= fp32 - 0.005
    graph = onnx.load(tmp_path / "art" / "model.opt.onnx")  # the QDQ graph TVM compiled, run by onnxruntime
    assert sum(n.op_type == "DequantizeLinear" for n in graph.graph.node) == 8
    ort = run_model(graph, test)["logits"]
    assert (ort.argmax(1) == got.argmax(1)).mean() >= 0.995
    np.testing.assert_allclose(got, ort, atol=0.05 * float(np.abs(ort).max()))  # a step at most on near-ties


def test_weight_only_int8_digits_cnn_keeps_accuracy_with_int8_weights_in_the_library(digits, tmp_path):
    c = lepton.compile(DEMO, "x86", quantize="weight-int8", validation=batches(digits["train_images"], count=2),
                       output_dir=tmp_path / "art")
    assert c.manifest.policy.name == "int8" and c.verify_report is not None and c.verify_report.ok
    stats = next(p for p in c.passes if p["pass"] == "quantize")["stats"]
    assert stats["sites"] == 4 and stats["activations"] == 0
    graph = onnx.load(tmp_path / "art" / "model.opt.onnx")
    assert not any(n.op_type == "QuantizeLinear" for n in graph.graph.node)
    test = {"image": digits["test_images"]}
    fp32 = accuracy(run_model(onnx.load(DEMO), test)["logits"], digits["test_labels"])
    assert accuracy(c.run(test)["logits"], digits["test_labels"]) >= fp32 - 0.005
    np.testing.assert_allclose(c.run(test)["logits"], run_model(graph, test)["logits"], rtol=1e-4, atol=1e-4)
    stored = next(p for p in c.passes if p["pass"] == "codegen:integer-weights")["stats"]
    assert stored["bytes"] * 4 == stored["float32_bytes"]  # the weights the library holds are int8


def test_a_pipeline_that_places_quantize_itself_gets_no_second_one(digits):
    import targets

    c = lepton.compile(DEMO, "x86", quantize="int8", calibration=batches(digits["train_images"], count=2),
                       passes=targets.resolve("x86").pipeline + ",quantize{method=entropy}", verify=False)
    runs = [p for p in c.passes if p["pass"] == "quantize"]
    assert len(runs) == 1 and runs[0]["stats"]["sites"] + runs[0]["stats"]["left_float"] == 4


@pytest.mark.parametrize("mode", ["int8", "dynamic", "weight-int8"])
def test_int8_digits_transformer_keeps_accuracy(mode, digits):
    model = os.path.join(os.path.dirname(DEMO), "digits_transformer.onnx")
    data = {"calibration": batches(digits["train_images"])} if mode == "int8" else {}
    c = lepton.compile(model, "x86", quantize=mode, validation=[{"image": digits["train_images"][1000:]}], **data)
    test = {"image": digits["test_images"]}
    fp32 = accuracy(run_model(onnx.load(model), test)["logits"], digits["test_labels"])
    assert accuracy(c.run(test)["logits"], digits["test_labels"]) >= fp32 - 0.005
    assert next(p for p in c.passes if p["pass"] == "quantize")["stats"]["sites"] >= 10


def test_quantize_options_that_do_not_fit_together_are_user_errors(digits):
    with pytest.raises(UserError, match="without quantize"):
        lepton.compile(DEMO, "x86", calibration=batches(digits["train_images"], count=1))
    with pytest.raises(UserError, match="needs calibration data"):
        lepton.compile(DEMO, "x86", quantize="int8")
    with pytest.raises(UserError, match="unknown quantization mode"):
        lepton.compile(DEMO, "x86", quantize="int3", calibration={"image": digits["train_images"][:8]})
    for mode in ("dynamic", "weight-int8"):
        with pytest.raises(UserError, match="takes no calibration"):
            lepton.compile(DEMO, "x86", quantize=mode, calibration={"image": digits["train_images"][:8]})
    with pytest.raises(UserError, match="one-shot iterator"):
        lepton.compile(DEMO, "x86", quantize="int8", calibration=iter(batches(digits["train_images"], count=2)))


def test_cli_quantizes_with_a_budget_and_reports_it(digits, tmp_path):
    calib, val = tmp_path / "calib.npz", tmp_path / "val.npz"
    np.savez(calib, image=digits["train_images"][:256])
    np.savez(val, image=digits["test_images"][:100])
    out = tmp_path / "art"
    res = runner.invoke(app, ["compile", DEMO, "-t", "x86", "-o", str(out), "--quantize", "int8", "--calibration",
                              str(calib), "--budget", "cos=0.999", "--validation", str(val), "--json"])
    assert res.exit_code == 0, res.output
    report = json.loads(res.stdout)
    quant = [p for p in report["passes"] if p["pass"] == "quantize"]
    assert quant and quant[0]["notes"][0].startswith("accuracy budget cosine >= 0.999, int8-policy >= 1.005")
    assert report["verify"]["policy"]["policy"] == "int8"


def test_dynamic_quantization_compiles_and_verifies_on_a_held_out_batch(digits):
    c = lepton.compile(DEMO, "x86", quantize="dynamic", validation={"image": digits["test_images"][:100]}, use_cache=False)
    run = next(p for p in c.passes if p["pass"] == "quantize")
    assert run["stats"]["sites"] == 2 and c.manifest.policy.name == "int8" and c.verify_report.ok
    graph = onnx.load(os.path.join(c.path, "model.opt.onnx"))
    assert sum(n.op_type == "DynamicQuantizeLinear" for n in graph.graph.node) == 2


def test_cli_quantize_without_calibration_is_exit_2(tmp_path):
    res = runner.invoke(app, ["compile", DEMO, "-t", "x86", "-o", str(tmp_path / "art"), "--quantize", "int8"])
    assert res.exit_code == 2 and "calibration" in res.stderr
    assert not (tmp_path / "art").exists()


@pytest.mark.parametrize("form", ["QDQ", "QOperator", "dynamic"])
def test_models_onnxruntime_quantized_compile_and_verify(form, digits, tmp_path):
    from onnxruntime.quantization import CalibrationDataReader, QuantFormat, quantize_dynamic, quantize_static

    class Reader(CalibrationDataReader):
        def __init__(self) -> None:
            self.items = iter(batches(digits["train_images"], count=4))

        def get_next(self) -> dict[str, np.ndarray] | None:
            return next(self.items, None)

    path = str(tmp_path / f"digits_{form}.onnx")
    if form == "dynamic":
        quantize_dynamic(DEMO, path)
    else:
        quantize_static(DEMO, path, Reader(), quant_format=getattr(QuantFormat, form), per_channel=True)
    test = {"image": digits["test_images"][:200]}
    c = lepton.compile(path, "x86", verify_inputs=test, use_cache=False)
    assert c.manifest.policy.name == "int8" and c.verify_report.ok
    assert not {n.op_type for n in onnx.load(os.path.join(c.path, "model.opt.onnx")).graph.node} & {
        "QLinearConv", "QGemm", "ConvInteger"}
    expected = run_model(onnx.load(path), test)["logits"]
    assert (c.run(test)["logits"].argmax(1) == expected.argmax(1)).mean() >= 0.99


def test_weight_int4_converts_the_model_to_opset_21_and_keeps_digits_accuracy(digits, tmp_path):
    c = lepton.compile(DEMO, "x86", quantize="weight-int4", validation=batches(digits["train_images"], count=2),
                       output_dir=tmp_path / "art")
    assert c.manifest.policy.name == "int8" and c.verify_report is not None and c.verify_report.ok
    assert any("converted from opset 17 to 21" in n for n in c.manifest.notes)
    stats = next(p for p in c.passes if p["pass"] == "quantize")["stats"]
    assert stats["blocked_weights"] + stats["left_float"] == 4 and stats["activations"] == 0
    graph = onnx.load(tmp_path / "art" / "model.opt.onnx")
    assert any(t.data_type == onnx.TensorProto.INT4 for t in graph.graph.initializer)
    test = {"image": digits["test_images"]}
    fp32 = accuracy(run_model(onnx.load(DEMO), test)["logits"], digits["test_labels"])
    assert accuracy(c.run(test)["logits"], digits["test_labels"]) >= fp32 - 0.01
    np.testing.assert_allclose(c.run(test)["logits"], run_model(graph, test)["logits"], rtol=1e-4, atol=1e-4)
