"""Winograd F(2x2, 3x3): which convolutions it takes, its weight transform, and results equal to onnxruntime's."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
import tvm
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from onnx import TensorProto, helper

import lepton
import lepton_ir
import targets
from lepton.codegen import to_relax
from lepton.codegen.tvm_build import _channels_last
from lepton.codegen.winograd import MIN_CHANNELS, transformed_weights, winograd_conv2d
from passes.ort import run_model

X86 = targets.resolve("x86")


def _conv_model(c: int, k: int, hw: tuple[int, int], pads: list[int], stride: int = 1, group: int = 1,
                dilation: int = 1, batch: object = 1, seed: int = 0) -> onnx.ModelProto:
    rng = np.random.default_rng(seed)
    w = (rng.standard_normal((k, c // group, 3, 3)) / np.sqrt(9 * c / group)).astype(np.float32)
    b = rng.standard_normal(k).astype(np.float32)
    nodes = [helper.make_node("Conv", ["x", "w", "b"], ["c"], pads=pads, strides=[stride] * 2, group=group,
                              dilations=[dilation] * 2),
             helper.make_node("Relu", ["c"], ["y"])]
    g = helper.make_graph(nodes, "m", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [batch, c, *hw])], [],
                          [onnx.numpy_helper.from_array(w, "w"), onnx.numpy_helper.from_array(b, "b")])
    model = onnx.shape_inference.infer_shapes(helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)], ir_version=10))
    model.graph.output.extend([vi for vi in model.graph.value_info if vi.name == "y"])
    return model


def _rewritten(model: onnx.ModelProto) -> str:
    graph = lepton_ir.load(model)
    with X86.tvm_target():
        mod = winograd_conv2d()(_channels_last()(to_relax(graph)))
    return mod.script(show_meta=False)


def test_transformed_weights_give_direct_convolution_on_one_tile() -> None:
    """Y = A^T [(G w G^T) * (B^T d B)] A equals the 3x3 correlation of a 4x4 tile d (per channel pair)."""
    rng = np.random.default_rng(3)
    w = rng.standard_normal((3, 3, 1, 1))
    d = rng.standard_normal((4, 4))
    bt = np.array([[1, 0, -1, 0], [0, 1, 1, 0], [0, -1, 1, 0], [0, 1, 0, -1]], dtype=np.float64)
    at = np.array([[1, 1, 1, 0], [0, 1, -1, -1]], dtype=np.float64)
    u = transformed_weights(w.astype(np.float32)).reshape(4, 4).astype(np.float64)
    y = at @ (u * (bt @ d @ bt.T)) @ at.T
    direct = np.array([[np.sum(d[i:i + 3, j:j + 3] * w[:, :, 0, 0]) for j in range(2)] for i in range(2)])
    np.testing.assert_allclose(y, direct, rtol=1e-6, atol=1e-6)


def test_eligible_convolution_becomes_one_batched_matmul() -> None:
    text = _rewritten(_conv_model(64, 80, (9, 11), [1, 1, 1, 1]))
    assert "R.nn.conv2d" not in text
    assert "R.matmul" in text and "(16, 30, 64)" in text  # 16 tile positions x (5 x 6 tiles) x 64 channels


@pytest.mark.parametrize(
    ("c", "k", "stride", "group", "dilation"),
    [
        (MIN_CHANNELS // 2, 64, 1, 1, 1),  # too few input channels to pay off
        (64, 64, 2, 1, 1),  # strided
        (64, 64, 1, 2, 1),  # grouped
        (64, 64, 1, 1, 2),  # dilated
    ],
)
def test_other_convolutions_are_left_alone(c: int, k: int, stride: int, group: int, dilation: int) -> None:
    text = _rewritten(_conv_model(c, k, (12, 12), [dilation] * 4, stride, group, dilation))
    assert "R.nn.conv2d" in text and "R.matmul" not in text


def test_symbolic_batch_is_left_alone_and_still_correct() -> None:
    model = _conv_model(64, 64, (6, 6), [1, 1, 1, 1], batch="n")
    assert "R.nn.conv2d" in _rewritten(model)
    res = lepton.compile(model, "x86", use_cache=False)
    x = np.random.default_rng(1).standard_normal((2, 64, 6, 6)).astype(np.float32)
    np.testing.assert_allclose(res.run(x=x)["y"], run_model(model, {"x": x})["y"], rtol=1e-4, atol=1e-5)


@settings(max_examples=6, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    c=st.sampled_from([64, 72]), k=st.sampled_from([64, 96]), h=st.integers(1, 9), w=st.integers(1, 10),
    pads=st.lists(st.integers(0, 2), min_size=4, max_size=4), seed=st.integers(0, 1000),
)
def test_winograd_matches_onnxruntime(c: int, k: int, h: int, w: int, pads: list[int], seed: int) -> None:
    """Odd and even output sizes (partial last tiles), asymmetric and zero padding, fp32 tolerance."""
    if h + pads[0] + pads[2] < 3 or w + pads[1] + pads[3] < 3:
        return  # no output
    model = _conv_model(c, k, (h, w), pads, seed=seed)
    assert "R.nn.conv2d" not in _rewritten(model)
    res = lepton.compile(model, "x86", use_cache=False)
    assert any("Winograd" in note for note in res.module.manifest.notes)  # the user is told
    x = np.random.default_rng(seed).standard_normal((1, c, h, w)).astype(np.float32)
    np.testing.assert_allclose(res.run(x=x)["y"], run_model(model, {"x": x})["y"], rtol=1e-4, atol=1e-5)


def test_layout_conversion_keeps_the_model_signature_nchw() -> None:
    with X86.tvm_target():
        mod = _channels_last()(to_relax(lepton_ir.load(_conv_model(64, 64, (8, 8), [1, 1, 1, 1]))))
    params = mod["main"].params
    assert [int(d) for d in params[0].ty.shape.values] == [1, 64, 8, 8]
    assert isinstance(mod, tvm.IRModule)
