"""Declarative patterns (`passes.pattern`) and the worklist rewrite driver (`passes.rewrite`)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import ClassVar, Literal

import numpy as np
import onnx
import pytest
from onnx import TensorProto as T
from onnx import helper as oh

import lepton_ir
from lepton_ir import Graph, InternalError, Value
from lepton_ir.rewriter import Builder
from passes import PassManager, PipelineSyntaxError, register
from passes.base import Pass, PassContext, PassResult, parse_pipeline
from passes.pattern import Pattern, PatternMatch, const, op, scalar, var
from passes.rewrite import Match, PatternRule, RewritePass, failed, matched
from passutil import assert_outputs_close, run_pass
from passes.ort import run_model


def model(nodes: list[onnx.NodeProto], inits: Sequence[onnx.TensorProto] = (), outs: Sequence[str] = ("y",),
          shape: Sequence[int] = (1, 2, 4, 4)) -> onnx.ModelProto:
    g = oh.make_graph(nodes, "m", [oh.make_tensor_value_info("x", T.FLOAT, list(shape))],
                      [oh.make_tensor_value_info(o, T.FLOAT, list(shape)) for o in outs], list(inits))
    return oh.make_model(g, opset_imports=[oh.make_opsetid("", 17)], ir_version=8)


def init(name: str, arr: np.ndarray) -> onnx.TensorProto:
    return onnx.numpy_helper.from_array(np.asarray(arr, np.float32), name)


W = np.random.default_rng(0).standard_normal((2, 2, 1, 1)).astype(np.float32)
B = np.array([0.5, -0.25], np.float32)

CONV_ADD_RELU = Pattern(op.Relu(op.Add(op.Conv(var("x"), const("w"), name="conv"), const("b"))))


def conv_add_relu(add_inputs: list[str]) -> lepton_ir.Graph:
    return lepton_ir.load(model([
        oh.make_node("Conv", ["x", "w"], ["c"], name="conv"),
        oh.make_node("Add", add_inputs, ["s"], name="add"),
        oh.make_node("Relu", ["s"], ["y"], name="relu"),
    ], [init("w", W), init("b", B.reshape(1, 2, 1, 1))]))


@pytest.mark.parametrize("add_inputs", [["c", "b"], ["b", "c"]])
def test_pattern_matches_commutative_inputs_either_way(add_inputs: list[str]) -> None:
    g = conv_add_relu(add_inputs)
    relu = next(n for n in g if n.op_type == "Relu")
    pm = CONV_ADD_RELU.match(relu, g)
    assert isinstance(pm, PatternMatch)
    assert [n.op_type for n in pm.nodes] == ["Relu", "Add", "Conv"]
    assert pm["x"].name == "x" and pm["conv"].name == "conv"
    np.testing.assert_array_equal(pm.const("w"), W)


def test_a_miss_reports_the_closest_partial_match() -> None:
    g = lepton_ir.load(model([
        oh.make_node("MatMul", ["x", "w"], ["c"], name="mm"),
        oh.make_node("Add", ["c", "b"], ["s"], name="add"),
        oh.make_node("Relu", ["s"], ["y"], name="relu"),
    ], [init("w", np.ones((4, 4))), init("b", np.ones(4))]))
    relu = next(n for n in g if n.op_type == "Relu")
    miss = CONV_ADD_RELU.match(relu, g)
    assert not miss and miss.depth == 2 and "'mm' is MatMul, expected Conv" in miss.reason


def test_a_variable_named_twice_must_bind_one_value() -> None:
    silu = Pattern(op.Mul(var("x"), op.Sigmoid(var("x"))))
    g = lepton_ir.load(model([oh.make_node("Sigmoid", ["x"], ["s"]), oh.make_node("Mul", ["s", "x"], ["y"])]))
    assert silu.match(next(n for n in g if n.op_type == "Mul"), g)
    g2 = lepton_ir.load(model([oh.make_node("Sigmoid", ["x"], ["s"]), oh.make_node("Relu", ["x"], ["r"]),
                               oh.make_node("Mul", ["s", "r"], ["y"])]))
    miss = silu.match(next(n for n in g2 if n.op_type == "Mul"), g2)
    assert not miss and "must be one value" in miss.reason


def test_optional_inputs_need_an_ellipsis_and_attributes_and_constants_are_checked() -> None:
    g = lepton_ir.load(model([oh.make_node("Conv", ["x", "w", "b"], ["y"], group=1)], [init("w", W), init("b", B)]))
    conv = next(iter(g))
    assert not Pattern(op.Conv(var("x"), const("w"))).match(conv, g)
    assert Pattern(op.Conv(var("x"), const("w"), ...)).match(conv, g)
    assert Pattern(op.Conv(var("x"), const("w"), const("b"), attrs={"group": 1})).match(conv, g)
    miss = Pattern(op.Conv(var("x"), const("w"), ..., attrs={"group": 2})).match(conv, g)
    assert not miss and "group=1" in miss.reason
    assert not Pattern(op.Conv(const("x"), const("w"), ...)).match(conv, g)  # x is a graph input, not a constant
    half = lepton_ir.load(model([oh.make_node("Mul", ["x", "h"], ["y"])], [init("h", np.array(0.5))]))
    mul = next(iter(half))
    assert Pattern(op.Mul(var("x"), const("h", scalar(0.5)))).match(mul, half)
    assert not Pattern(op.Mul(var("x"), const("h", scalar(2.0)))).match(mul, half)


def test_multi_root_pattern_finds_siblings_that_share_an_input() -> None:
    ws = [init(f"w{i}", np.eye(4) * (i + 1)) for i in range(3)]
    g = lepton_ir.load(model([oh.make_node("MatMul", ["x", f"w{i}"], [f"y{i}"], name=f"mm{i}") for i in range(3)],
                             ws, outs=("y0", "y1", "y2")))
    qkv = Pattern(op.MatMul(var("x"), const("wq")), op.MatMul(var("x"), const("wk")), op.MatMul(var("x"), const("wv")))
    pm = qkv.match(g.nodes[0], g)
    assert isinstance(pm, PatternMatch)
    assert {n.name for n in pm.roots} == {"mm0", "mm1", "mm2"} and len(pm.nodes) == 3


# ----- the driver ---------------------------------------------------------------------------


class FuseConvAddRelu(PatternRule):
    """Test rule: Relu(Add(Conv(x, w), b)) with a per-channel b -> Relu(Conv(x, w, b))."""

    name = "conv-add-relu"
    pattern = CONV_ADD_RELU

    def condition(self, pm: PatternMatch, graph: Graph) -> Match:
        if pm.const("b").size != pm.const("w").shape[0]:
            return failed("the added constant is not one value per output channel")
        return matched()

    def build(self, b: Builder, pm: PatternMatch, m: Match) -> Sequence[Value]:
        bias = b.const(pm.const("b").reshape(-1), "bias")
        conv = b.op("Conv", [pm["x"], pm["w"], bias], dict(pm["conv"].attributes))
        return [b.Relu(conv)]


class ReluOfRelu(PatternRule):
    name = "relu-relu"
    pattern = Pattern(op.Relu(op.Relu(var("x"))))

    def build(self, b: Builder, pm: PatternMatch, m: Match) -> Sequence[Value]:
        return [b.Relu(pm["x"])]


@register
@dataclass(frozen=True)
class _TestFusion(RewritePass):
    name: ClassVar[str] = "test-fusion"
    rules = (FuseConvAddRelu(), ReluOfRelu())


def test_pattern_rule_fires_keeps_results_and_counts_per_rule() -> None:
    m = model([oh.make_node("Conv", ["x", "w"], ["c"]), oh.make_node("Add", ["b", "c"], ["s"]),
               oh.make_node("Relu", ["s"], ["r"]), oh.make_node("Relu", ["r"], ["y"])],
              [init("w", W), init("b", B.reshape(1, 2, 1, 1))])
    inputs = {"x": np.random.default_rng(1).standard_normal((1, 2, 4, 4)).astype(np.float32)}
    g = lepton_ir.load(m)
    res = run_pass(_TestFusion(), g)
    assert dict(res.stats) == {"conv-add-relu": 1, "relu-relu": 1}
    assert res.rules["conv-add-relu"].matched == 1 and res.rules["conv-add-relu"].tried >= 1
    assert [n.op_type for n in g] == ["Conv", "Relu"]
    assert g.outputs[0].name == "y"
    assert_outputs_close(run_model(m, inputs), run_model(lepton_ir.to_onnx(g), inputs))
    assert not run_pass(_TestFusion(), g).modified


def test_worklist_revisits_what_a_rewrite_made() -> None:
    """relu-relu fires on the inner pair after conv-add-relu made a new Relu under the outer one:
    one run reaches the fixed point only if the driver revisits inserted nodes' readers."""
    m = model([oh.make_node("Relu", ["x"], ["r1"]), oh.make_node("Relu", ["r1"], ["r2"]),
               oh.make_node("Relu", ["r2"], ["r3"]), oh.make_node("Relu", ["r3"], ["y"])])
    g = lepton_ir.load(m)
    res = _TestFusion().run(g, PassContext())
    assert [n.op_type for n in g if n.op_type == "Relu"] == ["Relu"]
    assert res.stats["relu-relu"] == 3


