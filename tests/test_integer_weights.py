"""Quantized weights stay integer in the compiled module and are expanded at load (`lepton.codegen.weights`)."""

from __future__ import annotations

import os

import numpy as np
import onnx
import pytest
import tvm
from onnx_net import Net
from tvm import relax

import lepton
import lepton_ir
from lepton.codegen import weights
from lepton.codegen.frontend import to_relax
from passes.ort import run_model

FP32 = {"rtol": 1e-4, "atol": 1e-5}  # DESIGN §6: the dequantized weights are exact, only rounding differs


def _dq_matmul(rows: int, cols: int, quantized: bool, seed: int = 0) -> tuple[onnx.ModelProto, dict[str, np.ndarray]]:
    """x [4, rows] @ DequantizeLinear(W int8 [rows, cols], per column); or the same with W dequantized to float."""
    n = Net(opset=17, seed=seed)
    x = n.input(4, rows)
    q = n.rng.integers(-127, 128, size=(rows, cols)).astype(np.int8)
    scale = n.rng.uniform(0.001, 0.01, size=(cols,)).astype(np.float32)
    if quantized:
        w = n.op("DequantizeLinear", n.const(q, np.int8), n.const(scale), n.const(np.zeros(cols), np.int8), axis=1)
    else:
        w = n.const(q.astype(np.float32) * scale)
    return n.model(n.op("MatMul", x, w)), n.feeds


def _dq_conv(channels: int, seed: int = 0) -> tuple[onnx.ModelProto, dict[str, np.ndarray]]:
    """A 3x3 convolution (Winograd-eligible at 64 channels) of DequantizeLinear(int8 weights, per channel), Relu."""
    n = Net(opset=17, seed=seed)
    x = n.input(1, channels, 12, 12)
    q = n.const(n.rng.integers(-127, 128, size=(channels, channels, 3, 3)), np.int8)
    scale = n.const(n.rng.uniform(0.001, 0.002, size=(channels,)))
    w = n.op("DequantizeLinear", q, scale, n.const(np.zeros(channels), np.int8), axis=0)
    return n.model(n.op("Relu", n.op("Conv", x, w, pads=[1, 1, 1, 1]))), n.feeds


