"""Pass manager: pipeline text, fixed point, instruments, error reporting, debug verification."""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import ClassVar

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper

import lepton_ir
from lepton_ir import Graph, Node
from passes import IRDump, Pass, PassContext, PassError, PassManager, PassResult, PipelineSyntaxError, parse_pipeline, register


def _chain_model(n: int = 3) -> onnx.ModelProto:
    nodes = [helper.make_node("Relu", ["x" if i == 0 else f"r{i - 1}"], [f"r{i}"], name=f"relu{i}") for i in range(n)]
    nodes.append(helper.make_node("Identity", [f"r{n - 1}"], ["y"], name="out"))
    g = helper.make_graph(
        nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 3])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [2, 3])],
    )
    return helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)


@register
@dataclass(frozen=True)
class DropOneRelu(Pass):
    """Test pass: bypasses the first Relu whose input is another Relu (one per run)."""

    name: ClassVar[str] = "test-drop-one-relu"
    limit: int = 100

    def run(self, graph: Graph, ctx: PassContext) -> PassResult:
        for node in graph:
            src = node.inputs[0]
            if node.op_type == "Relu" and src is not None and src.producer is not None and src.producer.op_type == "Relu":
                node.outputs[0].replace_all_uses_with(src)
                graph.remove(node)
                return PassResult(True, {"relus_dropped": 1})
        return PassResult(False)


@register
@dataclass(frozen=True)
class Explode(Pass):
    name: ClassVar[str] = "test-explode"

    def run(self, graph: Graph, ctx: PassContext) -> PassResult:
        raise ZeroDivisionError("boom")


@register
@dataclass(frozen=True)
class BreakIR(Pass):
    """Test pass: appends a node that reads a value defined later (breaks topological order)."""

    name: ClassVar[str] = "test-break-ir"

    def run(self, graph: Graph, ctx: PassContext) -> PassResult:
        first = graph.nodes[0]
        last = graph.nodes[-1]
        graph.insert_before(first, Node("", "Relu", [last.outputs[0]]))
        return PassResult(True)


def test_pipeline_text_parses_names_and_typed_options() -> None:
    ps = parse_pipeline("test-drop-one-relu{limit=3}, test-explode")
    assert [p.name for p in ps] == ["test-drop-one-relu", "test-explode"]
    assert ps[0].limit == 3 and isinstance(ps[0].limit, int)
    assert ps[0].spec() == "test-drop-one-relu{limit=3}"


@pytest.mark.parametrize(
    "text, needle",
    [("no-such-pass", "unknown pass 'no-such-pass'"), ("test-drop-one-relu{nope=1}", "unknown option .nope.; options: limit"),
     ("test-drop-one-relu{limit=x}", "should be int"), ("test-drop-one-relu{limit=1", "cannot parse")],
)
def test_bad_pipeline_text_is_a_user_error(text: str, needle: str) -> None:
    with pytest.raises(PipelineSyntaxError, match=needle.replace("{", r"\{")):
        parse_pipeline(text)


def test_fixed_point_runs_until_nothing_changes() -> None:
    graph = lepton_ir.load(_chain_model(4))
    result = PassManager([DropOneRelu()]).run(graph)
    assert [n.op_type for n in graph] == ["Relu", "Identity"]
    assert result.converged and result.iterations == 4  # three drops, then one quiet run
    assert [r.modified for r in result.records] == [True, True, True, False]
    assert result.records[0].nodes_before == 5 and result.records[0].nodes_after == 4
    assert result.summary()[0]["stats"] == {"relus_dropped": 3}


def test_fixed_point_is_bounded() -> None:
    graph = lepton_ir.load(_chain_model(6))
    result = PassManager([DropOneRelu()], max_iterations=2).run(graph)
    assert not result.converged and result.iterations == 2 and len(graph) == 5


def test_failing_pass_is_named_with_its_predecessors() -> None:
    graph = lepton_ir.load(_chain_model())
    with pytest.raises(PassError, match=r"pass 'test-explode' failed: ZeroDivisionError: boom \(passes that ran before it: test-drop-one-relu\)"):
        PassManager("test-drop-one-relu,test-explode").run(graph)


def test_debug_mode_verifies_between_passes(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LEPTON_DEBUG", "1")
    graph = lepton_ir.load(_chain_model())
    with pytest.raises(PassError, match="test-break-ir.*not defined before the node"):
        PassManager("test-break-ir").run(graph)
    monkeypatch.setenv("LEPTON_DEBUG", "0")
    PassManager("test-break-ir", max_iterations=1).run(lepton_ir.load(_chain_model()))  # not verified: no error


def test_ir_dump_writes_one_file_per_modifying_pass(tmp_path: str) -> None:
    graph = lepton_ir.load(_chain_model(3))
    PassManager([DropOneRelu()], instruments=[IRDump(str(tmp_path))]).run(graph)
    files = sorted(os.listdir(tmp_path))
    assert files == ["000_input.onnx", "001_test-drop-one-relu.onnx", "002_test-drop-one-relu.onnx"]
    dumped = lepton_ir.load(os.path.join(tmp_path, "002_test-drop-one-relu.onnx"))
    assert len(dumped) == 2


class _Recorder:
    def __init__(self) -> None:
        self.events: list[tuple[str, str, int]] = []

    def before_pass(self, p: Pass, graph: Graph, ctx: PassContext) -> None:
        self.events.append(("before", p.name, len(graph)))

    def after_pass(self, p: Pass, graph: Graph, ctx: PassContext, record: object) -> None:
        self.events.append(("after", p.name, len(graph)))


def test_instruments_see_every_run_in_order() -> None:
    rec = _Recorder()
    graph = lepton_ir.load(_chain_model(2))
    PassManager([DropOneRelu()], instruments=[rec]).run(graph)
    assert rec.events == [("before", "test-drop-one-relu", 3), ("after", "test-drop-one-relu", 2),
                          ("before", "test-drop-one-relu", 2), ("after", "test-drop-one-relu", 2)]


def test_numerical_check_hook_can_inspect_each_pass() -> None:
    """An instrument can run the graph after each pass (the hook bisection uses)."""
    from passes.ort import run_model

    x = np.random.default_rng(0).standard_normal((2, 3)).astype(np.float32)
    seen: list[float] = []

    class Check:
        def after_pass(self, p: Pass, graph: Graph, ctx: PassContext, record: object) -> None:
            y = run_model(lepton_ir.to_onnx(graph), {"x": x})["y"]
            seen.append(float(np.abs(y - np.maximum(x, 0)).max()))

    PassManager([DropOneRelu()], instruments=[Check()]).run(lepton_ir.load(_chain_model(3)))
    assert seen == [0.0, 0.0, 0.0]
