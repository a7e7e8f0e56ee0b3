"""Tests for `lepton_ir.shape_inference.refresh_shapes`, `infer-shapes` and `fold-reshape-targets`."""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import onnx
import onnx.helper as oh
import onnx.numpy_helper as onh
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from onnx import TensorProto as T
from passutil import assert_outputs_close, assert_pass_preserves, run_pass, serialized
from strategies import onnx_models, random_inputs

import bench.models
import lepton
import lepton_ir
from lepton_ir import Graph, Value
from lepton_ir.constants import constant_value
from lepton_ir.shape_inference import LIGHT_MAX_BYTES, light_model, refresh_shapes
from passes import PassManager
from passes.cleanup import CLEANUP_PIPELINE
from passes.cleanup.reshape import FoldReshapeTargets, InferShapes
from passes.ort import run_model

INFER, FOLD_TARGETS = InferShapes(), FoldReshapeTargets()
PROPERTY = settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
MODELS = Path(__file__).resolve().parent.parent / "bench" / "models"
DIGITS = str(MODELS / "digits_cnn.onnx")


# ----- helpers -------------------------------------------------------------------------------


def vi(name: str, shape: Sequence[int | str | None] | None, dtype: int = T.FLOAT) -> onnx.ValueInfoProto:
    return oh.make_tensor_value_info(name, dtype, shape)


def out(name: str, rank: int, dtype: int = T.FLOAT) -> onnx.ValueInfoProto:
    """A graph output of known rank and unknown (symbolic) dims: the checker wants a shape."""
    return vi(name, [f"{name}_d{i}" for i in range(rank)], dtype)


def i64(name: str, values: object) -> onnx.TensorProto:
    return onh.from_array(np.asarray(values, dtype=np.int64), name)


def model(nodes: list[onnx.NodeProto], inputs: list, outputs: list, inits: Sequence[onnx.TensorProto] = (),
          opset: int = 17) -> onnx.ModelProto:
    g = oh.make_graph(nodes, "g", inputs, outputs, initializer=list(inits))
    return oh.make_model(g, opset_imports=[oh.make_opsetid("", opset)], ir_version=8)


def node_outputs(graph: Graph) -> list[Value]:
    return [o for g in graph.all_graphs() for n in g for o in n.outputs if o.name]


def not_static(graph: Graph) -> list[Value]:
    """Node outputs and graph outputs whose shape is unknown or has a symbolic/unknown dim."""
    values = node_outputs(graph) + list(graph.outputs)
    return [v for v in values if v.shape is None or not all(isinstance(d, int) for d in v.shape)]


def ops(graph: Graph) -> Counter[str]:
    return Counter(n.op_type for n in graph.all_nodes())


def by_name(graph: Graph, name: str) -> Value:
    for v in node_outputs(graph):
        if v.name == name:
            return v
    raise KeyError(name)


def reshape_target(graph: Graph) -> np.ndarray | None:
    (reshape,) = [n for n in graph if n.op_type == "Reshape" and n.inputs[0].dtype == T.FLOAT]
    return constant_value(graph, reshape.inputs[1])


# ----- refresh_shapes on real exports ---------------------------------------------------------


def test_bert_small_becomes_fully_static_and_outputs_match() -> None:
    m = bench.models.bert_small(layers=1, seq=16)
    graph = lepton_ir.load(m)
    assert len(not_static(graph)) >= 40  # the import leaves unk__ dims behind the Shape chains
    PassManager("fold-shapes,fold-constants,infer-shapes").run(graph)
    assert not_static(graph) == []
    assert all(v.dtype is not None for v in node_outputs(graph))
    inputs = bench.models.synth_inputs(m)
    assert_outputs_close(run_model(m, inputs), run_model(lepton_ir.to_onnx(graph), inputs))
    # without infer-shapes the same pipeline stays symbolic
    plain = lepton_ir.load(m)
    PassManager("fold-shapes,fold-constants").run(plain)
    assert len(not_static(plain)) >= 40


