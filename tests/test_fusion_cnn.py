"""CNN fusion passes: fuse-batchnorm, decompose-batchnorm, fuse-bias, fuse-activation (passes/fusion/).

Per rule: the graph before/after, a case where it does not fire and the reason `explain` gives, onnxruntime
outputs kept (DESIGN.md section 6 tolerances) on fixed and on random chains (tests/strategies_fusion.py), and
the Lepton-domain fused ops run in onnxruntime from their exported ONNX functions and compile for x86.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np
import onnx
import pytest
from hypothesis import HealthCheck, given, settings
from onnx import helper as oh
import onnx_net
from passutil import assert_outputs_close, assert_pass_preserves, run_pass
from strategies import onnx_models, random_inputs
from strategies_fusion import Chain, fusion_chains

import lepton_ir
import targets
from lepton_ir import Graph
from passes import PassContext, PassManager, parse_pipeline
from passes.fusion.activation import ACTIVATIONS, FUSED_OPS, FuseActivation, definition
from passes.fusion.batchnorm import DecomposeBatchNorm, FuseBatchNorm
from passes.fusion.bias import FuseBias
from passes.ort import run_model

FUSION = "fuse-batchnorm,fuse-bias,fuse-activation,decompose-batchnorm,eliminate-dead-code"


class Net(onnx_net.Net):
    """`onnx_net.Net` with every node named (the reasons the tests check quote node names)."""

    def __init__(self, opset: int = 17, seed: int = 0) -> None:
        super().__init__(opset, seed, node_names=True)


def ops(graph: Graph) -> list[str]:
    return [f"{n.domain}.{n.op_type}" if n.domain else n.op_type for n in graph]


def reasons(p: Any, graph: Graph, rule: str) -> list[str]:
    return [r for _, name, r in p.explain(graph) if name == rule]


def fused(model: onnx.ModelProto, feeds: dict[str, np.ndarray], pipeline: str = FUSION) -> Graph:
    """Run `pipeline` (verifier on), check onnxruntime outputs against the original's and idempotence."""
    expected = run_model(model, feeds)
    graph = lepton_ir.load(model)
    PassManager(pipeline, verify_ir=True).run(graph)
    exported = lepton_ir.to_onnx(graph)
    onnx.checker.check_model(exported, full_check=True)
    assert_outputs_close(expected, run_model(exported, feeds))
    again = PassManager(pipeline).run(graph)
    assert not again.modified, [(r.name, dict(r.stats)) for r in again.records if r.modified]
    return graph


# ----- fuse-batchnorm ------------------------------------------------------------------------------------


