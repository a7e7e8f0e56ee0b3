"""Tests for the conformance lowering passes: lower-ops, expand-misconverted, fold-empty-inputs,
unroll-scan, and onnxruntime's opset bridge (passes.ort.ort_compatible).

Each rewrite is checked structurally (the op is gone, or left alone where the rule does not
apply) and numerically against onnxruntime on the original model (DESIGN.md §6 tolerances),
with `modified` exact and a second run finding nothing (passutil.assert_pass_preserves).
Models at opsets onnxruntime refuses are checked against ONNX's reference evaluator.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np
import onnx
import onnx.helper as oh
import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st
from onnx import TensorProto as T
from onnx.reference import ReferenceEvaluator
from passutil import assert_outputs_close, assert_pass_preserves, run_pass
from strategies import onnx_models, random_inputs

import lepton_ir
from passes import REGISTRY, parse_pipeline
from passes.lowering.empty_inputs import FoldEmptyInputs
from passes.lowering.misconverted import ExpandMisconverted
from passes.lowering.ops import LowerOps
from passes.lowering.unroll import UnrollScan
from passes.ort import ORT_MAX_OPSET, ort_compatible, run_model


def vi(name: str, shape: Sequence[int | str] | None, dtype: int = T.FLOAT) -> onnx.ValueInfoProto:
    return oh.make_tensor_value_info(name, dtype, shape)


def model(nodes: list[onnx.NodeProto], inputs: list[onnx.ValueInfoProto], outputs: list[onnx.ValueInfoProto],
          opset: int = 22, initializers: Sequence[onnx.TensorProto] = ()) -> onnx.ModelProto:
    g = oh.make_graph(nodes, "g", inputs, outputs, initializer=list(initializers))
    return oh.make_model(g, opset_imports=[oh.make_opsetid("", opset)], ir_version=10)


def floats(*shape: int, seed: int = 0, dtype: type = np.float32) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal(shape).astype(dtype)


def ops(graph: lepton_ir.Graph) -> list[str]:
    return [n.op_type for n in graph.all_nodes()]


def const(name: str, array: np.ndarray) -> onnx.TensorProto:
    return onnx.numpy_helper.from_array(np.asarray(array), name)


def test_passes_are_registered() -> None:
    for name in ("lower-ops", "expand-misconverted", "fold-empty-inputs", "unroll-scan"):
        assert name in REGISTRY
        assert [p.name for p in parse_pipeline(name)] == [name]


# ----- lower-ops ------------------------------------------------------------------------------


LOWER = LowerOps()


@pytest.mark.parametrize(("neg", "pos"), [(0, 1), (1, 0), (0, 0)])
def test_isinf_directions(neg: int, pos: int) -> None:
    m = model([oh.make_node("IsInf", ["x"], ["y"], detect_negative=neg, detect_positive=pos)],
              [vi("x", [6])], [vi("y", [6], T.BOOL)])
    x = np.array([-np.inf, np.inf, 0.0, np.nan, -1.0, np.inf], dtype=np.float32)
    graph = assert_pass_preserves(m, LOWER, {"x": x})
    assert ops(graph).count("IsInf") == 1 and "And" in ops(graph)


def test_isinf_default_left_alone() -> None:
    m = model([oh.make_node("IsInf", ["x"], ["y"])], [vi("x", [3])], [vi("y", [3], T.BOOL)])
    assert not run_pass(LOWER, lepton_ir.load(m)).modified


@pytest.mark.parametrize(("bt", "et"), [(T.FLOAT, T.INT32), (T.FLOAT, T.INT64), (T.INT32, T.INT32), (T.INT64, T.INT64),
                                        (T.INT64, T.FLOAT)])
def test_pow_types(bt: int, et: int) -> None:
    m = model([oh.make_node("Pow", ["b", "e"], ["y"])], [vi("b", [5], bt), vi("e", [5], et)], [vi("y", [5], bt)], opset=15)
    bnp, enp = oh.tensor_dtype_to_np_dtype(bt), oh.tensor_dtype_to_np_dtype(et)
    feeds = {"b": np.array([2, 3, -2, 5, 1], dtype=bnp), "e": np.array([3, 2, 3, 0, 7], dtype=enp)}
    graph = assert_pass_preserves(m, LOWER, feeds)
    pows = [n for n in graph if n.op_type == "Pow"]
    assert len(pows) == 1 and pows[0].inputs[0].dtype == pows[0].inputs[1].dtype


def test_pow_one_float_type_left_alone() -> None:
    m = model([oh.make_node("Pow", ["b", "e"], ["y"])], [vi("b", [3]), vi("e", [3])], [vi("y", [3])])
    assert not run_pass(LOWER, lepton_ir.load(m)).modified


@pytest.mark.parametrize("op", ["Sinh", "Cosh"])
@pytest.mark.parametrize("dtype", [T.FLOAT, T.DOUBLE, T.FLOAT16])
def test_sinh_cosh(op: str, dtype: int) -> None:
    npd = oh.tensor_dtype_to_np_dtype(dtype)
    x = np.array([-3.0, -1.0, -0.999, -1e-4, 0.0, 1e-6, 0.3, 0.9999, 1.0, 2.5, 8.0], dtype=npd)
    m = model([oh.make_node(op, ["x"], ["y"])], [vi("x", [x.size], dtype)], [vi("y", [x.size], dtype)])
    if dtype == T.FLOAT:
        graph = assert_pass_preserves(m, LOWER, {"x": x})
    else:  # onnxruntime has Sinh/Cosh for float32 only: compare with numpy
        graph = lepton_ir.load(m)
        assert run_pass(LOWER, graph).modified and not run_pass(LOWER, graph).modified
    assert op not in ops(graph)
    got = run_model(lepton_ir.to_onnx(graph), {"x": x})["y"]
    want = (np.sinh if op == "Sinh" else np.cosh)(x.astype(np.float64))
    np.testing.assert_allclose(got.astype(np.float64), want, rtol=1e-6 if dtype != T.FLOAT16 else 1e-3, atol=0)


def test_dropout_inference_forms() -> None:
    nodes = [
        oh.make_node("Dropout", ["x"], ["a", "ma"]),
        oh.make_node("Dropout", ["x", "r", "f"], ["b", "mb"]),
        oh.make_node("Dropout", ["x", "zero", "t"], ["c", "mc"], seed=1),
    ]
    inits = [const("r", np.array(0.7, np.float32)), const("f", np.array(False)), const("zero", np.array(0.0, np.float32)),
             const("t", np.array(True))]
    outs = [vi(n, [3, 4]) for n in "abc"] + [vi(n, [3, 4], T.BOOL) for n in ("ma", "mb", "mc")]
    m = model(nodes, [vi("x", [3, 4])], outs, opset=22, initializers=inits)
    graph = assert_pass_preserves(m, LOWER, {"x": floats(3, 4)})
    assert "Dropout" not in ops(graph)


def test_dropout_training_left_alone() -> None:
    m = model([oh.make_node("Dropout", ["x", "r", "t"], ["y"])], [vi("x", [3]), vi("r", [], T.FLOAT), vi("t", [], T.BOOL)],
              [vi("y", [3])])
    assert not run_pass(LOWER, lepton_ir.load(m)).modified


@pytest.mark.parametrize(("k", "dtype"), [(0, None), (1, T.INT32), (-2, T.DOUBLE)])
def test_eye_like_static(k: int, dtype: int | None) -> None:
    attrs = {"k": k} | ({"dtype": dtype} if dtype is not None else {})
    out_t = dtype if dtype is not None else T.FLOAT
    m = model([oh.make_node("EyeLike", ["x"], ["y"], **attrs)], [vi("x", [3, 5])], [vi("y", [3, 5], out_t)])
    graph = assert_pass_preserves(m, LOWER, {"x": floats(3, 5)})
    assert "EyeLike" not in ops(graph)


@pytest.mark.parametrize("mode", ["CRD", "DCR"])
def test_space_to_depth_crd(mode: str) -> None:
    m = model([oh.make_node("SpaceToDepth", ["x"], ["y"], blocksize=2, mode=mode)], [vi("x", [1, 3, 4, 6])],
              [vi("y", [1, 12, 2, 3])], opset=28)
    x = floats(1, 3, 4, 6)
    want = ReferenceEvaluator(m).run(None, {"x": x})[0]
    graph = lepton_ir.load(m)
    result = run_pass(LOWER, graph)
    assert result.modified == (mode == "CRD")
    assert ("SpaceToDepth" in ops(graph)) == (mode == "DCR")
    got = ReferenceEvaluator(lepton_ir.to_onnx(graph)).run(None, {"x": x})[0]
    np.testing.assert_array_equal(got, want)


@pytest.mark.parametrize(("p", "axis"), [(1, 0), (2, 1), (2, -1), (1, -2)])
def test_lp_normalization(p: int, axis: int) -> None:
    m = model([oh.make_node("LpNormalization", ["x"], ["y"], p=p, axis=axis)], [vi("x", [3, 4])], [vi("y", [3, 4])])
    x = floats(3, 4)
    x[1, :] = 0.0
    x[:, 2] = 0.0
    graph = assert_pass_preserves(m, LOWER, {"x": x})
    assert "LpNormalization" not in ops(graph)


@pytest.mark.parametrize(("strides", "out", "auto"), [([3, 2], [10, 8], "NOTSET"), ([2, 2], [6, 6], "NOTSET"),
                                                      ([2, 2], [5, 6], "SAME_UPPER"), ([1, 1], [4, 4], "NOTSET")])
def test_conv_transpose_output_shape(strides: list[int], out: list[int], auto: str) -> None:
    attrs = {"strides": strides, "output_shape": out} | ({"auto_pad": auto} if auto != "NOTSET" else {})
    m = model([oh.make_node("ConvTranspose", ["x", "w"], ["y"], **attrs)], [vi("x", [1, 1, 3, 3]), vi("w", [1, 2, 3, 3])],
              [vi("y", [1, 2, *out])])
    graph = assert_pass_preserves(m, LOWER, {"x": floats(1, 1, 3, 3), "w": floats(1, 2, 3, 3, seed=1)})
    (node,) = [n for n in graph if n.op_type == "ConvTranspose"]
    assert "output_shape" not in node.attributes and "pads" in node.attributes


@pytest.mark.parametrize(("shape", "axis", "exclusive", "reverse"), [([5], 0, 0, 0), ([5], 0, 1, 0), ([5], 0, 0, 1),
                                                                     ([5], 0, 1, 1), ([2, 3], 1, 0, 0), ([2, 3], -2, 1, 0)])
@pytest.mark.parametrize("dtype", [T.FLOAT, T.INT32])
def test_cum_prod(shape: list[int], axis: int, exclusive: int, reverse: int, dtype: int) -> None:
    npd = oh.tensor_dtype_to_np_dtype(dtype)
    m = model([oh.make_node("CumProd", ["x", "axis"], ["y"], exclusive=exclusive, reverse=reverse)],
              [vi("x", shape, dtype)], [vi("y", shape, dtype)], opset=26, initializers=[const("axis", np.array(axis))])
    x = (np.arange(int(np.prod(shape))).reshape(shape) % 4 + 1).astype(npd) * (np.float32(0.5) if dtype == T.FLOAT else 1)
    x = x.astype(npd)
    graph = assert_pass_preserves(m, LOWER, {"x": x})
    assert "CumProd" not in ops(graph)


# ----- expand-misconverted ------------------------------------------------------------------


MISC = ExpandMisconverted()


def test_layer_norm_with_mean_output_is_expanded() -> None:
    m = model([oh.make_node("LayerNormalization", ["x", "s", "b"], ["y", "mean", "inv"], axis=1)],
              [vi("x", [2, 3, 4]), vi("s", [3, 4]), vi("b", [3, 4])], [vi("y", [2, 3, 4]), vi("mean", [2, 1, 1]), vi("inv", [2, 1, 1])])
    graph = assert_pass_preserves(m, MISC, {"x": floats(2, 3, 4), "s": floats(3, 4, seed=1), "b": floats(3, 4, seed=2)})
    assert "LayerNormalization" not in ops(graph)


def test_layer_norm_broadcast_scale_without_a_valid_body_is_kept_and_counted() -> None:
    # ONNX's own body rejects a scale that broadcasts over the normalized dims: nothing to expand to
    m = model([oh.make_node("LayerNormalization", ["x", "s"], ["y"], axis=0)], [vi("x", [3, 4]), vi("s", [4])], [vi("y", [3, 4])])
    result = run_pass(MISC, lepton_ir.load(m))
    assert not result.modified and result.stats == {"skipped_invalid_body": 1}


@pytest.mark.parametrize("xshape", [[2, 4], ["batch", "seq", 4]])
def test_plain_layer_norm_left_alone(xshape: list[int | str]) -> None:
    m = model([oh.make_node("LayerNormalization", ["x", "s", "b"], ["y"])], [vi("x", xshape), vi("s", [4]), vi("b", [4])],
              [vi("y", xshape)])
    assert not run_pass(MISC, lepton_ir.load(m)).modified


@pytest.mark.parametrize(("axis", "expanded"), [(0, True), (-1, False), (1, False)])
def test_rms_norm_over_every_axis_is_expanded(axis: int, expanded: bool) -> None:
    scale_shape = [3, 4][axis:] if axis >= 0 else [4]
    m = model([oh.make_node("RMSNormalization", ["x", "s"], ["y"], axis=axis)], [vi("x", [3, 4]), vi("s", scale_shape)],
              [vi("y", [3, 4])], opset=23)
    feeds = {"x": floats(3, 4), "s": floats(*scale_shape, seed=1)}
    if expanded:
        graph = assert_pass_preserves(m, MISC, feeds)
        assert "RMSNormalization" not in ops(graph)
    else:
        assert not run_pass(MISC, lepton_ir.load(m)).modified


@pytest.mark.parametrize("op", ["Elu", "Selu"])
def test_float16_elu_selu_are_expanded(op: str) -> None:
    m = model([oh.make_node(op, ["x"], ["y"])], [vi("x", [6], T.FLOAT16)], [vi("y", [6], T.FLOAT16)])
    graph = assert_pass_preserves(m, MISC, {"x": floats(6, dtype=np.float16)})
    assert op not in ops(graph)
    m32 = model([oh.make_node(op, ["x"], ["y"])], [vi("x", [6])], [vi("y", [6])])
    assert not run_pass(MISC, lepton_ir.load(m32)).modified


# ----- fold-empty-inputs -----------------------------------------------------------------------


def test_empty_input_is_read_as_constant() -> None:
    m = model([oh.make_node("ReduceSum", ["x", "axes"], ["y"], keepdims=0)], [vi("x", [2, 3]), vi("axes", [0], T.INT64)],
              [vi("y", [])], opset=18)
    feeds = {"x": floats(2, 3), "axes": np.zeros(0, np.int64)}
    graph = assert_pass_preserves(m, FoldEmptyInputs(), feeds)
    (node,) = [n for n in graph if n.op_type == "ReduceSum"]
    assert node.inputs[1].const_value is not None and node.inputs[1].const_value.shape == (0,)
    assert [v.name for v in graph.inputs] == ["x", "axes"]  # the signature keeps the input


def test_non_empty_and_symbolic_inputs_left_alone() -> None:
    m = model([oh.make_node("ReduceSum", ["x", "axes"], ["y"])], [vi("x", [2, 3]), vi("axes", ["n"], T.INT64)],
              [vi("y", ["a", "b"])], opset=18)
    assert not run_pass(FoldEmptyInputs(), lepton_ir.load(m)).modified


# ----- unroll-scan ------------------------------------------------------------------------------


def _scan_model(length: int | str = 4) -> onnx.ModelProto:
    """State s (2), two scan inputs (x along axis 1 reversed, z along axis 0), two scan outputs
    (one along axis 1 reversed), a body initializer and an outer-scope value."""
    body = oh.make_graph(
        [
            oh.make_node("Add", ["s_in", "x_t"], ["t0"]),
            oh.make_node("Mul", ["t0", "k"], ["t1"]),
            oh.make_node("Add", ["t1", "outer"], ["s_out"]),
            oh.make_node("Sub", ["z_t", "s_out"], ["y_t"]),
            oh.make_node("Identity", ["s_out"], ["w_t"]),
        ],
        "body",
        [vi("s_in", [2]), vi("x_t", [2]), vi("z_t", [2])],
        [vi("s_out", [2]), vi("y_t", [2]), vi("w_t", [2])],
        initializer=[const("k", np.array([0.5, -1.0], np.float32))],
    )
    scan = oh.make_node("Scan", ["s0", "x", "z"], ["s_final", "ys", "ws"], body=body, num_scan_inputs=2,
                        scan_input_axes=[1, 0], scan_input_directions=[1, 0], scan_output_axes=[-1, 0],
                        scan_output_directions=[1, 0])
    outer = oh.make_node("Neg", ["s0"], ["outer"])
    return model([outer, scan], [vi("s0", [2]), vi("x", [2, length]), vi("z", [length, 2])],
                 [vi("s_final", [2]), vi("ys", [2, length]), vi("ws", [length, 2])], opset=16)


def test_unroll_scan_matches_onnxruntime() -> None:
    feeds = {"s0": floats(2), "x": floats(2, 4, seed=1), "z": floats(4, 2, seed=2)}
    graph = assert_pass_preserves(_scan_model(), UnrollScan(), feeds)
    assert "Scan" not in ops(graph)
    assert [v.name for v in graph.outputs] == ["s_final", "ys", "ws"]


@pytest.mark.parametrize("name", ["test_scan9_sum", "test_scan9_multi_state", "test_scan9_scalar"])
def test_unroll_scan_backend_cases(name: str) -> None:
    import onnx.backend.test.case.node.scan  # noqa: F401 - generates the cases
    from onnx.backend.test.case.node import _NodeTestCases

    case = next(c for c in _NodeTestCases if c.name == name)
    feeds = {v.name: np.asarray(a) for v, a in zip(case.model.graph.input, case.data_sets[0][0], strict=True)}
    graph = assert_pass_preserves(case.model, UnrollScan(), feeds)
    assert "Scan" not in ops(graph)


def test_scan_with_dynamic_length_left_alone() -> None:
    graph = lepton_ir.load(_scan_model("n"))
    result = run_pass(UnrollScan(), graph)
    assert not result.modified and result.stats == {"skipped_dynamic_length": 1}


def test_scan_unroll_is_bounded() -> None:
    graph = lepton_ir.load(_scan_model(4))
    result = run_pass(UnrollScan(max_nodes=10), graph)
    assert not result.modified and result.stats == {"skipped_too_long": 1}


# ----- onnxruntime opset bridge -----------------------------------------------------------------


def test_ort_compatible_declares_an_older_opset_when_ops_are_unchanged() -> None:
    m = model([oh.make_node("Abs", ["x"], ["y"])], [vi("x", [3])], [vi("y", [3])], opset=28)
    m.ir_version = 14
    out = ort_compatible(m)
    assert out.opset_import[0].version == ORT_MAX_OPSET and out.ir_version <= 13
    assert m.opset_import[0].version == 28  # the caller's model is not changed
    x = floats(3)
    assert_outputs_close({"y": np.abs(x)}, run_model(m, {"x": x}))


def test_ort_compatible_keeps_an_opset_whose_ops_changed() -> None:
    m = model([oh.make_node("Cast", ["x"], ["y"], to=T.FLOAT16)], [vi("x", [3])], [vi("y", [3], T.FLOAT16)], opset=28)
    assert ort_compatible(m).opset_import[0].version == 28


def assert_reference_preserved(m: onnx.ModelProto, p: object, feeds: dict[str, np.ndarray]) -> lepton_ir.Graph:
    """Like assert_pass_preserves, against ONNX's reference evaluator (types onnxruntime lacks kernels for)."""
    want = ReferenceEvaluator(m).run(None, feeds)
    graph = lepton_ir.load(m)
    assert run_pass(p, graph).modified  # type: ignore[arg-type]
    got = ReferenceEvaluator(lepton_ir.to_onnx(graph)).run(None, feeds)
    for g, w in zip(got, want, strict=True):
        assert g.dtype == w.dtype and g.shape == w.shape
        np.testing.assert_array_equal(g, w)
    assert not run_pass(p, graph).modified  # type: ignore[arg-type]
    return graph


