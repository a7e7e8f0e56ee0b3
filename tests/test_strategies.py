"""Checks of the random-model generator itself (tests/strategies.py)."""

from __future__ import annotations

import collections

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st
from onnx import helper, numpy_helper

from strategies import OP_TYPES, onnx_models, random_inputs  # tests/ is on sys.path (like passutil)

# check_model(full_check=True) plus a run take a few ms; shrinking a failure may take longer.
_SETTINGS = dict(deadline=None, suppress_health_check=[HealthCheck.too_slow])


def _session(model: onnx.ModelProto, level: ort.GraphOptimizationLevel | None = None
             ) -> ort.InferenceSession:
    so = ort.SessionOptions()
    so.log_severity_level = 3  # unused initializers are deliberate; don't warn about them
    so.intra_op_num_threads = 1
    if level is not None:
        so.graph_optimization_level = level
    return ort.InferenceSession(model.SerializeToString(), so, providers=["CPUExecutionProvider"])


def _np_dtype(elem_type: int) -> np.dtype:
    return np.dtype(helper.tensor_dtype_to_np_dtype(elem_type))


def _dims(vi: onnx.ValueInfoProto) -> tuple[int, ...]:
    dims = vi.type.tensor_type.shape.dim
    assert all(d.HasField("dim_value") for d in dims), f"{vi.name}: not a static shape"
    return tuple(d.dim_value for d in dims)


def _constants(model: onnx.ModelProto) -> dict[str, np.ndarray]:
    """Initializers and Constant-node outputs, by value name."""
    consts = {t.name: numpy_helper.to_array(t) for t in model.graph.initializer}
    for node in model.graph.node:
        if node.op_type != "Constant":
            continue
        (attr,) = node.attribute
        value = helper.get_attribute_value(attr)
        if attr.name == "value":
            arr = numpy_helper.to_array(value)
        elif attr.name in ("value_float", "value_floats"):
            arr = np.array(value, dtype=np.float32)
        else:
            arr = np.array(value, dtype=np.int64)
        consts[node.output[0]] = arr
    return consts


def _has_nonfinite_source(model: onnx.ModelProto) -> bool:
    names = [n.name for n in model.graph.node] + [t.name for t in model.graph.initializer]
    return any(name.startswith("nonfinite_") for name in names)


def _check_structure(model: onnx.ModelProto) -> None:
    g = model.graph
    node_names = [n.name for n in g.node]
    assert all(node_names), "empty node name"
    assert len(set(node_names)) == len(node_names), "duplicate node names"
    produced = [o for n in g.node for o in n.output if o]
    defined = [i.name for i in g.input] + [t.name for t in g.initializer] + produced
    assert len(set(defined)) == len(defined), "a value name is defined twice"
    out_names = [o.name for o in g.output]
    assert 1 <= len(out_names) <= 3 and len(set(out_names)) == len(out_names)
    assert not set(out_names) & ({i.name for i in g.input} | {t.name for t in g.initializer})
    assert 1 <= len(g.input) <= 3
    for vi in g.input:
        shape = _dims(vi)
        assert 1 <= len(shape) <= 4 and all(1 <= d <= 6 for d in shape), (vi.name, shape)
    assert {n.op_type for n in g.node} <= OP_TYPES
    assert all(n.domain in ("", "ai.onnx") for n in g.node)


@settings(max_examples=60, **_SETTINGS)
@given(onnx_models())
def test_generated_models_are_valid_and_run(model: onnx.ModelProto) -> None:
    onnx.checker.check_model(model, full_check=True)
    _check_structure(model)
    (opset,) = [o.version for o in model.opset_import if o.domain in ("", "ai.onnx")]
    assert 13 <= opset <= 21

    feeds = random_inputs(model, seed=0)
    sess = _session(model)
    outs = sess.run(None, feeds)
    again = sess.run(None, feeds)
    nonfinite_ok = _has_nonfinite_source(model)
    for vi, got, got2 in zip(model.graph.output, outs, again, strict=True):
        assert got.dtype == _np_dtype(vi.type.tensor_type.elem_type), vi.name
        assert got.shape == _dims(vi), vi.name
        np.testing.assert_array_equal(got, got2)  # deterministic, NaN positions included
        if got.dtype.kind == "f" and not np.isfinite(got).all():
            assert nonfinite_ok, f"{vi.name}: NaN/Inf without a deliberate nonfinite_ constant"


@settings(max_examples=30, **_SETTINGS)
@given(onnx_models(value_info=True))
def test_value_info_matches_shape_inference_and_runtime(model: onnx.ModelProto) -> None:
    """The generator's own dtype/shape bookkeeping agrees with ONNX and with onnxruntime."""
    onnx.checker.check_model(model, full_check=True)
    onnx.shape_inference.infer_shapes(model, check_type=True, strict_mode=True, data_prop=True)
    # Expose every intermediate as an output and compare with what onnxruntime computes.
    probe = onnx.ModelProto()
    probe.CopyFrom(model)
    probe.graph.output.extend(probe.graph.value_info)
    outs = _session(probe).run(None, random_inputs(probe))
    for vi, got in zip(probe.graph.output, outs, strict=True):
        assert got.dtype == _np_dtype(vi.type.tensor_type.elem_type), vi.name
        assert got.shape == _dims(vi), vi.name
        assert got.size <= 4096, vi.name