@pytest.mark.parametrize("bias", [False, True])
@pytest.mark.parametrize("group", [1, 2])
@pytest.mark.parametrize("dims", [1, 2])
def test_conv_batchnorm_folds_into_the_conv(bias: bool, group: int, dims: int) -> None:
    n = Net()
    x = n.input(2, 4, *[7] * dims)
    w = [n.rand(6, 4 // group, *[3] * dims, scale=0.3)] + ([n.rand(6)] if bias else [])
    y = n.bn(n.op("Conv", x, *w, group=group, pads=[1] * 2 * dims), 6, epsilon=1e-3)
    g = assert_pass_preserves(m := n.model(y), FuseBatchNorm(), n.feeds)
    assert ops(g) == ["Conv"] and len(g.nodes[0].inputs) == 3
    assert [o.name for o in g.outputs] == [o.name for o in m.graph.output]


@pytest.mark.parametrize("group", [1, 2, 3])
@pytest.mark.parametrize("bias", [False, True])
def test_conv_transpose_batchnorm_scales_iohw_weights_per_group(group: int, bias: bool) -> None:
    n = Net()
    x = n.input(1, 3 * group, 4, 5)
    w = [n.rand(3 * group, 2, 3, 2, scale=0.3)] + ([n.rand(2 * group)] if bias else [])
    y = n.bn(n.op("ConvTranspose", x, *w, group=group, strides=[2, 1], pads=[1, 0, 0, 1], output_padding=[1, 0]), 2 * group)
    g = assert_pass_preserves(n.model(y), FuseBatchNorm(), n.feeds)
    assert ops(g) == ["ConvTranspose"]


@pytest.mark.parametrize("trans_b", [0, 1])
@pytest.mark.parametrize("c_shape", [None, (5,), (3, 5), (3, 1), ()])
def test_gemm_batchnorm_scales_the_columns(trans_b: int, c_shape: tuple[int, ...] | None) -> None:
    n = Net()
    a = n.input(3, 4)
    inputs = [a, n.rand(*((5, 4) if trans_b else (4, 5)))] + ([] if c_shape is None else [n.rand(*c_shape)])
    y = n.bn(n.op("Gemm", *inputs, transB=trans_b, alpha=0.5, beta=2.0), 5)
    g = assert_pass_preserves(n.model(y), FuseBatchNorm(), n.feeds)
    assert ops(g) == ["Gemm"] and g.nodes[0].attr("beta") is None and g.nodes[0].attr("alpha") == 0.5


def test_matmul_batchnorm_becomes_gemm_for_a_matrix_input() -> None:
    n = Net()
    y = n.bn(n.op("MatMul", n.input(3, 4), n.rand(4, 5)), 5)
    g = assert_pass_preserves(n.model(y), FuseBatchNorm(), n.feeds)
    assert ops(g) == ["Gemm"]


def test_batchnorm_is_not_folded_where_the_producer_cannot_take_it() -> None:
    n = Net(opset=15)
    mm3 = n.op("MatMul", n.input(2, 3, 4), n.rand(4, 5))  # rank 3: BN normalizes axis 1 (3), not the columns
    shared = n.op("Conv", n.input(1, 2, 4, 4), n.rand(3, 2, 1, 1))  # also read by the Sigmoid
    w_in = n.op("Conv", n.input(1, 2, 4, 4), n.input(3, 2, 1, 1, name="w_in"))  # runtime weight
    outs = [n.bn(mm3, 3, name="bn_mm3"), n.bn(shared, 3, name="bn_shared"), n.op("Sigmoid", shared),
            n.bn(w_in, 3, name="bn_w_in")]
    g = lepton_ir.load(n.model(*outs))
    p = FuseBatchNorm()
    assert not run_pass(p, g).modified
    why = {(node, rule): r for node, rule, r in p.explain(g)}
    mm3_why = why[("bn_mm3", "matmul-batchnorm")]
    assert "has rank 3" in mm3_why and "last (column) axis only for rank-2" in mm3_why
    assert "read by" in why[("bn_shared", "conv-batchnorm")] and "outside the match" in why[("bn_shared", "conv-batchnorm")]
    assert "'w_in' ('w') is not a constant" in why[("bn_w_in", "conv-batchnorm")]


def test_training_mode_batchnorm_is_left_alone() -> None:
    n = Net(opset=15)
    c = n.op("Conv", n.input(1, 2, 4, 4), n.rand(3, 2, 1, 1))
    params = [n.rand(3), n.rand(3), n.rand(3), n.const(n.rng.random(3) + 0.5)]
    n.nodes.append(oh.make_node("BatchNormalization", [c, *params], ["y", "running_mean", "running_var"], training_mode=1))
    g = lepton_ir.load(n.model("y"))
    assert not run_pass(FuseBatchNorm(), g).modified and not run_pass(DecomposeBatchNorm(), g).modified
    assert "training-mode" in reasons(FuseBatchNorm(), g, "conv-batchnorm")[0]
    assert "training-mode" in reasons(DecomposeBatchNorm(), g, "batchnorm-mul-add")[0]


@pytest.mark.parametrize("shape", [(2, 3), (2, 3, 5), (1, 3, 4, 4)])
def test_standalone_batchnorm_becomes_mul_add(shape: tuple[int, ...]) -> None:
    n = Net()
    y = n.bn(n.op("Relu", n.input(*shape)), 3)
    g = assert_pass_preserves(n.model(y), DecomposeBatchNorm(), n.feeds)
    assert ops(g) == ["Relu", "Mul", "Add"]
    scale = g.nodes[1].inputs[1].const_value
    assert scale is not None and scale.shape == (3,) + (1,) * (len(shape) - 2)


def test_decompose_leaves_what_fuse_batchnorm_folds_and_runtime_statistics() -> None:
    n = Net()
    folded = n.bn(n.op("Conv", n.input(1, 2, 4, 4), n.rand(3, 2, 1, 1)), 3, name="bn_conv")
    r = n.rng
    runtime = n.op("BatchNormalization", n.op("Relu", n.input(1, 3, 2, 2)), n.const(r.random(3)), n.const(r.random(3)),
                   n.input(3, name="mean"), n.const(r.random(3) + 0.5), name="bn_runtime")
    g = lepton_ir.load(n.model(folded, runtime))
    p = DecomposeBatchNorm()
    assert not run_pass(p, g).modified
    why = dict((node, r) for node, _, r in p.explain(g))
    assert why["bn_conv"] == "conv-batchnorm folds it into its producer (fuse-batchnorm)"
    assert "'mean' ('mean') is not a constant" in why["bn_runtime"]


def test_a_chain_of_batchnorms_folds_whole() -> None:
    n = Net()
    bn1 = n.bn(n.op("Conv", n.input(1, 2, 4, 4), n.rand(3, 2, 1, 1)), 3, name="bn1")
    bn2 = n.bn(bn1, 3, name="bn2")
    m = n.model(n.bn(bn2, 3, name="bn3"))
    g = lepton_ir.load(m)
    why = {node: r for node, _, r in DecomposeBatchNorm().explain(g)}
    assert why["bn1"] == "conv-batchnorm folds it into its producer (fuse-batchnorm)"
    assert why["bn3"] == "it reads 'bn2', which fuse-batchnorm folds (conv-batchnorm) first; it folds next"
    assert ops(fused(m, n.feeds)) == ["Conv"]


def test_a_bias_folded_first_lets_the_batchnorm_fold_too() -> None:
    """Conv -> Add -> BN: fuse-bias makes the Conv adjacent to the BN in the same stage, so decompose-batchnorm
    (later in the stage) must leave the BN for fuse-batchnorm's next round."""
    n = Net()
    y = n.bn(n.op("Add", n.op("Conv", n.input(1, 2, 4, 4), n.rand(3, 2, 3, 3), pads=[1] * 4), n.rand(3, 1, 1)), 3)
    g = fused(n.model(y), n.feeds)
    assert ops(g) == ["Conv"]


# ----- fuse-bias ----------------------------------------------------------------------------------------


@pytest.mark.parametrize("shape", [(4, 1, 1), (1, 4, 1, 1), (1,), ()])
@pytest.mark.parametrize("bias_first", [False, True])
@pytest.mark.parametrize("has_bias", [False, True])
def test_conv_add_becomes_the_conv_bias(shape: tuple[int, ...], bias_first: bool, has_bias: bool) -> None:
    n = Net()
    c = n.op("Conv", n.input(2, 3, 5, 5), n.rand(4, 3, 3, 3), *([n.rand(4)] if has_bias else []), strides=[2, 2])
    b = n.rand(*shape)
    y = n.op("Add", *((b, c) if bias_first else (c, b)))
    g = assert_pass_preserves(n.model(y), FuseBias(), n.feeds)
    assert ops(g) == ["Conv"] and g.nodes[0].inputs[2].const_value.shape == (4,)


def test_conv_add_with_a_runtime_weight_and_conv_transpose_add() -> None:
    n = Net()
    a = n.op("Add", n.op("Conv", n.input(1, 2, 4, 4), n.input(3, 2, 1, 1, name="w")), n.rand(3, 1, 1))
    t = n.op("Add", n.op("ConvTranspose", n.input(1, 4, 3, 3), n.rand(4, 3, 2, 2), group=2, strides=[2, 2]), n.rand(1, 6, 1, 1))
    g = assert_pass_preserves(n.model(a, t), FuseBias(), n.feeds)
    assert ops(g) == ["Conv", "ConvTranspose"]


def test_an_add_that_is_not_per_channel_stays() -> None:
    n = Net()
    c = n.op("Conv", n.input(1, 2, 4, 4), n.rand(3, 2, 1, 1))
    y = n.op("Add", c, n.rand(1, 3, 4, 4), name="add_full")
    g = lepton_ir.load(n.model(y))
    assert not run_pass(FuseBias(), g).modified
    assert "is not one value per output channel" in reasons(FuseBias(), g, "conv-bias")[0]


@pytest.mark.parametrize("c_shape", [None, (5,), (2, 5)])
@pytest.mark.parametrize("trans_b", [0, 1])
def test_gemm_add_folds_into_c(c_shape: tuple[int, ...] | None, trans_b: int) -> None:
    n = Net()
    w = n.input(*((5, 4) if trans_b else (4, 5)))  # a runtime B is fine: only C changes
    gemm = n.op("Gemm", n.input(2, 4), w, *([] if c_shape is None else [n.rand(*c_shape)]), transB=trans_b, beta=2.0)
    g = assert_pass_preserves(n.model(n.op("Add", n.rand(1, 5), gemm)), FuseBias(), n.feeds)
    assert ops(g) == ["Gemm"] and g.nodes[0].attr("beta") is None


def test_matmul_add_becomes_gemm_only_for_matrices() -> None:
    n = Net()
    two = n.op("Add", n.op("MatMul", n.input(3, 4), n.rand(4, 5)), n.rand(5))
    three = n.op("Add", n.op("MatMul", n.input(2, 3, 4), n.rand(4, 5)), n.rand(5), name="add_rank3")
    rows = n.op("Add", n.op("MatMul", n.input(3, 4), n.rand(4, 5)), n.rand(3, 5), name="add_rows")
    m = n.model(two, three, rows)
    g = assert_pass_preserves(m, FuseBias(), n.feeds)
    assert ops(g).count("Gemm") == 1 and ops(g).count("MatMul") == 2
    why = {node: r for node, rule, r in FuseBias().explain(g) if rule == "matmul-add-gemm"}
    assert "has rank 3: Gemm is 2-D only" in why["add_rank3"]
    assert "is not constant along the rows" in why["add_rows"]


# ----- fuse-activation ----------------------------------------------------------------------------------


def _activation(n: Net, name: str, y: str, form: int = 0) -> str:
    if name == "LeakyRelu":
        return n.op("LeakyRelu", y, alpha=0.3)
    if name == "HardSigmoid":
        return n.op("HardSigmoid", y, alpha=0.25, beta=0.4)
    if name == "Clip":
        return n.op("Clip", y, n.const(np.float32(0.0)), n.const(np.float32(6.0)))
    if name == "Silu":
        return n.op("Mul", n.op("Sigmoid", y), y)
    if name == "Gelu" and form == 0:
        return n.op("Gelu", y, approximate="tanh")
    if name == "Gelu":  # the Erf forms: x/sqrt2 or x*(1/sqrt2), three operand orders
        scaled = n.op("Div", y, n.const(np.float32(math.sqrt(2)))) if form <= 3 else n.op("Mul", y, n.const(np.float32(1 / math.sqrt(2))))
        erf1 = n.op("Add", n.const(np.float32(1.0)), n.op("Erf", scaled))
        half = n.const(np.float32(0.5))
        order = (form - 1) % 3
        if order == 0:
            return n.op("Mul", n.op("Mul", y, erf1), half)
        if order == 1:
            return n.op("Mul", n.op("Mul", half, y), erf1)
        return n.op("Mul", y, n.op("Mul", erf1, half))
    return n.op(name, y)


def _producer(n: Net, kind: str) -> str:
    if kind == "Conv":
        return n.op("Conv", n.input(1, 3, 6, 6), n.rand(4, 3, 3, 3, scale=0.5), n.rand(4), pads=[1, 0, 1, 0], strides=[2, 1])
    return n.op("Gemm", n.input(4, 3), n.rand(5, 3), n.rand(5), transB=1, alpha=0.7)


CASES = [(p, a, 0) for p in ("Conv", "Gemm") for a in ACTIVATIONS] + [("Gemm", "Gelu", f) for f in range(1, 7)] + \
    [("Conv", "Gelu", 1)]


@pytest.mark.parametrize(("kind", "act", "form"), CASES)
def test_producer_and_activation_become_one_function_op(kind: str, act: str, form: int) -> None:
    n = Net(opset=17 if act == "Gelu" and form else 20)
    y = _activation(n, act, _producer(n, kind), form)
    m = n.model(y)
    g = assert_pass_preserves(m, FuseActivation(), n.feeds)
    op_type = f"Fused{kind}{act}"
    assert ops(g) == [f"lepton.{op_type}"] and g.opset_imports["lepton"] == 1
    exported = lepton_ir.to_onnx(g)
    assert [f.name for f in exported.functions] == [op_type]
    onnx.checker.check_model(exported, full_check=True)
    assert [n.op_type for n in lepton_ir.load(exported)][0] == kind  # re-import inlines the body: standard ops
    stats = FuseActivation().run(lepton_ir.load(m), PassContext()).rules
    assert stats[f"{kind.lower()}-{act.lower()}"].matched == 1


@pytest.mark.parametrize("op_type", sorted(FUSED_OPS))
@pytest.mark.parametrize("opset", [13, 17, 20])
def test_every_definition_is_a_valid_onnx_function(op_type: str, opset: int) -> None:
    fn = definition(op_type, opset)
    assert fn.domain == "lepton" and fn.name == op_type and fn.opset_import[0].version == opset
    ops_used = {node.op_type for node in fn.node}
    for o in ops_used:
        onnx.defs.get_schema(o, opset, "")  # raises when the body uses an op the opset lacks
    assert set(FUSED_OPS[op_type][1].params) <= set(fn.attribute)


def test_activation_is_not_fused_where_it_cannot_be() -> None:
    n = Net(opset=17)
    x = n.input(1, 2, 4, 4)
    t = n.op("Relu", n.op("ConvTranspose", x, n.rand(2, 3, 2, 2)), name="relu_after_convt")
    shared = n.op("Conv", x, n.rand(3, 2, 1, 1))
    r = n.op("Relu", shared, name="relu_shared")
    clip = n.op("Clip", n.op("Conv", x, n.rand(3, 2, 1, 1)), n.input(name="lo"), name="clip_runtime")
    c = n.op("Conv", x, n.rand(3, 2, 1, 1))
    gelu = n.op("Mul", n.op("Mul", c, n.const(np.float32(0.4))),  # 0.4, not 0.5: not a GELU
                n.op("Add", n.op("Erf", n.op("Div", c, n.const(np.float32(math.sqrt(2))))), n.const(np.float32(1))),
                name="gelu_wrong")
    m = n.model(t, r, shared, clip, gelu)
    g = lepton_ir.load(m)
    p = FuseActivation()
    assert not run_pass(p, g).modified
    why: dict[tuple[str, str], str] = {(node, rule): r for node, rule, r in p.explain(g)}
    assert "is ConvTranspose, expected Conv" in why[("relu_after_convt", "conv-relu")]
    assert "is an output of graph" in why[("relu_shared", "conv-relu")]
    assert "'lo' is not a constant scalar" in why[("clip_runtime", "conv-clip")]
    assert "the GELU constant" in why[("gelu_wrong", "conv-gelu")] and "is not the scalar 0.5" in why[("gelu_wrong", "conv-gelu")]
    node, reason = p.closest(g, "conv-gelu")
    assert node == "gelu_wrong" and "is not the scalar 0.5" in reason


def test_onnxruntime_contrib_gelu_fuses_too() -> None:
    """Below opset 20 fuse-gelu writes the Erf form as com.microsoft.Gelu: the Gemm takes that as well."""
    n = Net(opset=17)
    y = n.op("Gemm", n.input(3, 4), n.rand(4, 5), n.rand(5))
    n.nodes.append(oh.make_node("Gelu", [y], ["gelu"], domain="com.microsoft", name="ms_gelu"))
    g = assert_pass_preserves(n.model("gelu", shapes={"gelu": [3, 5]}), FuseActivation(), n.feeds)
    assert ops(g) == ["lepton.FusedGemmGelu"]


def test_gelu_written_with_erf_in_float64_below_opset_20_is_not_fused() -> None:
    n = Net(opset=17)
    y = n.op("Gemm", n.input(2, 3, dtype=np.float64), n.rand(3, 4, dtype=np.float64))
    erf1 = n.op("Add", n.op("Erf", n.op("Div", y, n.const(math.sqrt(2), dtype=np.float64))), n.const(1.0, dtype=np.float64))
    g = lepton_ir.load(n.model(n.op("Mul", n.op("Mul", y, erf1), n.const(0.5, dtype=np.float64))))
    assert not run_pass(FuseActivation(), g).modified
    assert any("float32 only below opset 20" in r for r in reasons(FuseActivation(), g, "gemm-gelu"))


def test_clip_bounds_may_be_omitted_and_conv_bias_too() -> None:
    n = Net(opset=13)
    x = n.input(1, 2, 5, 5)
    hi = n.op("Clip", n.op("Conv", x, n.rand(3, 2, 3, 3)), "", n.const(np.float32(0.2)))
    lo = n.op("Clip", n.op("Gemm", n.input(2, 3), n.rand(3, 4)), n.const(np.float32(-0.1)))
    g = assert_pass_preserves(n.model(hi, lo), FuseActivation(), n.feeds)
    assert ops(g) == ["lepton.FusedConvClip", "lepton.FusedGemmClip"]
    conv = g.nodes[0]
    assert conv.inputs[2] is None and conv.inputs[3] is None and conv.inputs[4] is not None


# ----- the passes together, on random graphs --------------------------------------------------------------


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(fusion_chains())
def test_fusion_keeps_outputs_on_random_chains(chain: Chain) -> None:
    expected = run_model(chain.model, chain.feeds)
    graph = lepton_ir.load(chain.model)
    before = len(graph)
    for p in parse_pipeline(FUSION):  # each pass: `modified` exact, IR verifies
        run_pass(p, graph)
    PassManager(FUSION, verify_ir=True).run(graph)  # to the stage's fixed point
    assert_outputs_close(expected, run_model(lepton_ir.to_onnx(graph), chain.feeds))
    if chain.fewer_nodes is not None:
        assert before - len(graph) >= chain.fewer_nodes, (chain, ops(graph))
    assert not PassManager(FUSION).run(graph).modified


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(onnx_models(max_nodes=10))
def test_fusion_keeps_outputs_on_random_graphs(model: onnx.ModelProto) -> None:
    feeds = random_inputs(model)
    expected = run_model(model, feeds)
    graph = lepton_ir.load(model)
    PassManager(FUSION, verify_ir=True).run(graph)
    assert_outputs_close(expected, run_model(lepton_ir.to_onnx(graph), feeds))


# ----- target pipelines ---------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["x86", "x86-avx2", "x86-avx512", "arm", "arm-dotprod", "cuda", "opencl"])
def test_every_target_runs_the_fusion_passes_after_cleanup(name: str) -> None:
    names = [p.name for p in parse_pipeline(targets.resolve(name).pipeline)]
    fusion = [names.index(p) for p in ("fuse-batchnorm", "fuse-bias", "fuse-activation", "decompose-batchnorm")]
    assert fusion == sorted(fusion) and min(fusion) > names.index("eliminate-dead-code")


# ----- compiled for x86 ---------------------------------------------------------------------------------


def _branches(kind: str) -> tuple[onnx.ModelProto, Sequence[str]]:
    """One input, one branch per activation after its own `kind` producer, every branch a graph output."""
    n = Net(opset=20, seed=3)
    if kind == "Conv":
        x = n.input(1, 3, 8, 8, name="x")
        make = lambda: n.op("Conv", x, n.rand(8, 3, 3, 3, scale=0.3), n.rand(8), pads=[1] * 4)  # noqa: E731
    else:
        x = n.input(4, 6, name="x")
        make = lambda: n.op("Gemm", x, n.rand(6, 5, scale=0.4), n.rand(5))  # noqa: E731
    outs = [_activation(n, a, make(), 1 if a == "Gelu" else 0) for a in ACTIVATIONS]
    outs.append(_activation(n, "Gelu", make(), 0))  # the Gelu op (tanh) besides the Erf form
    return n.model(*outs), outs


@pytest.mark.parametrize("lowering", ["relax", "expand"])
@pytest.mark.parametrize("kind", ["Conv", "Gemm"])
def test_every_fused_op_compiles_and_verifies_on_x86(kind: str, lowering: str, monkeypatch: pytest.MonkeyPatch) -> None:
    import lepton
    from lepton.codegen import fused_ops

    monkeypatch.setattr(fused_ops, "LOWERING", lowering)
    model, outs = _branches(kind)
    compiled = lepton.compile(model, "x86", use_cache=False)
    assert compiled.verify_report is not None and compiled.verify_report.ok
    matched: dict[str, int] = {}
    for record in compiled.passes:
        for rule, st in record["rules"].items():
            matched[rule] = matched.get(rule, 0) + int(st["matched"])
    for act in ACTIVATIONS:
        want_count = 2 if act == "Gelu" else 1  # the Erf form and the Gelu op
        assert matched.get(f"{kind.lower()}-{act.lower()}", 0) == want_count, (act, matched)
    shape = [d.dim_value for d in model.graph.input[0].type.tensor_type.shape.dim]
    x = np.random.default_rng(5).standard_normal(shape).astype(np.float32)
    want = run_model(model, {"x": x})
    got = compiled.run(x=x)
    assert_outputs_close(want, {k: got[k] for k in want})


def test_fused_ops_with_other_attributes_and_ranks_compile_and_verify_on_x86() -> None:
    import lepton

    n = Net(opset=17, seed=6)
    x1 = n.input(1, 4, 9, name="x1")  # conv1d, auto_pad SAME_UPPER, stride 2
    a = n.op("Relu", n.op("Conv", x1, n.rand(6, 4, 3, scale=0.3), auto_pad="SAME_UPPER", strides=[2]))
    x2 = n.input(1, 4, 7, 7, name="x2")  # grouped, dilated, asymmetric pads, no bias
    b = n.op("LeakyRelu", n.op("Conv", x2, n.rand(6, 2, 3, 3, scale=0.3), group=2, dilations=[2, 1], pads=[0, 1, 2, 0]),
             alpha=0.2)
    x3 = n.input(1, 2, 4, 4, 4, name="x3")  # conv3d
    c = n.op("HardSigmoid", n.op("Conv", x3, n.rand(3, 2, 2, 2, 2, scale=0.3), n.rand(3)), alpha=0.3, beta=0.6)
    x4 = n.input(5, 3, name="x4")  # Gemm with transA, only a max bound
    d = n.op("Clip", n.op("Gemm", x4, n.rand(5, 4), transA=1, alpha=2.0), "", n.const(np.float32(0.5)))
    model = n.model(a, b, c, d)
    graph = lepton_ir.load(model)
    PassManager(FUSION).run(graph)
    assert ops(graph) == ["lepton.FusedConvRelu", "lepton.FusedConvLeakyRelu", "lepton.FusedConvHardSigmoid",
                          "lepton.FusedGemmClip"]
    compiled = lepton.compile(model, "x86", use_cache=False)
    assert compiled.verify_report is not None and compiled.verify_report.ok


def test_a_batchnorm_cnn_compiles_to_fewer_nodes_and_verifies_on_x86() -> None:
    import lepton
    from lepton.compiler import optimize_for

    n = Net(opset=13, seed=4)
    x = n.input(1, 3, 12, 12, name="x")
    c1 = n.op("Relu", n.bn(n.op("Conv", x, n.rand(8, 3, 3, 3, scale=0.3), pads=[1] * 4), 8))
    c2 = n.bn(n.op("Conv", c1, n.rand(8, 8, 3, 3, scale=0.1), pads=[1] * 4), 8)
    r = n.op("Relu", n.op("Add", c2, c1))
    up = n.op("Clip", n.bn(n.op("ConvTranspose", r, n.rand(8, 4, 2, 2, scale=0.3), strides=[2, 2]), 4),
              n.const(np.float32(0)), n.const(np.float32(6)))
    pooled = n.op("Flatten", n.op("GlobalAveragePool", n.bn(n.op("Relu", up), 4)))
    y = n.op("Relu", n.op("Add", n.op("MatMul", pooled, n.rand(4, 10)), n.rand(10)))
    model = n.model(y)
    graph = lepton_ir.load(model)
    optimize_for(graph, targets.resolve("x86"))
    assert ops(graph) == ["lepton.FusedConvRelu", "Conv", "Add", "Relu", "ConvTranspose", "Clip", "Relu", "Mul", "Add",
                          "GlobalAveragePool", "Flatten", "lepton.FusedGemmRelu"]
    compiled = lepton.compile(model, "x86", use_cache=False)
    assert compiled.verify_report is not None and compiled.verify_report.ok
