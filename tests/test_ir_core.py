"""Value/Node/Graph invariants: use lists, edits, removal, ordering, names, verifier, views."""

from __future__ import annotations

from collections.abc import Sequence

import networkx as nx
import numpy as np
import onnx
import onnx.helper as oh
import pytest
from onnx import TensorProto as T

import lepton_ir
from lepton_ir import Attr, Graph, IRError, Node, Value
from lepton_ir.structure import topological_indices

F = T.FLOAT


# ----- helpers ------------------------------------------------------------------------------


def serialized(graph: Graph) -> bytes:
    return lepton_ir.to_onnx(graph).SerializeToString()


def use_lists(graph: Graph) -> list[tuple[str, tuple[tuple[int, int], ...]]]:
    """Every value's uses as (id(node), index) pairs: a snapshot to compare before/after."""
    out = []
    for g in graph.all_graphs():
        values = [*g.inputs, *g.initializers.values()] + [o for n in g.nodes for o in n.outputs]
        out.extend((v.name, tuple((id(n), i) for n, i in v.uses)) for v in values)
    return out


def chain_graph() -> tuple[Graph, Value, list[Node]]:
    """x -> Relu(a) -> Neg(b) -> Abs(c) -> output; all float32[2,3]."""
    x = Value("x", F, (2, 3))
    a = Node("", "Relu", [x], name="a")
    b = Node("", "Neg", [a.outputs[0]], name="b")
    c = Node("", "Abs", [b.outputs[0]], name="c")
    for n in (a, b, c):
        n.outputs[0].dtype, n.outputs[0].shape = F, (2, 3)
    g = Graph("chain", inputs=[x], outputs=[c.outputs[0]], nodes=[a, b, c])
    return g, x, [a, b, c]


def mk_model(nodes: Sequence[onnx.NodeProto], inputs: list, outputs: list, inits: Sequence[onnx.TensorProto] = (),
             opset: int = 17) -> onnx.ModelProto:
    g = oh.make_graph(list(nodes), "g", inputs, outputs, initializer=list(inits))
    return oh.make_model(g, opset_imports=[oh.make_opsetid("", opset)], ir_version=8)


def vi(name: str, shape: Sequence[int | str] | None, dtype: int = F) -> onnx.ValueInfoProto:
    return oh.make_tensor_value_info(name, dtype, shape)


def if_model(out_is_graph_output: bool = True) -> onnx.ModelProto:
    """relu(x) is captured by both branches of an If (then: relu + 1, else: relu - 1)."""
    one = oh.make_tensor("one", F, [], [1.0])
    then_g = oh.make_graph(
        [oh.make_node("Constant", [], ["c1"], name="then_const", value=one),
         oh.make_node("Add", ["r", "c1"], ["t_out"], name="then_add")],
        "then_branch", [], [vi("t_out", [2, 3])])
    else_g = oh.make_graph(
        [oh.make_node("Constant", [], ["c2"], name="else_const", value=one),
         oh.make_node("Sub", ["r", "c2"], ["e_out"], name="else_sub")],
        "else_branch", [], [vi("e_out", [2, 3])])
    nodes = [
        oh.make_node("Relu", ["x"], ["r"], name="relu"),
        oh.make_node("If", ["cond"], ["y"], name="if", then_branch=then_g, else_branch=else_g),
    ]
    if out_is_graph_output:
        return mk_model(nodes, [vi("x", [2, 3]), vi("cond", [], T.BOOL)], [vi("y", [2, 3])])
    nodes.append(oh.make_node("Abs", ["x"], ["z"], name="abs"))
    return mk_model(nodes, [vi("x", [2, 3]), vi("cond", [], T.BOOL)], [vi("z", [2, 3])])


# ----- use lists ----------------------------------------------------------------------------


def test_linking_registers_uses_in_order_and_unlinked_nodes_leave_none() -> None:
    x, y = Value("x", F, (2,)), Value("y", F, (2,))
    n1 = Node("", "Add", [x, y])
    n2 = Node("", "Mul", [x, x])
    assert x.uses == () and y.uses == ()  # built, not inserted: no phantom uses
    g = Graph("g", [x, y], [], [n1, n2])
    assert x.uses == ((n1, 0), (n2, 0), (n2, 1))
    assert y.uses == ((n1, 1),)
    assert x.users() == [n1, n2]  # distinct, in use order
    assert n1.outputs[0].producer is n1 and n1.outputs[0].output_index == 0
    assert n1.outputs[0].uses == ()
    g.remove(n2)
    assert x.uses == ((n1, 0),) and n2.inputs == (x, x)  # a removed node keeps its inputs, not its uses
    g.append(n2)
    assert x.uses == ((n1, 0), (n2, 0), (n2, 1))


