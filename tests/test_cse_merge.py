"""CSE (`eliminate-common-subexpressions`), `merge-transposes` and `merge-reshapes`.

Structural tests assert the rewrite happened (op counts) and onnxruntime outputs are kept;
negative cases assert nothing changed. Property tests run each pass on random models.
"""

from __future__ import annotations

import itertools
import time
from collections.abc import Sequence

import numpy as np
import onnx
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from onnx import TensorProto, helper, numpy_helper
from passutil import assert_outputs_close, assert_pass_preserves, run_pass

import lepton_ir
import passes.cleanup.cse
from lepton_ir import Graph, Node, Value
from passes import PassContext
from passes.cleanup.cse import EliminateCommonSubexpressions
from passes.cleanup.merge import MergeReshapes, MergeTransposes, compose_perms
from passes.ort import run_model

F = TensorProto.FLOAT
CSE = EliminateCommonSubexpressions()
MT = MergeTransposes()
MR = MergeReshapes()


def _model(
    nodes: Sequence[onnx.NodeProto],
    inputs: Sequence[tuple[str, int, Sequence[int | str] | None]],
    outputs: Sequence[str],
    inits: Sequence[onnx.TensorProto] = (),
    *,
    input_inits: Sequence[onnx.TensorProto] = (),
) -> onnx.ModelProto:
    g = helper.make_graph(
        list(nodes),
        "g",
        [helper.make_tensor_value_info(n, t, s) for n, t, s in inputs]
        + [helper.make_tensor_value_info(t.name, t.data_type, list(t.dims)) for t in input_inits],
        [helper.make_empty_tensor_value_info(o) for o in outputs],
        initializer=[*inits, *input_inits],
    )
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)
    m = onnx.shape_inference.infer_shapes(m, strict_mode=True)  # types the outputs
    onnx.checker.check_model(m)
    return m