@pytest.mark.parametrize(("axis", "itype", "shape"), [(-1, T.INT64, [2, 3, 5]), (0, T.FLOAT, [5, 2, 3]), (1, T.INT32, [2, 5, 3])])
def test_one_hot(axis: int, itype: int, shape: list[int]) -> None:
    m = model([oh.make_node("OneHot", ["i", "depth", "v"], ["y"], axis=axis)], [vi("i", [2, 3], itype), vi("v", [2])],
              [vi("y", shape)], opset=11, initializers=[const("depth", np.array(5, np.int64))])
    i = np.array([[0, 4, -1], [-5, 7, -6]]).astype(oh.tensor_dtype_to_np_dtype(itype))
    graph = assert_reference_preserved(m, LOWER, {"i": i, "v": np.array([-2.0, 3.0], np.float32)})
    assert "OneHot" not in ops(graph)


def test_pad_with_runtime_value() -> None:
    m = model([oh.make_node("Pad", ["x", "pads", "value", "axes"], ["y"])], [vi("x", [2, 3]), vi("value", [])], [vi("y", [2, 6])],
              opset=18, initializers=[const("pads", np.array([1, 2], np.int64)), const("axes", np.array([1], np.int64))])
    graph = assert_pass_preserves(m, LOWER, {"x": floats(2, 3), "value": np.array(np.inf, np.float32)})
    assert "Where" in ops(graph)