def test_graph_outputs_are_tracked_on_values() -> None:
    x = Value("x", F, (2,))
    n = Node("", "Relu", [x])
    g = Graph("g", [x], [n.outputs[0]], [n])
    out = n.outputs[0]
    assert out.graph_outputs == (g,) and out.is_used() and out.uses == ()
    with pytest.raises(IRError, match="output of graph"):
        g.remove(n)
    g.outputs = [x]
    assert out.graph_outputs == () and x.graph_outputs == (g,) and not out.is_used()
    g.remove(n)


def test_node_with_omitted_inputs_and_multiple_outputs() -> None:
    x = Value("x", F, (2,))
    n = Node("", "Clip", [x, None, None])
    Graph("g", [x], [], [n])
    assert n.inputs == (x, None, None) and x.uses == ((n, 0),)
    m = Node("", "Split", [x], {"axis": 0}, num_outputs=3)
    assert [o.output_index for o in m.outputs] == [0, 1, 2]
    assert all(o.producer is m for o in m.outputs)


def test_value_cannot_have_two_producers() -> None:
    v = Value("v")
    Node("", "Relu", [], outputs=[v])
    with pytest.raises(IRError, match="already has a producer"):
        Node("", "Neg", [], outputs=[v])


def test_replace_input_updates_both_use_lists() -> None:
    g, x, (a, b, c) = chain_graph()
    a_out = a.outputs[0]
    c.replace_input(0, a_out)
    assert c.inputs == (a_out,)
    assert a_out.uses == ((b, 0), (c, 0))
    assert b.outputs[0].uses == ()
    c.replace_input(0, a_out)  # same value: no duplicate use
    assert a_out.uses == ((b, 0), (c, 0))
    c.replace_input(0, None)
    assert c.inputs == (None,) and a_out.uses == ((b, 0),)
    c.replace_input(0, b.outputs[0])
    lepton_ir.verify(g)


def test_replace_input_at_one_index_of_a_repeated_value() -> None:
    x, y = Value("x", F, (2,)), Value("y", F, (2,))
    n = Node("", "Add", [x, x])
    Graph("g", [x, y], [], [n])
    n.replace_input(1, y)
    assert x.uses == ((n, 0),) and y.uses == ((n, 1),)
    n.replace_input(0, y)
    assert x.uses == () and y.uses == ((n, 1), (n, 0))
    assert y.users() == [n]


def test_set_inputs_replaces_all_uses() -> None:
    x, y, z = Value("x", F, (2,)), Value("y", F, (2,)), Value("z", F, (2,))
    n = Node("", "Sum", [x, y, x])
    Graph("g", [x, y, z], [], [n])
    n.set_inputs([z, None])
    assert n.inputs == (z, None)
    assert x.uses == () and y.uses == () and z.uses == ((n, 0),)
    n.set_inputs([x, x, y, z])
    assert x.uses == ((n, 0), (n, 1)) and y.uses == ((n, 2),) and z.uses == ((n, 3),)


def test_replace_all_uses_with_moves_every_use_but_not_graph_outputs() -> None:
    g, x, (a, b, c) = chain_graph()
    extra = Node("", "Mul", [b.outputs[0], b.outputs[0]], name="mul")
    extra.outputs[0].dtype, extra.outputs[0].shape = F, (2, 3)
    g.append(extra)
    g.outputs = (*g.outputs, b.outputs[0])
    b_out, a_out = b.outputs[0], a.outputs[0]
    b_out.replace_all_uses_with(a_out)
    assert b_out.uses == ()
    assert c.inputs == (a_out,) and extra.inputs == (a_out, a_out)
    assert a_out.uses == ((b, 0), (c, 0), (extra, 0), (extra, 1))
    assert g.outputs[1] is b_out  # graph outputs are not uses: untouched
    a_out.replace_all_uses_with(a_out)  # self: no-op
    assert a_out.uses == ((b, 0), (c, 0), (extra, 0), (extra, 1))
    lepton_ir.verify(g)