@settings(max_examples=40, **_SETTINGS)
@given(onnx_models())
def test_outputs_are_stable_under_graph_rewrites(model: onnx.ModelProto) -> None:
    """onnxruntime with every graph optimization (constant folding, fusions) and with none
    agree within DESIGN.md section 6 tolerances: the models are safe for differential tests."""
    feeds = random_inputs(model, seed=1)
    plain = _session(model, ort.GraphOptimizationLevel.ORT_DISABLE_ALL).run(None, feeds)
    rewritten = _session(model, ort.GraphOptimizationLevel.ORT_ENABLE_ALL).run(None, feeds)
    for vi, exp, got in zip(model.graph.output, plain, rewritten, strict=True):
        if exp.dtype.kind == "f":
            np.testing.assert_allclose(got, exp, rtol=1e-4, atol=1e-5, equal_nan=True,
                                       err_msg=vi.name)
        else:
            np.testing.assert_array_equal(got, exp, err_msg=vi.name)


@settings(max_examples=20, **_SETTINGS)
@given(st.data())
def test_opset_is_drawn_from_the_range(data: st.DataObject) -> None:
    opset = data.draw(st.integers(13, 21), label="opset")
    model = data.draw(onnx_models(max_nodes=6, opsets=(opset, opset)), label="model")
    assert [(o.domain, o.version) for o in model.opset_import] == [("", opset)]
    onnx.checker.check_model(model, full_check=True)
    _session(model).run(None, random_inputs(model))


def test_opset_range_is_validated() -> None:
    with pytest.raises(ValueError):
        onnx_models(opsets=(11, 13))
    with pytest.raises(ValueError):
        onnx_models(opsets=(13, 99))
    with pytest.raises(ValueError):
        onnx_models(max_nodes=0)


def test_random_inputs_dtypes_shapes_and_determinism() -> None:
    f32 = helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, [2, 3])
    i64 = helper.make_tensor_value_info("i", onnx.TensorProto.INT64, [4])
    flag = helper.make_tensor_value_info("b", onnx.TensorProto.BOOL, [1])
    shadowed = helper.make_tensor_value_info("w", onnx.TensorProto.FLOAT, [3])
    graph = helper.make_graph(
        [helper.make_node("Identity", ["x"], ["y"])], "g", [f32, i64, flag, shadowed],
        [helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, [2, 3])],
        initializer=[numpy_helper.from_array(np.ones(3, np.float32), "w")],
    )
    model = helper.make_model(graph)
    feeds = random_inputs(model, seed=3)
    assert sorted(feeds) == ["b", "i", "x"]  # an input backed by an initializer gets no feed
    assert feeds["x"].dtype == np.float32 and feeds["x"].shape == (2, 3)
    assert feeds["i"].dtype == np.int64 and feeds["i"].shape == (4,)
    assert feeds["b"].dtype == np.bool_ and feeds["b"].shape == (1,)
    assert np.all(np.abs(feeds["x"]) <= 3)
    again = random_inputs(model, seed=3)
    assert all(np.array_equal(feeds[k], again[k]) for k in feeds)
    assert not np.array_equal(feeds["x"], random_inputs(model, seed=4)["x"])


# ---- coverage: op types and cleanup patterns, over a fixed (derandomized) set of draws ----