@pytest.mark.parametrize("op", ["ReduceMax", "ReduceMin"])
@pytest.mark.parametrize("shape", [[3, 4], [0, 4]])
def test_reduce_bool(op: str, shape: list[int]) -> None:
    m = model([oh.make_node(op, ["x", "axes"], ["y"], keepdims=1)], [vi("x", shape, T.BOOL)], [vi("y", [1, 4], T.BOOL)],
              opset=20, initializers=[const("axes", np.array([0], np.int64))])
    x = np.random.default_rng(0).random(shape) > 0.5
    if 0 in shape:  # onnxruntime refuses bool reductions of the empty set; ONNX defines them
        graph = assert_reference_preserved(m, LOWER, {"x": x})
    else:
        graph = assert_pass_preserves(m, LOWER, {"x": x})
    assert [n.inputs[0].dtype for n in graph if n.op_type == op] == [T.UINT8]


@pytest.mark.parametrize("op", ["ReduceMax", "ReduceMin"])
@pytest.mark.parametrize("keepdims", [0, 1])
def test_reduce_extreme_infinity(op: str, keepdims: int) -> None:
    inf = -np.inf if op == "ReduceMax" else np.inf
    nodes = [oh.make_node(op, ["x", "axes"], ["r"], keepdims=keepdims), oh.make_node("Neg", ["r"], ["y"])]
    shape = [3, 1] if keepdims else [3]
    m = model(nodes, [vi("x", [3, 4])], [vi("r", shape), vi("y", shape)], opset=18,
              initializers=[const("axes", np.array([1], np.int64))])
    x = np.array([[inf] * 4, [1.0, inf, 2.0, inf], [-3.0, 0.5, np.nan, 4.0]], np.float32)
    graph = assert_pass_preserves(m, LOWER, {"x": x})
    assert "Where" in ops(graph) and [v.name for v in graph.outputs] == ["r", "y"]