def test_bert_small_infer_shapes_modified_is_exact_and_idempotent() -> None:
    graph = lepton_ir.load(bench.models.bert_small(layers=1, seq=16))
    assert not run_pass(INFER, graph).modified  # fresh import: inference has nothing new
    PassManager("fold-shapes,fold-constants").run(graph)
    result = run_pass(INFER, graph)
    assert result.modified and result.stats["values_refined"] >= 40
    assert not run_pass(INFER, graph).modified


# ----- refresh_shapes rules -------------------------------------------------------------------


def test_refresh_never_changes_graph_inputs() -> None:
    m = model(
        [oh.make_node("Relu", ["x"], ["r"]), oh.make_node("Reshape", ["r", "s"], ["y"])],
        [vi("x", [None, 6]), vi("s", [2], T.INT64)],
        [out("y", 2)],
        [i64("s", [3, 4])],  # an overridable initializer: its declared input type wins
    )
    graph = lepton_ir.load(m)
    x, s = graph.inputs
    by_name(graph, "r").shape = None
    by_name(graph, "y").shape = None
    assert refresh_shapes(graph) == 2
    assert x.shape == (None, 6) and s.shape == (2,)
    r = by_name(graph, "r")
    assert r.shape[1] == 6 and r.shape[0] != 6 and not isinstance(r.shape[0], int)
    assert by_name(graph, "y").shape is not None and len(by_name(graph, "y").shape) == 2


def test_refresh_never_overrides_int_dims_and_only_refines() -> None:
    m = model(
        [oh.make_node("Relu", ["x"], ["a"]), oh.make_node("Neg", ["x"], ["b"]), oh.make_node("Abs", ["x"], ["c"]),
         oh.make_node("Add", ["a", "b"], ["ab"]), oh.make_node("Add", ["ab", "c"], ["d"])],
        [vi("x", [2, 3])],
        [vi("d", [2, 3])],
    )
    graph = lepton_ir.load(m)
    a, b, c = by_name(graph, "a"), by_name(graph, "b"), by_name(graph, "c")
    a.shape = (7, 3)  # wrong, but an int: refresh keeps it (strict inference then fails on the Add; no raise)
    b.shape = ("sym", None)  # symbol and unknown -> ints
    c.dtype, c.shape = None, None  # nothing known -> everything
    changed = refresh_shapes(graph)
    assert a.shape == (7, 3)
    assert b.shape == (2, 3)
    assert c.dtype == T.FLOAT and c.shape == (2, 3)
    assert changed == 2
    assert refresh_shapes(graph) == 0


def test_refresh_keeps_ours_when_inference_disagrees_on_rank_or_dtype() -> None:
    m = model([oh.make_node("Relu", ["x"], ["a"]), oh.make_node("Neg", ["a"], ["b"])], [vi("x", [2, 3])], [vi("b", [2, 3])])
    graph = lepton_ir.load(m)
    a, b = by_name(graph, "a"), by_name(graph, "b")
    a.shape = (None,)  # wrong rank: kept
    b.dtype, b.shape = T.DOUBLE, (None, None)  # wrong dtype: kept, shape untouched too
    refresh_shapes(graph)
    assert a.shape == (None,)
    assert b.dtype == T.DOUBLE and b.shape == (None, None)


def test_refresh_fills_in_symbols_without_reusing_existing_ones() -> None:
    m = model(
        [oh.make_node("NonZero", ["x"], ["nz"]), oh.make_node("Relu", ["x"], ["r"]), oh.make_node("Transpose", ["nz"], ["t"])],
        [vi("x", ["unk__0"])],
        [out("t", 2, T.INT64), vi("r", ["unk__0"])],
    )
    graph = lepton_ir.load(m)
    nz, t = by_name(graph, "nz"), by_name(graph, "t")
    nz.shape, t.shape = None, (None, None)
    assert refresh_shapes(graph) == 2
    assert nz.shape[0] == 1 and isinstance(nz.shape[1], str) and nz.shape[1] != "unk__0"
    assert t.shape == (nz.shape[1], 1)
    assert by_name(graph, "r").shape == ("unk__0",)