def test_imported_use_lists_match_inputs() -> None:
    m = mk_model(
        [oh.make_node("Add", ["x", "x"], ["s"], name="add"), oh.make_node("Mul", ["s", "x"], ["y"], name="mul")],
        [vi("x", [2])], [vi("y", [2])])
    g = lepton_ir.load(m)
    add, mul = g.nodes
    x = g.inputs[0]
    assert x.uses == ((add, 0), (add, 1), (mul, 1))
    assert add.outputs[0].uses == ((mul, 0),)


# ----- remove -------------------------------------------------------------------------------


def test_remove_refuses_a_node_with_users_and_leaves_graph_untouched() -> None:
    g, x, (a, b, c) = chain_graph()
    before, uses_before, nodes_before = serialized(g), use_lists(g), g.nodes
    with pytest.raises(IRError, match=r"cannot remove node 'b'.*used by 'c'"):
        g.remove(b)
    assert serialized(g) == before
    assert use_lists(g) == uses_before
    assert g.nodes == nodes_before and len(g) == 3
    assert b.graph is g and b.inputs == (a.outputs[0],)
    lepton_ir.verify(g)


def test_remove_refuses_a_graph_output_producer_and_leaves_graph_untouched() -> None:
    g, x, (a, b, c) = chain_graph()
    before, uses_before = serialized(g), use_lists(g)
    with pytest.raises(IRError, match="an output of graph 'chain'"):
        g.remove(c)
    assert serialized(g) == before and use_lists(g) == uses_before
    assert c.graph is g and len(g) == 3 and b.outputs[0].uses == ((c, 0),)
    lepton_ir.verify(g)


def test_remove_refuses_when_only_a_later_output_is_used() -> None:
    x = Value("x", F, (4,))
    split = Node("", "Split", [x], {"axis": 0}, num_outputs=2, name="split")
    for o in split.outputs:
        o.dtype, o.shape = F, (2,)
    neg = Node("", "Neg", [split.outputs[1]], name="neg")
    neg.outputs[0].dtype, neg.outputs[0].shape = F, (2,)
    g = Graph(inputs=[x], outputs=[neg.outputs[0]], nodes=[split, neg])
    before, uses_before = serialized(g), use_lists(g)
    with pytest.raises(IRError, match="used by 'neg'"):
        g.remove(split)
    assert serialized(g) == before and use_lists(g) == uses_before and x.uses == ((split, 0),)


def test_remove_unused_node_releases_its_input_uses() -> None:
    g, x, (a, b, c) = chain_graph()
    dead = g.append(Node("", "Exp", [a.outputs[0], ], name="dead"))
    assert a.outputs[0].uses == ((b, 0), (dead, 0))
    g.remove(dead)
    assert dead.graph is None and len(g) == 3 and dead not in g.nodes
    assert a.outputs[0].uses == ((b, 0),)
    lepton_ir.verify(g)


def test_remove_unsafe_skips_the_check_and_verify_notices() -> None:
    g, x, (a, b, c) = chain_graph()
    g.remove(b, safe=False)
    assert a.outputs[0].uses == ()
    with pytest.raises(IRError, match="not defined"):
        lepton_ir.verify(g)


def test_remove_node_of_another_graph_is_refused() -> None:
    g, *_ = chain_graph()
    other = Node("", "Relu", [Value("q", F, (1,))])
    with pytest.raises(IRError, match="not in graph"):
        g.remove(other)


def test_remove_then_reinsert_a_node() -> None:
    g, x, (a, b, c) = chain_graph()
    dead = g.append(Node("", "Exp", [x], name="dead"))
    g.remove(dead)
    assert dead.inputs == (x,) and x.uses == ((a, 0),)
    g.insert_after(a, dead)
    assert x.uses == ((a, 0), (dead, 0))
    assert [n.name for n in g] == ["a", "dead", "b", "c"]
    lepton_ir.verify(g)


# ----- insertion and iteration -------------------------------------------------------------


