"""Lepton's CPU schedule rules: they apply to conv/matmul/injective functions and never change results."""

from __future__ import annotations

import re

import numpy as np
import onnx
import pytest
import tvm
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from onnx import TensorProto, helper
from tvm import tirx
from tvm.relax.backend.cpu_generic import pipeline as cpu
from tvm.relax.frontend.onnx import from_onnx

import lepton
from lepton.codegen.schedules import Injective, TiledReduction
from passes.ort import run_model

TARGET = tvm.target.Target({"kind": "llvm", "mtriple": "x86_64-linux-gnu"})


def _model(nodes: list[onnx.NodeProto], inputs: dict[str, list[object]], inits: dict[str, np.ndarray]) -> onnx.ModelProto:
    """A one-output model; the output's type comes from ONNX shape inference."""
    g = helper.make_graph(
        nodes, "m",
        [helper.make_tensor_value_info(k, TensorProto.FLOAT, v) for k, v in inputs.items()],
        [],
        [onnx.numpy_helper.from_array(v, k) for k, v in inits.items()],
    )
    model = onnx.shape_inference.infer_shapes(helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)], ir_version=10))
    out = nodes[-1].output[0]
    model.graph.output.extend([vi for vi in model.graph.value_info if vi.name == out])
    return model


def _conv(c: int, k: int, hw: tuple[int, int], kernel: int, stride: int, pad: int, group: int, dilation: int,
          epilogue: str, batch: object = 1) -> onnx.ModelProto:
    rng = np.random.default_rng(0)
    inits = {"w": rng.standard_normal((k, c // group, kernel, kernel)).astype(np.float32) * 0.2,
             "b": rng.standard_normal(k).astype(np.float32)}
    nodes = [helper.make_node("Conv", ["x", "w", "b"], ["c"], strides=[stride] * 2, pads=[pad] * 4,
                              group=group, dilations=[dilation] * 2)]
    if epilogue in ("relu", "residual"):
        nodes.append(helper.make_node("Relu", ["c"], ["r"]))
    if epilogue == "residual":
        nodes.append(helper.make_node("Add", ["r", "c"], ["y"]))
    return _model(nodes, {"x": [batch, c, *hw]}, inits)


def _legalized_funcs(model: onnx.ModelProto) -> list[tirx.PrimFunc]:
    with TARGET:
        mod = tvm.transform.Sequential(cpu.library_dispatch_passes(TARGET) + cpu.legalize_passes(TARGET))(from_onnx(model))
    return [f for _, f in mod.functions.items() if isinstance(f, tirx.PrimFunc)]


def _check(model: onnx.ModelProto, shape: dict[str, tuple[int, ...]]) -> None:
    res = lepton.compile(model, "x86", use_cache=False)  # compile verifies on synthesized inputs too
    rng = np.random.default_rng(7)
    feeds = {k: rng.standard_normal(v).astype(np.float32) for k, v in shape.items()}
    want = run_model(model, feeds)
    got = res.run(feeds)
    for name, w in want.items():
        np.testing.assert_allclose(got[name], w, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize(
    ("c", "k", "hw", "kernel", "stride", "pad", "group", "dilation", "epilogue"),
    [
        (16, 32, (14, 14), 3, 1, 1, 1, 1, "relu"),
        (8, 8, (13, 9), 3, 2, 1, 1, 1, "residual_free"),
        (12, 12, (10, 10), 3, 1, 1, 12, 1, "relu"),  # depthwise
        (24, 40, (7, 7), 1, 1, 0, 1, 1, "none"),  # pointwise, odd width
        (6, 9, (11, 11), 5, 1, 4, 3, 2, "relu"),  # grouped, dilated
    ],
)
def test_conv_is_scheduled_by_the_tiled_rule_and_matches_onnxruntime(
    c: int, k: int, hw: tuple[int, int], kernel: int, stride: int, pad: int, group: int, dilation: int, epilogue: str
) -> None:
    model = _conv(c, k, hw, kernel, stride, pad, group, dilation, epilogue)
    funcs = [f for f in _legalized_funcs(model) if "conv" in f.script()]
    assert funcs
    sch = TiledReduction(16).apply(funcs[0].with_attr("global_symbol", "main"), TARGET, False)
    assert sch is not None, "the conv function should match the tiled rule"
    text = sch.mod.script()
    assert "T.parallel" in text and "T.vectorized" in text and 'scope="local"' in text
    _check(model, {"x": (1, c, *hw)})


def test_conv_with_symbolic_batch_runs_at_several_batch_sizes() -> None:
    model = _conv(8, 16, (9, 9), 3, 1, 1, 1, 1, "relu", batch="n")
    res = lepton.compile(model, "x86", use_cache=False)
    for n in (1, 3):
        x = np.random.default_rng(n).standard_normal((n, 8, 9, 9)).astype(np.float32)
        np.testing.assert_allclose(res.run(x=x)[res.module.outputs[0].name], next(iter(run_model(model, {"x": x}).values())),
                                   rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize(("a", "b"), [((5, 37), (37, 48)), ((2, 7, 64), (64, 96)), ((2, 3, 16, 8), (2, 3, 8, 33))])
def test_matmul_is_scheduled_and_matches_onnxruntime(a: tuple[int, ...], b: tuple[int, ...]) -> None:
    rng = np.random.default_rng(1)
    model = _model([helper.make_node("MatMul", ["a", "w"], ["m"]), helper.make_node("Relu", ["m"], ["y"])],
                   {"a": list(a)}, {"w": rng.standard_normal(b).astype(np.float32)})
    funcs = [f for f in _legalized_funcs(model) if "matmul" in f.script()]
    assert TiledReduction(16).apply(funcs[0].with_attr("global_symbol", "main"), TARGET, False) is not None
    _check(model, {"a": a})


def _accumulators(sch: object, lanes: int) -> int:
    """Vector registers the schedule's register tile takes: the unrolled rows times the vectorized width over
    the lanes, read off the reduction's innermost loops (`for k: for u in T.unroll(U): for v in T.vectorized(V)`)."""
    tile = re.search(r"T\.unroll\(T\.int64\((\d+)\)\):\s*for \w+ in T\.vectorized\(T\.int64\((\d+)\)\):\s*with T\.sblock\(\"matmul_update\"",
                     sch.mod.script())
    assert tile is not None, sch.mod.script()
    return int(tile.group(1)) * -(-int(tile.group(2)) // lanes)


def test_register_tile_fits_the_targets_vector_registers() -> None:
    """16 registers (AVX2): at most 12 accumulators, so that inputs have registers left (24 spilled to the
    stack); 32 (AVX-512, NEON): up to 24."""
    rng = np.random.default_rng(3)
    model = _model([helper.make_node("MatMul", ["a", "w"], ["y"])], {"a": [64, 256]},
                   {"w": rng.standard_normal((256, 256)).astype(np.float32)})
    func = next(f for f in _legalized_funcs(model) if "matmul" in f.script()).with_attr("global_symbol", "main")
    wide = _accumulators(TiledReduction(8, 32).apply(func, TARGET, False), 8)
    narrow = _accumulators(TiledReduction(8, 16).apply(func, TARGET, False), 8)
    assert narrow <= 12 < wide <= 24


def test_gemm_with_transposed_weight_matches_onnxruntime() -> None:
    rng = np.random.default_rng(2)
    model = _model([helper.make_node("Gemm", ["a", "w", "bias"], ["y"], transB=1)], {"a": [4, 30]},
                   {"w": rng.standard_normal((20, 30)).astype(np.float32), "bias": rng.standard_normal(20).astype(np.float32)})
    _check(model, {"a": (4, 30)})


def test_injective_rule_takes_elementwise_chains_and_leaves_reductions() -> None:
    ew = _model([helper.make_node("Sigmoid", ["x"], ["s"]), helper.make_node("Mul", ["s", "x"], ["y"])], {"x": [2, 5, 33]}, {})
    (f,) = _legalized_funcs(ew)
    sch = Injective(16).apply(f.with_attr("global_symbol", "main"), TARGET, False)
    assert sch is not None and "T.parallel" in sch.mod.script()
    red = _model([helper.make_node("ReduceSum", ["x", "axes"], ["y"], keepdims=0)], {"x": [4, 6]},
                 {"axes": np.array([1], np.int64)})
    assert all(Injective(16).apply(g.with_attr("global_symbol", "main"), TARGET, False) is None for g in _legalized_funcs(red))
    _check(ew, {"x": (2, 5, 33)})


@settings(max_examples=12, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    c=st.sampled_from([1, 3, 8, 17]), k=st.sampled_from([1, 4, 16, 19]), h=st.integers(3, 12), w=st.integers(3, 20),
    kernel=st.sampled_from([1, 3]), stride=st.sampled_from([1, 2]), epilogue=st.sampled_from(["none", "relu", "residual"]),
    depthwise=st.booleans(),
)
def test_random_convs_match_onnxruntime(c: int, k: int, h: int, w: int, kernel: int, stride: int, epilogue: str,
                                        depthwise: bool) -> None:
    group = c if depthwise else 1
    k = c if depthwise else k
    model = _conv(c, k, (h, w), kernel, stride, kernel // 2, group, 1, epilogue)
    _check(model, {"x": (1, c, h, w)})