def test_refresh_reaches_subgraphs() -> None:
    then = oh.make_graph(
        [oh.make_node("Reshape", ["x", "s"], ["ty"])], "then", [], [out("ty", 2)], initializer=[i64("s", [3, 2])]
    )
    other = oh.make_graph([oh.make_node("Reshape", ["x", "s2"], ["ey"])], "else", [], [out("ey", 2)],
                          initializer=[i64("s2", [3, 2])])
    m = model(
        [oh.make_node("If", ["c"], ["y"], then_branch=then, else_branch=other), oh.make_node("Relu", ["y"], ["z"])],
        [vi("c", [], T.BOOL), vi("x", [2, 3])],
        [out("z", 2)],
    )
    graph = lepton_ir.load(m)
    for v in node_outputs(graph):
        v.shape = None
    assert refresh_shapes(graph) == 4
    assert {v.name: v.shape for v in node_outputs(graph)} == {"y": (3, 2), "z": (3, 2), "ty": (3, 2), "ey": (3, 2)}
    inputs = {"c": np.array(True), "x": np.arange(6, dtype=np.float32).reshape(2, 3)}
    assert_outputs_close(run_model(m, inputs), run_model(lepton_ir.to_onnx(graph), inputs))


def test_light_model_holds_no_big_tensor() -> None:
    big = np.ones((64, 64), np.float32)  # 16 KiB
    m = model(
        [oh.make_node("Constant", [], ["k"], value=onh.from_array(big + 1, "k")),
         oh.make_node("MatMul", ["x", "w"], ["a"]), oh.make_node("Add", ["a", "k"], ["b"]),
         oh.make_node("Reshape", ["b", "s"], ["y"])],
        [vi("x", [64, 64])],
        [out("y", 1)],
        [onh.from_array(big, "w"), i64("s", [-1])],
    )
    graph = lepton_ir.load(m)
    light = light_model(graph)
    assert [t.name for t in light.graph.initializer] == ["s"]
    assert {i.name for i in light.graph.input} == {"x", "w", "k"}
    assert [n.op_type for n in light.graph.node] == ["MatMul", "Add", "Reshape"]
    assert all(t.ByteSize() <= LIGHT_MAX_BYTES + 64 for t in light.graph.initializer)
    assert light.ByteSize() < 4096
    by_name(graph, "y").shape = None
    assert refresh_shapes(graph) == 1 and by_name(graph, "y").shape == (4096,)


def test_refresh_never_raises_on_ops_inference_does_not_know() -> None:
    m = oh.make_model(
        oh.make_graph(
            [oh.make_node("Relu", ["x"], ["a"]), oh.make_node("Mystery", ["a"], ["b"], domain="com.microsoft"),
             oh.make_node("Neg", ["b"], ["c"]), oh.make_node("Relu", ["c"], ["d"])],
            "g", [vi("x", [2, 3])], [vi("d", [2, 3])],
        ),
        opset_imports=[oh.make_opsetid("", 17), oh.make_opsetid("com.microsoft", 1)],
        ir_version=8,
    )
    graph = lepton_ir.load(m)
    a = by_name(graph, "a")
    a.shape = None
    assert refresh_shapes(graph) == 1
    assert a.shape == (2, 3)


# ----- fold-reshape-targets -------------------------------------------------------------------


def test_digits_flatten_becomes_reshape_zero_minus_one() -> None:
    original = onnx.load(DIGITS)
    graph = lepton.optimize(DIGITS).graph
    counts = ops(graph)
    for op in ("Shape", "Gather", "Concat", "Unsqueeze", "Constant"):
        assert counts[op] == 0, (op, counts)
    assert reshape_target(graph).tolist() == [0, -1]
    (reshape,) = [n for n in graph if n.op_type == "Reshape"]
    assert reshape.outputs[0].shape == ("batch", 256)  # infer-shapes refined unk__0 after the rewrite
    images = np.load(MODELS / "digits_test.npz")["images"]
    for batch in (1, 5):
        inputs = {"image": images[:batch]}
        assert_outputs_close(run_model(original, inputs), run_model(lepton_ir.to_onnx(graph), inputs))