def test_reduce_extreme_infinity_empty_set() -> None:
    m = model([oh.make_node("ReduceMax", ["x", "axes"], ["y"], keepdims=0)], [vi("x", [0, 3])], [vi("y", [3])], opset=18,
              initializers=[const("axes", np.array([0], np.int64))])
    assert_pass_preserves(m, LOWER, {"x": np.zeros((0, 3), np.float32)})


# ----- expand-preview ------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["test_flexattention", "test_flexattention_causal_mask", "test_flexattention_gqa"])
def test_expand_preview_flex_attention(name: str) -> None:
    import onnx.backend.test.case.node.flexattention  # noqa: F401 - generates the cases
    from onnx.backend.test.case.node import _NodeTestCases

    from passes.lowering.preview import ExpandPreview

    case = next(c for c in _NodeTestCases if c.name == name)
    graph = lepton_ir.load(case.model)  # the importer takes ONNX's preview domains
    result = run_pass(ExpandPreview(), graph)
    assert result.stats == {"FlexAttention": 1}
    assert all(not n.domain for n in graph.all_nodes())
    assert not run_pass(ExpandPreview(), graph).modified
    feeds = {v.name: np.asarray(a) for v, a in zip(case.model.graph.input, case.data_sets[0][0], strict=True)}
    got = run_model(lepton_ir.to_onnx(graph), feeds)
    for o, want in zip(case.model.graph.output, case.data_sets[0][1], strict=True):
        np.testing.assert_allclose(got[o.name], np.asarray(want), rtol=1e-4, atol=1e-5)


