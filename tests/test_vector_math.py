"""Vector float32 exp/erf/tanh/sigmoid: accuracy against float64, special values, that they replace libm
calls in compiled kernels, and that models using them match onnxruntime."""

from __future__ import annotations

import math
import re

import numpy as np
import onnx
import pytest
import tvm
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from onnx import TensorProto, helper
from tvm import s_tir, te

import lepton
import targets
from lepton.codegen import vector_math
from passes.ort import run_model

X86 = targets.resolve("x86")
_ERF = np.vectorize(math.erf, otypes=[np.float64])

#: name -> (our expression, float64 reference, sweep range)
FUNCS = {
    "exp": (vector_math.exp, np.exp, (-110.0, 92.0)),
    "erf": (vector_math.erf, _ERF, (-6.0, 6.0)),
    "tanh": (vector_math.tanh, np.tanh, (-12.0, 12.0)),
    "sigmoid": (vector_math.sigmoid, lambda x: 1.0 / (1.0 + np.exp(-x)), (-110.0, 110.0)),
}
SPECIAL = np.array([0.0, -0.0, 1e-40, -1e-40, 1e-7, -1e-7, 0.5, 3.99, 4.0, 4.01, 7.9, 8.0, 9.0, 9.1, 20.0, -20.0,
                    88.5, 88.72, 88.73, 89.0, -87.4, -100.0, -103.9, -104.5, -200.0, np.inf, -np.inf, np.nan],
                   dtype=np.float32)


def _compiled(f, n: int):
    """A vectorized (16 lanes) kernel computing f elementwise over n float32 values."""
    x = te.placeholder((n,), name="x")
    y = te.compute((n,), lambda i: f(x[i]), name="y")
    sch = s_tir.Schedule(te.create_prim_func([x, y]))
    (loop,) = sch.get_loops(sch.get_sblock("y"))
    sch.vectorize(sch.split(loop, [None, 16])[1])
    return tvm.compile(sch.mod, target=X86.tvm_target())


def _evaluate(f, xs: np.ndarray) -> np.ndarray:
    lib = _compiled(f, xs.size)
    out = tvm.runtime.tensor(np.zeros_like(xs))
    lib(tvm.runtime.tensor(xs), out)
    return out.numpy()


def _ulps(got: np.ndarray, exact: np.ndarray) -> np.ndarray:
    """Error in float32 ulps of the exact result; 0 where the absolute error is below 1e-38 (subnormal results)."""
    with np.errstate(over="ignore"):
        rounded = exact.astype(np.float32)
    spacing = np.spacing(np.abs(rounded)).astype(np.float64)
    err = np.abs(got.astype(np.float64) - exact)
    ulps = np.where(np.isinf(rounded), np.where(got == rounded, 0.0, np.inf), err / np.maximum(spacing, 1e-45))
    return np.where(err <= 1e-38, 0.0, ulps)


@pytest.mark.parametrize("name", sorted(FUNCS))
def test_within_six_ulps_of_the_exact_result(name: str) -> None:
    f, exact, (lo, hi) = FUNCS[name]
    rng = np.random.default_rng(1)
    xs = np.concatenate([np.linspace(lo, hi, 200_001, dtype=np.float32),
                         (rng.standard_normal(100_000) * 3).astype(np.float32), SPECIAL[:-3]])
    got = _evaluate(f, xs)
    with np.errstate(over="ignore"):
        ulps = _ulps(got, exact(xs.astype(np.float64)))
    worst = int(np.argmax(ulps))
    assert ulps[worst] <= 6.0, f"{name}({xs[worst]!r}) = {got[worst]!r}: {ulps[worst]:.1f} ulp"


@pytest.mark.parametrize("name", sorted(FUNCS))
def test_special_values(name: str) -> None:
    f, exact, _ = FUNCS[name]
    got = _evaluate(f, np.repeat(SPECIAL, 16))[::16]
    with np.errstate(over="ignore", invalid="ignore"):
        want = exact(SPECIAL.astype(np.float64)).astype(np.float32)
    assert np.array_equal(np.isnan(got), np.isnan(want))
    inf = np.isinf(SPECIAL)
    np.testing.assert_array_equal(got[inf], want[inf])  # the limits exactly: exp(-inf) = 0, tanh(inf) = 1, ...
    assert np.array_equal(np.signbit(got[SPECIAL == 0]), np.signbit(want[SPECIAL == 0])) or name in ("exp", "sigmoid")