def flatten_model(*, shape_of: str = "x", index: int = 0, position: int = 0, allowzero: int = 0,
                  x_shape: Sequence[int | str] = ("N", 4, 2), y_shape: Sequence[int | str] = ("N", 3),
                  style: str = "unsqueeze") -> onnx.ModelProto:
    """`Reshape(x, Concat(...))` with one dim of `Shape(shape_of)` at `position` and a -1 elsewhere."""
    nodes = [oh.make_node("Shape", [shape_of], ["shp"])]
    if style == "unsqueeze":
        nodes += [oh.make_node("Gather", ["shp", "idx"], ["g"], axis=0), oh.make_node("Unsqueeze", ["g", "ax0"], ["d"])]
        inits = [i64("idx", index), i64("ax0", [0])]
    elif style == "reshape":
        nodes += [oh.make_node("Gather", ["shp", "idx"], ["g"], axis=0), oh.make_node("Reshape", ["g", "one"], ["d"])]
        inits = [i64("idx", index), i64("one", [1])]
    else:  # 1-element 1-D index, no Unsqueeze
        nodes += [oh.make_node("Gather", ["shp", "idx"], ["d"], axis=0)]
        inits = [i64("idx", [index])]
    parts = ["d", "minus1"] if position == 0 else ["minus1", "d"]
    nodes += [
        oh.make_node("Concat", parts, ["target"], axis=0),
        oh.make_node("Reshape", ["x", "target"], ["r"], allowzero=allowzero),
        oh.make_node("Relu", ["r"], ["out"]),
    ]
    inputs = [vi("x", list(x_shape))] + ([vi("y", list(y_shape))] if shape_of == "y" else [])
    return model(nodes, inputs, [out("out", 2)], inits + [i64("minus1", [-1])])


def flatten_inputs(m: onnx.ModelProto, n: int = 3) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(0)
    out = {}
    for inp in m.graph.input:
        dims = [d.dim_value if d.HasField("dim_value") else n for d in inp.type.tensor_type.shape.dim]
        out[inp.name] = rng.standard_normal(dims).astype(np.float32)
    return out


@pytest.mark.parametrize(
    "kwargs,target",
    [
        ({}, [0, -1]),
        ({"style": "reshape"}, [0, -1]),
        ({"style": "gather"}, [0, -1]),
        ({"index": -3}, [0, -1]),  # normalized with x's rank
        ({"shape_of": "y"}, [0, -1]),  # another tensor, the same symbol at that position
        ({"shape_of": "y", "x_shape": (2, "N", 4), "y_shape": (3, "N"), "index": 1, "position": 1}, [-1, 0]),
        ({"index": 1, "position": 1, "x_shape": (4, "N")}, [-1, 0]),
        ({"x_shape": (3, 4, 2)}, [3, -1]),  # a static dim is written as itself
    ],
)
def test_reshape_target_from_own_dims_is_rewritten(kwargs: dict, target: list[int]) -> None:
    m = flatten_model(**kwargs)
    inputs = flatten_inputs(m)
    graph = lepton_ir.load(m)
    result = run_pass(FOLD_TARGETS, graph)
    assert result.modified and result.stats == {"reshape_targets_folded": 1}
    assert reshape_target(graph).tolist() == target
    assert_outputs_close(run_model(m, inputs), run_model(lepton_ir.to_onnx(graph), inputs))
    assert not run_pass(FOLD_TARGETS, graph).modified
    PassManager("eliminate-dead-code").run(graph)
    assert ops(graph) == Counter({"Reshape": 1, "Relu": 1})  # the Shape/Gather/.../Concat chain is dead
    assert_outputs_close(run_model(m, inputs), run_model(lepton_ir.to_onnx(graph), inputs))


