"""Float8 conversions in the codegen (lepton/codegen/float8.py), compiled for x86 and compared bit
for bit with ONNX's reference implementation: every float8 value, every midpoint between
neighbours (ties to even), subnormals, signed zeros, infinities, NaN and out-of-range values."""

from __future__ import annotations

import ml_dtypes
import numpy as np
import onnx
import onnx.helper as oh
import pytest
from onnx import TensorProto as T
from onnx.reference import ReferenceEvaluator

import lepton
from lepton.codegen.float8 import FORMATS
from lepton.errors import UnsupportedOpsError

ONNX_TYPE = {"float8_e4m3fn": T.FLOAT8E4M3FN, "float8_e5m2": T.FLOAT8E5M2, "float8_e4m3fnuz": T.FLOAT8E4M3FNUZ,
             "float8_e5m2fnuz": T.FLOAT8E5M2FNUZ}
SRC = {"float32": T.FLOAT, "float16": T.FLOAT16, "float64": T.DOUBLE}


def _model(nodes: list[onnx.NodeProto], inputs: list[onnx.ValueInfoProto], outputs: list[onnx.ValueInfoProto]) -> onnx.ModelProto:
    return oh.make_model(oh.make_graph(nodes, "g", inputs, outputs), opset_imports=[oh.make_opsetid("", 21)], ir_version=10)