def test_training_domain_is_imported_and_reported_unsupported() -> None:
    import onnx.backend.test.case.node.adagrad  # noqa: F401 - generates the cases
    from onnx.backend.test.case.node import _NodeTestCases

    from lepton.codegen import unsupported_nodes

    case = next(c for c in _NodeTestCases if c.name == "test_adagrad")
    (bad,) = unsupported_nodes(lepton_ir.load(case.model))
    assert bad.op_type == "Adagrad" and "training" in bad.reason


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_float_mod(dtype: type) -> None:
    t = oh.np_dtype_to_tensor_dtype(np.dtype(dtype))
    m = model([oh.make_node("Mod", ["x", "y"], ["z"], fmod=0)], [vi("x", [12], t), vi("y", [12], t)], [vi("z", [12], t)], opset=13)
    x = np.array([5.5, -5.5, 5.5, -5.5, 3.0, -1.0, 3.0, -1.0, 0.0, -0.0, 7.0, np.inf], dtype=dtype)
    y = np.array([2.0, 2.0, -2.0, -2.0, np.inf, np.inf, -np.inf, -np.inf, 3.0, -3.0, 3.5, 2.0], dtype=dtype)
    graph = lepton_ir.load(m)
    assert run_pass(LOWER, graph).modified and not run_pass(LOWER, graph).modified
    got = run_model(lepton_ir.to_onnx(graph), {"x": x, "y": y})["z"]
    np.testing.assert_array_equal(got, np.mod(x, y))  # ONNX's reference is numpy's mod


