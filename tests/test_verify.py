"""The verification harness (`lepton.verify`): metrics, policies, input synthesis, reports, compile/CLI integration."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper
from typer.testing import CliRunner

import lepton
import lepton_ir
from lepton.artifact import read_manifest, read_verify_bundle
from lepton.cli import app
from lepton.errors import InputError, VerificationError
from lepton.verify import FP16, FP32, INT8, Policy, SynthesisError, VerifyReport, compare, synthesize
from lepton.verify.inputs import MASK_ZERO_RATE, plan
from lepton.verify.metrics import REL_ERR_FLOOR, measure
from lepton.verify.policy import choose_policy, resolve_policy

DEMO = os.path.join(os.path.dirname(__file__), "..", "bench", "models", "digits_cnn.onnx")


def _model(nodes: list, inputs: list, outputs: list, inits: list | None = None) -> onnx.ModelProto:
    graph = helper.make_graph(nodes, "m", inputs, outputs, inits or [])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)


def _vi(name: str, dtype: int, shape: list) -> onnx.ValueInfoProto:
    return helper.make_tensor_value_info(name, dtype, shape)


# --- metrics ---


def test_abs_rel_mean_errors_and_worst_element() -> None:
    e = np.array([[1.1, 2.0, 0.0005], [4.0, -3.0, 0.0]], np.float32)
    a = np.array([[1.0, 2.0, 0.0], [4.0, -3.0, 0.0]], np.float32)
    m = measure(a, e, rtol=1e-4, atol=1e-5)
    assert m.max_abs_err == pytest.approx(0.1, rel=1e-5)
    assert m.max_rel_err == pytest.approx(0.0005 / REL_ERR_FLOOR, rel=1e-3)  # |e| < floor: measured against the floor
    assert m.mean_abs_err == pytest.approx((0.1 + 0.0005) / 6, rel=1e-4)
    assert m.worst == (0, (0, 0)) and m.worst_actual == pytest.approx(1.0) and m.worst_expected == pytest.approx(1.1)
    assert m.out_of_tolerance == 2 and m.mismatch_positions == ((0, (0, 0)), (0, (0, 2)))
    exact = measure(e, e.copy(), rtol=0, atol=0)
    assert exact.max_abs_err == 0 and exact.out_of_tolerance == 0 and exact.cosine == pytest.approx(1.0)


def test_cosine_similarity() -> None:
    x = np.array([1.0, 2.0, -3.0], np.float32)
    cos = lambda a, e: measure(np.asarray(a, np.float32), np.asarray(e, np.float32), rtol=0, atol=0).cosine  # noqa: E731
    assert cos(2 * x, x) == pytest.approx(1.0)
    assert cos(-x, x) == pytest.approx(-1.0)
    assert cos([1.0, 0.0], [0.0, 1.0]) == pytest.approx(0.0)
    assert cos([0.0, 0.0], [0.0, 0.0]) == 1.0 and cos([0.0, 0.0], [1.0, 0.0]) == 0.0
    assert cos([3e38, -3e38], [3e38, -3e38]) == pytest.approx(1.0)  # no overflow in the norms


def test_top1_agreement_only_for_classifier_shaped_outputs() -> None:
    e = np.array([[0.1, 0.9, 0.0], [0.7, 0.2, 0.1], [0.3, 0.3, 0.4], [0.5, 0.5, 0.0]], np.float32)
    a = e.copy()
    a[1] = [0.1, 0.8, 0.1]  # row 1 now picks class 1, onnxruntime class 0
    a[3] = [0.4, 0.6, 0.0]  # onnxruntime ties classes 0 and 1: picking 1 agrees
    m = measure(a, e, rtol=0, atol=0)
    assert (m.top1_rows, m.top1_agree, m.top1) == (4, 3, 0.75)
    assert measure(a[None], e[None], rtol=0, atol=0).top1 == 0.75  # [N, T, C]
    assert measure(e[0], e[0], rtol=0, atol=0).top1 is None  # rank 1
    assert measure(e[None, None], e[None, None], rtol=0, atol=0).top1 is None  # rank 4 (feature maps)
    assert measure(e[:, :1], e[:, :1], rtol=0, atol=0).top1 is None  # one class
    assert measure(np.zeros((2, 3), np.int64), np.zeros((2, 3), np.int64), rtol=0, atol=0).top1 is None


def test_nan_and_inf_must_sit_where_onnxruntime_has_them() -> None:
    nan, inf = np.nan, np.inf
    e = np.array([1.0, nan, inf, -inf, nan], np.float32)
    same = measure(e.copy(), e, rtol=1e-4, atol=1e-5)
    assert same.nonfinite_mismatches == 0 and same.nan_expected == 2 and same.inf_expected == 2
    a = np.array([nan, nan, -inf, -inf, 2.0], np.float32)  # NaN extra at 0, Inf sign flipped at 2, NaN lost at 4
    m = measure(a, e, rtol=1e-4, atol=1e-5)
    assert m.nonfinite_mismatches == 3 and [p[1] for p in m.mismatch_positions] == [(0,), (2,), (4,)]
    assert (m.nan_actual, m.inf_actual) == (2, 2)
    check = compare(a, e, FP32)
    assert not check.ok and "NaN/Inf placed differently" in check.reason
    assert compare(a, e, INT8).failures[0].startswith("NaN/Inf placed differently")  # every policy


def test_integer_and_bool_outputs_are_exact_under_every_policy() -> None:
    e = np.array([1, 2, 3], np.int64)
    for policy in (FP32, FP16, INT8, Policy("loose", 10.0, 10.0)):
        check = compare(np.array([1, 2, 4], np.int64), e, policy)
        assert not check.ok and "1 of 3 elements differ" in check.reason
        assert compare(e.copy(), e, policy).ok
    assert not compare(np.array([True, False]), np.array([True, True]), FP32).ok


def test_shape_dtype_and_missing_outputs_fail() -> None:
    e = np.ones((2, 3), np.float32)
    assert "shape [3, 2], expected [2, 3]" in compare(np.ones((3, 2), np.float32), e).reason
    assert compare(np.ones((3, 2), np.float32), e).metrics is None
    assert "dtype float64, expected float32" in compare(e.astype(np.float64), e).reason
    from lepton.verify.report import Collector

    c = Collector(FP32)
    c.add({}, {"y": e})
    assert c.report("p", "x86").outputs[0].reason == "missing from the module's outputs"


def test_metrics_merge_over_samples() -> None:
    from lepton.verify.report import Collector

    e = np.array([[2.0, 1.0], [1.0, 2.0]], np.float32)
    c = Collector(INT8)
    c.add({"y": e + np.float32(0.01)}, {"y": e})
    c.add({"y": np.array([[1.0, 2.0], [1.0, 2.0]], np.float32)}, {"y": e})  # row 0 flips class
    (check,) = c.report("p", "x86").outputs
    m = check.metrics
    assert m is not None and m.samples == 2 and m.elements == 8
    assert m.max_abs_err == pytest.approx(1.0) and m.worst == (1, (0, 0))
    assert (m.top1_agree, m.top1_rows) == (3, 4)  # pooled over samples
    assert m.cosine == pytest.approx(0.9, abs=1e-6)  # the worse sample's: 9/10
    assert not check.ok and any("cosine similarity" in f for f in check.failures)
    assert any("top-1 agreement 0.7500 < 0.99" in f for f in check.failures)


# --- policies ---


def test_policy_choice_and_names() -> None:
    assert choose_policy(["float32", "int64"]) == FP32 and choose_policy(["float32", "float16"]) == FP16
    assert choose_policy(["bfloat16"]) == FP16 and choose_policy([]) == FP32
    assert (FP32.rtol, FP32.atol) == (1e-4, 1e-5) and FP16.rtol == pytest.approx(1e-2)
    assert resolve_policy("int8") == INT8 and resolve_policy(FP16) is FP16
    with pytest.raises(lepton_ir.UserError, match="unknown verification policy 'fp64'.*fp32"):
        resolve_policy("fp64")
    assert Policy.from_json({"rtol": 1e-4, "atol": 1e-5}) == FP32  # manifests written before policies
    assert Policy.from_json(INT8.to_json()) == INT8


def test_accuracy_budget_tolerates_what_elementwise_does_not() -> None:
    e = np.random.default_rng(0).standard_normal((64, 10)).astype(np.float32) * 5
    noisy = e + np.random.default_rng(1).standard_normal(e.shape).astype(np.float32) * 0.02
    assert not compare(noisy, e, FP32).ok and compare(noisy, e, INT8).ok
    scrambled = np.random.default_rng(2).permutation(e, axis=1)
    failures = compare(scrambled, e, INT8).failures
    assert any(f.startswith("cosine similarity") for f in failures) and any(f.startswith("top-1") for f in failures)


# --- input synthesis ---


def _embedding_model() -> onnx.ModelProto:
    """ids int32 -> Cast int64 -> Gather(table[50, 4]); pos int64 -> Gather(table2[7, 4]) through Unsqueeze."""
    rng = np.random.default_rng(0)
    nodes = [
        helper.make_node("Cast", ["ids"], ["ids64"], to=TensorProto.INT64),
        helper.make_node("Gather", ["table", "ids64"], ["emb"], axis=0),
        helper.make_node("Unsqueeze", ["pos", "ax0"], ["pos2"]),
        helper.make_node("Gather", ["table2", "pos2"], ["pemb"], axis=0),
        helper.make_node("Add", ["emb", "pemb"], ["y"]),
    ]
    inits = [numpy_helper.from_array(rng.standard_normal((50, 4)).astype(np.float32), "table"),
             numpy_helper.from_array(rng.standard_normal((7, 4)).astype(np.float32), "table2"),
             numpy_helper.from_array(np.array([0], np.int64), "ax0")]
    return _model(nodes, [_vi("ids", TensorProto.INT32, [1, 6]), _vi("pos", TensorProto.INT64, [6])],
                  [_vi("y", TensorProto.FLOAT, [1, 6, 4])], inits)


def test_gather_indices_stay_inside_the_table() -> None:
    graph = lepton_ir.load(_embedding_model())
    specs = {s.name: s for s in plan(graph)}
    assert (specs["ids"].kind, specs["ids"].bound) == ("index", 50) and specs["pos"].bound == 7
    ids = np.stack([synthesize(graph, seed)["ids"] for seed in range(200)])
    pos = np.stack([synthesize(graph, seed)["pos"] for seed in range(200)])
    assert ids.dtype == np.int32 and ids.min() >= 0 and ids.max() == 49
    assert pos.min() >= 0 and pos.max() == 6


def test_embedding_model_verifies_end_to_end() -> None:
    model = _embedding_model()
    compiled = lepton.compile(model, "x86", use_cache=False, verify_samples=3)
    assert compiled.verify_report is not None and compiled.verify_report.samples == 3
    report = lepton.verify(model, compiled, samples=5, seed=10)
    assert report.ok and report.samples == 5 and report.outputs[0].metrics.top1 is not None  # [1, 6, 4]: [N, T, C]


def test_masks_bools_and_images() -> None:
    nodes = [
        helper.make_node("Cast", ["m"], ["mf"], to=TensorProto.FLOAT),
        helper.make_node("Mul", ["x", "mf"], ["xm"]),
        helper.make_node("Where", ["keep", "xm", "x"], ["xw"]),
        helper.make_node("Cast", ["attention_mask"], ["am"], to=TensorProto.INT64),
        helper.make_node("Cast", ["img"], ["imgf"], to=TensorProto.FLOAT),
        helper.make_node("Add", ["n", "n"], ["n2"]),
    ]
    model = _model(nodes, [_vi("x", TensorProto.FLOAT, [4, 64]), _vi("m", TensorProto.INT64, [4, 64]),
                           _vi("keep", TensorProto.BOOL, [4, 64]), _vi("attention_mask", TensorProto.INT32, [4, 64]),
                           _vi("img", TensorProto.UINT8, [2, 3]), _vi("n", TensorProto.INT64, [3])],
                   [_vi("xw", TensorProto.FLOAT, [4, 64]), _vi("am", TensorProto.INT64, [4, 64]),
                    _vi("imgf", TensorProto.FLOAT, [2, 3]), _vi("n2", TensorProto.INT64, [3])])
    graph = lepton_ir.load(model)
    kinds = {s.name: s.kind for s in plan(graph)}
    assert kinds == {"x": "float", "m": "mask", "keep": "mask", "attention_mask": "mask", "img": "image", "n": "int"}
    feeds = synthesize(graph, seed=3)
    for name in ("m", "keep", "attention_mask"):
        mask = feeds[name]
        assert set(np.unique(mask).tolist()) <= {0, 1} and mask[:, 0].all()  # never a fully masked row
        assert 0.5 * MASK_ZERO_RATE < 1 - mask.mean() < 2 * MASK_ZERO_RATE
    assert feeds["keep"].dtype == np.bool_ and feeds["attention_mask"].dtype == np.int32
    assert feeds["img"].dtype == np.uint8 and feeds["x"].dtype == np.float32
    assert set(np.unique(feeds["n"]).tolist()) <= {0, 1}


def test_shape_like_inputs_cannot_be_synthesized() -> None:
    nodes = [
        helper.make_node("Unsqueeze", ["n", "ax0"], ["n1"]),
        helper.make_node("Concat", ["n1", "minus1"], ["target"], axis=0),
        helper.make_node("Reshape", ["x", "target"], ["y"]),
    ]
    inits = [numpy_helper.from_array(np.array([0], np.int64), "ax0"), numpy_helper.from_array(np.array([-1], np.int64), "minus1")]
    graph = lepton_ir.load(_model(nodes, [_vi("x", TensorProto.FLOAT, [2, 6]), _vi("n", TensorProto.INT64, [])],
                                  [_vi("y", TensorProto.FLOAT, ["a", "b"])], inits))
    with pytest.raises(SynthesisError, match="input 'n' sets a shape.*Reshape.*input 1.*inputs=") as e:
        synthesize(graph)
    assert isinstance(e.value, lepton_ir.UserError) and e.value.exit_code == 2

    rng = _model([helper.make_node("Range", ["start", "limit", "delta"], ["r"])],
                 [_vi(n, TensorProto.FLOAT, []) for n in ("start", "limit", "delta")], [_vi("r", TensorProto.FLOAT, ["n"])])
    with pytest.raises(SynthesisError, match="input 'start'.*Range"):
        synthesize(lepton_ir.load(rng))


def test_synthesis_is_deterministic_per_seed() -> None:
    graph = lepton_ir.load(DEMO)
    a, b, c = synthesize(graph, 5), synthesize(graph, 5), synthesize(graph, 6)
    np.testing.assert_array_equal(a["image"], b["image"])
    assert not np.array_equal(a["image"], c["image"])
    assert a["image"].shape == (1, 1, 8, 8) and synthesize(graph, 5, default_dim=3)["image"].shape == (3, 1, 8, 8)


# --- lepton.verify on the demo model ---


@pytest.fixture(scope="module")
def demo(tmp_path_factory: pytest.TempPathFactory) -> lepton.Compiled:
    return lepton.compile(DEMO, "x86", use_cache=False, output_dir=tmp_path_factory.mktemp("demo") / "x86")


def _images(n: int, batch: int = 2, seed: int = 0) -> list[dict[str, np.ndarray]]:
    rng = np.random.default_rng(seed)
    return [{"image": rng.standard_normal((batch, 1, 8, 8)).astype(np.float32)} for _ in range(n)]


def test_verify_synthesized_dict_npz_and_dataset(demo: lepton.Compiled, tmp_path: Path) -> None:
    report = lepton.verify(DEMO, demo, samples=3)
    assert report.ok and report.samples == 3 and report.policy == FP32
    (check,) = report.outputs
    assert check.name == "logits" and check.metrics is not None and check.metrics.samples == 3
    assert check.metrics.top1 == 1.0 and check.metrics.cosine > 0.999999 and check.metrics.max_abs_err < 1e-3

    one = _images(1)[0]
    report = lepton.verify(DEMO, demo, inputs=one)
    assert report.ok and report.samples == 1 and report.outputs[0].shape == (2, 10)

    np.savez(tmp_path / "x.npz", **one)
    assert lepton.verify(onnx.load(DEMO), demo.module, inputs=tmp_path / "x.npz").ok  # a ModelProto, a loaded module

    data = _images(5, batch=3)
    report = lepton.verify(lepton_ir.load(DEMO), demo, inputs=(d for d in data))  # a generator: every sample runs
    assert report.ok and report.samples == 5 and report.outputs[0].metrics.top1_rows == 15
    assert lepton.verify(DEMO, demo, inputs=[str(tmp_path / "x.npz"), data[0]]).samples == 2


def test_verify_rejects_bad_inputs(demo: lepton.Compiled, tmp_path: Path) -> None:
    with pytest.raises(InputError, match=r"unknown input\(s\) 'img'; missing input\(s\) 'image'"):
        lepton.verify(DEMO, demo, inputs={"img": np.zeros((1, 1, 8, 8), np.float32)})
    with pytest.raises(InputError, match="'image' is float64, the model takes float32"):
        lepton.verify(DEMO, demo, inputs={"image": np.zeros((1, 1, 8, 8))})
    with pytest.raises(InputError, match=r"input sample 1: input 'image' has shape \[1, 1, 4, 4\]"):
        lepton.verify(DEMO, demo, inputs=[_images(1)[0], {"image": np.zeros((1, 1, 4, 4), np.float32)}])
    with pytest.raises(InputError, match="no input samples"):
        lepton.verify(DEMO, demo, inputs=[])
    with pytest.raises(InputError, match="cannot read inputs"):
        lepton.verify(DEMO, demo, inputs=tmp_path / "missing.npz")
    with pytest.raises(lepton_ir.UserError, match="samples must be an integer >= 1"):
        lepton.verify(DEMO, demo, samples=0)


@pytest.fixture(scope="module")
def wrong(tmp_path_factory: pytest.TempPathFactory) -> lepton.Compiled:
    """The demo model with fc2.bias moved by 0.05: same signature, different outputs."""
    model = onnx.load(DEMO)
    bias = next(t for t in model.graph.initializer if t.name == "fc2.bias")
    bias.CopyFrom(numpy_helper.from_array(numpy_helper.to_array(bias) + np.float32(0.05), "fc2.bias"))
    return lepton.compile(model, "x86", use_cache=False, output_dir=tmp_path_factory.mktemp("wrong") / "x86")


def test_wrong_module_fails_with_a_readable_report(wrong: lepton.Compiled) -> None:
    assert wrong.verify_report is not None and wrong.verify_report.ok  # against its own model
    report = lepton.verify(DEMO, wrong, samples=2)
    assert not report.ok and [o.name for o in report.failing] == ["logits"]
    (check,) = report.outputs
    assert check.failures[0].startswith("out of tolerance at 20 of 20 elements")
    assert check.max_abs_err == pytest.approx(0.05, rel=1e-3) and check.metrics.top1 == 1.0
    assert "logits: out of tolerance" in report.summary() and "worst at sample" in report.summary()

    from rich.console import Console

    console = Console(width=160, record=True)
    console.print(report.table())
    text = console.export_text()
    assert "logits" in text and "FAIL" in text and "0.05" in text

    data = json.loads(json.dumps(report.to_json()))
    assert data["ok"] is False and data["outputs"][0]["ok"] is False
    assert data["outputs"][0]["metrics"]["max_abs_err"] == pytest.approx(0.05, rel=1e-3)
    assert VerifyReport.from_json(data) == report
    assert lepton.verify(DEMO, wrong, samples=2, policy="int8").ok  # within an accuracy budget


def test_report_json_round_trips_with_positions_and_problems() -> None:
    from lepton.verify.report import Collector

    c = Collector(FP16)
    e = np.array([[1.0, np.nan], [np.inf, 2.0]], np.float32)
    c.add({"a": np.array([[1.5, 0.0], [np.inf, 2.0]], np.float32), "b": np.zeros(3, np.int64)},
          {"a": e, "b": np.arange(3, dtype=np.int64), "c": np.zeros(2, np.float32)})
    report = c.report("dir", "x86")
    assert VerifyReport.from_json(json.loads(json.dumps(report.to_json()))) == report
    assert [o.ok for o in report.outputs] == [False, False, False]


# --- compile() and the CLI ---


def test_compile_verifies_every_given_sample_and_bundles_the_first(tmp_path: Path) -> None:
    lepton.compile(DEMO, "x86", verify=False)  # a cached build whose bundle holds a synthesized sample
    data = _images(3, batch=2, seed=7)
    res = lepton.compile(DEMO, "x86", output_dir=tmp_path / "a", verify_inputs=data)
    assert res.verify_report is not None and res.verify_report.ok and res.verify_report.samples == 3
    inputs, _ = read_verify_bundle(read_manifest(res.path))
    np.testing.assert_array_equal(inputs["image"], data[0]["image"])
    assert res.manifest.data["tolerance"] == {"policy": "fp32", "rtol": 1e-4, "atol": 1e-5}
    with pytest.raises(lepton_ir.UserError, match="samples must be an integer >= 1"):
        lepton.compile(DEMO, "x86", verify_samples=0)


def test_compile_raises_when_a_later_sample_is_out_of_tolerance(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from lepton.verify import Reference

    real = Reference.run

    def shifted(self: Reference, feeds: dict, sample: int = 0) -> dict:
        return {k: v + np.float32(1e-2) if sample == 2 else v for k, v in real(self, feeds, sample).items()}

    monkeypatch.setattr(Reference, "run", shifted)
    with pytest.raises(VerificationError) as e:
        lepton.compile(DEMO, "x86", output_dir=tmp_path / "v", verify_samples=3)
    report = e.value.report
    assert isinstance(report, VerifyReport) and report.samples == 3 and not report.ok
    assert "logits: out of tolerance" in str(e.value) and "sample 2" in str(e.value)
    assert e.value.exit_code == 1


def test_cli_verify_json_shows_metrics(demo: lepton.Compiled) -> None:
    res = CliRunner().invoke(app, ["verify", demo.path, "--json"])
    assert res.exit_code == 0, res.output
    data = json.loads(res.stdout)
    assert data["ok"] is True and data["policy"]["policy"] == "fp32" and data["samples"] == 1
    metrics = data["outputs"][0]["metrics"]
    assert {"max_abs_err", "max_rel_err", "mean_abs_err", "cosine", "top1", "nan_expected", "worst"} <= set(metrics)
    res = CliRunner().invoke(app, ["verify", demo.path])
    assert res.exit_code == 0 and "cosine" in res.stdout and "within fp32" in res.stdout


def test_manifest_policy_is_validated_and_old_manifests_read_as_fp32(demo: lepton.Compiled, tmp_path: Path) -> None:
    import shutil

    from lepton.errors import ArtifactError

    art = tmp_path / "art"
    shutil.copytree(demo.path, art)
    path = art / "manifest.json"
    data = json.loads(path.read_text())
    data["tolerance"] = {"rtol": 1e-3, "atol": 1e-4}  # written before policies existed
    path.write_text(json.dumps(data))
    assert read_manifest(art).policy == Policy("fp32", 1e-3, 1e-4)
    data["tolerance"]["policy"] = "fp64"
    path.write_text(json.dumps(data))
    with pytest.raises(ArtifactError, match="'tolerance.policy' must be one of fp32, fp16, int8, pruned"):
        read_manifest(art)


def test_lepton_verify_is_callable_and_a_package() -> None:
    import lepton.verify.metrics  # noqa: F401 - importing a submodule must not hide the callable

    assert callable(lepton.verify) and lepton.verify.VerifyReport is VerifyReport
    with pytest.raises(lepton_ir.UserError, match="takes a lepton.Compiled or a loaded module"):
        lepton.verify(DEMO, object())


def test_policy_metric_is_at_least_one_exactly_when_the_int8_policy_passes() -> None:
    from lepton.verify.metrics import measure
    from lepton.verify.policy import INT8, policy_metric

    rng = np.random.default_rng(0)
    ref = [{"logits": rng.standard_normal((64, 10)).astype(np.float32)} for _ in range(3)]
    metric = policy_metric(INT8)
    for noise in (0.001, 0.05, 0.3, 1.0):
        got = [{"logits": (r["logits"] + noise * rng.standard_normal((64, 10))).astype(np.float32)} for r in ref]
        merged = measure(got[0]["logits"], ref[0]["logits"], rtol=INT8.rtol, atol=INT8.atol)
        for k in (1, 2):
            merged = merged.merge(measure(got[k]["logits"], ref[k]["logits"], rtol=INT8.rtol, atol=INT8.atol, sample=k))
        assert (metric(ref, got) >= 1.0) == (not INT8.judge(merged, exact=False)), noise
