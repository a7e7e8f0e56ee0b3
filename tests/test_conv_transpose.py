"""Channels-last transposed convolutions (lepton.codegen.conv_transpose): sub-pixel form equal to onnxruntime's
for any strides, kernels, dilations, pads, output padding and groups; runtime weights; symbolic spatial dims."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st
from onnx import TensorProto, helper

import lepton
import targets
from lepton.codegen.conv_transpose import subpixel_index
from passes.ort import run_model

X86 = targets.resolve("x86")
needs_x86 = pytest.mark.skipif(not X86.runs_here(), reason="x86 modules run on an x86 host only")


def _model(c: int, k: int, groups: int, attrs: dict[str, list[int]], hw: tuple[object, object], batch: object = 1,
           weight_input: bool = False) -> onnx.ModelProto:
    """x [batch, c, *hw] -> Conv 3x3 (c -> c) -> ConvTranspose (c -> k) -> Relu, so layout conversion reaches the
    transposed convolution; its weights are an input when `weight_input`."""
    kernel = attrs.pop("kernel_shape")
    rng = np.random.default_rng(0)
    w = (rng.standard_normal((c, c, 3, 3)) / np.sqrt(9 * c)).astype(np.float32)
    wt = (rng.standard_normal((c, k // groups, *kernel)) / np.sqrt(c)).astype(np.float32)
    b = rng.standard_normal(k).astype(np.float32)
    inits = [onnx.numpy_helper.from_array(w, "w"), onnx.numpy_helper.from_array(b, "b")]
    inputs = [helper.make_tensor_value_info("x", TensorProto.FLOAT, [batch, c, *hw])]
    if weight_input:
        inputs.append(helper.make_tensor_value_info("wt", TensorProto.FLOAT, list(wt.shape)))
    else:
        inits.append(onnx.numpy_helper.from_array(wt, "wt"))
    nodes = [helper.make_node("Conv", ["x", "w"], ["c"], pads=[1, 1, 1, 1]),
             helper.make_node("ConvTranspose", ["c", "wt", "b"], ["t"], group=groups, **attrs),
             helper.make_node("Relu", ["t"], ["y"])]
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, None)
    model = helper.make_model(helper.make_graph(nodes, "m", inputs, [y], inits),
                              opset_imports=[helper.make_opsetid("", 18)], ir_version=10)
    if all(isinstance(d, int) for d in (batch, *hw)):  # declare the output's shape, from onnxruntime
        feeds = {"x": np.zeros((batch, c, *hw), np.float32)} | ({"wt": wt} if weight_input else {})
        shape = list(run_model(model, feeds)["y"].shape)
    else:
        shape = [batch, k, "oh", "ow"]
    model.graph.output[0].CopyFrom(helper.make_tensor_value_info("y", TensorProto.FLOAT, shape))
    return model


@st.composite
def _conv_transposes(draw: st.DrawFn) -> tuple[int, int, int, dict[str, list[int]], tuple[int, int]]:
    groups = draw(st.sampled_from([1, 2, 3]))
    c, k = groups * draw(st.integers(1, 3)), groups * draw(st.integers(1, 2))
    kernel = [draw(st.integers(1, 4)) for _ in range(2)]
    strides = [draw(st.integers(1, 3)) for _ in range(2)]
    dilations = [draw(st.integers(1, 2)) for _ in range(2)]
    hw = (draw(st.integers(2, 6)), draw(st.integers(2, 6)))
    pads = [draw(st.integers(0, (kk - 1) * d)) for kk, d in zip(kernel * 2, dilations * 2, strict=True)]
    output_padding = [draw(st.integers(0, s - 1)) for s in strides]  # onnxruntime: below the stride
    for i in range(2):  # a non-empty output
        assume((hw[i] - 1) * strides[i] + (kernel[i] - 1) * dilations[i] + 1 - pads[i] - pads[i + 2] + output_padding[i] > 0)
    attrs = {"kernel_shape": kernel, "strides": strides, "dilations": dilations, "pads": pads,
             "output_padding": output_padding}
    return c, k, groups, attrs, hw


@needs_x86
@settings(max_examples=10, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(_conv_transposes())
def test_subpixel_conv_transpose_matches_onnxruntime(params: tuple[int, int, int, dict, tuple[int, int]]) -> None:
    c, k, groups, attrs, hw = params
    res = lepton.compile(_model(c, k, groups, dict(attrs), hw), X86, use_cache=False)
    assert res.verify_report is not None and res.verify_report.ok
    assert any("1 transposed 2-d convolution(s) computed channels-last as sub-pixel" in n for n in res.manifest.notes)


@needs_x86
def test_runtime_weights_are_gathered_per_call() -> None:
    attrs = {"kernel_shape": [3, 3], "strides": [2, 2], "pads": [1, 1, 1, 1]}
    model = _model(4, 6, 2, attrs, (6, 6), weight_input=True)
    rng = np.random.default_rng(1)
    samples = [{"x": rng.standard_normal((1, 4, 6, 6)).astype(np.float32),
                "wt": rng.standard_normal((4, 3, 3, 3)).astype(np.float32)} for _ in range(2)]
    res = lepton.compile(model, X86, use_cache=False, verify_inputs=samples)
    assert res.verify_report is not None and res.verify_report.ok and res.verify_report.samples == 2
    assert any("sub-pixel" in n for n in res.manifest.notes)


@needs_x86
@pytest.mark.parametrize(("batch", "hw", "shapes", "note"), [
    ("n", (5, 7), [(1, 5, 7), (3, 5, 7)], "1 transposed 2-d convolution(s) computed channels-last as sub-pixel"),
    (1, ("h", "w"), [(1, 5, 7), (1, 3, 3)], "1 transposed 2-d convolution(s) with symbolic spatial dims kept NCHW"),
])
def test_symbolic_dims(batch: object, hw: tuple[object, object], shapes: list[tuple[int, int, int]], note: str) -> None:
    """A symbolic batch keeps the sub-pixel form; symbolic spatial dims compute in NCHW between transposes."""
    attrs = {"kernel_shape": [3, 3], "strides": [2, 2], "pads": [1, 1, 1, 1], "output_padding": [1, 1]}
    rng = np.random.default_rng(2)
    samples = [{"x": rng.standard_normal((n, 4, h, w)).astype(np.float32)} for n, h, w in shapes]
    res = lepton.compile(_model(4, 4, 2, attrs, hw, batch), X86, use_cache=False, verify_inputs=samples)
    assert res.verify_report is not None and res.verify_report.ok and res.verify_report.samples == 2
    assert any(note in n for n in res.manifest.notes), res.manifest.notes


@pytest.mark.parametrize(("k", "s", "zeros"), [(2, 2, 0), (4, 2, 0), (3, 1, 0), (3, 2, 7)])
def test_subpixel_weights_hold_every_tap_once(k: int, s: int, zeros: int) -> None:
    """k = s and k = 2s cost exactly the direct multiplies; k = 3, s = 2 pads 9 taps to 4 phases x 2x2 (7 zeros)."""
    idx = subpixel_index(c=1, kg=1, groups=1, kernel=(k, k), strides=(s, s), dilation=(1, 1))
    taps = idx[idx != k * k]
    assert sorted(taps.tolist()) == list(range(k * k)) and idx.size - taps.size == zeros