def _x(*shape: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal(shape).astype(np.float32)


def _count(graph: Graph, op: str) -> int:
    return sum(n.op_type == op for n in graph.all_nodes())


def _unchanged(model: onnx.ModelProto, p: object) -> Graph:
    graph = lepton_ir.load(model)
    assert not run_pass(p, graph).modified  # type: ignore[arg-type]
    return graph


def _const_node(name: str, arr: np.ndarray) -> onnx.NodeProto:
    return helper.make_node("Constant", [], [name], value=numpy_helper.from_array(arr))


# ----- eliminate-common-subexpressions --------------------------------------------------


def test_duplicate_relu_merged() -> None:
    m = _model(
        [helper.make_node("Relu", ["x"], ["a"]), helper.make_node("Relu", ["x"], ["b"]), helper.make_node("Add", ["a", "b"], ["y"])],
        [("x", F, [2, 3])],
        ["y"],
    )
    g = assert_pass_preserves(m, CSE, {"x": _x(2, 3)})
    assert _count(g, "Relu") == 1
    add = next(n for n in g if n.op_type == "Add")
    assert add.inputs[0] is add.inputs[1]


def test_duplicate_matmul_chain_collapses() -> None:
    w = numpy_helper.from_array(_x(3, 4, seed=1), "w")
    nodes = [
        helper.make_node("MatMul", ["x", "w"], ["m1"]),
        helper.make_node("MatMul", ["x", "w"], ["m2"]),
        helper.make_node("Relu", ["m1"], ["r1"]),
        helper.make_node("Relu", ["m2"], ["r2"]),
        helper.make_node("Sub", ["r1", "r2"], ["y"]),
    ]
    m = _model(nodes, [("x", F, [2, 3])], ["y"], [w])
    graph = lepton_ir.load(m)
    res = run_pass(CSE, graph)
    assert res.stats["nodes_merged"] == 2
    assert (_count(graph, "MatMul"), _count(graph, "Relu")) == (1, 1)
    assert_pass_preserves(m, CSE, {"x": _x(2, 3)})


def test_duplicate_shape_merged() -> None:
    nodes = [
        helper.make_node("Shape", ["x"], ["s1"]),
        helper.make_node("Shape", ["x"], ["s2"]),
        helper.make_node("Reshape", ["x", "s1"], ["a"]),
        helper.make_node("Reshape", ["x", "s2"], ["b"]),
        helper.make_node("Add", ["a", "b"], ["y"]),
    ]
    g = assert_pass_preserves(_model(nodes, [("x", F, ["N", 3])], ["y"]), CSE, {"x": _x(4, 3)})
    assert _count(g, "Shape") == 1
    assert _count(g, "Reshape") == 1  # the Reshapes became duplicates once the Shapes merged


def test_not_merged_when_attributes_or_input_order_differ() -> None:
    nodes = [
        helper.make_node("Transpose", ["x"], ["a"], perm=[0, 2, 1]),
        helper.make_node("Transpose", ["x"], ["b"], perm=[1, 0, 2]),
        helper.make_node("Sub", ["z", "w"], ["c"]),
        helper.make_node("Sub", ["w", "z"], ["d"]),
    ]
    _unchanged(_model(nodes, [("x", F, [2, 2, 2]), ("z", F, [2]), ("w", F, [2])], ["a", "b", "c", "d"]), CSE)


def test_random_ops_and_training_dropout_not_merged() -> None:
    true = numpy_helper.from_array(np.array(True), "train")
    nodes = [
        helper.make_node("RandomNormalLike", ["x"], ["a"]),
        helper.make_node("RandomNormalLike", ["x"], ["b"]),
        helper.make_node("RandomUniform", [], ["c"], shape=[2]),
        helper.make_node("RandomUniform", [], ["d"], shape=[2]),
        helper.make_node("Dropout", ["x", "", "train"], ["e"]),
        helper.make_node("Dropout", ["x", "", "train"], ["f"]),
    ]
    _unchanged(_model(nodes, [("x", F, [2])], ["a", "b", "c", "d", "e", "f"], [true]), CSE)


def test_inference_dropout_merged_but_not_when_outputs_omitted_differently() -> None:
    nodes = [
        helper.make_node("Dropout", ["x"], ["a"]),
        helper.make_node("Dropout", ["x"], ["b"]),
        helper.make_node("Add", ["a", "b"], ["y"]),
    ]
    g = assert_pass_preserves(_model(nodes, [("x", F, [2])], ["y"]), CSE, {"x": _x(2)})
    assert _count(g, "Dropout") == 1
    nodes = [
        helper.make_node("Dropout", ["x"], ["a", ""]),
        helper.make_node("Dropout", ["x"], ["b", "mask"]),
        helper.make_node("Add", ["a", "b"], ["y"]),
        helper.make_node("Cast", ["mask"], ["mf"], to=F),
    ]
    _unchanged(_model(nodes, [("x", F, [2])], ["y", "mf"]), CSE)


def test_duplicate_initializers_merged() -> None:
    arr = _x(3, seed=2)
    inits = [numpy_helper.from_array(arr, n) for n in ("w1", "w2", "w3")]
    other = numpy_helper.from_array(arr + 1, "w4")
    nodes = [helper.make_node("Add", ["x", w], [f"y{i}"]) for i, w in enumerate(["w1", "w2", "w3", "w4"])]
    m = _model(nodes, [("x", F, [3])], [f"y{i}" for i in range(4)], [*inits, other])
    g = assert_pass_preserves(m, CSE, {"x": _x(3)})
    assert set(g.initializers) == {"w1", "w4"}
    assert _count(g, "Add") == 4  # all are graph outputs with distinct names: no node merge possible
    assert [n.inputs[1].name for n in g] == ["w1", "w1", "w1", "w4"]  # type: ignore[union-attr]


def test_overridable_initializer_not_merged() -> None:
    # Built by hand: lepton_ir.load currently rejects an initializer that is also a graph input.
    arr = _x(3, seed=2)
    inits = [numpy_helper.from_array(arr, n) for n in ("w1", "w2")]
    nodes = [helper.make_node("Add", ["x", w], [f"y{i}"]) for i, w in enumerate(["w1", "w2"])]
    g = lepton_ir.load(_model(nodes, [("x", F, [3])], ["y0", "y1"], inits))
    g.inputs.append(g.initializers["w2"])
    assert not CSE.run(g, PassContext()).modified
    assert set(g.initializers) == {"w1", "w2"}


def test_duplicate_initializers_then_nodes_merge() -> None:
    arr = _x(3, seed=3)
    inits = [numpy_helper.from_array(arr, n) for n in ("w1", "w2")]
    nodes = [
        helper.make_node("Mul", ["x", "w1"], ["a"]),
        helper.make_node("Mul", ["x", "w2"], ["b"]),
        helper.make_node("Sub", ["a", "b"], ["y"]),
    ]
    g = lepton_ir.load(_model(nodes, [("x", F, [3])], ["y"], inits))
    res = run_pass(CSE, g)
    assert dict(res.stats) == {"nodes_merged": 1, "constants_merged": 1}
    assert list(g.initializers) == ["w1"] and _count(g, "Mul") == 1


def test_duplicate_constant_nodes_merged() -> None:
    arr = _x(2, 3, seed=4)
    nodes = [
        _const_node("c1", arr),
        _const_node("c2", arr.copy()),
        _const_node("c3", arr + 1),
        helper.make_node("Add", ["x", "c1"], ["a"]),
        helper.make_node("Add", ["x", "c2"], ["b"]),
        helper.make_node("Mul", ["a", "b"], ["p"]),
        helper.make_node("Mul", ["p", "c3"], ["y"]),
    ]
    m = _model(nodes, [("x", F, [2, 3])], ["y"])
    g = lepton_ir.load(m)
    res = run_pass(CSE, g)
    assert dict(res.stats) == {"nodes_merged": 1, "constants_merged": 1}
    assert (_count(g, "Constant"), _count(g, "Add")) == (2, 1)
    assert_pass_preserves(m, CSE, {"x": _x(2, 3)})


def _bits(u32: list[int]) -> np.ndarray:
    return np.array(u32, dtype=np.uint32).view(np.float32)


def test_nan_constants_with_equal_bits_merged_signed_zeros_not() -> None:
    nan = _bits([0x7FC00001, 0x3F800000])
    nan_other_payload = _bits([0x7FC00002, 0x3F800000])
    nodes = [
        _const_node("n1", nan),
        _const_node("n2", nan.copy()),
        _const_node("n3", nan_other_payload),
        _const_node("z1", np.array([0.0], np.float32)),
        _const_node("z2", np.array([-0.0], np.float32)),
        helper.make_node("Add", ["x", "n1"], ["a"]),
        helper.make_node("Add", ["x", "n2"], ["b"]),
        helper.make_node("Add", ["x", "n3"], ["c"]),
        helper.make_node("Div", ["x", "z1"], ["d"]),
        helper.make_node("Div", ["x", "z2"], ["e"]),
    ]
    m = _model(nodes, [("x", F, [2])], ["a", "b", "c", "d", "e"])
    g = assert_pass_preserves(m, CSE, {"x": _x(2)})
    assert _count(g, "Constant") == 4  # n1/n2 merged; n3 (other payload) and the signed zeros kept
    d, e = (next(n for n in g if n.outputs[0].name == k) for k in "de")
    assert d.inputs[1] is not e.inputs[1]


def test_signed_zero_attributes_not_merged() -> None:
    nodes = [
        helper.make_node("LeakyRelu", ["x"], ["a"], alpha=0.0),
        helper.make_node("LeakyRelu", ["x"], ["b"], alpha=-0.0),
        helper.make_node("Add", ["a", "b"], ["y"]),
    ]
    _unchanged(_model(nodes, [("x", F, [2])], ["y"]), CSE)


def test_duplicate_graph_output_keeps_its_name() -> None:
    nodes = [
        helper.make_node("Relu", ["x"], ["a"]),
        helper.make_node("Neg", ["a"], ["y1"]),
        helper.make_node("Relu", ["x"], ["y2"]),
    ]
    g = assert_pass_preserves(_model(nodes, [("x", F, [2])], ["y1", "y2"]), CSE, {"x": _x(2)})
    assert _count(g, "Relu") == 1 and [v.name for v in g.outputs] == ["y1", "y2"]
    assert g.outputs[1].producer is not None and g.outputs[1].producer.op_type == "Relu"
    # two duplicates that are both graph outputs cannot share one name: left alone
    both = [helper.make_node("Relu", ["x"], ["y1"]), helper.make_node("Relu", ["x"], ["y2"])]
    _unchanged(_model(both, [("x", F, [2])], ["y1", "y2"]), CSE)


def test_subgraphs_cse_inside_and_if_nodes_not_merged() -> None:
    def branch(name: str) -> onnx.GraphProto:
        ns = [
            helper.make_node("Relu", ["x"], [f"{name}_a"]),
            helper.make_node("Relu", ["x"], [f"{name}_b"]),
            helper.make_node("Add", [f"{name}_a", f"{name}_b"], [f"{name}_out"]),
        ]
        return helper.make_graph(ns, name, [], [helper.make_tensor_value_info(f"{name}_out", F, [2])])

    nodes = [
        helper.make_node("If", ["c"], ["i1"], then_branch=branch("t1"), else_branch=branch("e1")),
        helper.make_node("If", ["c"], ["i2"], then_branch=branch("t2"), else_branch=branch("e2")),
        helper.make_node("Add", ["i1", "i2"], ["y"]),
    ]
    m = _model(nodes, [("x", F, [2]), ("c", TensorProto.BOOL, [])], ["y"])
    g = assert_pass_preserves(m, CSE, {"x": _x(2), "c": np.array(True)})
    assert _count(g, "If") == 2 and _count(g, "Relu") == 4


def test_cse_merges_two_identical_4000_node_chains_signing_each_node_once(monkeypatch: pytest.MonkeyPatch) -> None:
    """Two identical 4000-node chains merge in one run, and the work is one sweep: each node's
    signature is computed once (a count, not a timing; the time is printed)."""
    x = Value("x", F, (4,))
    g = Graph(inputs=[x])
    outs = []
    for _ in range(2):  # two identical 4000-node chains, each with its own Constant nodes
        prev = x
        for i in range(2000):
            c = g.append(Node("", "Constant", [], {"value": np.full(4, i, np.float32)})).outputs[0]
            prev = g.append(Node("", "Add", [prev, c])).outputs[0]
        outs.append(prev)
    g.append(node := Node("", "Sub", outs))
    node.outputs[0].dtype = F
    g.outputs = (*g.outputs, node.outputs[0])
    signed = 0
    signature = passes.cleanup.cse._signature

    def counting(*args: object) -> object:
        nonlocal signed
        signed += 1
        return signature(*args)  # type: ignore[arg-type]

    monkeypatch.setattr(passes.cleanup.cse, "_signature", counting)
    nodes = len(g)
    start = time.perf_counter()
    res = run_pass(CSE, g)
    print(f"CSE of two 4000-node chains: {time.perf_counter() - start:.3f} s")
    assert dict(res.stats) == {"nodes_merged": 2000, "constants_merged": 2000}
    assert signed == nodes
    assert len(g) == 4001


# ----- merge-transposes ------------------------------------------------------------------


def _transposes(p1: Sequence[int] | None, p2: Sequence[int] | None, shape: Sequence[int], *, pre: bool = True) -> onnx.ModelProto:
    kw1 = {} if p1 is None else {"perm": list(p1)}
    kw2 = {} if p2 is None else {"perm": list(p2)}
    nodes = [
        helper.make_node("Relu", ["x"], ["r"]),
        helper.make_node("Transpose", ["r" if pre else "x"], ["t1"], **kw1),
        helper.make_node("Transpose", ["t1"], ["y"], **kw2),
    ]
    return _model(nodes, [("x", F, list(shape))], ["y"])


PERMS3 = [[1, 2, 0], [2, 0, 1], [0, 2, 1], [1, 0, 2]]
PERMS4 = [[0, 2, 3, 1], [3, 1, 0, 2], [1, 3, 2, 0], [2, 0, 3, 1]]


def test_compose_perms_matches_numpy() -> None:
    a = _x(2, 3, 4, 5)
    for p1, p2 in itertools.product(itertools.permutations(range(4)), repeat=2):
        p = compose_perms(list(p1), list(p2))
        np.testing.assert_array_equal(a.transpose(p1).transpose(p2), a.transpose(p))


@pytest.mark.parametrize(
    ("p1", "p2"), [(p, q) for p in PERMS3 for q in PERMS3 if compose_perms(p, q) != [0, 1, 2]][:6]
    + [(p, q) for p in PERMS4 for q in PERMS4 if compose_perms(p, q) != [0, 1, 2, 3]][:6]
)
def test_transposes_composed(p1: list[int], p2: list[int]) -> None:
    shape = [2, 3, 4, 5][: len(p1)]
    g = assert_pass_preserves(_transposes(p1, p2, shape), MT, {"x": _x(*shape)})
    (t,) = [n for n in g if n.op_type == "Transpose"]
    assert t.attr("perm") == compose_perms(p1, p2) and t.inputs[0].name == "r"
    assert t.outputs[0].name == "y"


def test_inverse_pair_removed() -> None:
    g = assert_pass_preserves(_transposes([0, 2, 3, 1], [0, 3, 1, 2], [2, 3, 4, 5]), MT, {"x": _x(2, 3, 4, 5)})
    assert _count(g, "Transpose") == 0 and g.outputs[0].name == "y"
    assert g.outputs[0].producer is not None and g.outputs[0].producer.op_type == "Relu"


def test_inverse_pair_between_graph_input_and_output_left_alone() -> None:
    g = _unchanged(_transposes([1, 0], [1, 0], [2, 3], pre=False), MT)
    reasons = [r for _, rule, r in MT.explain(g) if rule == "compose-transposes"]
    assert any("graph output" in r for r in reasons), reasons


@pytest.mark.parametrize(("p1", "p2"), [(None, [1, 0, 2]), ([2, 0, 1], None), (None, None), (None, [2, 1, 0])])
def test_missing_perm(p1: list[int] | None, p2: list[int] | None) -> None:
    g = assert_pass_preserves(_transposes(p1, p2, [2, 3, 4]), MT, {"x": _x(2, 3, 4)})
    expected = compose_perms(p1 or [2, 1, 0], p2 or [2, 1, 0])
    ts = [n for n in g if n.op_type == "Transpose"]
    if expected == [0, 1, 2]:
        assert ts == []
    else:
        assert len(ts) == 1 and ts[0].attr("perm") == expected


def test_first_transpose_shared_stays() -> None:
    nodes = [
        helper.make_node("Transpose", ["x"], ["t1"], perm=[1, 2, 0]),
        helper.make_node("Transpose", ["t1"], ["y"], perm=[2, 0, 1]),  # inverse: y is x
        helper.make_node("Transpose", ["t1"], ["z"], perm=[0, 2, 1]),
        helper.make_node("Relu", ["t1"], ["w"]),
    ]
    m = _model(nodes, [("x", F, [2, 3, 4])], ["y", "z", "w"])
    g = assert_pass_preserves(m, MT, {"x": _x(2, 3, 4)})
    ts = {n.outputs[0].name: n for n in g if n.op_type == "Transpose"}
    assert set(ts) == {"t1", "y", "z"}  # y cannot be replaced by graph input x: it stays as is
    assert ts["z"].inputs[0].name == "x" and ts["z"].attr("perm") == compose_perms([1, 2, 0], [0, 2, 1])
    assert ts["y"].inputs[0].name == "t1"


def test_transpose_chain_collapses_in_one_run() -> None:
    nodes = [helper.make_node("Relu", ["x"], ["r"])]
    perms = [[1, 2, 3, 0], [0, 2, 3, 1], [3, 1, 0, 2], [2, 0, 1, 3]]
    for i, p in enumerate(perms):
        nodes.append(helper.make_node("Transpose", ["r" if i == 0 else f"t{i - 1}"], [f"t{i}" if i < 3 else "y"], perm=p))
    g = assert_pass_preserves(_model(nodes, [("x", F, [2, 3, 4, 5])], ["y"]), MT, {"x": _x(2, 3, 4, 5)})
    assert _count(g, "Transpose") == 1


def test_chain_collapses_past_a_link_that_cannot_be_rewritten() -> None:
    nodes = [
        helper.make_node("Transpose", ["x"], ["t1"], perm=[1, 2, 0]),
        helper.make_node("Transpose", ["t1"], ["m"], perm=[2, 0, 1]),  # identity, but m cannot become x
        helper.make_node("Transpose", ["m"], ["y"], perm=[0, 2, 1]),
    ]
    g = assert_pass_preserves(_model(nodes, [("x", F, [2, 3, 4])], ["m", "y"]), MT, {"x": _x(2, 3, 4)})
    last = next(n for n in g if n.outputs[0].name == "y")
    assert last.inputs[0].name == "x" and last.attr("perm") == [0, 2, 1]  # type: ignore[union-attr]
    nodes = [
        helper.make_node("Reshape", ["x", "s1"], ["a"]),
        helper.make_node("Reshape", ["a", "s2"], ["b"]),  # 0 entry on a symbolic dim: cannot merge
        helper.make_node("Reshape", ["b", "s3"], ["y"]),
    ]
    inits = [_i64("s1", [-1, 3, 4]), _i64("s2", [0, -1]), _i64("s3", [-1])]
    g = assert_pass_preserves(_model(nodes, [("x", F, ["N", 12])], ["y"], inits), MR, {"x": _x(3, 12)})
    assert _only_reshape(g).inputs[1].name == "s3"  # type: ignore[union-attr]


def test_single_transpose_untouched() -> None:
    nodes = [helper.make_node("Transpose", ["x"], ["y"], perm=[1, 0])]
    g = _unchanged(_model(nodes, [("x", F, [2, 3])], ["y"]), MT)
    assert [r for _, _, r in MT.explain(g)] == ["input is not produced by a Transpose"]


# ----- merge-reshapes --------------------------------------------------------------------


def _i64(name: str, vals: Sequence[int]) -> onnx.TensorProto:
    return numpy_helper.from_array(np.array(vals, np.int64), name)


def _reshapes(first: onnx.NodeProto, s2: Sequence[int], shape: Sequence[int | str], inits: Sequence[onnx.TensorProto], **kw: int) -> onnx.ModelProto:
    nodes = [first, helper.make_node("Reshape", ["mid", "s2"], ["y"], **kw)]
    return _model(nodes, [("x", F, list(shape))], ["y"], [*inits, _i64("s2", s2)])


def _only_reshape(g: Graph) -> Node:
    (r,) = [n for n in g if n.op_type == "Reshape"]
    assert r.inputs[0] is not None and r.inputs[0].name == "x"
    return r


@pytest.mark.parametrize("s2", [[2, 12], [-1, 4], [4, -1, 2], [24]])
def test_reshape_chain(s2: list[int]) -> None:
    m = _reshapes(helper.make_node("Reshape", ["x", "s1"], ["mid"]), s2, [2, 3, 4], [_i64("s1", [6, 4])])
    g = assert_pass_preserves(m, MR, {"x": _x(2, 3, 4)})
    r = _only_reshape(g)
    assert r.inputs[1] is not None and r.inputs[1].name == "s2"


def test_reshape_zero_resolved_from_static_shape() -> None:
    m = _reshapes(helper.make_node("Reshape", ["x", "s1"], ["mid"]), [0, 3, -1], [2, 3, 4], [_i64("s1", [0, 12])])
    g = assert_pass_preserves(m, MR, {"x": _x(2, 3, 4)})
    r = _only_reshape(g)
    assert r.inputs[1] is not None and r.inputs[1].const_value is not None
    assert r.inputs[1].const_value.numpy().tolist() == [2, 3, -1]


def test_reshape_zero_resolved_from_first_shape_when_intermediate_shape_unknown() -> None:
    m = _reshapes(helper.make_node("Reshape", ["x", "s1"], ["mid"]), [-1, 0], ["N", 12], [_i64("s1", [-1, 3, 4])])
    g = lepton_ir.load(m)
    next(n for n in g if n.outputs[0].name == "mid").outputs[0].shape = None
    assert run_pass(MR, g).modified
    assert _only_reshape(g).inputs[1].const_value.numpy().tolist() == [-1, 3]  # type: ignore[union-attr]
    x = {"x": _x(5, 12)}
    assert_outputs_close(run_model(m, x), run_model(lepton_ir.to_onnx(g), x))


def test_reshape_zero_unresolvable_left_alone() -> None:
    m = _reshapes(helper.make_node("Reshape", ["x", "s1"], ["mid"]), [0, -1], ["N", 12], [_i64("s1", [0, 3, 4])])
    g = _unchanged(m, MR)
    assert any("is 0" in r for _, _, r in MR.explain(g))


def test_reshape_allowzero() -> None:
    first = helper.make_node("Reshape", ["x", "s1"], ["mid"], allowzero=1)
    m = _reshapes(first, [0, 3], [0, 3], [_i64("s1", [3, 0])], allowzero=1)
    g = assert_pass_preserves(m, MR, {"x": np.zeros((0, 3), np.float32)})
    r = _only_reshape(g)
    assert r.attr("allowzero") == 1 and r.inputs[1].name == "s2"  # type: ignore[union-attr]


@pytest.mark.parametrize(
    "first",
    [
        helper.make_node("Flatten", ["x"], ["mid"], axis=2),
        helper.make_node("Squeeze", ["x", "ax"], ["mid"]),
        helper.make_node("Unsqueeze", ["x", "ax"], ["mid"]),
    ],
)
def test_reshape_like_then_reshape(first: onnx.NodeProto) -> None:
    m = _reshapes(first, [4, -1], [2, 1, 6], [_i64("ax", [1])])
    g = assert_pass_preserves(m, MR, {"x": _x(2, 1, 6)})
    _only_reshape(g)
    assert _count(g, first.op_type) == 0


def test_first_reshape_shared_and_chain() -> None:
    nodes = [
        helper.make_node("Reshape", ["x", "s1"], ["a"]),
        helper.make_node("Reshape", ["a", "s2"], ["b"]),
        helper.make_node("Reshape", ["b", "s3"], ["y"]),
        helper.make_node("Relu", ["a"], ["z"]),
    ]
    inits = [_i64("s1", [6, 4]), _i64("s2", [3, 8]), _i64("s3", [-1, 2])]
    g = assert_pass_preserves(_model(nodes, [("x", F, [2, 3, 4])], ["y", "z"], inits), MR, {"x": _x(2, 3, 4)})
    rs = {n.outputs[0].name: n for n in g if n.op_type == "Reshape"}
    assert set(rs) == {"a", "y"} and rs["y"].inputs[0].name == "x"  # type: ignore[union-attr]


def test_reshape_with_runtime_shape_left_alone() -> None:
    nodes = [
        helper.make_node("Reshape", ["x", "s1"], ["mid"]),
        helper.make_node("Shape", ["x"], ["sx"]),
        helper.make_node("Reshape", ["mid", "sx"], ["y"]),
    ]
    g = _unchanged(_model(nodes, [("x", F, [2, 3])], ["y"], [_i64("s1", [6])]), MR)
    assert any("not a constant" in r for _, _, r in MR.explain(g))


def test_transpose_in_subgraph_reads_outer_transpose() -> None:
    body = helper.make_graph(
        [helper.make_node("Transpose", ["t1"], ["b_out"], perm=[0, 2, 1])], "body", [],
        [helper.make_tensor_value_info("b_out", F, [3, 4, 2])],
    )
    other = helper.make_graph(
        [helper.make_node("Transpose", ["x"], ["o_out"], perm=[0, 2, 1])], "other", [],
        [helper.make_tensor_value_info("o_out", F, [2, 4, 3])],
    )
    nodes = [
        helper.make_node("Transpose", ["x"], ["t1"], perm=[1, 0, 2]),
        helper.make_node("If", ["c"], ["y"], then_branch=body, else_branch=other),
    ]
    m = _model(nodes, [("x", F, [2, 3, 4]), ("c", TensorProto.BOOL, [])], ["y"])
    g = assert_pass_preserves(m, MT, {"x": _x(2, 3, 4), "c": np.array(True)})
    assert _count(g, "Transpose") == 2  # t1 became dead and was removed
    inner = next(n for n in g.all_nodes() if n.outputs[0].name == "b_out")
    assert inner.inputs[0].name == "x" and inner.attr("perm") == [1, 2, 0]  # type: ignore[union-attr]


# ----- hypothesis properties on generated chains and DAGs ---------------------------------

SETTINGS = settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@st.composite
def transpose_chains(draw: st.DrawFn) -> tuple[onnx.ModelProto, tuple[int, ...]]:
    rank = draw(st.integers(1, 4))
    shape = tuple(range(2, 2 + rank))
    perm = st.none() | st.permutations(list(range(rank)))
    perms = draw(st.lists(perm, min_size=1, max_size=4))
    nodes = [helper.make_node("Relu", ["x"], ["v0"])]
    for i, p in enumerate(perms):
        kw = {} if p is None else {"perm": list(p)}
        nodes.append(helper.make_node("Transpose", [f"v{i}"], [f"v{i + 1}"], **kw))
    outs = [f"v{len(perms)}"] + draw(st.lists(st.sampled_from([f"v{i}" for i in range(len(perms))]), max_size=2, unique=True))
    return _model(nodes, [("x", F, list(shape))], outs), shape


@given(transpose_chains())
@SETTINGS
def test_merge_transposes_generated(case: tuple[onnx.ModelProto, tuple[int, ...]]) -> None:
    model, shape = case
    g = assert_pass_preserves(model, MT, {"x": _x(*shape)})
    for n in g:  # no Transpose reads a Transpose any more
        if n.op_type == "Transpose":
            src = n.inputs[0].producer  # type: ignore[union-attr]
            assert src is None or src.op_type != "Transpose" or g.is_graph_output(n.outputs[0])


def _factorizations(n: int) -> list[list[int]]:
    out = [[n]]
    for d in range(2, n):
        if n % d == 0:
            out += [[d, *rest] for rest in _factorizations(n // d)]
    return out


@st.composite
def reshape_chains(draw: st.DrawFn) -> onnx.ModelProto:
    shapes = _factorizations(24)
    x_shape = draw(st.sampled_from(shapes))
    nodes, inits, cur, prev = [], [], list(x_shape), "x"
    for i in range(draw(st.integers(1, 4))):
        target = list(draw(st.sampled_from(shapes)))
        allowzero = draw(st.booleans())
        # entries may become 0 (copy dim; only where it copies the same size) or one -1
        for j in range(len(target)):
            if not allowzero and j < len(cur) and cur[j] == target[j] and draw(st.booleans()):
                target[j] = 0
        if draw(st.booleans()):
            target[draw(st.integers(0, len(target) - 1))] = -1
        kind = draw(st.sampled_from(["Reshape", "Reshape", "Flatten", "Unsqueeze"]))
        out = f"r{i}"
        if kind == "Flatten":
            axis = draw(st.integers(0, len(cur)))
            nodes.append(helper.make_node("Flatten", [prev], [out], axis=axis))
            lead = int(np.prod(cur[:axis])) if axis else 1
            cur = [lead, 24 // lead]
        elif kind == "Unsqueeze":
            inits.append(_i64(f"ax{i}", [0]))
            nodes.append(helper.make_node("Unsqueeze", [prev, f"ax{i}"], [out]))
            cur = [1, *cur]
        else:
            inits.append(_i64(f"s{i}", target))
            nodes.append(helper.make_node("Reshape", [prev, f"s{i}"], [out], allowzero=int(allowzero)))
            cur = [c if t == 0 else t for t, c in zip(target, cur + [0] * len(target))]
            if -1 in cur:
                cur[cur.index(-1)] = 24 // int(np.prod([c for c in cur if c != -1]))
        prev = out
    outs = [prev] + draw(st.lists(st.sampled_from([n.output[0] for n in nodes]), max_size=1))
    return _model(nodes, [("x", F, list(x_shape))], list(dict.fromkeys(outs)), inits)


@given(reshape_chains())
@SETTINGS
def test_merge_reshapes_generated(model: onnx.ModelProto) -> None:
    x_shape = [d.dim_value for d in model.graph.input[0].type.tensor_type.shape.dim]
    g = assert_pass_preserves(model, MR, {"x": _x(*x_shape)})
    for n in g:
        if n.op_type == "Reshape":
            src = n.inputs[0].producer  # type: ignore[union-attr]
            assert src is None or src.op_type not in ("Reshape", "Flatten", "Squeeze", "Unsqueeze")


@st.composite
def dup_dags(draw: st.DrawFn) -> onnx.ModelProto:
    """Small DAGs over two inputs with many structurally duplicate nodes and constants."""
    vals = ["x", "z"]
    nodes, n_const = [], 0
    for i in range(draw(st.integers(2, 14))):
        op = draw(st.sampled_from(["Relu", "Neg", "Add", "Mul", "Sub", "Const", "Transpose", "Shape"]))
        out = f"n{i}"
        if op == "Const":
            val = draw(st.sampled_from([0.0, -0.0, 1.5, float("nan")]))
            nodes.append(_const_node(out, np.full((2, 3), val, np.float32)))
            n_const += 1
        elif op in ("Add", "Mul", "Sub"):
            a, b = draw(st.sampled_from(vals)), draw(st.sampled_from(vals))
            nodes.append(helper.make_node(op, [a, b], [out]))
        elif op == "Transpose":
            src = draw(st.sampled_from(vals))
            nodes.append(helper.make_node("Transpose", [src], [f"{out}_t"], perm=draw(st.sampled_from([[1, 0], [0, 1]]))))
            nodes.append(helper.make_node("Reshape", [f"{out}_t", "shape23"], [out]))
        elif op == "Shape":
            src = draw(st.sampled_from(vals))
            nodes.append(helper.make_node("Shape", [src], [f"{out}_s"]))
            nodes.append(helper.make_node("Reshape", [src, f"{out}_s"], [out]))
        else:
            nodes.append(helper.make_node(op, [draw(st.sampled_from(vals))], [out]))
        vals.append(out)
    outs = draw(st.lists(st.sampled_from(vals[2:]), min_size=1, max_size=3, unique=True))
    inits = [_i64("shape23", [2, 3])] + [numpy_helper.from_array(np.ones(3, np.float32), f"w{k}") for k in range(2)]
    nodes.append(helper.make_node("Add", ["w0", "w1"], ["ww"]))
    return _model(nodes, [("x", F, [2, 3]), ("z", F, [2, 3])], [*outs, "ww"], inits)


@given(dup_dags())
@SETTINGS
def test_cse_generated(model: onnx.ModelProto) -> None:
    g = assert_pass_preserves(model, CSE, {"x": _x(2, 3), "z": _x(2, 3, seed=1)})
    assert list(g.initializers) == ["shape23", "w0"]
    keys = [(n.op_type, n.inputs, tuple(sorted(n.attributes))) for n in g if n.op_type != "Constant"]
    dups = [k for k in set(keys) if keys.count(k) > 1]
    for op, inputs, _ in dups:  # any remaining duplicates differ in attributes or are graph outputs
        same = [n for n in g if (n.op_type, n.inputs) == (op, inputs)]
        assert len({repr(sorted(n.attributes.items())) for n in same}) > 1 or sum(
            g.is_graph_output(n.outputs[0]) for n in same
        ) >= len(same) - 1


# ----- property tests (random models from tests/strategies.py) ---------------------------

try:
    from strategies import onnx_models, random_inputs

    HAVE_STRATEGIES = True
except ImportError:  # tests/strategies.py is written separately
    HAVE_STRATEGIES = False

needs_strategies = pytest.mark.skipif(not HAVE_STRATEGIES, reason="tests/strategies.py not available")

if HAVE_STRATEGIES:

    def _property(p: object):  # type: ignore[no-untyped-def]
        @given(onnx_models())
        @SETTINGS
        def check(model: onnx.ModelProto) -> None:
            assert_pass_preserves(model, p, random_inputs(model, 0))  # type: ignore[arg-type]

        return check

    test_cse_property = needs_strategies(_property(CSE))
    test_merge_transposes_property = needs_strategies(_property(MT))
    test_merge_reshapes_property = needs_strategies(_property(MR))
else:

    @needs_strategies
    @pytest.mark.parametrize("pass_name", [CSE.name, MT.name, MR.name])
    def test_property(pass_name: str) -> None:
        """Placeholder reported as skipped until tests/strategies.py exists."""
