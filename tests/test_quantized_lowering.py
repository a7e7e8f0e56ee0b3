"""`lower-quantized-ops`: QOperator-form ops -> QDQ form, judged against onnxruntime's integer kernels.

The reference for standard ops is ONNX's own (`onnx.reference`): onnxruntime's u8 x s8 kernels on AVX2
saturate 16-bit pair sums (`pmaddubsw`), so with full-range weights they are off by up to ten codes where the
definition is not. Contrib ops (com.microsoft) have no ONNX reference: they are checked against onnxruntime
with 7-bit weights, which cannot saturate. Quantized outputs may differ from the reference by one code where
the float sum lands next to a rounding tie; integer outputs of ConvInteger must be exact.
"""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from onnx.reference import ReferenceEvaluator
from onnx_net import Net
from passutil import run_pass

import lepton_ir
from passes.lowering.quantized import LowerQuantizedOps, is_quantized
from passes.ort import run_model

SETTINGS = settings(deadline=None, max_examples=30, suppress_health_check=[HealthCheck.too_slow])
MS = "com.microsoft"


def lowered(model: onnx.ModelProto) -> lepton_ir.Graph:
    g = lepton_ir.load(model)
    result = run_pass(LowerQuantizedOps(), g)
    assert result.modified
    assert not any(n.op_type.startswith("QLinear") or n.op_type in ("QGemm", "ConvInteger") for n in g)
    return g


