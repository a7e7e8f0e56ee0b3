"""The graph-edit API (`lepton_ir.rewriter`): structural tests and property tests of its invariants."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from onnx import TensorProto as T

import lepton_ir
from lepton_ir import Graph, IRError, Node, Value
from lepton_ir.rewriter import Builder, Event, Rewriter, RewriteRefused
from passes.ort import run_model
from passutil import assert_outputs_close, serialized
from strategies import onnx_models, random_inputs

F = T.FLOAT


def chain() -> tuple[Graph, Value, list[Node]]:
    """x -> a: Relu -> b: Neg -> c: Exp -> output 'y'."""
    x = Value("x", F, (2, 3))
    a = Node("", "Relu", [x], name="a")
    b = Node("", "Neg", [a.outputs[0]], name="b")
    c = Node("", "Exp", [b.outputs[0]], name="c")
    for n in (a, b, c):
        n.outputs[0].dtype, n.outputs[0].shape = F, (2, 3)
    c.outputs[0].name = "y"
    g = Graph("g", [x], [c.outputs[0]], [a, b, c], opset_imports={"": 17})
    return g, x, [a, b, c]


def recorder() -> tuple[Rewriter, list[tuple[Event, str]]]:
    seen: list[tuple[Event, str]] = []
    return Rewriter(lambda e, n: seen.append((e, n.name))), seen


def test_replace_swaps_nodes_through_the_value_map_and_reports_events() -> None:
    g, x, (a, b, c) = chain()
    rw, seen = recorder()
    bld = Builder(g, "fused")
    new = bld.Sigmoid(a.outputs[0])
    rw.replace([b, c], bld.nodes, {c.outputs[0]: new})
    lepton_ir.verify(g)
    assert [n.op_type for n in g] == ["Relu", "Sigmoid"]
    assert g.outputs[0] is new and new.name == "y"  # the graph output keeps its name
    assert new.dtype == F and new.shape == (2, 3)  # carried over from the value it replaced
    assert (Event.INSERT, bld.nodes[0].name) in seen
    assert [e for e in seen if e[0] is Event.ERASE] == [(Event.ERASE, "c"), (Event.ERASE, "b")]


def test_replace_refuses_when_an_intermediate_is_read_outside_and_leaves_the_graph_untouched() -> None:
    g, x, (a, b, c) = chain()
    extra = Node("", "Abs", [b.outputs[0]], name="extra")
    g.append(extra)
    g.outputs = (*g.outputs, extra.outputs[0])
    before = serialized(g)
    bld = Builder(g, "f")
    new = bld.Sigmoid(a.outputs[0])
    with pytest.raises(RewriteRefused, match="read by 'extra' .Abs. outside the match"):
        Rewriter().replace([b, c], bld.nodes, {c.outputs[0]: new})
    assert serialized(g) == before
    assert a.outputs[0].uses == ((b, 0),)  # the dropped builder node left no use behind
    lepton_ir.verify(g)


def test_replace_refuses_an_unmapped_graph_output_and_a_replacement_it_removes() -> None:
    g, x, (a, b, c) = chain()
    assert "an output of graph 'g'" in Rewriter().check_replace([c], {})
    assert "which the rewrite removes too" in Rewriter().check_replace([b, c], {c.outputs[0]: b.outputs[0]})
    bld = Builder(g, "f")
    bad = bld.Exp(b.outputs[0])
    assert "reads" in Rewriter().check_replace([b, c], {c.outputs[0]: x}, bld.nodes)
    assert bad.uses == ()


def test_replace_uses_of_a_graph_output_by_a_graph_input_inserts_an_identity_named_after_it() -> None:
    g, x, (a, b, c) = chain()
    rw = Rewriter()
    rw.replace_uses(c.outputs[0], x)
    rw.erase(c)
    lepton_ir.verify(g)
    (out,) = g.outputs
    assert out.name == "y" and out.producer is not None and out.producer.op_type == "Identity"
    assert out.producer.inputs == (x,)
    assert x.graph_outputs == () and x.name == "x"


def test_replace_uses_moves_a_subgraph_output_that_captures_an_outer_value() -> None:
    x = Value("x", F, (2,))
    cond = Value("cond", T.BOOL, ())
    relu = Node("", "Relu", [x], name="relu")
    relu.outputs[0].dtype, relu.outputs[0].shape = F, (2,)
    r = relu.outputs[0]
    then_g = Graph("then", [], [r], [])
    neg = Node("", "Neg", [x], name="neg")
    neg.outputs[0].dtype, neg.outputs[0].shape = F, (2,)
    else_g = Graph("else", [], [neg.outputs[0]], [neg])
    iff = Node("", "If", [cond], {"then_branch": then_g, "else_branch": else_g}, name="if")
    iff.outputs[0].dtype, iff.outputs[0].shape, iff.outputs[0].name = F, (2,), "z"
    g = Graph("g", [x, cond], [iff.outputs[0]], [relu, iff], opset_imports={"": 17})
    assert r.graph_outputs == (then_g,) and r.is_used() and r.uses == ()
    with pytest.raises(IRError, match="output of graph 'then'"):
        g.remove(relu)
    bld = Builder(g, "s")
    s = bld.Sigmoid(x)
    Rewriter().replace([relu], bld.nodes, {r: s})
    lepton_ir.verify(g)
    (carry,) = then_g.outputs  # ONNX subgraphs may not return an outer value directly: an Identity does
    assert carry.producer is not None and carry.producer.op_type == "Identity" and carry.producer.inputs == (s,)
    assert carry.producer.graph is then_g
    cond_true = {"x": np.array([-1.0, 2.0], np.float32), "cond": np.array(True)}
    got = run_model(lepton_ir.to_onnx(g), cond_true)["z"]
    np.testing.assert_allclose(got, 1 / (1 + np.exp(-cond_true["x"])), rtol=1e-6)


def test_replace_resorts_when_a_mapped_intermediate_has_a_reader_inside_the_span() -> None:
    x = Value("x", F, (2,))
    a = Node("", "Relu", [x], name="a")
    mid = Node("", "Abs", [a.outputs[0]], name="mid")  # reads a's output, lies between a and b
    b = Node("", "Neg", [a.outputs[0]], name="b")
    add = Node("", "Add", [mid.outputs[0], b.outputs[0]], name="add")
    for n in (a, mid, b, add):
        n.outputs[0].dtype, n.outputs[0].shape = F, (2,)
    g = Graph("g", [x], [add.outputs[0]], [a, mid, b, add], opset_imports={"": 17})
    bld = Builder(g, "ab")
    ra = bld.Relu(x)
    rb = bld.Neg(ra)
    Rewriter().replace([a, b], bld.nodes, {a.outputs[0]: ra, b.outputs[0]: rb})
    lepton_ir.verify(g)  # topological order restored
    assert [n.name for n in g].index("mid") > [n.name for n in g].index(ra.producer.name)


def test_erase_refuses_a_used_node() -> None:
    g, x, (a, b, c) = chain()
    with pytest.raises(IRError, match="still used by 'b'"):
        Rewriter().erase(a)
    with pytest.raises(IRError, match="still used by graph 'g'"):
        Rewriter().erase(c)


def test_builder_infers_output_types() -> None:
    g, x, _ = chain()
    b = Builder(g, "t")
    assert b.Shape(x).dtype == T.INT64
    assert b.Less(x, x).dtype == T.BOOL
    assert b.op("Cast", [x], {"to": T.FLOAT16}).dtype == T.FLOAT16
    assert b.Add(x, b.const(np.ones(3, np.float32))).dtype == F
    two = b.op("Split", [x], {"axis": 0}, num_outputs=2, shapes=[(1, 3), (1, 3)])
    assert len(two) == 2 and two[1].shape == (1, 3)
    assert all(n.graph is None for n in b.nodes) and x.uses == ((g.nodes[0], 0),)


def test_replace_uses_keeps_the_main_graph_output_name_of_a_value_a_subgraph_also_returns() -> None:
    x = Value("x", F, (2,))
    cond = Value("cond", T.BOOL, ())
    relu = Node("", "Relu", [x], name="relu")
    r = relu.outputs[0]
    r.dtype, r.shape, r.name = F, (2,), "r"
    then_g = Graph("then", [], [r], [])  # returns the outer value, and is listed first in r.graph_outputs
    neg = Node("", "Neg", [x], name="neg")
    neg.outputs[0].dtype, neg.outputs[0].shape = F, (2,)
    else_g = Graph("else", [], [neg.outputs[0]], [neg])
    iff = Node("", "If", [cond], {"then_branch": then_g, "else_branch": else_g}, name="if")
    iff.outputs[0].dtype, iff.outputs[0].shape, iff.outputs[0].name = F, (2,), "z"
    g = Graph("g", [x, cond], [iff.outputs[0], r], [relu, iff], opset_imports={"": 17})
    assert r.graph_outputs == (then_g, g)
    bld = Builder(g, "s")
    s = bld.Sigmoid(x)
    Rewriter().replace([relu], bld.nodes, {r: s})
    lepton_ir.verify(g)
    assert [v.name for v in g.outputs] == ["z", "r"] and g.outputs[1] is s
    (carry,) = then_g.outputs
    assert carry.producer is not None and carry.producer.inputs == (s,) and carry.name != "r"
    feeds = {"x": np.array([-1.0, 2.0], np.float32), "cond": np.array(True)}
    got = run_model(lepton_ir.to_onnx(g), feeds)
    np.testing.assert_allclose(got["r"], 1 / (1 + np.exp(-feeds["x"])), rtol=1e-6)
    np.testing.assert_allclose(got["z"], got["r"], rtol=1e-6)


def test_replace_with_inherit_gives_new_values_the_old_names_and_known_types() -> None:
    g, x, (a, b, c) = chain()
    b.outputs[0].name = "mid"
    bld = Builder(g, "n")
    na = bld.Neg(a.outputs[0], shape=(6,))  # a wrong shape of its own: the old value's known one wins
    Rewriter().replace([b], bld.nodes, {b.outputs[0]: na}, inherit=True)
    lepton_ir.verify(g)
    assert na.name == "mid" and na.shape == (2, 3) and na.dtype == F
    assert b.outputs[0].name != "mid"  # the removed value gave its name up
    assert c.inputs == (na,)
    # without inherit only graph outputs keep their names
    bld = Builder(g, "m")
    nc = bld.Exp(na)
    Rewriter().replace([c], bld.nodes, {c.outputs[0]: nc})
    assert nc.name == "y"
    bld = Builder(g, "k")
    nn = bld.Neg(a.outputs[0])
    Rewriter().replace([na.producer], bld.nodes, {na: nn})
    assert nn.name != "mid"


def test_replace_with_inherit_names_a_value_mapped_twice_once() -> None:
    x = Value("x", F, (2,))
    split = Node("", "Split", [x], {"axis": 0}, outputs=[Value("p", F, (1,)), Value("q", F, (1,))], name="split")
    add = Node("", "Add", [split.outputs[0], split.outputs[1]], outputs=[Value("y", F, (1,))], name="add")
    g = Graph("g", [x], [add.outputs[0]], [split, add], opset_imports={"": 17})
    bld = Builder(g, "s")
    half = bld.Slice(x, bld.const(np.array([0])), bld.const(np.array([1])))
    Rewriter().replace([split], bld.nodes, {split.outputs[0]: half, split.outputs[1]: half}, inherit=True)
    lepton_ir.verify(g)
    assert half.name == "p" and add.inputs == (half, half)


def test_builder_types_where_by_its_branches() -> None:
    g, x, _ = chain()
    b = Builder(g, "t")
    cond = b.Less(x, x)
    assert b.Where(cond, x, x).dtype == F
    ints = b.const(np.zeros(3, np.int64))
    assert b.Where(cond, ints, ints).dtype == T.INT64


def test_builder_with_a_dtype_types_every_op_whose_type_the_op_does_not_fix() -> None:
    g, x, _ = chain()
    b = Builder(g, "t", dtype=T.DOUBLE)
    idx = b.const(np.array(0, np.int64))
    assert b.Gather(idx, idx).dtype == T.DOUBLE  # the builder's type, not the first input's
    assert b.Less(x, x).dtype == T.BOOL and b.Shape(x).dtype == T.INT64
    assert b.op("Cast", [x], {"to": T.FLOAT16}).dtype == T.FLOAT16
    assert b.Add(x, x, dtype=T.FLOAT).dtype == T.FLOAT


def test_can_replace_uses_without_identity_says_when_the_name_cannot_move() -> None:
    g, x, (a, b, c) = chain()
    rw = Rewriter()
    y = c.outputs[0]
    assert rw.can_replace_uses(y, x) is None  # allowed: an Identity would carry the name
    assert "cannot take over its name" in rw.can_replace_uses(y, x, allow_identity=False)
    assert rw.can_replace_uses(y, b.outputs[0], allow_identity=False) is None  # a node output of g can
    assert rw.can_replace_uses(b.outputs[0], x, allow_identity=False) is None  # not a graph output
    assert "a cycle" in rw.can_replace_uses(a.outputs[0], b.outputs[0], allow_identity=False)
    g.outputs = (y, b.outputs[0])
    assert "cannot take over" in rw.can_replace_uses(y, b.outputs[0], allow_identity=False)  # already an output
    g.outputs = (y, x)
    w = Builder(g, "w").const(np.ones((2, 3), np.float32))
    assert rw.can_replace_uses(x, w, allow_identity=False) is None  # a graph input keeps its output slot


def test_replace_uses_of_a_value_listed_twice_among_the_outputs_moves_both_slots_once() -> None:
    g, x, (a, b, c) = chain()
    y = c.outputs[0]
    g.outputs = (y, y)
    rw = Rewriter()
    rw.replace_uses(y, b.outputs[0])
    rw.erase(c)
    lepton_ir.verify(g)
    assert g.outputs == (b.outputs[0], b.outputs[0]) and b.outputs[0].name == "y"
    assert [n.op_type for n in g] == ["Relu", "Neg"]  # no stray Identity


def test_erase_initializer_refuses_a_read_or_input_initializer() -> None:
    g, x, (a, b, c) = chain()
    w = Builder(g, "w").const(np.ones(3, np.float32))
    add = Node("", "Add", [a.outputs[0], w], name="add")
    Rewriter().insert_after(a, add)
    rw = Rewriter()
    with pytest.raises(IRError, match="still used by 'add'"):
        rw.erase_initializer(g, w)
    rw.erase(add)
    g.inputs.append(w)
    with pytest.raises(IRError, match="an input of graph"):
        rw.erase_initializer(g, w)
    g.inputs.remove(w)
    rw.erase_initializer(g, w)
    assert w.name not in g.initializers
    with pytest.raises(IRError, match="not an initializer"):
        rw.erase_initializer(g, w)
    lepton_ir.verify(g)


def test_erasing_an_if_frees_an_outer_value_its_branch_returned_and_reinserting_restores_it() -> None:
    def build() -> tuple[Graph, Node, Node]:  # the If's then-branch returns the outer value relu computes
        x, cond = Value("x", F, (2,)), Value("cond", T.BOOL, ())
        relu = Node("", "Relu", [x], name="relu")
        relu.outputs[0].dtype = F
        then_g = Graph("then", outputs=[relu.outputs[0]])
        neg = Node("", "Neg", [x], name="neg")
        neg.outputs[0].dtype = F
        iff = Node("", "If", [cond], {"then_branch": then_g, "else_branch": Graph("else", nodes=[neg], outputs=[neg.outputs[0]])},
                   name="if")
        keep = Node("", "Sigmoid", [x], name="keep")
        keep.outputs[0].dtype = F
        return Graph("g", [x, cond], [keep.outputs[0]], [relu, iff, keep], opset_imports={"": 17}), relu, iff

    g, relu, iff = build()
    rw = Rewriter()
    rw.erase(iff)
    assert not relu.outputs[0].is_used()
    g.insert_after(relu, iff)
    assert relu.outputs[0].graph_outputs == (iff.attributes["then_branch"].value,)
    rw.erase(iff)
    rw.erase(relu)
    lepton_ir.verify(g)
    assert [n.name for n in g] == ["keep"]


# ----- properties ----------------------------------------------------------------------------


def _random_edit(draw: st.DrawFn, g: Graph, rw: Rewriter) -> None:
    """One meaning-preserving edit through the rewriter, chosen by `draw`."""
    nodes = [n for n in g if not any(True for _ in n.subgraphs())]
    if not nodes:
        return
    n = draw(st.sampled_from(nodes))
    kind = draw(st.sampled_from(["copy", "identity", "dropped", "erase-dead"]))
    if kind == "copy":  # replace a node by a fresh copy of itself
        b = Builder(g, n.name)
        outs = b.op(n.op_type, n.inputs, {k: a for k, a in n.attributes.items()}, domain=n.domain,
                    num_outputs=len(n.outputs), dtypes=[o.dtype for o in n.outputs], shapes=[o.shape for o in n.outputs])
        outs = outs if isinstance(outs, tuple) else (outs,)
        rw.replace([n], b.nodes, {o: new for o, new in zip(n.outputs, outs, strict=True) if o.is_used()})
    elif kind == "identity":  # route one output through an Identity inserted after its producer
        out = n.outputs[0]
        if out.dtype is None:
            return
        b = Builder(g, n.name)
        ident = b.Identity(out)
        rw.insert_after(n, b.nodes)
        rw.replace_uses(out, ident, keep=b.nodes[0])
    elif kind == "dropped":  # build nodes and never insert them
        if n.inputs and n.inputs[0] is not None:
            Builder(g, "ghost").Neg(n.inputs[0])
    else:
        for m in reversed(list(g)):
            if not any(o.is_used() for o in m.outputs):
                rw.erase(m)


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(model=onnx_models(max_nodes=8), data=st.data())
def test_any_sequence_of_edits_keeps_use_def_outputs_and_results(model: onnx.ModelProto, data: st.DataObject) -> None:
    inputs = random_inputs(model)
    expected = run_model(model, inputs)
    g = lepton_ir.load(model)
    names = [v.name for v in g.outputs]
    rw = Rewriter()
    for _ in range(data.draw(st.integers(1, 6))):
        _random_edit(data.draw, g, rw)
        lepton_ir.verify(g)  # use-def both ways, outputs defined and pointing back, order
    assert [v.name for v in g.outputs] == names
    for h in g.all_graphs():  # no phantom uses: every use is a linked node reading that value
        for n in h:
            for v in n.inputs:
                if v is not None:
                    assert all(u.graph is not None for u, _ in v.uses)
    assert_outputs_close(expected, run_model(lepton_ir.to_onnx(g), inputs))


def test_replace_uses_of_a_graph_input_that_is_also_an_output_keeps_the_signature() -> None:
    x = Value("x", F, (2,))
    relu = Node("", "Relu", [x], name="relu")
    relu.outputs[0].dtype, relu.outputs[0].shape = F, (2,)
    g = Graph("g", [x], [x, relu.outputs[0]], [relu], opset_imports={"": 17})
    b = Builder(g, "n")
    y = b.Abs(x)
    Rewriter().insert_before(relu, b.nodes)
    Rewriter().replace_uses(x, y, keep=b.nodes[0])
    lepton_ir.verify(g)
    assert [v.name for v in g.inputs] == ["x"] and g.outputs[0] is x and relu.inputs == (y,)