def _run(m: onnx.ModelProto, feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
    compiled = lepton.compile(m, "x86", use_cache=False, verify=False, bundle=False)
    out = compiled.run(feeds)
    return [out[o.name] for o in m.graph.output]


def _probe_values(fmt: str, dtype: str) -> np.ndarray:
    rep = np.arange(256, dtype=np.uint8).view(getattr(ml_dtypes, fmt)).astype(np.float64)
    finite = np.unique(rep[np.isfinite(rep)])
    mids = (finite[1:] + finite[:-1]) / 2
    rng = np.random.default_rng(0)
    wide = rng.standard_normal(400) * 10.0 ** rng.uniform(-8, 6, 400)
    special = [0.0, -0.0, np.inf, -np.inf, np.nan, 1e30, -1e30, 1e-30, -1e-30]
    return np.concatenate([rep, mids, -mids, wide, special]).astype(dtype)


def _same_bits(got: np.ndarray, want: np.ndarray) -> np.ndarray:
    nan = np.isnan(got.astype(np.float32)) & np.isnan(want.astype(np.float32))
    return (got.view(np.uint8) == want.view(np.uint8)) | nan


@pytest.mark.parametrize("fmt", sorted(FORMATS))
@pytest.mark.parametrize("saturate", [1, 0])
@pytest.mark.parametrize("src", ["float32", "float16", "float64"])
def test_encode_matches_onnx_reference(fmt: str, saturate: int, src: str) -> None:
    x = _probe_values(fmt, src)
    m = _model([oh.make_node("Cast", ["x"], ["y"], to=ONNX_TYPE[fmt], saturate=saturate)],
               [oh.make_tensor_value_info("x", SRC[src], [x.size])], [oh.make_tensor_value_info("y", ONNX_TYPE[fmt], [x.size])])
    want = ReferenceEvaluator(m).run(None, {"x": x})[0]
    (got,) = _run(m, {"x": x})
    assert got.dtype == want.dtype
    ok = _same_bits(got, want)
    assert ok.all(), list(zip(x[~ok][:8], got.view(np.uint8)[~ok][:8], want.view(np.uint8)[~ok][:8], strict=True))


@pytest.mark.parametrize("fmt", sorted(FORMATS))
@pytest.mark.parametrize("to", ["float32", "float16"])
def test_decode_every_code(fmt: str, to: str) -> None:
    x = np.arange(256, dtype=np.uint8).view(getattr(ml_dtypes, fmt))
    m = _model([oh.make_node("CastLike", ["x", "like"], ["y"])],
               [oh.make_tensor_value_info("x", ONNX_TYPE[fmt], [256]), oh.make_tensor_value_info("like", SRC[to], [1])],
               [oh.make_tensor_value_info("y", SRC[to], [256])])
    like = np.zeros(1, dtype=to)
    want = ReferenceEvaluator(m).run(None, {"x": x, "like": like})[0]
    (got,) = _run(m, {"x": x, "like": like})
    np.testing.assert_array_equal(got, want)


def test_quantize_dequantize_per_axis() -> None:
    fmt = "float8_e4m3fn"
    x = np.random.default_rng(1).standard_normal((2, 3, 4)).astype(np.float32) * 50
    scale = np.array([0.5, 2.0, 0.125], np.float32)
    zp = np.zeros(3, dtype=ml_dtypes.float8_e4m3fn)
    m = _model(
        [oh.make_node("QuantizeLinear", ["x", "s", "zp"], ["q"], axis=1), oh.make_node("DequantizeLinear", ["q", "s", "zp"], ["y"], axis=1)],
        [oh.make_tensor_value_info("x", T.FLOAT, [2, 3, 4]), oh.make_tensor_value_info("s", T.FLOAT, [3]),
         oh.make_tensor_value_info("zp", ONNX_TYPE[fmt], [3])],
        [oh.make_tensor_value_info("q", ONNX_TYPE[fmt], [2, 3, 4]), oh.make_tensor_value_info("y", T.FLOAT, [2, 3, 4])])
    feeds = {"x": x, "s": scale, "zp": zp}
    want_q, want_y = ReferenceEvaluator(m).run(None, feeds)
    got_q, got_y = _run(m, feeds)
    assert _same_bits(got_q, want_q).all()
    np.testing.assert_array_equal(got_y, want_y)


def test_float8_arithmetic_is_reported_unsupported() -> None:
    m = _model([oh.make_node("Transpose", ["x"], ["y"], perm=[1, 0])], [oh.make_tensor_value_info("x", T.FLOAT8E4M3FN, [2, 3])],
               [oh.make_tensor_value_info("y", T.FLOAT8E4M3FN, [3, 2])])
    with pytest.raises(UnsupportedOpsError, match="float8"):
        lepton.compile(m, "x86", use_cache=False, verify=False, bundle=False)


@pytest.mark.parametrize("round_mode", ["up", "down", "nearest"])
@pytest.mark.parametrize("saturate", [1, 0])
def test_e8m0_encode_matches_onnx_reference(round_mode: str, saturate: int) -> None:
    rng = np.random.default_rng(3)
    powers = 2.0 ** np.arange(-127, 128, dtype=np.float64)
    x = np.concatenate([powers, powers * 1.5, powers * 1.25, powers * 1.75, -powers[::7], rng.standard_normal(200) * 1e3,
                        [0.0, -0.0, np.inf, -np.inf, np.nan, 3.4e38, 1e-45]]).astype(np.float32)
    m = oh.make_model(oh.make_graph([oh.make_node("Cast", ["x"], ["y"], to=T.FLOAT8E8M0, saturate=saturate, round_mode=round_mode)], "g",
                                    [oh.make_tensor_value_info("x", T.FLOAT, [x.size])],
                                    [oh.make_tensor_value_info("y", T.FLOAT8E8M0, [x.size])]),
                      opset_imports=[oh.make_opsetid("", 25)], ir_version=11)
    want = ReferenceEvaluator(m).run(None, {"x": x})[0]
    (got,) = _run(m, {"x": x})
    assert got.dtype == want.dtype
    np.testing.assert_array_equal(got.view(np.uint8), want.view(np.uint8))


def test_e8m0_decode_every_code() -> None:
    x = np.arange(256, dtype=np.uint8).view(ml_dtypes.float8_e8m0fnu)
    for to, t in (("float32", T.FLOAT), ("float16", T.FLOAT16)):
        m = oh.make_model(oh.make_graph([oh.make_node("Cast", ["x"], ["y"], to=t)], "g",
                                        [oh.make_tensor_value_info("x", T.FLOAT8E8M0, [256])], [oh.make_tensor_value_info("y", t, [256])]),
                          opset_imports=[oh.make_opsetid("", 25)], ir_version=11)
        want = ReferenceEvaluator(m).run(None, {"x": x})[0]
        (got,) = _run(m, {"x": x})
        np.testing.assert_array_equal(got, want)
        assert got.dtype == np.dtype(to)


@pytest.mark.parametrize(("src", "dst"), [(T.FLOAT, T.INT32), (T.INT64, T.DOUBLE), (T.BOOL, T.UINT8), (T.INT8, T.UINT8),
                                          (T.UINT16, T.INT16), (T.FLOAT8E4M3FN, T.UINT8), (T.UINT8, T.FLOAT8E5M2)])
def test_bitcast(src: int, dst: int) -> None:
    snp = oh.tensor_dtype_to_np_dtype(src)
    raw = np.random.default_rng(0).integers(0, 256, size=(3, 8), dtype=np.uint8)
    x = (raw % 2).astype(bool) if src == T.BOOL else raw.view(snp)
    m = oh.make_model(oh.make_graph([oh.make_node("BitCast", ["x"], ["y"], to=dst)], "g",
                                    [oh.make_tensor_value_info("x", src, list(x.shape))], [oh.make_tensor_value_info("y", dst, list(x.shape))]),
                      opset_imports=[oh.make_opsetid("", 26)], ir_version=11)
    (got,) = _run(m, {"x": x})
    want = x.view(oh.tensor_dtype_to_np_dtype(dst))
    np.testing.assert_array_equal(got.view(np.uint8), want.view(np.uint8))