# ----- random graphs -------------------------------------------------------------------------------
# tests/strategies.py draws inference Dropouts and float ReduceMax (lower-ops rewrites both), and a
# random graph serves as a Scan body (unroll-scan). It cannot feed the other passes here: its inputs
# have dims >= 1 (fold-empty-inputs), preview-domain ops (expand-preview), LayerNormalization/
# RMSNormalization and non-float32 Elu (expand-misconverted) are never drawn.
# canonicalize-dynamic-shapes (test_real_patterns) and expand-functions (test_expand_functions)
# have their own random-graph tests; lower-recurrent draws its own LSTM/GRU/RNN (test_recurrent).


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(m=onnx_models(max_nodes=24))
def test_lower_ops_preserves_random_graphs(m: onnx.ModelProto) -> None:
    graph = lepton_ir.load(m)
    fired = run_pass(LOWER, graph).stats
    event("lower-ops fired" if fired else "lower-ops found nothing")
    assert_pass_preserves(m, LOWER, random_inputs(m))


@st.composite
def scans_of_random_bodies(draw: st.DrawFn) -> onnx.ModelProto:
    """A Scan whose body is a random graph: every body input is a scan input (its slice along a drawn
    axis and direction of an outer input), every body output a scan output (a drawn axis and direction)."""
    inner = draw(onnx_models(max_nodes=8))
    length = draw(st.integers(1, 3))
    body = onnx.GraphProto()
    body.CopyFrom(inner.graph)
    body.name = "body"
    ins, outs, in_axes, out_axes = [], [], [], []
    for k, v in enumerate(body.input):
        dims = [d.dim_value for d in v.type.tensor_type.shape.dim]
        a = draw(st.integers(0, len(dims)))
        in_axes.append(a)
        ins.append(oh.make_tensor_value_info(f"seq{k}", v.type.tensor_type.elem_type, [*dims[:a], length, *dims[a:]]))
    for k, v in enumerate(body.output):
        dims = [d.dim_value for d in v.type.tensor_type.shape.dim]
        a = draw(st.integers(0, len(dims)))
        out_axes.append(a)
        outs.append(oh.make_tensor_value_info(f"stacked{k}", v.type.tensor_type.elem_type, [*dims[:a], length, *dims[a:]]))
    scan = oh.make_node(
        "Scan", [v.name for v in ins], [v.name for v in outs], name="scan", body=body, num_scan_inputs=len(ins),
        scan_input_axes=in_axes, scan_output_axes=out_axes,
        scan_input_directions=draw(st.lists(st.integers(0, 1), min_size=len(ins), max_size=len(ins))),
        scan_output_directions=draw(st.lists(st.integers(0, 1), min_size=len(outs), max_size=len(outs))),
    )
    graph = oh.make_graph([scan], "scan_of_random_body", ins, outs)
    return oh.make_model(graph, opset_imports=list(inner.opset_import), ir_version=inner.ir_version)


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(m=scans_of_random_bodies())
def test_unroll_scan_preserves_random_bodies(m: onnx.ModelProto) -> None:
    graph = assert_pass_preserves(m, UnrollScan(), random_inputs(m))
    assert "Scan" not in ops(graph)
    assert [v.name for v in graph.outputs] == [o.name for o in m.graph.output]