def test_an_intermediate_read_outside_blocks_the_rewrite_with_a_reason() -> None:
    g = lepton_ir.load(model([oh.make_node("Conv", ["x", "w"], ["c"], name="conv"), oh.make_node("Add", ["c", "b"], ["s"]),
                              oh.make_node("Relu", ["s"], ["y"])], [init("w", W), init("b", B.reshape(1, 2, 1, 1))],
                             outs=("y", "c")))
    assert not _TestFusion().run(g, PassContext()).modified
    reasons = [r for _, rule, r in _TestFusion().explain(g) if rule == "conv-add-relu"]
    assert reasons and "is an output of graph" in reasons[0]
    node, reason = _TestFusion().closest(g, "conv-add-relu")
    assert "does not replace it" in reason


class Flip(PatternRule):
    """Two rules that undo each other: the driver must stop and say so."""

    name = "flip"
    pattern = Pattern(op.Neg(var("x")))

    def build(self, b: Builder, pm: PatternMatch, m: Match) -> Sequence[Value]:
        return [b.Neg(b.Neg(b.Neg(pm["x"])))]


@dataclass(frozen=True)
class _Loop(RewritePass):
    name: ClassVar[str] = "test-loop"
    rules = (Flip(),)


def test_rules_that_undo_each_other_are_stopped_with_a_named_error() -> None:
    g = lepton_ir.load(model([oh.make_node("Neg", ["x"], ["y"])]))
    with pytest.raises(InternalError, match="flip x"):
        _Loop().run(g, PassContext())