def test_insert_before_and_after_keep_order() -> None:
    g, x, (a, b, c) = chain_graph()
    n1, n2 = Node("", "Exp", [x], name="n1"), Node("", "Exp", [x], name="n2")
    g.insert_before(b, [n1, n2])
    assert [n.name for n in g] == ["a", "n1", "n2", "b", "c"]
    n3 = Node("", "Exp", [x], name="n3")
    g.insert_after(c, n3)
    n4, n5 = Node("", "Exp", [x], name="n4"), Node("", "Exp", [x], name="n5")
    g.insert_after(a, [n4, n5])
    n0 = Node("", "Exp", [x], name="n0")
    g.insert_before(a, n0)
    assert [n.name for n in g] == ["n0", "a", "n4", "n5", "n1", "n2", "b", "c", "n3"]
    assert len(g) == 9 and [n.name for n in g.nodes] == [n.name for n in g]
    lepton_ir.verify(g)


def test_insert_anchor_must_be_in_graph_and_node_must_be_free() -> None:
    g, x, (a, b, c) = chain_graph()
    stray = Node("", "Exp", [x], name="stray")
    with pytest.raises(IRError, match="not in graph"):
        g.insert_before(stray, Node("", "Exp", [x]))
    with pytest.raises(IRError, match="already belongs"):
        g.insert_after(a, b)
    assert [n.name for n in g] == ["a", "b", "c"]


def test_new_nodes_and_outputs_get_unique_names() -> None:
    g, x, (a, b, c) = chain_graph()
    made = [g.append(Node("", "Exp", [x])) for _ in range(50)]
    made += [g.append(Node("", "Split", [x], {"axis": 0}, num_outputs=2)) for _ in range(10)]
    node_names = [n.name for n in g]
    value_names = [x.name] + [o.name for n in g for o in n.outputs]
    assert len(set(node_names)) == len(node_names) and all(node_names)
    assert len(set(value_names)) == len(value_names) and all(value_names)
    assert all(n.name.startswith(n.op_type.lower()) for n in made)


def test_iteration_is_a_snapshot_and_skips_removed_nodes() -> None:
    g, x, (a, b, c) = chain_graph()
    deads = [g.append(Node("", "Exp", [x], name=f"d{i}")) for i in range(4)]
    seen = []
    for node in g:
        seen.append(node.name)
        if node.name == "a":
            g.remove(deads[2])  # removed ahead of the cursor: skipped
            g.insert_after(c, Node("", "Exp", [x], name="late"))  # inserted during iteration: not visited
        if node.name.startswith("d"):
            g.remove(node)  # removing the current node is fine
    assert seen == ["a", "b", "c", "d0", "d1", "d3"]
    assert [n.name for n in g] == ["a", "b", "c", "late"]
    lepton_ir.verify(g)


def test_remove_all_while_iterating_in_reverse_dependency_order() -> None:
    g, x, (a, b, c) = chain_graph()
    g.outputs = [x]
    for node in reversed(g.nodes):
        g.remove(node)
    assert len(g) == 0 and list(g) == [] and x.uses == ()
    lepton_ir.verify(g)


def test_sort_restores_topological_order() -> None:
    g, x, (a, b, c) = chain_graph()
    late = Node("", "Exp", [c.outputs[0]], name="late")
    g.insert_before(a, late)  # reads a value produced after it
    with pytest.raises(IRError, match="late"):
        lepton_ir.verify(g)
    g.sort()
    assert [n.name for n in g] == ["a", "b", "c", "late"]
    lepton_ir.verify(g)


def test_sort_of_a_cycle_names_the_nodes_on_it_and_leaves_the_graph_alone() -> None:
    g, x, (a, b, c) = chain_graph()
    b.replace_input(0, c.outputs[0])  # b reads c, c reads b: a loop; nothing downstream is on it
    order = [n.name for n in g]
    with pytest.raises(IRError, match="cycle through nodes") as err:
        g.sort()
    assert "'b'" in str(err.value) and "'c'" in str(err.value) and "'a'" not in str(err.value)
    assert [n.name for n in g] == order


def test_topological_indices_is_stable_and_reports_one_loop() -> None:
    assert topological_indices([set(), {0}, {0}, {1, 2}]) == ([0, 1, 2, 3], [])
    assert topological_indices([{2}, set(), {1}]) == ([1, 2, 0], [])  # the lowest ready index first
    order, cycle = topological_indices([set(), {2}, {1}, {2}])  # 1 <-> 2; 3 only downstream
    assert order == [0] and sorted(cycle) == [1, 2]