@pytest.mark.parametrize(
    "kwargs,reason",
    [
        ({"index": 1}, "not provably dim 0"),  # dim 1 of x at position 0
        ({"index": 0, "position": 1}, "not provably dim 1"),  # dim 0 of x at position 1
        ({"shape_of": "y", "y_shape": ("M", 3)}, "not provably dim 0"),  # different symbols
        ({"shape_of": "y", "x_shape": (None, 4, 2), "y_shape": (None, 3)}, "not provably dim 0"),  # unknown dims
        ({"shape_of": "y", "y_shape": (3, "N")}, "not provably dim 0"),  # the symbol sits elsewhere in y
        ({"allowzero": 1}, "allowzero=1"),
    ],
)
def test_reshape_target_not_rewritten(kwargs: dict, reason: str) -> None:
    m = flatten_model(**kwargs)
    graph = lepton_ir.load(m)
    before = ops(graph)
    assert not run_pass(FOLD_TARGETS, graph).modified
    assert ops(graph) == before and reshape_target(graph) is None
    explained = [why for _, rule, why in FOLD_TARGETS.explain(graph) if rule == "reshape_targets_folded"]
    assert len(explained) == 1 and reason in explained[0], explained


def test_reshape_target_with_constant_zero_and_several_dims() -> None:
    """`x.view(x.size(0), x.size(1), 0-copy, -1)` style targets with Shape start/end and two dims."""
    nodes = [
        oh.make_node("Shape", ["x"], ["s_tail"], start=1),  # dims 1.. of x
        oh.make_node("Gather", ["s_tail", "i0"], ["g1"], axis=0),  # dim 1
        oh.make_node("Unsqueeze", ["g1", "ax0"], ["d1"]),
        oh.make_node("Shape", ["x"], ["s_head"], end=1),  # [dim 0]
        oh.make_node("Concat", ["s_head", "d1", "zero", "minus1"], ["target"], axis=0),
        oh.make_node("Reshape", ["x", "target"], ["out"]),
    ]
    m = model(nodes, [vi("x", ["N", "C", 4, 5])], [out("out", 4)],
              [i64("i0", 0), i64("ax0", [0]), i64("zero", [0]), i64("minus1", [-1])])
    graph = lepton_ir.load(m)
    assert run_pass(FOLD_TARGETS, graph).modified
    assert reshape_target(graph).tolist() == [0, 0, 0, -1]
    inputs = {"x": np.random.default_rng(1).standard_normal((2, 3, 4, 5)).astype(np.float32)}
    assert_outputs_close(run_model(m, inputs), run_model(lepton_ir.to_onnx(graph), inputs))


def test_reshape_target_inside_a_subgraph() -> None:
    body = oh.make_graph(
        [oh.make_node("Shape", ["x"], ["shp"]), oh.make_node("Gather", ["shp", "idx"], ["g"], axis=0),
         oh.make_node("Unsqueeze", ["g", "ax0"], ["d"]), oh.make_node("Concat", ["d", "minus1"], ["t"], axis=0),
         oh.make_node("Reshape", ["x", "t"], ["ty"])],
        "then", [], [out("ty", 2)], initializer=[i64("idx", 0), i64("ax0", [0]), i64("minus1", [-1])],
    )
    other = oh.make_graph([oh.make_node("Flatten", ["x"], ["ey"])], "else", [], [out("ey", 2)])
    m = model([oh.make_node("If", ["c"], ["y"], then_branch=body, else_branch=other)],
              [vi("c", [], T.BOOL), vi("x", ["N", 3, 2])], [out("y", 2)])
    graph = lepton_ir.load(m)
    assert run_pass(FOLD_TARGETS, graph).modified
    sub = next(g for g in graph.all_graphs() if g.name == "then")
    assert reshape_target(sub).tolist() == [0, -1]
    inputs = {"c": np.array(True), "x": np.ones((4, 3, 2), np.float32)}
    assert_outputs_close(run_model(m, inputs), run_model(lepton_ir.to_onnx(graph), inputs))


def test_cleanup_pipeline_order() -> None:
    names = CLEANUP_PIPELINE.split(",")
    i = names.index("fold-shapes")
    assert names[i + 1 : i + 3] == ["infer-shapes", "fold-reshape-targets"]


# ----- properties on random graphs ------------------------------------------------------------