def _run(compiled: lepton.Compiled, feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
    return list(lepton.load(compiled.path).run(feeds).values())


def _integer_note(compiled: lepton.Compiled) -> dict:
    return next(p for p in compiled.passes if p["pass"] == "codegen:integer-weights")


def test_matmul_weights_stored_as_int8_and_exact(tmp_path):
    model, feeds = _dq_matmul(512, 512, quantized=True)
    float_model, _ = _dq_matmul(512, 512, quantized=False)
    q = lepton.compile(model, "x86", use_cache=False, output_dir=str(tmp_path / "q"))
    f = lepton.compile(float_model, "x86", use_cache=False, output_dir=str(tmp_path / "f"))
    note = _integer_note(q)
    assert note["stats"] == {"tensors": 1, "bytes": 512 * 512, "float32_bytes": 4 * 512 * 512}
    assert not any(p["pass"] == "codegen:integer-weights" for p in f.passes)
    q_size, f_size = (os.path.getsize(os.path.join(c.path, "model.so")) for c in (q, f))
    assert q_size < f_size - 3 * 512 * 512 * 0.9, (q_size, f_size)  # the 3 bytes a weight saves are gone
    expected = run_model(model, feeds)
    np.testing.assert_allclose(_run(q, feeds)[0], next(iter(expected.values())), **FP32)


def test_conv_weights_get_winograd_and_prepacking_at_load(tmp_path):
    model, feeds = _dq_conv(64)
    q = lepton.compile(model, "x86", use_cache=False, output_dir=str(tmp_path / "q"))
    steps = {p["pass"]: p["stats"] for p in q.passes if p["stage"] == "codegen"}
    assert steps["codegen:winograd"] == {"convolutions": 1}  # computed from the dequantized weights, at load
    assert steps["codegen:integer-weights"]["tensors"] == 1
    assert steps["codegen:prepack-weights"]["kernels"] >= 1
    expected = next(iter(run_model(model, feeds).values()))
    out = lepton.load(q.path)
    np.testing.assert_allclose(next(iter(out.run(feeds).values())), expected, **FP32)
    np.testing.assert_allclose(next(iter(out.run(feeds).values())), expected, **FP32)  # weights reused, not consumed


def test_lift_leaves_float_and_small_constants():
    n = Net(opset=17)
    x = n.input(2, 8)
    small = n.op("DequantizeLinear", n.const(np.ones((8, 8)), np.int8), n.const(0.5))  # 64 bytes < MIN_BYTES
    y = n.op("MatMul", n.op("MatMul", x, small), n.rand(8, 8))
    mod = to_relax(lepton_ir.load(n.model(y)))
    lifted, values = weights.lift_quantized_weights(mod)
    assert lifted is mod and values == []
    assert weights.bind_transform(mod, []) is mod


def test_lift_makes_weights_parameters_after_the_inputs():
    model, _ = _dq_matmul(64, 32, quantized=True)
    mod = to_relax(lepton_ir.load(model))
    lifted, values = weights.lift_quantized_weights(mod)
    main = lifted["main"]
    assert [str(v.dtype) for v in values] == ["int8"] and tuple(values[0].shape) == (64, 32)
    assert len(main.params) == 2 and int(main.attrs["num_input"]) == 1
    assert weights.weight_params(main) == [main.params[1]]
    assert main.params[1] in weights.weight_derived(main)
    bound = weights.bind_transform(lifted, values)
    transform = bound[weights.TRANSFORM]
    assert len(transform.params) == 0  # the integer values are constants of the transform function
    consts = []
    relax.analysis.post_order_visit(transform, lambda e: consts.append(e) if isinstance(e, tvm.ir.expr.Constant) else None)
    assert any(str(c.value.dtype) == "int8" and tuple(c.value.shape) == (64, 32) for c in consts)


@pytest.mark.parametrize("seed", [1, 2])
def test_weights_shared_by_two_consumers_are_lifted_once(tmp_path, seed):
    n = Net(opset=17, seed=seed)
    x = n.input(3, 128)
    w = n.op("DequantizeLinear", n.const(n.rng.integers(-128, 128, size=(128, 128)), np.int8), n.const(0.01))
    model = n.model(n.op("Add", n.op("MatMul", x, w), n.op("MatMul", n.op("Relu", x), w)))
    q = lepton.compile(model, "x86", use_cache=False, output_dir=str(tmp_path / "q"))
    assert _integer_note(q)["stats"]["tensors"] == 1
    np.testing.assert_allclose(_run(q, n.feeds)[0], next(iter(run_model(model, n.feeds).values())), **FP32)


@pytest.mark.parametrize("signed", [True, False])
def test_blocked_int4_weights_are_stored_two_to_a_byte(signed, tmp_path):
    """A blocked int4 (uint4 with zero points) MatMul weight: the library holds half a byte per weight (it is
    well under the int8 size), and the module computes what onnxruntime's unoptimized reference does."""
    import ml_dtypes

    rows, cols, block = 2047, 511, 128  # an odd element count: the last byte holds one nibble
    rng = np.random.default_rng(5)
    dtype, lo, hi = (ml_dtypes.int4, -8, 8) if signed else (ml_dtypes.uint4, 0, 16)
    n = Net(opset=21, seed=5)
    blocks = -(-rows // block)
    inputs = [n.const(rng.integers(lo, hi, size=(rows, cols)), dtype), n.const(rng.uniform(0.01, 0.1, size=(blocks, cols)))]
    if not signed:
        inputs.append(n.const(rng.integers(lo, hi, size=(blocks, cols)), dtype))
    x = n.input(2, rows)
    y = n.op("MatMul", x, n.op("DequantizeLinear", *inputs, axis=0, block_size=block))
    model = n.model(y)
    model.ir_version = 10
    c = lepton.compile(model, "x86", use_cache=False, output_dir=tmp_path / "art")
    assert c.verify_report is not None and c.verify_report.ok
    stored = next(p for p in c.passes if p["pass"] == "codegen:integer-weights")["stats"]
    assert stored["bytes"] == (rows * cols + 1) // 2 + (0 if signed else (blocks * cols + 1) // 2) * (blocks * cols >= weights.MIN_BYTES)
    assert os.path.getsize(tmp_path / "art" / "model.so") < rows * cols * 0.75  # int8 would be rows * cols bytes
    np.testing.assert_allclose(c.run(n.feeds)[y], run_model(model, n.feeds)[y], rtol=1e-4, atol=1e-4)


def test_nibble_packing_round_trips():
    rng = np.random.default_rng(0)
    for dtype, lo, hi in ((np.int8, -8, 8), (np.uint8, 0, 16)):
        a = rng.integers(lo, hi, size=(3, 5, 7)).astype(dtype)  # 105 elements: odd
        packed = weights.pack_nibbles(a)
        assert packed.dtype == np.uint8 and packed.size == 53
        low, high = packed & 0xF, packed >> 4
        flat = np.stack([low, high], axis=1).reshape(-1)[: a.size].astype(np.int16)
        if dtype == np.int8:
            flat = np.where(flat >= 8, flat - 16, flat)
        np.testing.assert_array_equal(flat.reshape(a.shape), a)