# ----- names ---------------------------------------------------------------------------------


def test_fresh_name_is_unique_and_avoids_existing_names() -> None:
    g, x, (a, b, c) = chain_graph()
    g.add_constant(np.zeros(2, np.float32), "w")
    existing = {"x", "a", "b", "c"} | {n.outputs[0].name for n in (a, b, c)} | set(g.initializers)
    names = [g.fresh_name(p) for p in ("a", "b", "x", "relu", "w") * 100]
    assert len(set(names)) == len(names)
    assert not set(names) & existing


def test_fresh_name_avoids_names_given_later() -> None:
    x = Value("x", F, (2,))
    g = Graph(inputs=[x])
    g.append(Node("", "Relu", [x]))  # collects the names; the counter is now running
    taken = {f"relu__{i}" for i in range(2, 12)} | {f"relu__{i}_out" for i in range(2, 12)}
    for i in range(2, 12):  # explicit names that look like the fresh names to come
        g.append(Node("", "Relu", [x], name=f"relu__{i}", outputs=[Value(f"relu__{i + 20}")]))
    g.add_initializer(Value("relu__40", F, (1,), const_value=lepton_ir.Tensor.from_numpy(np.ones(1, np.float32))))
    fresh = [g.append(Node("", "Relu", [x])) for _ in range(30)]
    fresh_names = {n.name for n in fresh} | {n.outputs[0].name for n in fresh}
    assert not fresh_names & (taken | {f"relu__{i + 20}" for i in range(2, 12)} | {"relu__40"})
    lepton_ir.verify(g)


def test_reimported_model_with_fresh_looking_names_stays_unique() -> None:
    nodes = [
        oh.make_node("Relu", ["x"], ["relu__1"], name="relu__0"),
        oh.make_node("Relu", ["relu__1"], ["relu__0_out__2"], name="relu__3"),
        oh.make_node("Relu", ["relu__0_out__2"], ["y"], name="relu__4"),
    ]
    m = mk_model(nodes, [vi("x", [2])], [vi("y", [2])])
    g = lepton_ir.load(m)
    model_names = {"x", "y", "relu__0", "relu__1", "relu__0_out__2", "relu__3", "relu__4"}
    new = [g.append(Node("", "Relu", [g.inputs[0]])) for _ in range(10)]
    new_names = {n.name for n in new} | {n.outputs[0].name for n in new}
    assert len(new_names) == 20 and not new_names & model_names
    lepton_ir.verify(g)
    # Export and re-import, then do it again: still no collisions.
    g2 = lepton_ir.load(lepton_ir.to_onnx(g))
    all_names = {n.name for n in g2} | {o.name for n in g2 for o in n.outputs} | {"x"}
    newer = [g2.append(Node("", "Relu", [g2.inputs[0]])) for _ in range(10)]
    newer_names = {n.name for n in newer} | {n.outputs[0].name for n in newer}
    assert len(newer_names) == 20 and not newer_names & all_names
    lepton_ir.verify(g2)


def test_duplicate_and_missing_node_names_are_made_unique_on_import() -> None:
    nodes = [
        oh.make_node("Relu", ["x"], ["r1"], name="same"),
        oh.make_node("Relu", ["r1"], ["r2"], name="same"),
        oh.make_node("Relu", ["r2"], ["y"]),
    ]
    g = lepton_ir.load(mk_model(nodes, [vi("x", [2])], [vi("y", [2])]))
    names = [n.name for n in g]
    assert names[0] == "same" and len(set(names)) == 3 and all(names)


def test_add_constant_gets_a_unique_typed_initializer() -> None:
    g, *_ = chain_graph()
    v1 = g.add_constant(np.arange(6, dtype=np.int64).reshape(2, 3), "k")
    v2 = g.add_constant(np.float16([1.5]), "k")
    assert v1.name != v2.name and g.initializers[v1.name] is v1
    assert v1.dtype == T.INT64 and v1.shape == (2, 3) and v2.dtype == T.FLOAT16 and v2.shape == (1,)
    assert np.array_equal(v1.const_value.numpy(), np.arange(6).reshape(2, 3))
    with pytest.raises(IRError, match="duplicate initializer"):
        g.add_initializer(Value(v1.name, T.INT64, (1,), const_value=lepton_ir.Tensor.from_numpy(np.ones(1, np.int64))))


