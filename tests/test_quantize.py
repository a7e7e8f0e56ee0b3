"""The `quantize` pass (static int8 QDQ): parameters, calibration, the rewrite, the accuracy budget.

Numerics are judged by DESIGN.md §6's int8 policy (cosine similarity to the float model), never elementwise.
"""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp
from onnx_net import Net
from passutil import serialized
from strategies import onnx_models, random_inputs
from strategies_fusion import fusion_chains

import lepton_ir
from lepton_ir import UserError
from passes import PassContext, PassManager, parse_pipeline
from passes.ort import run_model
from passes.quantize import Quantize
from passes.quantize.budget import Budget, cosine, top1
from passes.quantize.calibrate import BINS, CalibrationError, Observer, calibrate, kl_threshold
from passes.quantize.params import (activation_params, block_weight_params, dequantize, quantize, quantize_block_weight,
                                    quantize_weight, weight_params)
from passes.quantize.sites import find_sites

SLOW = settings(deadline=None, max_examples=25, suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
floats = st.floats(-1e3, 1e3, allow_nan=False, width=32)


def quantized(model: onnx.ModelProto, batches: list[dict[str, np.ndarray]], **options: object) -> tuple[lepton_ir.Graph, object]:
    """The graph after `quantize{options}` calibrated on `batches`, and the pass result (modified checked)."""
    g = lepton_ir.load(model)
    before = serialized(g)
    p = Quantize(**options)  # type: ignore[arg-type]
    result = p.run(g, PassContext(data={"calibration": iter(batches)}))
    lepton_ir.verify(g)
    assert result.modified == (serialized(g) != before)
    return g, result


def cnn(seed: int = 0, opset: int = 17) -> tuple[onnx.ModelProto, list[dict[str, np.ndarray]]]:
    """Conv -> Relu -> Conv -> flatten -> Gemm, with four calibration batches."""
    n = Net(opset=opset, seed=seed, node_names=True)
    x = n.input(2, 3, 8, 8, name="x")
    a = n.op("Relu", n.op("Conv", x, n.rand(8, 3, 3, 3, scale=0.3), n.rand(8), pads=[1, 1, 1, 1], name="conv1"))
    b = n.op("Conv", a, n.rand(4, 8, 3, 3, scale=0.2), pads=[1, 1, 1, 1], name="conv2")
    y = n.op("Gemm", n.op("Flatten", b), n.rand(10, 256, scale=0.1), n.rand(10), transB=1, name="head")
    batches = [{"x": n.rng.standard_normal((2, 3, 8, 8)).astype(np.float32)} for _ in range(4)]
    return n.model(y), batches


# ----- parameters ------------------------------------------------------------------------

@given(st.tuples(floats, floats), st.sampled_from(["uint8", "int8"]), st.data())
def test_quantize_dequantize_error_is_at_most_half_a_step(bounds, kind, data):
    p = activation_params(min(bounds), max(bounds), kind)
    scale, zp = float(p.scale), int(p.zero_point)
    lo, hi = (p.qmin - zp) * scale, (p.qmax - zp) * scale  # the representable range
    u = data.draw(hnp.arrays(np.float64, st.integers(1, 64), elements=st.floats(0, 1)))
    x = np.clip((lo + u * (hi - lo)).astype(np.float32), np.float32(lo), np.float32(hi))
    err = np.abs(dequantize(quantize(x, p), p) - x)
    ulps = 4 * float(np.finfo(np.float32).eps) * float(np.abs(x).max())  # float32 rounding of x / scale and q * scale
    assert err.max() <= scale / 2 + ulps, (err.max(), scale)
    assert dequantize(quantize(np.zeros(1, np.float32), p), p)[0] == 0.0  # zero is exact


@given(st.tuples(floats, floats), st.sampled_from(["uint8", "int8"]))
def test_activation_range_is_covered(bounds, kind):
    lo, hi = min(bounds), max(bounds)
    p = activation_params(lo, hi, kind)
    scale, zp = float(p.scale), int(p.zero_point)
    assert scale > 0
    half = scale / 2 * (1 + 1e-5)
    assert (p.qmin - zp) * scale <= min(lo, 0.0) + half and (p.qmax - zp) * scale >= max(hi, 0.0) - half
    if kind == "int8":
        assert zp == 0


@given(hnp.arrays(np.float32, hnp.array_shapes(min_dims=1, max_dims=4, max_side=6),
                  elements=st.floats(-50, 50, width=32)), st.data())
def test_per_channel_scales_cover_each_channel(w, data):
    axis = data.draw(st.integers(0, w.ndim - 1))
    codes, p = quantize_weight(w, axis)
    assert codes.dtype == np.int8 and codes.min() >= -127 and codes.max() <= 127
    assert p.scale.shape == (w.shape[axis],) and np.all(p.scale > 0)
    channel_max = np.abs(np.moveaxis(w, axis, 0).reshape(w.shape[axis], -1)).max(axis=1)
    assert np.all(channel_max <= 127 * p.scale.astype(np.float64) * (1 + 1e-6))
    err = np.abs(dequantize(codes, p) - w)
    step = np.moveaxis(np.broadcast_to(p.scale.reshape([-1 if i == axis else 1 for i in range(w.ndim)]), w.shape), axis, 0)
    ulps = 4 * float(np.finfo(np.float32).eps) * float(np.abs(w).max(initial=0.0))
    assert np.all(np.moveaxis(err, axis, 0) <= step / 2 + ulps)


def test_an_all_zero_channel_gets_scale_one_and_exact_zeros():
    w = np.zeros((3, 4), np.float32)
    w[0] = [1, -2, 3, 0.5]
    codes, p = quantize_weight(w, 0)
    assert p.scale[1] == p.scale[2] == 1.0 and not codes[1:].any()
    assert weight_params(np.zeros(5, np.float32), None).scale == 1.0


# ----- calibration ----------------------------------------------------------------------

@given(st.lists(hnp.arrays(np.float32, st.integers(1, 200), elements=st.floats(-100, 100, width=32)), min_size=1, max_size=5),
       st.sampled_from(["minmax", "percentile", "entropy"]))
@settings(deadline=None, max_examples=40)
def test_calibration_is_deterministic_and_inside_the_observed_range(batches, method):
    def observe() -> tuple[float, float]:
        o = Observer(histogram=method != "minmax")
        for b in batches:
            o.add(b)
        return o.range(method)

    first = observe()
    assert observe() == first
    everything = np.concatenate(batches)
    lo, hi = first
    assert everything.min() <= lo <= hi <= everything.max()
    if method == "minmax":
        assert (lo, hi) == (everything.min(), everything.max())


def test_histogram_growing_keeps_every_count():
    o = Observer(histogram=True)
    o.add(np.array([0.5, -0.5], np.float32))
    o.add(np.array([30.0, -7.0, 0.0], np.float32))  # beyond the first radius: the bins merge
    assert o.counts.sum() == 5 and o.radius >= 30.0 and len(o.counts) == BINS


def test_percentile_clips_an_outlier_and_entropy_picks_a_threshold_below_it():
    rng = np.random.default_rng(0)
    x = np.concatenate([rng.standard_normal(100_000), [80.0]]).astype(np.float32)
    o = Observer(histogram=True)
    o.add(x)
    _, hi = o.range("percentile", 99.99)
    assert 3.0 < hi < 6.0, hi
    threshold = kl_threshold(o.counts, o.radius)
    assert 2.0 < threshold < 40.0, threshold


def test_calibration_over_the_graph_observes_intermediates():
    model, batches = cnn()
    g = lepton_ir.load(model)
    conv1 = next(n for n in g if n.name == "conv1")
    relu = conv1.outputs[0].users()[0].outputs[0].name
    seen = calibrate(lepton_ir.to_onnx(g), [relu, "x"], batches, histogram=False)
    assert seen[relu].lo == 0.0 and seen[relu].hi > 0.0  # after Relu
    assert seen["x"].lo == min(b["x"].min() for b in batches)


def test_calibration_errors_name_the_problem():
    model, batches = cnn()
    with pytest.raises(CalibrationError, match="empty"):
        quantized(model, [])
    with pytest.raises(CalibrationError, match="no value for input"):
        quantized(model, [{"y": batches[0]["x"]}])
    with pytest.raises(CalibrationError, match="needs calibration data"):
        Quantize().run(lepton_ir.load(model), PassContext())


# ----- the rewrite ----------------------------------------------------------------------

def test_weighted_ops_get_qdq_activations_and_per_channel_int8_weights():
    model, batches = cnn()
    g, result = quantized(model, batches)
    assert result.stats == {"sites": 3, "activations": 3, "weights": 3, "per_channel_weights": 3, "left_float": 0}
    for name, channels, axis in (("conv1", 8, 0), ("conv2", 4, 0), ("head", 10, 0)):
        node = next(n for n in g if n.name == name)
        x, w = node.inputs[0].producer, node.inputs[1].producer
        assert x.op_type == "DequantizeLinear" and x.inputs[0].producer.op_type == "QuantizeLinear"
        assert w.op_type == "DequantizeLinear" and w.attr("axis") == axis
        assert w.inputs[0].const_value.numpy().dtype == np.int8
        assert w.inputs[1].const_value.shape == (channels,)
        if len(node.inputs) > 2:
            assert node.inputs[2].producer is None and node.inputs[2].dtype == onnx.TensorProto.FLOAT  # bias float
    assert g.outputs[0].producer.op_type == "Gemm"  # the graph output is not quantized


def test_quantized_graph_keeps_the_float_models_outputs_under_the_int8_policy():
    model, batches = cnn()
    g, _ = quantized(model, batches)
    for b in batches:
        ref, got = run_model(model, b), run_model(lepton_ir.to_onnx(g), b)
        assert cosine([ref], [got]) >= 0.99


def test_gemm_without_transb_and_matmul_quantize_along_the_output_columns():
    n = Net(node_names=True)
    x = n.input(3, 6, name="x")
    y = n.op("MatMul", n.op("Gemm", x, n.rand(6, 5), name="gemm"), n.rand(5, 4), name="mm")
    g, _ = quantized(n.model(y), [n.feeds])
    for name, channels in (("gemm", 5), ("mm", 4)):
        w = next(node for node in g if node.name == name).inputs[1].producer
        assert w.attr("axis") == 1 and w.inputs[1].const_value.shape == (channels,)


def test_a_shared_activation_is_quantized_once_and_other_readers_keep_the_float_tensor():
    n = Net(node_names=True)
    x = n.input(2, 4, name="x")
    a = n.op("MatMul", x, n.rand(4, 4), name="a")
    b = n.op("MatMul", x, n.rand(4, 4), name="b")
    y = n.op("Add", n.op("Add", a, b), n.op("Sigmoid", x))
    g, result = quantized(n.model(y), [n.feeds])
    assert result.stats["activations"] == 1 and result.stats["weights"] == 2
    sigmoid = next(node for node in g if node.op_type == "Sigmoid")
    assert sigmoid.inputs[0] is g.inputs[0]


def test_activation_by_activation_matmul_quantizes_both_operands():
    n = Net(node_names=True)
    q, k = n.input(2, 3, 4, name="q"), n.input(2, 4, 5, name="k")
    g, result = quantized(n.model(n.op("MatMul", q, k, name="scores")), [n.feeds])
    node = next(node for node in g if node.name == "scores")
    assert [v.producer.op_type for v in node.inputs] == ["DequantizeLinear"] * 2
    assert result.stats["weights"] == 0


def test_int8_activations_are_symmetric():
    model, batches = cnn()
    g, _ = quantized(model, batches, activations="int8")
    zps = [n.inputs[2].const_value.numpy() for n in g if n.op_type == "QuantizeLinear"]
    assert zps and all(z.dtype == np.int8 and z == 0 for z in zps)


def test_below_opset_13_weights_are_quantized_per_tensor():
    model, batches = cnn(opset=12)
    g, result = quantized(model, batches)
    assert result.stats["per_channel_weights"] == 0 and result.stats["weights"] == 3
    assert all(n.attr("axis") is None for n in g if n.op_type == "DequantizeLinear")


def test_nothing_to_quantize_leaves_the_graph_alone_without_calibration():
    n = Net()
    y = n.op("Relu", n.op("Add", n.input(2, 3), n.rand(3)))
    g = lepton_ir.load(n.model(y))
    before = serialized(g)
    result = Quantize().run(g, PassContext())  # no calibration data needed: nothing runs
    assert not result.modified and serialized(g) == before and result.stats["sites"] == 0


@given(onnx_models(max_nodes=10))
@SLOW
def test_random_graphs_without_sites_are_unchanged_and_with_sites_stay_valid(model):
    g = lepton_ir.load(model)
    sites, _ = find_sites(g)
    feeds = random_inputs(model)
    before = serialized(g)
    result = Quantize().run(g, PassContext(data={"calibration": [feeds]}))
    lepton_ir.verify(g)
    if not sites:
        assert not result.modified and serialized(g) == before
        return
    assert result.modified and result.stats["sites"] == len(sites)
    got = run_model(lepton_ir.to_onnx(g), feeds)  # still a valid model that onnxruntime runs
    assert set(got) == {o.name for o in model.graph.output}
    again = Quantize().run(g, PassContext(data={"calibration": [feeds]}))
    assert not again.modified  # quantized sites read a DequantizeLinear: never quantized twice
    assert again.stats["already_quantized"] == len(sites) and again.stats["left_float"] == result.stats["left_float"]


@given(fusion_chains(), st.sampled_from(["int8", "dynamic", "weight-int8"]))
@SLOW
def test_fusion_chains_keep_cosine_similarity_after_quantization(chain, mode):
    g, result = quantized(chain.model, [chain.feeds], mode=mode)
    ref, got = run_model(chain.model, chain.feeds), run_model(lepton_ir.to_onnx(g), chain.feeds)
    informative = {k: v for k, v in ref.items() if np.linalg.norm(v) > 1e-3 * np.sqrt(v.size)}
    assert cosine([informative], [got]) >= 0.99, (chain.steps, result.stats)


def test_dynamic_mode_quantizes_gemm_and_matmul_per_call_without_calibration():
    model, _ = cnn()
    g = lepton_ir.load(model)
    result = Quantize(mode="dynamic").run(g, PassContext())  # no calibration data
    assert result.stats["sites"] == 1 and result.stats["left_float"] == 2
    head = next(n for n in g if n.name == "head")
    dq = head.inputs[0].producer
    assert dq.op_type == "DequantizeLinear" and dq.inputs[0].producer.op_type == "DynamicQuantizeLinear"
    assert head.inputs[1].producer.attr("axis") == 0  # per-channel int8 weight, as in static mode
    assert "conv1 stays float: dynamic quantization takes Gemm/MatMul with a constant weight" in result.notes
    feeds = {"x": np.random.default_rng(1).standard_normal((2, 3, 8, 8)).astype(np.float32)}
    assert cosine([run_model(model, feeds)], [run_model(lepton_ir.to_onnx(g), feeds)]) >= 0.99


def test_weight_only_mode_quantizes_every_constant_weight_and_no_activation():
    model, _ = cnn()
    g = lepton_ir.load(model)
    result = Quantize(mode="weight-int8").run(g, PassContext())  # no calibration data
    assert result.stats == {"sites": 3, "activations": 0, "weights": 3, "per_channel_weights": 3, "left_float": 0}
    assert not any(n.op_type in ("QuantizeLinear", "DynamicQuantizeLinear") for n in g)
    for name in ("conv1", "conv2", "head"):
        node = next(n for n in g if n.name == name)
        assert node.inputs[0].producer is None or node.inputs[0].producer.op_type != "DequantizeLinear"
        w = node.inputs[1].producer
        assert w.op_type == "DequantizeLinear" and w.inputs[0].const_value.numpy().dtype == np.int8
    feeds = {"x": np.random.default_rng(1).standard_normal((2, 3, 8, 8)).astype(np.float32)}
    assert cosine([run_model(model, feeds)], [run_model(lepton_ir.to_onnx(g), feeds)]) >= 0.999


@given(hnp.arrays(np.float32, hnp.array_shapes(min_dims=2, max_dims=3, max_side=40),
                  elements=st.floats(-100, 100, width=32)), st.integers(0, 1), st.sampled_from([2, 3, 16, 32]))
@settings(deadline=None, max_examples=60)
def test_int4_blocks_cover_their_range_and_beat_unclipped_scales(w, axis, block):
    """Codes stay in [-7, 7]; inside each block's representable range the error is at most half a step; and the
    clipping search never does worse than the plain max|w| / 7 scale of each block."""
    codes, p = quantize_block_weight(w, axis, block)
    assert codes.dtype.name == "int4" and p.scale.shape[axis] == -(-w.shape[axis] // block)
    q = codes.astype(np.int8)
    assert q.min() >= -7 and q.max() <= 7
    back = dequantize(codes, p)
    step = np.take(np.repeat(p.scale, block, axis=axis), np.arange(w.shape[axis]), axis=axis)
    inside = np.abs(w) <= 7 * step
    assert (np.abs(back - w)[inside] <= step[inside] / 2 * (1 + 1e-5) + 1e-30).all()
    plain = block_weight_params(w, axis, block, ratios=np.array([1.0], np.float32))  # max|w| / 7: nothing clipped
    unclipped = dequantize(quantize(w, plain), plain)
    assert float(((back - w) ** 2).sum()) <= float(((unclipped - w) ** 2).sum()) * (1 + 1e-5) + 1e-12


def test_weight_int4_mode_writes_blocked_int4_weights_along_the_reduction_axis():
    model, _ = cnn(opset=21)
    g = lepton_ir.load(model)
    result = Quantize(mode="weight-int4", block_size=16).run(g, PassContext())
    assert result.stats == {"sites": 3, "activations": 0, "weights": 3, "blocked_weights": 3, "left_float": 0}
    assert g.ir_version >= 10
    for name, axis, blocks in (("conv1", 1, 1), ("conv2", 1, 1), ("head", 1, 16)):  # Gemm transB: [10, 256]
        dq = next(n for n in g if n.name == name).inputs[1].producer
        assert dq.op_type == "DequantizeLinear" and dq.attr("block_size") == 16 and dq.attr("axis") == axis
        assert dq.inputs[0].const_value.numpy().dtype.name == "int4" and dq.inputs[1].shape[axis] == blocks
    feeds = {"x": np.random.default_rng(1).standard_normal((2, 3, 8, 8)).astype(np.float32)}
    assert cosine([run_model(model, feeds)], [run_model(lepton_ir.to_onnx(g), feeds)]) >= 0.99
    with pytest.raises(UserError, match="opset >= 21"):
        Quantize(mode="weight-int4").run(lepton_ir.load(cnn()[0]), PassContext())
    with pytest.raises(UserError, match="block_size"):
        Quantize(mode="weight-int4", block_size=1).run(lepton_ir.load(model), PassContext())


def test_weight_only_mode_leaves_activation_products_float():
    n = Net(node_names=True)
    q, k = n.input(2, 3, 4, name="q"), n.input(2, 4, 5, name="k")
    g = lepton_ir.load(n.model(n.op("MatMul", q, k, name="scores")))
    result = Quantize(mode="weight-int8").run(g, PassContext())
    assert not result.modified
    assert "scores stays float: weight-only quantization takes a constant weight" in result.notes


@pytest.mark.parametrize("mode", ["weight-int8", "dynamic", "int8"])
def test_embedding_tables_are_quantized_per_row_and_small_or_activation_gathers_are_not(mode):
    n = Net(node_names=True)
    ids = n.input(2, 5, name="ids", dtype=np.int64, values=np.random.default_rng(0).integers(0, 100, (2, 5)))
    table = n.rand(100, 64)
    emb = n.op("Gather", table, ids, name="embed")
    small = n.op("Gather", n.rand(10, 8), n.op("Mod", ids, n.const(10, np.int64)), name="small")
    shape = n.op("Gather", n.op("Shape", emb), n.const(0, np.int64), name="dim")
    y = n.op("Concat", n.op("MatMul", emb, n.rand(64, 8), name="proj"), small, axis=-1)
    model = n.model(y, shape)
    g = lepton_ir.load(model)
    result = Quantize(mode=mode).run(g, PassContext(data={"calibration": [n.feeds]}))
    embed = next(node for node in g if node.name == "embed")
    dq = embed.inputs[0].producer
    assert dq.op_type == "DequantizeLinear" and dq.attr("axis") == 0
    assert dq.inputs[0].const_value.numpy().dtype == np.int8 and dq.inputs[1].const_value.shape == (100,)
    assert next(node for node in g if node.name == "small").inputs[0].producer is None  # a small table stays float
    assert next(node for node in g if node.name == "dim").inputs[0].producer.op_type == "Shape"
    assert result.stats["weights"] == 2  # the table and proj's weight
    ref, got = run_model(model, n.feeds), run_model(lepton_ir.to_onnx(g), n.feeds)
    assert cosine([ref], [got]) >= 0.999
    assert not Quantize(mode=mode).run(g, PassContext(data={"calibration": [n.feeds]})).modified  # never twice


def test_fused_attention_packed_projection_is_a_matmul_site():
    n = Net(node_names=True)
    x = n.input(1, 4, 8, name="x")
    y = n.op("Attention", x, n.rand(8, 24), n.rand(24), name="attn", domain="com.microsoft", num_heads=2)
    model = n.model(y, shapes={y: [1, 4, 8]})
    g = lepton_ir.load(model)
    result = Quantize(mode="weight-int8").run(g, PassContext())
    w = next(node for node in g if node.name == "attn").inputs[1].producer
    assert result.stats["sites"] == 1 and w.op_type == "DequantizeLinear" and w.attr("axis") == 1
    assert w.inputs[1].const_value.shape == (24,)  # one scale per packed Q/K/V column
    assert cosine([run_model(model, n.feeds)], [run_model(lepton_ir.to_onnx(g), n.feeds)]) >= 0.999


def test_excluded_nodes_stay_float_and_are_listed():
    model, batches = cnn()
    g, result = quantized(model, batches, exclude=("head", "conv*2"))
    assert result.stats["sites"] == 1 and result.stats["left_float"] == 2
    assert any("head stays float: excluded" in note for note in result.notes)
    for name in ("head", "conv2"):
        node = next(n for n in g if n.name == name)
        assert node.inputs[1].producer is None and node.inputs[1].const_value.numpy().dtype == np.float32


def test_pipeline_text_parses_the_options_and_rejects_bad_ones():
    (p,) = parse_pipeline("quantize{method=entropy,activations=int8,exclude=[/head/*,conv1]}")
    assert p == Quantize(method="entropy", activations="int8", exclude=("/head/*", "conv1"))
    with pytest.raises(UserError, match="should be one of"):
        parse_pipeline("quantize{method=kl}")
    model, batches = cnn()
    with pytest.raises(UserError, match="percentile"):
        quantized(model, batches, method="percentile", percentile=30.0)


def test_the_pass_runs_once_after_the_cleanup_stage_and_records_notes():
    model, batches = cnn()
    g = lepton_ir.load(model)
    log = PassManager("fold-constants,eliminate-dead-code,quantize{exclude=[head]}").run(
        g, PassContext(data={"calibration": batches}))
    runs = [r for r in log.records if r.name == "quantize"]
    assert len(runs) == 1 and runs[0].modified and runs[0].notes == ("head stays float: excluded",)


# ----- the accuracy budget --------------------------------------------------------------

def test_budget_text_parses_and_rejects_nonsense():
    assert Budget.parse("cos=0.995") == Budget((("cosine", 0.995),))
    assert Budget.parse("top1 = 0.9,cosine=0.99") == Budget((("top1", 0.9), ("cosine", 0.99)))
    for bad in ("cos", "psnr=30", "cos=1.5"):
        with pytest.raises(UserError):
            Budget.parse(bad)


def test_metrics():
    a = {"y": np.array([[1.0, 2.0], [3.0, 1.0]], np.float32)}
    b = {"y": np.array([[2.0, 1.0], [3.0, 1.0]], np.float32)}
    assert cosine([a], [a]) == pytest.approx(1.0) and top1([a], [b]) == 0.5
    assert cosine([{"y": np.zeros(3, np.float32)}], [{"y": np.zeros(3, np.float32)}]) == 1.0


def test_a_budget_that_holds_returns_nothing_to_float():
    model, batches = cnn()
    g = lepton_ir.load(model)
    result = Quantize().run(g, PassContext(data={"calibration": batches, "accuracy_budget": "cos=0.9",
                                                 "validation": batches}))
    assert result.stats["left_float"] == 0 and "holds with all 3" in result.notes[0]


def test_a_budget_scores_its_tightest_term():
    a = {"y": np.array([[1.0, 2.0], [3.0, 1.0]], np.float32)}
    b = {"y": np.array([[2.0, 1.0], [3.0, 1.1]], np.float32)}
    both = Budget.parse("cos=0.5,top1=1.0")
    assert both.score([a], [b]) == pytest.approx(0.5)  # top-1 agreement 0.5 of the 1.0 asked
    assert both.describe() == "cosine >= 0.5, top1 >= 1"


def test_a_tight_budget_returns_the_most_sensitive_layer_first():
    model, batches = cnn()
    # a metric that only the float `conv2` satisfies: the budget must find that one layer
    g0 = lepton_ir.load(model)
    conv2_float = Quantize(exclude=("conv2",))
    conv2_float.run(g0, PassContext(data={"calibration": batches}))
    target = [run_model(lepton_ir.to_onnx(g0), b) for b in batches]

    def same_as_conv2_float(_reference, outputs):
        same = all(np.array_equal(t[k], o[k]) for t, o in zip(target, outputs, strict=True) for k in t)
        return 1.0 if same else 0.0

    g = lepton_ir.load(model)
    result = Quantize().run(g, PassContext(data={"calibration": batches, "validation": batches,
                                                 "accuracy_budget": Budget(((same_as_conv2_float, 1.0),))}))
    assert result.stats["sites"] == 2 and result.stats["left_float"] == 1
    assert any(note.startswith("conv2 stays float: returned to float by the accuracy budget") for note in result.notes)


def test_a_budget_without_validation_data_is_a_user_error():
    model, batches = cnn()
    with pytest.raises(UserError, match="validation"):
        Quantize().run(lepton_ir.load(model), PassContext(data={"calibration": batches, "accuracy_budget": "cos=0.99"}))