def reference(model: onnx.ModelProto, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """ONNX's reference implementation for default-domain models, onnxruntime for contrib ops."""
    if any(n.domain for n in model.graph.node):
        return run_model(model, feeds)
    outs = ReferenceEvaluator(model).run(None, feeds)
    return dict(zip([o.name for o in model.graph.output], outs, strict=True))


def assert_within_one_code(model: onnx.ModelProto, feeds: dict[str, np.ndarray]) -> None:
    """The lowered graph's quantized outputs equal the reference's but for rare one-code steps."""
    expected = reference(model, feeds)
    actual = run_model(lepton_ir.to_onnx(lowered(model)), feeds)
    for name, e in expected.items():
        a = actual[name]
        assert a.dtype == e.dtype and a.shape == e.shape
        diff = np.abs(a.astype(np.int64) - e.astype(np.int64))
        assert diff.max(initial=0) <= 1, (name, diff.max())
        assert (diff > 0).mean() <= 0.05, (name, (diff > 0).mean())


def q(n: Net, shape: tuple[int, ...], dtype: type) -> str:
    lo, hi = (0, 255) if dtype == np.uint8 else (-127, 127)
    return n.input(*shape, dtype=dtype, values=n.rng.integers(lo, hi + 1, size=shape))


def qconst(n: Net, shape: tuple[int, ...], dtype: type, bits: int = 8) -> str:
    lo, hi = (0, 2**bits - 1) if dtype == np.uint8 else (-(2 ** (bits - 1)) + 1, 2 ** (bits - 1) - 1)
    return n.const(n.rng.integers(lo, hi + 1, size=shape), dtype)


def scalar(n: Net, value: float, dtype: type = np.float32) -> str:
    return n.const(np.asarray(value), dtype)


@given(st.integers(0, 2**16), st.sampled_from([np.uint8, np.int8]), st.booleans(), st.booleans())
@SETTINGS
def test_qlinear_conv(seed, wtype, per_channel, bias):
    n = Net(seed=seed)
    c_in, c_out = int(n.rng.integers(1, 5)), int(n.rng.integers(1, 6))
    x = q(n, (1, c_in, 6, 6), np.uint8)
    w = qconst(n, (c_out, c_in, 3, 3), wtype)
    ws = n.const(n.rng.uniform(0.001, 0.02, c_out)) if per_channel else scalar(n, 0.01)
    wz = n.const(np.zeros(c_out), wtype) if per_channel else scalar(n, 0, wtype)
    inputs = [x, scalar(n, 0.02), scalar(n, 128, np.uint8), w, ws, wz, scalar(n, 0.5), scalar(n, 100, np.uint8)]
    if bias:
        inputs.append(n.const(n.rng.integers(-2000, 2000, c_out), np.int32))
    y = n.op("QLinearConv", *inputs, pads=[1, 1, 1, 1])
    assert_within_one_code(n.model(y), n.feeds)


@given(st.integers(0, 2**16), st.sampled_from([np.uint8, np.int8]), st.booleans())
@SETTINGS
def test_qlinear_matmul(seed, dtype, per_column):
    n = Net(seed=seed)
    a = q(n, (2, 3, 8), dtype)
    b = qconst(n, (8, 5), dtype)
    bs = n.const(n.rng.uniform(0.01, 0.05, 5)) if per_column else scalar(n, 0.03)
    bz = n.const(np.zeros(5), dtype) if per_column else scalar(n, 1, dtype)
    y = n.op("QLinearMatMul", a, scalar(n, 0.05), scalar(n, 3, dtype), b, bs, bz, scalar(n, 0.8), scalar(n, 2, dtype))
    assert_within_one_code(n.model(y), n.feeds)


@given(st.integers(0, 2**16), st.booleans())
@SETTINGS
def test_conv_integer_is_exact(seed, per_channel_zero_point):
    n = Net(seed=seed)
    x = q(n, (1, 3, 7, 7), np.uint8)
    w = qconst(n, (4, 3, 3, 3), np.uint8)
    wz = n.const(n.rng.integers(0, 255, 4), np.uint8) if per_channel_zero_point else scalar(n, 7, np.uint8)
    y = n.op("ConvInteger", x, w, scalar(n, 130, np.uint8), wz, strides=[2, 2])
    model = n.model(y)
    expected = reference(model, n.feeds)
    actual = run_model(lepton_ir.to_onnx(lowered(model)), n.feeds)
    np.testing.assert_array_equal(actual[y], expected[y])


@pytest.mark.parametrize("with_output_quantization", [True, False])
@pytest.mark.parametrize("trans_b", [0, 1])
def test_qgemm(with_output_quantization, trans_b):
    n = Net(seed=3)
    a = q(n, (4, 6), np.uint8)
    b = qconst(n, (5, 6) if trans_b else (6, 5), np.int8, bits=7)
    inputs = [a, scalar(n, 0.05), scalar(n, 120, np.uint8), b, n.const(n.rng.uniform(0.01, 0.03, 5)),
              n.const(np.zeros(5), np.int8), n.const(n.rng.integers(-500, 500, 5), np.int32)]
    if with_output_quantization:
        inputs += [scalar(n, 0.3), scalar(n, 128, np.uint8)]
    y = n.op("QGemm", *inputs, domain=MS, transB=trans_b, alpha=1.0)
    model = n.model(y, shapes={y: [4, 5]}) if not with_output_quantization else _typed(n, y, onnx.TensorProto.UINT8, [4, 5])
    if with_output_quantization:
        assert_within_one_code(model, n.feeds)
    else:
        expected, actual = run_model(model, n.feeds), run_model(lepton_ir.to_onnx(lowered(model)), n.feeds)
        np.testing.assert_allclose(actual[y], expected[y], rtol=1e-5, atol=1e-5)


def _typed(n: Net, y: str, elem: int, shape: list[int]) -> onnx.ModelProto:
    """`n`'s model with output `y` declared (contrib ops have no ONNX shape inference)."""
    m = n.model(y, shapes={y: shape})
    m.graph.output[0].type.tensor_type.elem_type = elem
    return m


@pytest.mark.parametrize("op", ["QLinearAdd", "QLinearMul"])
def test_qlinear_binary(op):
    n = Net(seed=5)
    a, b = q(n, (2, 8), np.uint8), q(n, (2, 8), np.uint8)
    y = n.op(op, a, scalar(n, 0.02), scalar(n, 128, np.uint8), b, scalar(n, 0.03), scalar(n, 120, np.uint8),
             scalar(n, 0.05 if op == "QLinearAdd" else 0.4), scalar(n, 128, np.uint8), domain=MS)
    assert_within_one_code(_typed(n, y, onnx.TensorProto.UINT8, [2, 8]), n.feeds)


@pytest.mark.parametrize("op,attrs,out_shape", [
    ("QLinearSigmoid", {}, [1, 3, 4, 4]),
    ("QLinearLeakyRelu", {"alpha": 0.1}, [1, 3, 4, 4]),
    ("QLinearGlobalAveragePool", {}, [1, 3, 1, 1]),
    ("QLinearAveragePool", {"kernel_shape": [2, 2], "strides": [2, 2]}, [1, 3, 2, 2]),
])
def test_qlinear_unary(op, attrs, out_shape):
    n = Net(seed=7)
    x = q(n, (1, 3, 4, 4), np.uint8)
    y = n.op(op, x, scalar(n, 0.05), scalar(n, 128, np.uint8), scalar(n, 0.01), scalar(n, 0, np.uint8), domain=MS, **attrs)
    assert_within_one_code(_typed(n, y, onnx.TensorProto.UINT8, out_shape), n.feeds)


def test_qlinear_concat():
    n = Net(seed=9)
    a, b = q(n, (1, 2, 3), np.uint8), q(n, (1, 4, 3), np.uint8)
    y = n.op("QLinearConcat", scalar(n, 0.05), scalar(n, 128, np.uint8), a, scalar(n, 0.04), scalar(n, 120, np.uint8),
             b, scalar(n, 0.06), scalar(n, 130, np.uint8), domain=MS, axis=1)
    assert_within_one_code(_typed(n, y, onnx.TensorProto.UINT8, [1, 6, 3]), n.feeds)


def test_channels_last_pooling_is_left_with_its_reason():
    n = Net(seed=1)
    x = q(n, (1, 4, 4, 3), np.uint8)
    y = n.op("QLinearGlobalAveragePool", x, scalar(n, 0.05), scalar(n, 128, np.uint8), scalar(n, 0.01),
             scalar(n, 0, np.uint8), domain=MS, channels_last=1)
    g = lepton_ir.load(_typed(n, y, onnx.TensorProto.UINT8, [1, 1, 1, 3]))
    result = run_pass(LowerQuantizedOps(), g)
    assert not result.modified
    node = next(iter(g)).name
    assert LowerQuantizedOps().explain(g) == [(node, "qlinear_unary", "channels_last layout")]


def test_is_quantized_tells_quantized_compute_from_a_lone_quantize_linear():
    n = Net()
    x = n.input(2, 3)
    lone = n.op("DequantizeLinear", n.op("QuantizeLinear", x, scalar(n, 0.1), scalar(n, 0, np.uint8)), scalar(n, 0.1))
    assert not is_quantized(lepton_ir.load(n.model(lone)))
    w = n.op("DequantizeLinear", qconst(n, (3, 4), np.int8), scalar(n, 0.1))
    assert is_quantized(lepton_ir.load(n.model(n.op("MatMul", lone, w))))


def test_blocked_quantize_and_dequantize_are_left_to_the_codegen():
    """Blocked QuantizeLinear/DequantizeLinear stay as they are (lepton.codegen.narrow converts them, so an int4
    weight stays packed in the module; tests/test_narrow_codegen.py checks their numerics)."""
    import ml_dtypes

    n = Net(opset=21, seed=3)
    w = n.const(n.rng.integers(-8, 8, size=(6, 10)), ml_dtypes.int4)
    y = n.op("MatMul", n.input(2, 6), n.op("DequantizeLinear", w, n.const(n.rng.uniform(0.01, 0.1, size=(6, 3))),
                                           axis=1, block_size=4))
    g = lepton_ir.load(n.model(y))
    assert not run_pass(LowerQuantizedOps(), g).modified