# ----- attributes --------------------------------------------------------------------------


def test_attr_infer_types() -> None:
    A = onnx.AttributeProto
    n = Node("", "X", [], {"i": 3, "b": True, "f": 0.5, "s": "abc", "by": b"\x00", "ints": [1, 2], "fl": [1, 2.5],
                           "strs": ["a", b"b"], "t": np.ones(2, np.float32), "empty": Attr(A.FLOATS, [])})
    types = {k: a.type for k, a in n.attributes.items()}
    assert types == {"i": A.INT, "b": A.INT, "f": A.FLOAT, "s": A.STRING, "by": A.STRING, "ints": A.INTS,
                     "fl": A.FLOATS, "strs": A.STRINGS, "t": A.TENSOR, "empty": A.FLOATS}
    assert n.attr("s") == b"abc" and n.attr("strs") == [b"a", b"b"] and n.attr("missing", 7) == 7
    assert isinstance(n.attr("t"), lepton_ir.Tensor)
    with pytest.raises(IRError, match="cannot infer"):
        Attr.infer([1, "a"])


def test_attr_equality_is_bit_exact_for_nan() -> None:
    A = onnx.AttributeProto
    assert Attr(A.FLOAT, float("nan")) == Attr(A.FLOAT, float("nan"))
    assert Attr(A.FLOAT, 0.0) != Attr(A.FLOAT, -0.0)
    assert Attr(A.INTS, [1, 2]) == Attr(A.INTS, [1, 2]) and hash(Attr(A.INTS, [1, 2])) == hash(Attr(A.INTS, [1, 2]))
    assert Attr(A.INTS, [1]) != Attr(A.FLOATS, [1.0])
    t1, t2 = lepton_ir.Tensor.from_numpy(np.float32([np.nan])), lepton_ir.Tensor.from_numpy(np.float32([np.nan]))
    assert Attr(A.TENSOR, t1) == Attr(A.TENSOR, t2)
    assert lepton_ir.tensors_equal(t1, t2)
    assert not lepton_ir.tensors_equal(t1, lepton_ir.Tensor.from_numpy(np.float64([np.nan])))


# ----- verifier ----------------------------------------------------------------------------


def test_verify_accepts_valid_graphs() -> None:
    g, *_ = chain_graph()
    lepton_ir.verify(g)
    lepton_ir.verify(lepton_ir.load(if_model()))


def test_verify_catches_node_out_of_order() -> None:
    g, x, (a, b, c) = chain_graph()
    g.remove(c, safe=False)  # c's input use released; relink c at the front, reading b's output
    c.replace_input(0, b.outputs[0])
    g.insert_before(a, c)
    with pytest.raises(IRError, match=r"node 'c' input 0 .* not defined before the node"):
        lepton_ir.verify(g)


def test_verify_catches_a_dangling_use() -> None:
    g, x, (a, b, c) = chain_graph()
    ghost = Node("", "Exp", [a.outputs[0]], name="ghost")
    a.outputs[0]._add_use(ghost, 0)  # a use by a node that is not in the graph (corrupted by hand)
    with pytest.raises(IRError, match="ghost"):
        lepton_ir.verify(g)


def test_verify_catches_a_missing_use() -> None:
    g, x, (a, b, c) = chain_graph()
    a.outputs[0]._uses.clear()
    with pytest.raises(IRError, match=r"lacks the use \('b', 0\)"):
        lepton_ir.verify(g)


def test_verify_catches_a_use_pointing_at_the_wrong_input() -> None:
    g, x, (a, b, c) = chain_graph()
    x._add_use(c, 0)  # c's input 0 is b's output, not x
    with pytest.raises(IRError, match=r"lists use \('c', 0\)"):
        lepton_ir.verify(g)


def test_verify_catches_duplicate_names_and_broken_back_pointers() -> None:
    g, x, (a, b, c) = chain_graph()
    b.name = "a"
    with pytest.raises(IRError, match="node name 'a' is used twice"):
        lepton_ir.verify(g)
    b.name = "b"
    b.outputs[0].name = a.outputs[0].name
    with pytest.raises(IRError, match="used twice"):
        lepton_ir.verify(g)
    b.outputs[0].name = "b_out"
    b.outputs[0].output_index = 3
    with pytest.raises(IRError, match="does not point back"):
        lepton_ir.verify(g)


