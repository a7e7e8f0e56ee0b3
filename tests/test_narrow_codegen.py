"""Sub-byte types in the codegen (lepton/codegen/narrow.py): INT4/UINT4/INT2/UINT2/FLOAT4E2M1 casts and
(de)quantization compiled for x86, compared with ONNX's reference implementation, and the module
boundary taking and returning ml_dtypes arrays."""

from __future__ import annotations

import ml_dtypes
import numpy as np
import onnx
import onnx.helper as oh
import pytest
from onnx import TensorProto as T
from onnx.reference import ReferenceEvaluator

import lepton
from lepton.errors import UnsupportedOpsError

TYPES = {"int4": T.INT4, "uint4": T.UINT4, "int2": T.INT2, "uint2": T.UINT2, "float4_e2m1fn": T.FLOAT4E2M1}
SRC = {"float32": T.FLOAT, "float16": T.FLOAT16}


def _model(nodes: list[onnx.NodeProto], inputs: list[onnx.ValueInfoProto], outputs: list[onnx.ValueInfoProto],
           opset: int = 25) -> onnx.ModelProto:
    return oh.make_model(oh.make_graph(nodes, "g", inputs, outputs), opset_imports=[oh.make_opsetid("", opset)], ir_version=11)


def _run(m: onnx.ModelProto, feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
    out = lepton.compile(m, "x86", use_cache=False, verify=False, bundle=False).run(feeds)
    return [out[o.name] for o in m.graph.output]


def _equal(got: np.ndarray, want: np.ndarray) -> None:
    assert got.dtype == want.dtype and got.shape == want.shape
    np.testing.assert_array_equal(got.astype(np.float64), want.astype(np.float64))


_CAST_INPUTS = [-9.7, -8.5, -8.0, -6.0, -2.5, -1.5, -0.5, -0.0, 0.0, 0.25, 0.5, 0.75, 1.25, 1.5, 1.75, 2.5, 3.5, 5.0,
                7.5, 7.9, 15.9, 16.0, 100.0, 1e30, -1e30]


def _cast_model(name: str, src: int, n: int) -> onnx.ModelProto:
    return _model([oh.make_node("Cast", ["x"], ["y"], to=TYPES[name])], [oh.make_tensor_value_info("x", src, [n])],
                  [oh.make_tensor_value_info("y", TYPES[name], [n])])


def _saturated(x: np.ndarray, name: str) -> np.ndarray:
    """Lepton's documented rule for integer sub-byte casts (README, Python API): truncate toward zero, saturate, NaN -> 0."""
    info = ml_dtypes.iinfo(getattr(ml_dtypes, name))
    wide = np.nan_to_num(x.astype(np.float64), nan=0.0)
    return np.clip(np.trunc(wide), info.min, info.max).astype(getattr(ml_dtypes, name))


@pytest.mark.parametrize("name", sorted(TYPES))
@pytest.mark.parametrize("src", sorted(SRC))
def test_cast_to_narrow(name: str, src: str) -> None:
    """Where ONNX defines the cast (in range), Lepton matches its reference exactly; out of range, where ONNX
    leaves it undefined (ml_dtypes changed it between releases), integer types saturate by Lepton's own rule."""
    with np.errstate(over="ignore"):  # 1e30 is inf in float16
        x = np.array(_CAST_INPUTS + [np.nan, np.inf, -np.inf], dtype=src)
    (got,) = _run(_cast_model(name, SRC[src], x.size), {"x": x})
    assert got.dtype.name == name and got.shape == x.shape
    if name.startswith("float"):  # FLOAT4E2M1: ONNX defines every value (round to nearest even, saturate at 6)
        (want,) = ReferenceEvaluator(_cast_model(name, SRC[src], x.size)).run(None, {"x": x})
        _equal(got, want)
        return
    info = ml_dtypes.iinfo(getattr(ml_dtypes, name))
    inside = np.isfinite(x) & (np.trunc(x.astype(np.float64)) >= info.min) & (np.trunc(x.astype(np.float64)) <= info.max)
    (want,) = ReferenceEvaluator(_cast_model(name, SRC[src], int(inside.sum()))).run(None, {"x": x[inside]})
    _equal(got[inside], want)
    _equal(got, _saturated(x, name))
    assert inside.sum() >= 5 and (~inside).sum() >= 5  # both regimes are exercised


@pytest.mark.parametrize("name", ["int4", "uint4", "int2", "uint2"])
@pytest.mark.parametrize("src", ["int8", "uint8", "int32", "int64", "uint64"])
def test_cast_integer_to_narrow_saturates(name: str, src: str) -> None:
    info, narrow = np.iinfo(src), ml_dtypes.iinfo(getattr(ml_dtypes, name))
    values = [info.min, info.min + 1, -100, -9, -8, -3, -2, -1, 0, 1, 2, 3, 7, 8, 15, 16, 100, info.max - 1, info.max]
    x = np.array(sorted({v for v in values if info.min <= v <= info.max}), dtype=src)
    (got,) = _run(_cast_model(name, onnx.helper.np_dtype_to_tensor_dtype(np.dtype(src)), x.size), {"x": x})
    want = np.array([min(max(int(v), int(narrow.min)), int(narrow.max)) for v in x]).astype(getattr(ml_dtypes, name))
    _equal(got, want)


@pytest.mark.parametrize("name", sorted(TYPES))
@pytest.mark.parametrize("to", ["float32", "float16"])
def test_cast_from_narrow(name: str, to: str) -> None:
    dt = np.dtype(getattr(ml_dtypes, name))
    x = np.arange(16 if "4" in name else 4, dtype=np.uint8).view(dt) if name.startswith("float") else \
        np.arange(ml_dtypes.iinfo(dt).min, ml_dtypes.iinfo(dt).max + 1).astype(dt)
    m = _model([oh.make_node("Cast", ["x"], ["y"], to=SRC[to])], [oh.make_tensor_value_info("x", TYPES[name], [x.size])],
               [oh.make_tensor_value_info("y", SRC[to], [x.size])])
    (want,) = ReferenceEvaluator(m).run(None, {"x": x})
    (got,) = _run(m, {"x": x})
    _equal(got, want)


@pytest.mark.parametrize("name", ["int4", "uint4", "int2", "uint2"])
def test_quantize_dequantize(name: str) -> None:
    dt = np.dtype(getattr(ml_dtypes, name))
    x = np.linspace(-20, 20, 24, dtype=np.float32).reshape(2, 3, 4)
    scale = np.array([2.0, 4.0, 8.0], np.float32)
    zp = np.array([1, 0, 1], dtype=dt)
    m = _model(
        [oh.make_node("QuantizeLinear", ["x", "s", "zp"], ["q"], axis=1), oh.make_node("DequantizeLinear", ["q", "s", "zp"], ["y"], axis=1)],
        [oh.make_tensor_value_info("x", T.FLOAT, [2, 3, 4]), oh.make_tensor_value_info("s", T.FLOAT, [3]),
         oh.make_tensor_value_info("zp", TYPES[name], [3])],
        [oh.make_tensor_value_info("q", TYPES[name], [2, 3, 4]), oh.make_tensor_value_info("y", T.FLOAT, [2, 3, 4])])
    feeds = {"x": x, "s": scale, "zp": zp}
    want_q, want_y = ReferenceEvaluator(m).run(None, feeds)
    got_q, got_y = _run(m, feeds)
    _equal(got_q, want_q)
    _equal(got_y, want_y)


_BLOCKED = {"int8": T.INT8, "uint8": T.UINT8, "int4": T.INT4, "uint4": T.UINT4, "int16": T.INT16}


@pytest.mark.parametrize("name, block, zero_point", [
    ("int8", 4, True), ("int8", 3, False), ("int4", 4, True), ("int4", 5, False), ("uint4", 5, True), ("uint8", 10, True),
    ("int16", 16, False),
])
def test_blocked_dequantize_matches_onnx(name: str, block: int, zero_point: bool) -> None:
    """Blocked DequantizeLinear (the int4 weight-only form) as ONNX defines it, the codes a graph input and a
    constant; 10 is not a multiple of 3, 4 or 16, so the last block is short (or the only one)."""
    dt = np.dtype(getattr(ml_dtypes, name, None) or name)
    info = ml_dtypes.iinfo(dt)
    rng = np.random.default_rng(block)
    blocks = -(-10 // block)
    w = rng.integers(int(info.min), int(info.max) + 1, size=(6, 10)).astype(dt)
    scale = rng.uniform(0.01, 0.1, size=(6, blocks)).astype(np.float32)
    zp = rng.integers(int(info.min), int(info.max) + 1, size=(6, blocks)).astype(dt)
    dq_inputs = ["w", "s", "zp"] if zero_point else ["w", "s"]
    nodes = [oh.make_node("DequantizeLinear", dq_inputs, ["y"], axis=1, block_size=block),
             oh.make_node("DequantizeLinear", ["wc", "s"], ["yc"], axis=1, block_size=block)]
    inits = [onnx.numpy_helper.from_array(w, "wc")]
    m = _model(nodes, [oh.make_tensor_value_info(n, t, sh) for n, t, sh in
                       [("w", _BLOCKED[name], [6, 10]), ("s", T.FLOAT, [6, blocks])] + ([("zp", _BLOCKED[name], [6, blocks])] if zero_point else [])],
               [oh.make_tensor_value_info("y", T.FLOAT, [6, 10]), oh.make_tensor_value_info("yc", T.FLOAT, [6, 10])], opset=21)
    m.graph.initializer.extend(inits)
    feeds = {"w": w, "s": scale, **({"zp": zp} if zero_point else {})}
    want = ReferenceEvaluator(m).run(None, feeds)
    for got, exp in zip(_run(m, feeds), want, strict=True):
        np.testing.assert_allclose(got, exp, rtol=1e-6, atol=0)


@pytest.mark.parametrize("name", ["uint8", "int4"])
def test_blocked_quantize_matches_onnx(name: str) -> None:
    dt = np.dtype(getattr(ml_dtypes, name, None) or name)
    rng = np.random.default_rng(4)
    x = (rng.standard_normal((4, 7)) * 3).astype(np.float32)
    x[0, :3] = [0.5, 1.5, -2.5]  # ties round half to even
    scale = np.array([[1.0, 0.05]] * 4, np.float32)
    zp = np.array([[1, 2]] * 4).astype(dt)
    m = _model([oh.make_node("QuantizeLinear", ["x", "s", "zp"], ["q"], axis=1, block_size=4)],
               [oh.make_tensor_value_info("x", T.FLOAT, [4, 7]), oh.make_tensor_value_info("s", T.FLOAT, [4, 2]),
                oh.make_tensor_value_info("zp", _BLOCKED[name], [4, 2])],
               [oh.make_tensor_value_info("q", _BLOCKED[name], [4, 7])], opset=21)
    feeds = {"x": x, "s": scale, "zp": zp}
    (want,) = ReferenceEvaluator(m).run(None, feeds)
    (got,) = _run(m, feeds)
    _equal(got, want)


def test_narrow_arithmetic_is_reported_unsupported() -> None:
    m = _model([oh.make_node("Transpose", ["x"], ["y"], perm=[1, 0])], [oh.make_tensor_value_info("x", T.INT4, [2, 3])],
               [oh.make_tensor_value_info("y", T.INT4, [3, 2])])
    with pytest.raises(UnsupportedOpsError, match="sub-byte"):
        lepton.compile(m, "x86", use_cache=False, verify=False, bundle=False)
