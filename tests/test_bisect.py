"""Bisection names the pass that breaks the outputs, or the codegen when every pass is right."""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from dataclasses import dataclass
from typing import ClassVar

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper
from typer.testing import CliRunner

import lepton.bisect as bisect_mod
from lepton.bisect import bisect
from lepton.cli import app
from lepton_ir import Graph, Value
from lepton_ir.rewriter import Builder
from passes import Pass, PassContext, PassResult
from passes.cleanup.dce import EliminateDeadCode
from passes.cleanup.fold import FoldConstants
from passes.fusion.activation import FuseActivation
from passes.fusion.bias import ConvBias
from passes.pattern import PatternMatch
from passes.rewrite import Match, RewritePass, Rule

DEMO = os.path.join(os.path.dirname(__file__), "..", "bench", "models", "digits_cnn.onnx")


@dataclass(frozen=True)
class ReluToSigmoid(Pass):
    """A deliberately wrong pass: every Relu becomes a Sigmoid."""

    name: ClassVar[str] = "test-relu-to-sigmoid"
    summary: ClassVar[str] = "wrong on purpose"

    def run(self, graph: Graph, ctx: PassContext) -> PassResult:
        changed = 0
        for node in graph:
            if node.op_type == "Relu":
                node.op_type = "Sigmoid"
                changed += 1
        return PassResult(changed > 0, {"relus_broken": changed})


def test_a_wrong_pass_is_named_with_the_output_it_broke() -> None:
    report = bisect(DEMO, "x86", passes=[FoldConstants(), ReluToSigmoid(), EliminateDeadCode()])
    bad = report.first_bad
    assert bad is not None and bad.name == "test-relu-to-sigmoid" and bad.worst_output == "logits"
    assert bad.max_abs_err > 1e-3
    assert [s.name for s in report.steps[: bad.index]] == ["import", "fold-constants"][: bad.index]
    assert all(s.ok for s in report.steps[: bad.index])
    assert "test-relu-to-sigmoid" in report.verdict() and report.codegen is None and not report.ok
    json.dumps(report.to_json())


def test_right_passes_and_right_codegen_give_no_mismatch() -> None:
    report = bisect(DEMO, "x86")
    assert report.ok and report.codegen is not None and report.codegen.ok
    assert len(report.steps) >= 2 and report.steps[0].name == "import"
    assert "no mismatch" in report.verdict()


def test_a_codegen_bug_is_told_apart_from_a_pass_bug(monkeypatch: pytest.MonkeyPatch) -> None:
    import lepton_ir

    real = bisect_mod.to_relax

    def wrong_lowering(graph: Graph, provenance=None):  # the module computes another graph than the passes produced
        broken = lepton_ir.load(lepton_ir.to_onnx(graph))
        ReluToSigmoid().run(broken, PassContext())
        return real(broken, provenance)

    monkeypatch.setattr(bisect_mod, "to_relax", wrong_lowering)
    report = bisect(DEMO, "x86")
    assert report.first_bad is None and report.codegen is not None and not report.codegen.ok
    assert report.verdict().startswith("codegen bug")


def test_cli_bisect_exit_codes(tmp_path: str) -> None:
    runner = CliRunner()
    res = runner.invoke(app, ["bisect", DEMO, "--target", "x86", "--json"])
    assert res.exit_code == 0, res.output
    assert json.loads(res.stdout)["ok"] is True
    res = runner.invoke(app, ["bisect", DEMO, "--target", "x86", "--passes", "fold-constants,nonexistent-pass"])
    assert res.exit_code == 2


def test_module_exports() -> None:
    assert callable(bisect_mod.bisect)


def test_compile_bisect_stops_before_building_when_a_pass_breaks_outputs(tmp_path: str) -> None:
    runner = CliRunner()
    out = os.path.join(tmp_path, "art")
    res = runner.invoke(app, ["compile", DEMO, "--target", "x86", "-o", out, "--bisect", "--no-cache"])
    assert res.exit_code == 0, res.output
    assert "no mismatch" in res.stdout and os.path.isfile(os.path.join(out, "manifest.json"))


# ----- a broken fusion rule is named (passes/fusion) ------------------------------------------------------


class ConvBiasDroppingTheAdd(ConvBias):
    """fuse-bias's conv-bias rule, broken on purpose: the Conv keeps its old bias and the Add's constant is lost."""

    def build(self, b: Builder, pm: PatternMatch, m: Match) -> Sequence[Value]:
        conv = pm["conv"]
        return [b.op("Conv", list(conv.inputs), dict(conv.attributes))]


@dataclass(frozen=True)
class BrokenFuseBias(RewritePass):
    name: ClassVar[str] = "test-broken-fuse-bias"
    rules: ClassVar[tuple[Rule, ...]] = (ConvBiasDroppingTheAdd(),)


def _conv_add_relu() -> onnx.ModelProto:
    rng = np.random.default_rng(0)
    nodes = [helper.make_node("Conv", ["x", "w"], ["c"], pads=[1, 1, 1, 1]), helper.make_node("Add", ["c", "b"], ["a"]),
             helper.make_node("Relu", ["a"], ["y"])]
    inits = [numpy_helper.from_array(rng.standard_normal((4, 3, 3, 3)).astype(np.float32), "w"),
             numpy_helper.from_array(rng.standard_normal((4, 1, 1)).astype(np.float32), "b")]
    g = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 6, 6])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4, 6, 6])], inits)
    return helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)


def test_a_broken_fusion_rule_is_named_and_the_right_ones_compile_and_agree() -> None:
    model = _conv_add_relu()
    report = bisect(model, "x86", passes=[FoldConstants(), BrokenFuseBias(), FuseActivation(), EliminateDeadCode()])
    bad = report.first_bad
    assert bad is not None and bad.name == "test-broken-fuse-bias" and bad.worst_output == "y", report.to_json()
    assert "test-broken-fuse-bias" in report.verdict()
    good = bisect(model, "x86")  # the x86 pipeline: fuse-bias, then fuse-activation makes lepton.FusedConvRelu
    names = [s.name for s in good.steps]
    assert "fuse-bias" in names and "fuse-activation" in names, names
    assert good.ok and good.codegen is not None and good.codegen.ok, good.verdict()
