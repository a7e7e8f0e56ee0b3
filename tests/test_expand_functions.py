"""Tests for expand-functions: every ONNX function op onnxruntime can run, options, edge cases.

The per-op checks take their models and inputs from ONNX's own backend node tests (generated
in memory, one module per op), run the original in onnxruntime, expand every function op
(nested ones included) and compare (DESIGN.md §6 tolerances).
"""

from __future__ import annotations

import functools
import importlib
import pkgutil
import warnings
from collections.abc import Sequence

import numpy as np
import onnx
import onnx.backend.test.case.node as node_cases
import onnx.helper as oh
import onnx.numpy_helper as onh
import pytest
from hypothesis import HealthCheck, given, settings
from onnx import TensorProto as T
from onnx.backend.test.case.test_case import TestCase
from passutil import assert_outputs_close, assert_pass_preserves, run_pass
from strategies import onnx_models, random_inputs

import lepton_ir
from lepton_ir import Graph, LeptonError, Node, Value
from passes import REGISTRY, parse_pipeline
from passes.cleanup.fold import RANDOM_OPS
from passes.lowering.expand import ExpandFunctions, _since, function_schema
from passes.ort import run_model

EXPAND = ExpandFunctions()
ORT_MAX_OPSET = 26  # onnxruntime 1.31 refuses newer ai.onnx opsets
CASES_PER_OP = 8

FUNCTION_OPS = sorted({
    s.name for s in onnx.defs.get_all_schemas_with_history()
    if s.domain == "" and (s.has_function or s.has_context_dependent_function)
})

# Ops whose expansion must be checked against onnxruntime (each has a runnable backend case).
MUST_VERIFY = frozenset({
    "AffineGrid", "Attention", "CastLike", "Celu", "CenterCropPad", "Clip", "DynamicQuantizeLinear", "Elu", "Gelu",
    "GreaterOrEqual", "GroupNormalization", "HammingWindow", "HannWindow", "BlackmanWindow", "HardSigmoid",
    "HardSwish", "LayerNormalization", "LeakyRelu", "LessOrEqual", "LogSoftmax", "Mish", "NegativeLogLikelihoodLoss",
    "PRelu", "RMSNormalization", "Range", "ReduceL1", "ReduceL2", "ReduceLogSum", "ReduceLogSumExp",
    "ReduceSumSquare", "Relu", "RotaryEmbedding", "Selu", "Shrink", "Softmax", "SoftmaxCrossEntropyLoss",
    "Softplus", "Softsign", "Swish", "ThresholdedRelu",
})


# ----- model building helpers -------------------------------------------------------------


def vi(name: str, shape: Sequence[int | str], dtype: int = T.FLOAT) -> onnx.ValueInfoProto:
    return oh.make_tensor_value_info(name, dtype, shape)


def model(nodes: list[onnx.NodeProto], inputs: list[onnx.ValueInfoProto], outputs: list[onnx.ValueInfoProto],
          opset: int = 22) -> onnx.ModelProto:
    g = oh.make_graph(nodes, "g", inputs, outputs)
    return oh.make_model(g, opset_imports=[oh.make_opsetid("", opset)], ir_version=10)