def test_verify_catches_undefined_graph_output_and_schema_errors() -> None:
    g, x, (a, b, c) = chain_graph()
    g.outputs = (*g.outputs, Value("nowhere", F, (1,)))
    with pytest.raises(IRError, match="graph output 'nowhere'"):
        lepton_ir.verify(g)
    g.outputs = g.outputs[:-1]
    g.append(Node("", "Relu", [x, x], name="two_in"))
    with pytest.raises(IRError, match="two_in"):
        lepton_ir.verify(g)


def test_verify_catches_a_use_by_a_node_inside_a_removed_subgraph() -> None:
    g = lepton_ir.load(if_model(out_is_graph_output=False))
    relu, if_node, _ = g.nodes
    inner_add = next(n for n in if_node.attr("then_branch").nodes if n.op_type == "Add")
    g.remove(if_node)
    # Simulate a stale capture left behind by a node removed from the model.
    relu.outputs[0]._add_use(inner_add, 0)
    inner_add._inputs[0] = relu.outputs[0]
    with pytest.raises(IRError, match="removed node"):
        lepton_ir.verify(g)


# ----- printer -----------------------------------------------------------------------------


def test_print_has_one_line_per_node_with_types() -> None:
    m = mk_model(
        [oh.make_node("Conv", ["x", "w"], ["c"], name="conv", pads=[1, 1, 1, 1]),
         oh.make_node("Relu", ["c"], ["r"], name="relu"),
         oh.make_node("Reshape", ["r", "shape"], ["y"], name="reshape")],
        [vi("x", ["N", 3, 8, 8])], [vi("y", ["N", 512])],
        [oh.make_tensor("w", F, [8, 3, 3, 3], np.zeros(8 * 27)), oh.make_tensor("shape", T.INT64, [2], [-1, 512])])
    g = lepton_ir.load(m)
    text = lepton_ir.format_graph(g)
    node_lines = [ln for ln in text.splitlines() if " = " in ln]
    assert len(node_lines) == len(g) == 3
    for line, node in zip(node_lines, g, strict=True):
        assert line.rstrip().endswith(f"# {node.name}") and node.op_type in line
    assert "%c: float32[N,8,8,8] = Conv(%x, %w) {pads=[1, 1, 1, 1]}" in node_lines[0]
    assert "input %x: float32[N,3,8,8]" in text
    assert "2 initializers" in text and "return %y" in text
    assert "Graph(" in repr(g)


def test_print_shows_subgraphs_indented() -> None:
    g = lepton_ir.load(if_model())
    text = lepton_ir.format_graph(g)
    assert "<graph then_branch>" in text and "graph then_branch (2 nodes) {" in text
    assert sum(" = " in ln for ln in text.splitlines()) == sum(1 for _ in g.all_nodes())


# ----- networkx view -----------------------------------------------------------------------


def diamond() -> Graph:
    """x -> a -> (b, c) -> d(b, c) -> e(d, d)."""
    m = mk_model(
        [oh.make_node("Relu", ["x"], ["a"], name="A"),
         oh.make_node("Neg", ["a"], ["b"], name="B"),
         oh.make_node("Abs", ["a"], ["c"], name="C"),
         oh.make_node("Add", ["b", "c"], ["d"], name="D"),
         oh.make_node("Mul", ["d", "d"], ["y"], name="E")],
        [vi("x", [2])], [vi("y", [2])])
    return lepton_ir.load(m)