def test_kernels_call_no_libm() -> None:
    for name, (f, _, _) in FUNCS.items():
        asm = _compiled(f, 1024).mod.inspect_source("asm")
        assert not re.search(r"call\w*\s+(exp|erf|tanh)f", asm), name
    # the premise: TVM's own lowering calls libm once per element
    assert re.search(r"call\w*\s+expf", _compiled(te.exp, 1024).mod.inspect_source("asm"))


def test_only_float32_calls_are_replaced() -> None:
    from tvm import relax

    table = vector_math.legalize_map()
    assert {"relax.nn.relu", "relax.exp", "relax.erf", "relax.tanh", "relax.sigmoid", "relax.nn.softmax", "relax.nn.log_softmax",
            "relax.nn.gelu", "relax.nn.gelu_tanh", "relax.nn.silu"} <= set(table)
    texts = {}
    for dtype in ("float32", "float64"):
        bb = relax.BlockBuilder()
        x = relax.Var("x", relax.TensorType((8,), dtype))
        with bb.function("main", [x]):
            y = bb.emit(relax.op.exp(x))
            bb.emit_func_output(y)
        mod = relax.transform.LegalizeOps(table)(bb.get())
        texts[dtype] = mod.script()
    assert "T.Select" in texts["float32"] and "T.exp" not in texts["float32"]
    assert "T.exp" in texts["float64"] and "T.Select" not in texts["float64"]


def _unary_model(op: str, shape: list[int], dtype: int = TensorProto.FLOAT, **attrs) -> onnx.ModelProto:
    node = helper.make_node(op, ["x"], ["y"], **attrs)
    g = helper.make_graph([node], "m", [helper.make_tensor_value_info("x", dtype, shape)],
                          [helper.make_tensor_value_info("y", dtype, shape)])
    return helper.make_model(g, opset_imports=[helper.make_opsetid("", 20)], ir_version=10)


CASES = [("Relu", {}), ("Exp", {}), ("Erf", {}), ("Tanh", {}), ("Sigmoid", {}), ("Gelu", {}), ("Gelu", {"approximate": "tanh"}),
         ("Softmax", {"axis": -1}), ("Softmax", {"axis": 1}), ("LogSoftmax", {"axis": -1}), ("LogSoftmax", {"axis": 0}),
         ("Elu", {}), ("HardSwish", {})]


@settings(max_examples=12, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(case=st.sampled_from(CASES), shape=st.lists(st.integers(1, 9), min_size=1, max_size=3),
       scale=st.sampled_from([0.1, 3.0, 40.0]), seed=st.integers(0, 2**16))
def test_models_match_onnxruntime(case, shape, scale, seed) -> None:
    op, attrs = case
    if "axis" in attrs and attrs["axis"] >= len(shape):
        attrs = {"axis": -1}
    model = _unary_model(op, shape, **attrs)
    x = (np.random.default_rng(seed).standard_normal(shape) * scale).astype(np.float32)
    x.flat[0] = np.nan if seed % 5 == 0 else x.flat[0]
    res = lepton.compile(model, "x86", use_cache=False, verify=False)
    np.testing.assert_allclose(res.run(x=x)["y"], run_model(model, {"x": x})["y"], rtol=1e-4, atol=1e-5)


def test_float64_model_still_matches_onnxruntime() -> None:
    model = _unary_model("Softmax", [3, 7], TensorProto.DOUBLE, axis=-1)
    x = np.random.default_rng(0).standard_normal((3, 7)) * 30
    res = lepton.compile(model, "x86", use_cache=False, verify=False)
    np.testing.assert_allclose(res.run(x=x)["y"], run_model(model, {"x": x})["y"], rtol=1e-12)


def test_relu_and_elu_keep_nan() -> None:
    """TVM's max(x, 0) gave 0 for NaN (Selu and HardSigmoid, built on clip/maximum, still do)."""
    x = np.array([np.nan, -1.0, 0.5, np.inf, -np.inf], np.float32)
    for op in ("Relu", "Elu"):
        model = _unary_model(op, [5])
        got = lepton.compile(model, "x86", use_cache=False, verify=False).run(x=x)["y"]
        np.testing.assert_array_equal(got, run_model(model, {"x": x})["y"])