# ----- the lowering stage (lepton.codegen.lowering.with_lowering) ------------------------------------
# Regression (3aad672): the target pipelines end in one-shot transformer fusions and a short cleanup tail
# (merge-reshapes, eliminate-noop, CSE, DCE). compile appended the lowering passes to the pipeline, so they
# joined that tail only: expanded function bodies reached TVM with their shape computations, Constants and
# empty-set reductions unfolded (9 conformance cases). They must run to a fixed point with the folding passes.

ONE_SHOT_TAIL = ("fold-constants,fold-shapes,infer-shapes,eliminate-dead-code,fuse-gelu,"
                 "merge-reshapes,eliminate-noop,eliminate-dead-code")


def test_with_lowering_runs_the_lowering_with_the_pipelines_folding_passes() -> None:
    from lepton.codegen.lowering import lowering_passes, with_lowering
    from passes.manager import stages

    lowering = [p.name for p in lowering_passes()]
    plan = [[p.name for p in st] for st in stages(with_lowering(parse_pipeline(ONE_SHOT_TAIL)))]
    assert plan[:2] == [["fold-constants", "fold-shapes", "infer-shapes", "eliminate-dead-code"], ["fuse-gelu"]]
    assert plan[2] == ["merge-reshapes", "eliminate-noop", "eliminate-dead-code", "fold-constants", "fold-shapes",
                       "infer-shapes", *lowering]  # each repeatable pass once; the one-shot fuse-gelu not again
    # a pipeline of repeatable passes: one stage, unchanged from appending the lowering passes
    cleanup = "fold-constants,fold-shapes,infer-shapes,eliminate-dead-code"
    assert [[p.name for p in st] for st in stages(with_lowering(parse_pipeline(cleanup)))] == \
        [[*cleanup.split(","), *lowering]]
    # a pipeline ending in a one-shot pass: the lowering stage is its repeatable passes and the lowering passes
    ends = [[p.name for p in st] for st in stages(with_lowering(parse_pipeline("fold-constants,fuse-gelu")))]
    assert ends == [["fold-constants"], ["fuse-gelu"], ["fold-constants", *lowering]]