def test_to_networkx_is_a_frozen_multidigraph_with_one_edge_per_use() -> None:
    g = diamond()
    nxg = lepton_ir.to_networkx(g)
    assert isinstance(nxg, nx.MultiDiGraph) and nx.is_frozen(nxg)
    with pytest.raises(nx.NetworkXError):
        nxg.add_node("z")
    assert set(nxg.nodes) == {"A", "B", "C", "D", "E"}
    assert nxg.nodes["D"]["node"] is g.nodes[3] and nxg.nodes["D"]["op_type"] == "Add"
    edges = sorted((u, v, d["value"], d["input_index"]) for u, v, d in nxg.edges(data=True))
    assert edges == [("A", "B", "a", 0), ("A", "C", "a", 0), ("B", "D", "b", 0), ("C", "D", "c", 1),
                     ("D", "E", "d", 0), ("D", "E", "d", 1)]
    assert nxg.number_of_edges("D", "E") == 2
    assert nxg.graph["inputs"] == ["x"] and nxg.graph["outputs"] == ["y"]
    assert nx.is_directed_acyclic_graph(nxg)
    idom = nx.immediate_dominators(nxg, "A")
    assert idom["D"] == "A" and idom["E"] == "D" and idom["B"] == "A"
    assert list(nx.topological_sort(nxg))[0] == "A"


def test_to_networkx_counts_subgraph_captures_as_edges_to_the_owner() -> None:
    g = lepton_ir.load(if_model())
    nxg = lepton_ir.to_networkx(g)
    assert set(nxg.nodes) == {"relu", "if"}
    assert nxg.has_edge("relu", "if")  # the If reads relu's output inside its branches
    assert nx.is_directed_acyclic_graph(nxg)
    assert list(nx.topological_sort(nxg)) == ["relu", "if"]


# ----- subgraphs ---------------------------------------------------------------------------


def test_subgraph_captures_are_uses_of_the_outer_value() -> None:
    g = lepton_ir.load(if_model())
    relu, if_node = g.nodes
    then_g, else_g = if_node.attr("then_branch"), if_node.attr("else_branch")
    assert set(if_node.subgraphs()) == {then_g, else_g}
    assert then_g.parent is if_node and else_g.parent is if_node
    assert then_g.root() is g and else_g.root() is g
    assert sorted(x.name for x in g.all_graphs()) == ["else_branch", "g", "then_branch"]
    inner_add = next(n for n in then_g if n.op_type == "Add")
    inner_sub = next(n for n in else_g if n.op_type == "Sub")
    r = relu.outputs[0]
    assert inner_add.inputs[0] is r and inner_sub.inputs[0] is r
    assert set(r.users()) == {inner_add, inner_sub}
    assert inner_add.graph is then_g
    lepton_ir.verify(g)


def test_removing_a_captured_outer_producer_is_refused() -> None:
    g = lepton_ir.load(if_model(out_is_graph_output=False))
    relu = g.nodes[0]
    before, uses_before = serialized(g), use_lists(g)
    with pytest.raises(IRError, match=r"cannot remove node 'relu'.*then_add"):
        g.remove(relu)
    assert serialized(g) == before and use_lists(g) == uses_before
    lepton_ir.verify(g)


def test_removing_a_node_with_subgraphs_releases_captured_uses() -> None:
    g = lepton_ir.load(if_model(out_is_graph_output=False))
    relu, if_node, _ = g.nodes
    g.remove(if_node)
    assert relu.outputs[0].uses == ()
    lepton_ir.verify(g)
    g.remove(relu)  # now unused
    lepton_ir.verify(g)
    assert [n.name for n in g] == ["abs"]


def test_fresh_names_in_subgraphs_are_unique_model_wide() -> None:
    g = lepton_ir.load(if_model())
    then_g = g.nodes[1].attr("then_branch")
    outer = [g.append(Node("", "Identity", [g.inputs[0]])) for _ in range(5)]
    inner = [then_g.insert_before(then_g.nodes[0], Node("", "Identity", [g.inputs[0]])) for _ in range(5)]
    del inner
    names = [n.name for n in g.all_nodes()]
    values = [o.name for n in g.all_nodes() for o in n.outputs]
    assert len(set(names)) == len(names) and len(set(values)) == len(values)
    assert outer[0].name.startswith("identity__")
    lepton_ir.verify(g)


def test_replace_all_uses_reaches_into_subgraphs() -> None:
    g = lepton_ir.load(if_model())
    relu, if_node = g.nodes
    x = g.inputs[0]
    relu.outputs[0].replace_all_uses_with(x)
    inner_add = next(n for n in if_node.attr("then_branch") if n.op_type == "Add")
    assert inner_add.inputs[0] is x and relu.outputs[0].uses == ()
    g.remove(relu)
    lepton_ir.verify(g)
    assert [n.name for n in g] == ["if"]