# ----- pipeline text and stages -----------------------------------------------------------------


@register
@dataclass(frozen=True)
class _Options(Pass):
    name: ClassVar[str] = "test-options"
    repeat: ClassVar[bool] = False
    mode: Literal["int8", "int4"] = "int8"
    exclude: tuple[str, ...] = ()
    limit: int | None = None
    ratio: float = 0.5

    def run(self, graph: Graph, ctx: PassContext) -> PassResult:
        return PassResult(False)


def test_pipeline_text_parses_typed_options() -> None:
    (p,) = parse_pipeline("test-options{mode=int4,exclude=[/head/*,/tail/*],limit=3}")
    assert p == _Options("int4", ("/head/*", "/tail/*"), 3)
    assert parse_pipeline(p.spec()) == [p]
    assert parse_pipeline("test-options{limit=none,exclude=/a}") == [_Options(exclude=("/a",))]
    with pytest.raises(PipelineSyntaxError, match="one of int8, int4"):
        parse_pipeline("test-options{mode=int3}")
    with pytest.raises(PipelineSyntaxError, match="should be int"):
        parse_pipeline("test-options{limit=many}")
    with pytest.raises(PipelineSyntaxError, match="unbalanced"):
        parse_pipeline("test-options{exclude=[a,b}")


def test_the_manager_runs_cleanup_stages_to_a_fixed_point_and_one_shot_passes_once() -> None:
    calls: list[str] = []

    @dataclass(frozen=True)
    class Count(Pass):
        name: ClassVar[str] = "count"
        repeat: ClassVar[bool] = False

        def run(self, graph: Graph, ctx: PassContext) -> PassResult:
            calls.append("once")
            return PassResult(False)

    m = model([oh.make_node("Relu", ["x"], ["r1"]), oh.make_node("Identity", ["r1"], ["r2"]),
               oh.make_node("Relu", ["r2"], ["y"])])
    g = lepton_ir.load(m)
    pipeline = [*parse_pipeline("eliminate-identity,eliminate-dead-code"), Count(), *parse_pipeline("test-fusion")]
    res = PassManager(pipeline).run(g)
    assert res.stages == [["eliminate-identity", "eliminate-dead-code"], ["count"], ["test-fusion"]]
    assert calls == ["once"]
    assert [r.stage for r in res.records if r.name == "count"] == [1]
    assert [n.op_type for n in g] == ["Relu"]
    fusion = next(row for row in res.summary() if row["pass"] == "test-fusion")
    assert fusion["rules"]["relu-relu"]["matched"] == 1


def test_per_rule_counts_reach_the_manifest_and_the_report(tmp_path) -> None:
    import lepton
    from lepton.report import rule_table
    from rich.console import Console

    m = model([oh.make_node("Relu", ["x"], ["r1"]), oh.make_node("Relu", ["r1"], ["y"])])
    res = lepton.compile(m, "x86", passes="test-fusion", output_dir=str(tmp_path / "a"), use_cache=False)
    (rec,) = [r for r in res.manifest.passes if r["pass"] == "test-fusion" and r["modified"]]
    assert rec["rules"]["relu-relu"]["matched"] == 1 and rec["rules"]["relu-relu"]["tried"] >= 1
    console = Console(record=True, width=120)
    console.print(rule_table(res.manifest.passes))
    assert "relu-relu" in console.export_text()