def _center_crop_pad() -> onnx.ModelProto:
    # CenterCropPad's function body computes the crop and pad from Shape(x) (Max/Sub/Div of shape values)
    return model([oh.make_node("CenterCropPad", ["x", "s"], ["y"])], [vi("x", [3, 4])], [vi("y", [2, 5])], opset=18,
                 initializers=[const("s", np.array([2, 5], np.int64))])


def _celu_bfloat16() -> onnx.ModelProto:
    # Celu's body holds a Constant (alpha) of the input's type, which TVM cannot read as a bfloat16 Constant node
    m = model([oh.make_node("Celu", ["x"], ["y"], alpha=2.0)], [vi("x", [3], T.BFLOAT16)], [vi("y", [3], T.BFLOAT16)],
              opset=28)  # Celu takes bfloat16 from opset 28
    m.ir_version = onnx.IR_VERSION
    return m


def _reduce_max_empty() -> onnx.ModelProto:
    # an empty-set reduction: TVM's kernel leaves the output unset; fold-empty-inputs + fold-constants give -inf
    return model([oh.make_node("ReduceMax", ["x", "axes"], ["y"], keepdims=1)], [vi("x", [2, 0, 4])],
                 [vi("y", [2, 1, 4])], opset=18, initializers=[const("axes", np.array([1], np.int64))])


@pytest.mark.parametrize("make", [_center_crop_pad, _celu_bfloat16, _reduce_max_empty], ids=lambda f: f.__name__[1:])
@pytest.mark.parametrize("pipeline", [None, ONE_SHOT_TAIL], ids=["x86", "one-shot-tail"])
def test_lowered_bodies_are_folded_after_one_shot_passes(make: Callable[[], onnx.ModelProto], pipeline: str | None) -> None:
    import targets
    from lepton.codegen import to_relax
    from lepton.compiler import optimize_for

    m = make()
    graph = lepton_ir.load(m)
    optimize_for(graph, targets.resolve("x86"), pipeline)
    left = ops(graph)
    assert not {"Shape", "Max", "ReduceMax"} & set(left), left  # the crop's shape values, the empty reduction
    constants = [n.outputs[0] for n in graph.all_nodes() if n.op_type == "Constant"]
    assert all(v.dtype != T.BFLOAT16 for v in constants), left  # folded into an initializer
    to_relax(graph)  # TVM's frontend takes it (it raised ConversionError on the unfolded bodies)
    if make is _reduce_max_empty:
        y = lepton_ir.constants.constant_value(graph, graph.outputs[0])
        assert y is not None and y.shape == (2, 1, 4) and np.all(y == -np.inf)
    elif make is _center_crop_pad:
        x = floats(3, 4)
        assert_outputs_close(run_model(m, {"x": x}), run_model(lepton_ir.to_onnx(graph), {"x": x}))