@PROPERTY
@given(m=onnx_models())
def test_infer_shapes_preserves_outputs(m: onnx.ModelProto) -> None:
    assert_pass_preserves(m, INFER, random_inputs(m))


@PROPERTY
@given(m=onnx_models())
def test_infer_shapes_recovers_wiped_types(m: onnx.ModelProto) -> None:
    """Forget the shapes (and some dtypes) of the values inside the graph: refresh brings back
    the import's types. Graph outputs keep theirs: their declared types are facts inference
    may not be able to derive again (the import merged them in)."""
    graph = lepton_ir.load(m)
    want = {id(v): (v.dtype, v.shape) for v in node_outputs(graph)}
    inner = [v for v in node_outputs(graph) if not any(v is o for o in graph.outputs)]
    for i, v in enumerate(inner):
        v.shape = None if i % 2 else tuple(None for _ in v.shape or ())
        if i % 3 == 0:
            v.dtype = None
    before = serialized(graph)
    result = run_pass(INFER, graph)
    assert result.modified == (serialized(graph) != before)
    for v in node_outputs(graph):
        dtype, shape = want[id(v)]
        assert v.dtype == dtype, v
        if shape is not None and all(isinstance(d, int) for d in shape):
            assert v.shape == shape, v
    assert not run_pass(INFER, graph).modified
    inputs = random_inputs(m)
    assert_outputs_close(run_model(m, inputs), run_model(lepton_ir.to_onnx(graph), inputs))


@PROPERTY
@given(m=onnx_models())
def test_fold_reshape_targets_preserves_outputs(m: onnx.ModelProto) -> None:
    assert_pass_preserves(m, FOLD_TARGETS, random_inputs(m))


def symbolic_batch(m: onnx.ModelProto) -> onnx.ModelProto:
    """`m` with each graph input's first dim made a symbol (one per input) and output dims made symbols."""
    out = onnx.ModelProto()
    out.CopyFrom(m)
    inits = {t.name for t in out.graph.initializer}
    for k, inp in enumerate(out.graph.input):
        dims = inp.type.tensor_type.shape.dim
        if inp.name not in inits and len(dims):
            dims[0].dim_param = f"batch{k}"
    for k, o in enumerate(out.graph.output):
        for j, d in enumerate(o.type.tensor_type.shape.dim):
            d.dim_param = f"out{k}_{j}"
    return out


@PROPERTY
@given(m=onnx_models())
def test_fold_reshape_targets_preserves_outputs_with_symbolic_batch(m: onnx.ModelProto) -> None:
    inputs = random_inputs(m)  # static feeds of the original shapes fit the symbolic model
    sym = symbolic_batch(m)
    graph = assert_pass_preserves(sym, FOLD_TARGETS, inputs)
    # and through the whole pipeline
    lepton.optimize(graph)
    assert_outputs_close(run_model(m, inputs), run_model(lepton_ir.to_onnx(graph), inputs))