def floats(*shape: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal(shape).astype(np.float32)


def ops(graph: Graph) -> list[str]:
    return [n.op_type for n in graph.all_nodes()]


def expandable_left(graph: Graph) -> list[str]:
    """Nodes that still have a function body at the model's opset."""
    opset = graph.opset_imports[""]
    return [n.op_type for n in graph.all_nodes() if not n.domain and function_schema(n.op_type, opset) is not None]


# ----- every function op, on ONNX's backend test cases ----------------------------------


@functools.cache
def _modules() -> dict[str, str]:
    """Backend test module per op name (module names are op names, lower case, maybe with '_')."""
    by_key = {m.name.replace("_", ""): m.name for m in pkgutil.iter_modules(node_cases.__path__)}
    by_key["range"] = by_key["rangeop"]
    return {op: by_key[op.lower()] for op in FUNCTION_OPS if op.lower() in by_key}


def _cases(op: str) -> list[TestCase]:
    """Single-node backend cases of `op` (importing the module generates them), spread over the list."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        importlib.import_module(f"{node_cases.__name__}.{_modules()[op]}")
    cases = [c for c in node_cases._NodeTestCases
             if c.model is not None and len(c.model.graph.node) == 1 and c.model.graph.node[0].op_type == op]
    step = max(1, len(cases) // CASES_PER_OP)
    return cases[::step][:CASES_PER_OP]


def _runnable(case: TestCase) -> tuple[onnx.ModelProto, dict[str, np.ndarray]] | str:
    """The case's model at an opset onnxruntime takes, with its feeds; or why it cannot be checked."""
    m = onnx.ModelProto()
    m.CopyFrom(case.model)
    op = m.graph.node[0].op_type
    imp = next(i for i in m.opset_import if i.domain in ("", "ai.onnx"))
    opset = min(imp.version, ORT_MAX_OPSET)
    if _since(op, opset) < 0:
        return f"the op does not exist at opset {opset} (onnxruntime's newest)"
    if function_schema(op, opset) is None:  # the same op at a newer opset, where it has a body?
        newer = [v for v in range(opset + 1, ORT_MAX_OPSET + 1) if _since(op, v) == _since(op, opset)]
        opset = next((v for v in newer if function_schema(op, v) is not None), opset)
    if opset != imp.version:
        imp.version, m.ir_version = opset, 10
    if function_schema(op, opset) is None:
        return f"no function body at opset {opset}"
    if op in RANDOM_OPS:
        return "random op: outputs cannot be compared"
    if any(v.type.WhichOneof("value") != "tensor_type" for v in m.graph.input):
        return "non-tensor inputs (Lepton compiles tensors only)"
    arrays = case.data_sets[0][0]  # type: ignore[index]
    feeds = {v.name: onh.to_array(a) if isinstance(a, onnx.TensorProto) else np.asarray(a)
             for v, a in zip(m.graph.input, arrays, strict=True)}
    return m, feeds


@pytest.mark.parametrize("op", FUNCTION_OPS)
def test_function_op_matches_onnxruntime(op: str) -> None:
    if op not in _modules():
        pytest.skip("ONNX has no backend test module for this op")
    reasons: dict[str, str] = {}
    checked = 0
    for case in _cases(op):
        prepared = _runnable(case)
        if isinstance(prepared, str):
            reasons[case.name] = prepared
            continue
        m, feeds = prepared
        try:
            expected = run_model(m, feeds)
        except Exception as e:  # noqa: BLE001 - onnxruntime's errors are bare RuntimeErrors
            reasons[case.name] = f"onnxruntime: {str(e).splitlines()[0][:120]}"
            continue
        try:
            graph = lepton_ir.load(m)
        except LeptonError as e:
            reasons[case.name] = f"Lepton cannot import it: {e}"
            continue
        result = run_pass(EXPAND, graph)
        assert result.stats.get(op) == 1, (case.name, dict(result.stats))
        assert op not in ops(graph), case.name
        assert_outputs_close(expected, run_model(lepton_ir.to_onnx(graph), feeds))
        assert not run_pass(EXPAND, graph).modified, case.name
        checked += 1
    if not checked:
        assert op not in MUST_VERIFY, f"{op}: no case could be checked: {reasons}"
        pytest.skip("; ".join(f"{k}: {v}" for k, v in reasons.items())[:500])


def test_enough_ops_are_verified() -> None:
    assert len(MUST_VERIFY) >= 20
    assert MUST_VERIFY <= set(FUNCTION_OPS)


# ----- options --------------------------------------------------------------------------------


def _three_ops() -> onnx.ModelProto:
    nodes = [
        oh.make_node("Celu", ["x"], ["a"], alpha=2.0),
        oh.make_node("HardSwish", ["a"], ["b"]),
        oh.make_node("Softsign", ["b"], ["y"]),
    ]
    return model(nodes, [vi("x", [2, 3])], [vi("y", [2, 3])])


def test_keep_is_honored() -> None:
    m = _three_ops()
    graph = assert_pass_preserves(m, ExpandFunctions(keep=frozenset({"Celu", "HardSigmoid"})), {"x": floats(2, 3)})
    left = ops(graph)
    assert "Celu" in left and "HardSigmoid" in left
    assert "HardSwish" not in left and "Softsign" not in left


def test_ops_option_from_pipeline_text() -> None:
    (p,) = parse_pipeline("expand-functions{ops=[Celu,HardSwish]}")
    assert isinstance(p, ExpandFunctions) and p.ops == frozenset({"Celu", "HardSwish"}) and p.keep == frozenset()
    assert p.spec() == "expand-functions{ops=[Celu,HardSwish]}"
    assert parse_pipeline(p.spec()) == [p]
    assert parse_pipeline("expand-functions{keep=Elu}") == [ExpandFunctions(keep=frozenset({"Elu"}))]
    assert REGISTRY["expand-functions"] is ExpandFunctions
    graph = assert_pass_preserves(_three_ops(), p, {"x": floats(2, 3)})
    left = ops(graph)
    assert "Softsign" in left  # not selected
    assert "Elu" in left and "HardSigmoid" in left  # bodies of selected ops: not selected either
    assert "Celu" not in left and "HardSwish" not in left


def test_stats_count_per_op_and_idempotent() -> None:
    nodes = [oh.make_node("Softsign", ["x"], ["a"]), oh.make_node("Softsign", ["a"], ["y"])]
    graph = lepton_ir.load(model(nodes, [vi("x", [4])], [vi("y", [4])]))
    result = run_pass(ExpandFunctions(ops=frozenset({"Softsign"})), graph)
    assert result.modified and result.stats == {"Softsign": 2}
    again = run_pass(ExpandFunctions(ops=frozenset({"Softsign"})), graph)
    assert not again.modified and again.stats == {}


def test_graph_without_function_ops_is_untouched() -> None:
    m = model([oh.make_node("Abs", ["x"], ["y"])], [vi("x", [3])], [vi("y", [3])])
    graph = lepton_ir.load(m)
    assert run_pass(EXPAND, graph).stats == {}


# ----- binding: attributes, optional inputs, outputs ---------------------------------------


def _constant_floats(graph: Graph) -> list[float]:
    out = []
    for n in graph.all_nodes():
        if n.op_type == "Constant":
            a = n.attributes.get("value_float") or n.attributes.get("value")
            if a is not None:
                out.append(float(a.value if isinstance(a.value, float) else np.asarray(a.value.numpy()).reshape(-1)[0]))
    return out


@pytest.mark.parametrize("alpha", [None, 0.25])
def test_attribute_default_or_explicit(alpha: float | None) -> None:
    attrs = {} if alpha is None else {"alpha": alpha}
    m = model([oh.make_node("HardSigmoid", ["x"], ["y"], **attrs)], [vi("x", [2, 5])], [vi("y", [2, 5])], opset=18)
    x = np.linspace(-6, 6, 10, dtype=np.float32).reshape(2, 5)
    graph = assert_pass_preserves(m, ExpandFunctions(ops=frozenset({"HardSigmoid"})), {"x": x})
    expected_alpha = 0.2 if alpha is None else alpha  # the schema default, else the node's
    assert any(abs(c - expected_alpha) < 1e-7 for c in _constant_floats(graph)), _constant_floats(graph)


@pytest.mark.parametrize("inputs", [["x"], ["x", "", "hi"], ["x", "lo"]], ids=["no-bounds", "max-only", "min-only"])
def test_optional_inputs_omitted(inputs: list[str]) -> None:
    nodes = [oh.make_node("Clip", inputs, ["y"])]
    ins = [vi("x", [3, 4])] + [vi(n, []) for n in inputs[1:] if n]
    feeds = {"x": floats(3, 4), "lo": np.array(-0.5, np.float32), "hi": np.array(0.3, np.float32)}
    m = model(nodes, ins, [vi("y", [3, 4])], opset=13)
    graph = assert_pass_preserves(m, EXPAND, {k: v for k, v in feeds.items() if k in inputs})
    assert "Clip" not in ops(graph)
    for n in graph.all_nodes():
        assert all(v is not None for v in n.inputs), n  # omitted inputs are not read by the body


def test_omitted_optional_input_of_a_loss() -> None:
    nodes = [oh.make_node("NegativeLogLikelihoodLoss", ["x", "t", ""], ["y"], reduction="mean", ignore_index=1)]
    m = model(nodes, [vi("x", [3, 5]), vi("t", [3], T.INT64)], [vi("y", [])], opset=22)
    feeds = {"x": floats(3, 5), "t": np.array([0, 1, 4], np.int64)}
    graph = assert_pass_preserves(m, EXPAND, feeds)
    assert "NegativeLogLikelihoodLoss" not in ops(graph)


def test_output_names_and_types_preserved() -> None:
    nodes = [
        oh.make_node("Softsign", ["x"], ["mid"]),  # an inner value with readers
        oh.make_node("Relu", ["mid"], ["r"]),
        oh.make_node("Mish", ["r"], ["y"]),  # a graph output
    ]
    m = model(nodes, [vi("x", ["N", 3])], [vi("y", ["N", 3]), vi("mid", ["N", 3])])
    graph = assert_pass_preserves(m, ExpandFunctions(ops=frozenset({"Softsign", "Mish"})), {"x": floats(2, 3)})
    assert [v.name for v in graph.outputs] == ["y", "mid"]
    assert all(v.dtype == T.FLOAT and v.shape == ("N", 3) for v in graph.outputs)
    relu = next(n for n in graph if n.op_type == "Relu")
    assert relu.inputs[0] is graph.outputs[1]


def test_secondary_output_omitted_or_present() -> None:
    for outs in (["loss"], ["loss", "logp"]):
        node = oh.make_node("SoftmaxCrossEntropyLoss", ["x", "t"], outs, reduction="sum")
        m = model([node], [vi("x", [4, 3]), vi("t", [4], T.INT64)], [vi(o, []) if o == "loss" else vi(o, [4, 3]) for o in outs])
        graph = assert_pass_preserves(m, EXPAND, {"x": floats(4, 3), "t": np.array([0, 2, 1, 2], np.int64)})
        assert [v.name for v in graph.outputs] == outs


def test_unknown_input_types() -> None:
    """A context-dependent body built from an unknown type is skipped and counted; a plain body
    needs no types (its nested CastLike does, and stays)."""
    nodes = [oh.make_node("CastLike", ["x", "t"], ["y"]), oh.make_node("Softsign", ["t"], ["z"])]
    m = model(nodes, [vi("x", [3]), vi("t", [1], T.DOUBLE)], [vi("y", [3], T.DOUBLE), vi("z", [1], T.DOUBLE)])
    graph = lepton_ir.load(m)
    for v in [graph.inputs[1], *(o for n in graph for o in n.outputs)]:
        v.dtype, v.shape = None, None
    result = run_pass(EXPAND, graph)
    assert result.stats == {"Softsign": 1, "skipped_unknown_types": 2}
    assert ops(graph).count("CastLike") == 2
    assert not run_pass(EXPAND, graph).modified


def test_inconsistent_nested_body_is_skipped() -> None:
    """ONNX's AffineGrid body calls Range with 1-element tensors; Range's own body (a Loop) is
    inconsistent with those, so that nested Range stays while AffineGrid is expanded."""
    node = oh.make_node("AffineGrid", ["theta", "size"], ["grid"])
    m = model([node], [vi("theta", [2, 2, 3]), vi("size", [4], T.INT64)], [vi("grid", [2, 3, 4, 2])], opset=20)
    feeds = {"theta": floats(2, 2, 3), "size": np.array([2, 1, 3, 4], np.int64)}
    expected = run_model(m, feeds)
    graph = lepton_ir.load(m)
    result = run_pass(EXPAND, graph)
    assert result.stats["AffineGrid"] == 1 and result.stats["skipped_invalid_body"] >= 1
    assert "Range" in ops(graph)
    assert_outputs_close(expected, run_model(lepton_ir.to_onnx(graph), feeds))


@pytest.mark.parametrize("opset", [13, 18])
def test_mean_variance_normalization_default_axes(opset: int) -> None:
    """ONNX's own inference of MVN's body ignores the schema default of `axes` and fails, so
    Lepton cannot import such a model; built directly in the IR, the expansion uses the default."""
    x = Value("x", T.FLOAT, (2, 3, 4, 5))
    node = Node("", "MeanVarianceNormalization", [x], outputs=[Value("y", T.FLOAT, (2, 3, 4, 5))])
    graph = Graph(inputs=[x], outputs=list(node.outputs), nodes=[node], opset_imports={"": opset})
    feeds = {"x": floats(2, 3, 4, 5)}
    expected = run_model(lepton_ir.to_onnx(graph), feeds)
    assert run_pass(EXPAND, graph).stats["MeanVarianceNormalization"] == 1
    assert_outputs_close(expected, run_model(lepton_ir.to_onnx(graph), feeds))


# ----- nesting, subgraphs, opsets ---------------------------------------------------------------


def test_recursive_expansion() -> None:
    m = model([oh.make_node("Celu", ["x"], ["y"], alpha=0.5)], [vi("x", [2, 3])], [vi("y", [2, 3])], opset=22)
    graph = assert_pass_preserves(m, ExpandFunctions(ops=frozenset({"Celu", "Elu", "CastLike"})), {"x": floats(2, 3)})
    assert not {"Celu", "Elu", "CastLike"} & set(ops(graph))
    graph = assert_pass_preserves(m, EXPAND, {"x": floats(2, 3)})
    assert expandable_left(graph) == []


def test_node_in_if_branch() -> None:
    then_g = oh.make_graph([oh.make_node("Celu", ["x"], ["t"])], "then", [], [vi("t", [2, 3])])
    else_g = oh.make_graph([oh.make_node("Softsign", ["s"], ["e"])], "else", [], [vi("e", [2, 3])])
    nodes = [
        oh.make_node("Softsign", ["x"], ["s"]),
        oh.make_node("If", ["c"], ["y"], then_branch=then_g, else_branch=else_g),
    ]
    m = model(nodes, [vi("x", [2, 3]), vi("c", [], T.BOOL)], [vi("y", [2, 3])], opset=18)
    for c in (True, False):
        graph = assert_pass_preserves(m, EXPAND, {"x": floats(2, 3), "c": np.array(c)})
        assert "Celu" not in ops(graph) and "Softsign" not in ops(graph)


@pytest.mark.parametrize("opset", [18, 20, 22])
def test_function_from_an_older_opset_is_converted(opset: int) -> None:
    """Elu's body is written for opset 18; at 20 and 22 some of its ops (CastLike) are newer."""
    m = model([oh.make_node("Elu", ["x"], ["y"], alpha=0.7)], [vi("x", [3, 4])], [vi("y", [3, 4])], opset=opset)
    graph = assert_pass_preserves(m, ExpandFunctions(ops=frozenset({"Elu"})), {"x": floats(3, 4)})
    lepton_ir.verify(graph)  # every body node is valid at the model's opset
    assert "Elu" not in ops(graph)


def test_no_body_below_the_function_opset() -> None:
    """Elu has a body from opset 18 on; at 17 it is not a function op."""
    m = model([oh.make_node("Elu", ["x"], ["y"])], [vi("x", [3])], [vi("y", [3])], opset=17)
    graph = lepton_ir.load(m)
    assert run_pass(EXPAND, graph).stats == {}


# ----- random graphs -------------------------------------------------------------------------------


@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(m=onnx_models())
def test_property_preserves_outputs(m: onnx.ModelProto) -> None:
    graph = assert_pass_preserves(m, EXPAND, random_inputs(m))
    assert expandable_left(graph) == []