def _patterns(model: onnx.ModelProto) -> set[str]:
    """Which of the generator's advertised patterns occur in one model."""
    g = model.graph
    consts = _constants(model)
    types = {vi.name: vi for vi in list(g.input) + list(g.value_info) + list(g.output)}
    producer = {o: n for n in g.node for o in n.output}
    users = collections.Counter(i for n in g.node for i in n.input if i)
    outputs = {o.name for o in g.output}
    found: set[str] = set()

    def shape(name):
        return _dims(types[name]) if name in types else None

    def op_of(name):
        return producer[name].op_type if name in producer else None

    seen_nodes = set()
    for n in g.node:
        op = n.op_type
        attrs = {a.name: helper.get_attribute_value(a) for a in n.attribute}
        if op in ("Identity", "Dropout"):
            found.add(op.lower())
        if op == "Reshape" and shape(n.input[0]) == shape(n.output[0]):
            found.add("reshape_same_shape")
        if op == "Reshape" and op_of(n.input[0]) == "Reshape":
            found.add("consecutive_reshapes")
        if op == "Reshape" and op_of(n.input[1]) == "Concat" and any(
                op_of(i) in ("Unsqueeze", "Gather") for i in producer[n.input[1]].input):
            found.add("shape_gather_concat_reshape_chain")
        if op == "Transpose" and "perm" in attrs and list(attrs["perm"]) == sorted(attrs["perm"]):
            found.add("identity_transpose")
        if op == "Transpose" and op_of(n.input[0]) == "Transpose":
            found.add("consecutive_transposes")
        if op == "Cast" and n.input[0] in types and \
                types[n.input[0]].type.tensor_type.elem_type == attrs["to"]:
            found.add("cast_to_same_type")
        if op == "Cast" and attrs["to"] in (onnx.TensorProto.INT32, onnx.TensorProto.INT64):
            found.add("cast_to_int")
        if op == "Pad" and not np.any(consts[n.input[1]]):
            found.add("all_zero_pad")
        if op == "Slice" and shape(n.input[0]) == shape(n.output[0]):
            found.add("whole_axis_slice")
        if op in ("Mul", "Add", "Sub", "Div"):
            neutral = 1 if op in ("Mul", "Div") else 0
            for i, other in ((0, 1), (1, 0)):
                c = consts.get(n.input[i])
                is_neutral = c is not None and c.size and np.all(c == neutral)
                if is_neutral and n.input[other] not in consts and (op in ("Mul", "Add") or i == 1):
                    grows = shape(n.output[0]) != shape(n.input[other])
                    found.add(f"{op.lower()}_by_{neutral}" + ("_broadcasting" if grows else ""))
        if op != "Constant" and all(i in consts or not i for i in n.input):
            found.add("constant_only_node")
        if op != "Constant":
            key = (op, tuple(n.input),
                   tuple(sorted(a.SerializeToString(deterministic=True) for a in n.attribute)))
            if key in seen_nodes:
                found.add("duplicate_node")
            seen_nodes.add(key)
        if not any(users[o] or o in outputs for o in n.output if o):
            found.add("dead_node")
        if any(o in outputs and users[o] for o in n.output):
            found.add("output_also_consumed")
    if any(users[t.name] == 0 for t in g.initializer):
        found.add("unused_initializer")
    if any(c.dtype.kind == "f" and not np.isfinite(c).all() for c in consts.values()):
        found.add("nonfinite_literal")
    if _has_nonfinite_source(model):
        found.add("nonfinite_path")
    if g.input[0].type.tensor_type.elem_type == onnx.TensorProto.DOUBLE:
        found.add("float64_graph")
    if len(g.input) > 1:
        found.add("several_inputs")
    if len(g.output) > 1:
        found.add("several_outputs")
    return found


EXPECTED_PATTERNS = {
    "identity", "dropout", "reshape_same_shape", "consecutive_reshapes",
    "shape_gather_concat_reshape_chain", "identity_transpose", "consecutive_transposes",
    "cast_to_same_type", "cast_to_int", "all_zero_pad", "whole_axis_slice", "mul_by_1",
    "mul_by_1_broadcasting", "add_by_0", "add_by_0_broadcasting", "constant_only_node",
    "duplicate_node", "dead_node", "output_also_consumed", "unused_initializer",
    "nonfinite_literal", "nonfinite_path", "float64_graph", "several_inputs",
    "several_outputs",
}


def test_generator_covers_op_types_and_patterns() -> None:
    """500 draws with a fixed seed (derandomize): deterministic, so it cannot flake."""
    ops: collections.Counter[str] = collections.Counter()
    patterns: collections.Counter[str] = collections.Counter()

    @settings(max_examples=500, derandomize=True, database=None, phases=[Phase.generate],
              suppress_health_check=list(HealthCheck), deadline=None)
    @given(onnx_models(value_info=True))
    def collect(model: onnx.ModelProto) -> None:
        ops.update({n.op_type for n in model.graph.node})
        patterns.update(_patterns(model))

    collect()
    assert set(ops) <= OP_TYPES
    assert len(ops) >= 25, sorted(ops)
    assert {"Add", "Sub", "Mul", "Div", "Relu", "Conv", "MatMul", "Gemm", "Reshape",
            "Transpose", "Concat", "Slice", "Cast", "Constant", "Shape", "Gather"} <= set(ops)
    missing = EXPECTED_PATTERNS - set(patterns)
    assert not missing, f"patterns never generated: {sorted(missing)}; seen: {dict(patterns)}"


def test_max_nodes_is_a_soft_budget() -> None:
    @settings(max_examples=40, derandomize=True, database=None, phases=[Phase.generate],
              suppress_health_check=list(HealthCheck), deadline=None)
    @given(onnx_models(max_nodes=3))
    def small(model: onnx.ModelProto) -> None:
        # a step starts only below the budget; the step under way finishes (<= ~20 nodes)
        assert len(model.graph.node) <= 3 + 20

    small()


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(pytest.main([__file__, "-q"]))