@st.composite
def reshape_cases(draw: st.DrawFn) -> tuple[onnx.ModelProto, dict[str, np.ndarray], list[int] | None]:
    """A Reshape whose target mixes dims of x, dims of y (a permutation of x's dims with the
    same symbols), constants and one -1; returns (model, feeds, the expected new target or None)."""
    rank = draw(st.integers(2, 4))
    values = draw(st.lists(st.integers(1, 4), min_size=rank, max_size=rank))
    symbolic = draw(st.lists(st.booleans(), min_size=rank, max_size=rank))
    x_shape: list[int | str] = [f"s{k}" if symbolic[k] else values[k] for k in range(rank)]
    perm = draw(st.permutations(range(rank)))
    y_shape = [x_shape[k] for k in perm]  # y's dim i is x's dim perm[i]
    allowzero = 1 if draw(st.integers(0, 4)) == 0 else 0
    if draw(st.booleans()):  # flatten-like: dims kept in place, then -1
        picked = list(range(draw(st.integers(1, rank))))
        minus_at = None if len(picked) == rank and draw(st.booleans()) else len(picked)
    else:
        picked = draw(st.lists(st.integers(0, rank - 1), unique=True, max_size=rank))
        minus_at = None if len(picked) == rank and draw(st.booleans()) else draw(st.integers(0, len(picked)))
    entries: list[tuple[str, int]] = [("pick", k) for k in picked]
    if minus_at is not None:
        entries.insert(minus_at, ("minus1", -1))
    nodes: list[onnx.NodeProto] = []
    inits: list[onnx.TensorProto] = []
    parts: list[str] = []
    expected: list[int] = []
    rewrite = allowzero == 0
    dynamic = False
    pending: list[int] = []  # constant entries not yet emitted

    def flush() -> None:
        if pending:
            name = f"c{len(inits)}"
            inits.append(i64(name, list(pending)))
            parts.append(name)
            pending.clear()

    for p, (kind, k) in enumerate(entries):
        source = "const" if kind == "minus1" else draw(st.sampled_from(["const", "x", "y"]))
        if source == "const":
            value = -1 if kind == "minus1" else values[k]
            if kind == "pick" and k == p and allowzero == 0 and draw(st.booleans()):
                value = 0  # already a copy of x's dim p
            pending.append(value)
            if draw(st.booleans()):
                flush()
            expected.append(value)
            continue
        flush()
        dynamic = True
        src, idx = ("x", k) if source == "x" else ("y", perm.index(k))
        ok = (k == p) if source == "x" else (p < rank and isinstance(x_shape[p], str) and y_shape[idx] == x_shape[p])
        rewrite &= ok
        expected.append(x_shape[p] if ok and isinstance(x_shape[p], int) else 0)  # a static dim stays itself
        start = draw(st.integers(0, idx))
        j = idx - start
        if draw(st.booleans()):
            j -= rank - start  # the same dim, counted from the end
        t = f"t{len(nodes)}"
        nodes.append(oh.make_node("Shape", [src], [t + "_shape"], **({"start": start} if start else {})))
        style = draw(st.sampled_from(["unsqueeze", "reshape", "gather"]))
        if style == "gather":
            inits.append(i64(t + "_idx", [j]))
            nodes.append(oh.make_node("Gather", [t + "_shape", t + "_idx"], [t], axis=0))
        else:
            inits += [i64(t + "_idx", j), i64(t + "_one", [0] if style == "unsqueeze" else [1])]
            nodes.append(oh.make_node("Gather", [t + "_shape", t + "_idx"], [t + "_g"], axis=0))
            op = "Unsqueeze" if style == "unsqueeze" else "Reshape"
            nodes.append(oh.make_node(op, [t + "_g", t + "_one"], [t]))
        parts.append(t)
    flush()
    if not parts:
        inits.append(i64("c_empty", [-1]))
        parts.append("c_empty")
        expected = [-1]
    nodes.append(oh.make_node("Concat", parts, ["target"], axis=0))
    nodes.append(oh.make_node("Reshape", ["x", "target"], ["out"], allowzero=allowzero))
    m = model(nodes, [vi("x", x_shape), vi("y", y_shape)], [out("out", len(expected))], inits)
    rng = np.random.default_rng(draw(st.integers(0, 2**16)))
    feeds = {
        "x": rng.standard_normal(values).astype(np.float32),
        "y": rng.standard_normal([values[k] for k in perm]).astype(np.float32),
    }
    return m, feeds, (expected if rewrite and dynamic else None)


@PROPERTY
@given(case=reshape_cases())
def test_fold_reshape_targets_rewrites_exactly_the_provable_targets(case: tuple) -> None:
    m, feeds, expected = case
    graph = lepton_ir.load(m)
    result = run_pass(FOLD_TARGETS, graph)
    assert result.modified == (expected is not None)
    if expected is not None:
        (reshape,) = [n for n in graph if n.op_type == "Reshape" and n.inputs[0].name == "x"]
        assert constant_value(graph, reshape.inputs[1]).tolist() == expected
    assert_outputs_close(run_model(m, feeds), run_model(lepton_ir.to_onnx(graph), feeds))
    assert not run_pass(FOLD_TARGETS, graph).modified
