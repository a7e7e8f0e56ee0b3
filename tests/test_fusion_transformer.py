"""Transformer fusion passes (passes/fusion/gelu.py, layernorm.py, attention.py) and their codegen
(lepton/codegen/fused_transformer.py).

Per pass: hand-built graphs in each exporter's form before/after (node structure), cases where a rule does not
fire and the reason `explain` gives, onnxruntime outputs kept (DESIGN.md section 6 tolerances) on those and on
random instances of each chain (a hypothesis strategy below: random shapes, epsilons, exporter forms, masks),
the contrib ops compiled for x86 under both lowerings, and tiny Hugging Face BERT exports from both PyTorch
exporters compiled and verified with the target pipeline.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import onnx
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from onnx_net import Net
from passutil import assert_outputs_close, run_pass

import lepton_ir
import targets
from lepton_ir import Graph
from passes import PassManager, parse_pipeline
from passes.fusion.attention import FuseAttention, MergeQKV
from passes.fusion.gelu import FuseBiasGelu, FuseGelu
from passes.fusion.layernorm import FuseLayerNorm, FuseRmsNorm, FuseSkipLayerNorm
from passes.ort import run_model

FUSIONS = ("merge-qkv,fuse-attention,fuse-gelu,fuse-bias-gelu,fuse-layernorm,fuse-rmsnorm,fuse-skip-layernorm,"
           "merge-reshapes,eliminate-noop,eliminate-dead-code")
MIN = float(np.finfo(np.float32).min)



def fuse(model: onnx.ModelProto, feeds: dict[str, np.ndarray], pipeline: str = FUSIONS) -> Graph:
    """Run `pipeline` (verifier on) and check onnxruntime's outputs against the original's."""
    expected = run_model(model, feeds)
    graph = lepton_ir.load(model)
    PassManager(pipeline, verify_ir=True).run(graph)
    assert_outputs_close(expected, run_model(lepton_ir.to_onnx(graph), feeds))
    return graph


def ops(graph: Graph) -> list[str]:
    return [f"{n.domain}.{n.op_type}" if n.domain else n.op_type for n in graph]


def reasons(p: Any, graph: Graph, rule: str) -> list[str]:
    return [r for _, name, r in p.explain(graph) if name == rule]


# ----- GELU -------------------------------------------------------------------------------------------------------


def gelu_erf(n: Net, x: str, form: int, scale_op: str = "Div", half: float = 0.5) -> str:
    """x * 0.5 * (1 + erf(x / sqrt 2)): form 0 TorchScript `(x * e) * 0.5`, 1 `(x * 0.5) * e`, 2 dynamo
    `x * (0.5 * e)`."""
    k = math.sqrt(2) if scale_op == "Div" else 1 / math.sqrt(2)
    e = n.op("Add", n.op("Erf", n.op(scale_op, x, n.const(k))), n.const(1.0))
    h = n.const(half)
    if form == 0:
        return n.op("Mul", n.op("Mul", x, e), h)
    if form == 1:
        return n.op("Mul", n.op("Mul", h, x), e)
    return n.op("Mul", x, n.op("Mul", h, e))


def gelu_tanh(n: Net, x: str, form: int, cube: str = "Pow") -> str:
    """GPT-2's gelu_new: 0.5 * x * (1 + tanh(sqrt(2/pi) * (x + 0.044715 x^3)))."""
    x3 = n.op("Pow", x, n.const(3.0)) if cube == "Pow" else n.op("Mul", x, n.op("Mul", x, x))
    inner = n.op("Mul", n.const(math.sqrt(2 / math.pi)), n.op("Add", x, n.op("Mul", n.const(0.044715), x3)))
    t = n.op("Add", n.op("Tanh", inner), n.const(1.0))
    h = n.const(0.5)
    if form == 0:
        return n.op("Mul", n.op("Mul", x, h), t)
    if form == 1:
        return n.op("Mul", n.op("Mul", x, t), h)
    return n.op("Mul", x, n.op("Mul", t, h))


@pytest.mark.parametrize("opset", [17, 20])
@pytest.mark.parametrize("form", [0, 1, 2])
@pytest.mark.parametrize("scale_op", ["Div", "Mul"])
def test_gelu_erf_forms_become_one_op(opset: int, form: int, scale_op: str) -> None:
    n = Net(opset)
    x = n.input(2, 5, 8)
    g = fuse(n.model(gelu_erf(n, x, form, scale_op)), n.feeds, "fuse-gelu")
    assert ops(g) == (["Gelu"] if opset >= 20 else ["com.microsoft.Gelu"])
    if opset >= 20:
        assert g.nodes[0].attr("approximate") in ("none", b"none")


@pytest.mark.parametrize("opset", [17, 20])
@pytest.mark.parametrize("form", [0, 1, 2])
@pytest.mark.parametrize("cube", ["Pow", "Mul"])
def test_gelu_tanh_forms_become_one_op(opset: int, form: int, cube: str) -> None:
    n = Net(opset)
    x = n.input(3, 16)
    g = fuse(n.model(gelu_tanh(n, x, form, cube)), n.feeds, "fuse-gelu")
    assert ops(g) == (["Gelu"] if opset >= 20 else ["com.microsoft.FastGelu"])
    if opset >= 20:
        assert g.nodes[0].attr("approximate") in ("tanh", b"tanh")


def test_gelu_with_another_constant_is_left_with_the_reason() -> None:
    n = Net(17)
    x = n.input(2, 4)
    graph = lepton_ir.load(n.model(gelu_erf(n, x, 0, half=0.6)))
    assert not run_pass(FuseGelu(), graph).modified
    assert any("is not the scalar 0.5" in r for r in reasons(FuseGelu(), graph, "gelu-erf"))


@pytest.mark.parametrize("opset,tanh", [(17, False), (17, True), (20, False), (20, True)])
def test_bias_gelu(opset: int, tanh: bool) -> None:
    n = Net(opset)
    x = n.input(1, 6, 8)
    h = n.op("Add", n.op("MatMul", x, n.rand(8, 12)), n.rand(12))
    y = gelu_tanh(n, h, 0) if tanh else gelu_erf(n, h, 2)
    g = fuse(n.model(y), n.feeds, "fuse-gelu,fuse-bias-gelu")
    assert ops(g) == ["MatMul", "com.microsoft.FastGelu" if tanh else "com.microsoft.BiasGelu"]
    assert g.nodes[1].inputs[1].const_value is not None


def test_bias_gelu_needs_one_bias_per_channel() -> None:
    n = Net(20)
    x = n.input(1, 6, 8)
    h = n.op("Add", n.op("MatMul", x, n.rand(8, 12)), n.rand(6, 12))  # a bias per token and channel
    graph = fuse(n.model(n.op("Gelu", h)), n.feeds, "fuse-bias-gelu")
    assert ops(graph) == ["MatMul", "Add", "Gelu"]
    assert any("not one float32 value per element of the last axis" in r for r in reasons(FuseBiasGelu(), graph, "bias-gelu"))


# ----- layer norm, RMS norm, skip layer norm ----------------------------------------------------------------------


def layernorm_chain(n: Net, x: str, rank: int, *, eps: float = 1e-5, square: str = "Pow", div: str = "Div",
                    axes: int = 1, centered: bool = True) -> str:
    """The exporters' decomposed norm: TorchScript's Div form, dynamo's Reciprocal form, `Div(1, .)` (rsqrt)."""
    ax = list(range(rank - axes, rank))
    d = n.op("Sub", x, n.mean(x, ax)) if centered else x
    sq = n.op("Pow", d, n.const(2.0)) if square == "Pow" else n.op("Mul", d, d)
    s = n.op("Sqrt", n.op("Add", n.mean(sq, ax), n.const(eps)))
    if div == "Div":
        return n.op("Div", d, s)
    if div == "Reciprocal":
        return n.op("Mul", d, n.op("Reciprocal", s))
    return n.op("Mul", n.op("Div", n.const(1.0), s), d)


@pytest.mark.parametrize("square", ["Pow", "Mul"])
@pytest.mark.parametrize("div", ["Div", "Reciprocal", "DivOne"])
@pytest.mark.parametrize("opset", [17, 18])
def test_layernorm_chain_with_affine_becomes_one_layernormalization(square: str, div: str, opset: int) -> None:
    n = Net(opset)
    x = n.input(2, 5, 8)
    y = layernorm_chain(n, x, 3, eps=1e-6, square=square, div=div)
    y = n.op("Add", n.op("Mul", y, n.rand(8)), n.rand(8))
    g = fuse(n.model(y), n.feeds, "fuse-layernorm")
    assert ops(g) == ["LayerNormalization"]
    ln = g.nodes[0]
    assert ln.attr("axis") == 2 and abs(ln.attr("epsilon") - 1e-6) < 1e-12 and len(ln.inputs) == 3


def test_layernorm_over_two_trailing_axes() -> None:
    n = Net(17)
    x = n.input(2, 4, 3, 5)
    g = fuse(n.model(layernorm_chain(n, x, 4, axes=2)), n.feeds, "fuse-layernorm")
    assert ops(g) == ["LayerNormalization"] and g.nodes[0].attr("axis") == 2
    assert g.nodes[0].inputs[1].shape == (3, 5)


def test_layernorm_below_opset_17_stays_with_the_reason() -> None:
    n = Net(16)
    x = n.input(2, 8)
    graph = lepton_ir.load(n.model(layernorm_chain(n, x, 2)))
    assert not run_pass(FuseLayerNorm(), graph).modified
    assert any("needs opset 17" in r for r in reasons(FuseLayerNorm(), graph, "layernorm"))


def test_layernorm_means_over_other_axes_are_not_fused() -> None:
    n = Net(17)
    x = n.input(2, 6, 8)
    d = n.op("Sub", x, n.mean(x, [1]))
    s = n.op("Sqrt", n.op("Add", n.mean(n.op("Pow", d, n.const(2.0)), [1]), n.const(1e-5)))
    graph = lepton_ir.load(n.model(n.op("Div", d, s)))
    assert not run_pass(FuseLayerNorm(), graph).modified
    assert any("not the trailing axes" in r for r in reasons(FuseLayerNorm(), graph, "layernorm"))


@pytest.mark.parametrize("opset", [18, 23])
def test_rmsnorm(opset: int) -> None:
    n = Net(opset)
    x = n.input(2, 3, 8)
    y = n.op("Mul", layernorm_chain(n, x, 3, eps=1e-6, div="Reciprocal", centered=False), n.rand(8))
    graph = fuse(n.model(y), n.feeds, "fuse-rmsnorm,fuse-layernorm")
    if opset >= 23:
        assert ops(graph) == ["RMSNormalization"]
    else:
        assert "RMSNormalization" not in ops(graph)
        assert any("needs opset 23" in r for r in reasons(FuseRmsNorm(), graph, "rmsnorm"))


def test_rmsnorm_leaves_a_layernorm_to_fuse_layernorm() -> None:
    n = Net(23)
    x = n.input(2, 8)
    graph = lepton_ir.load(n.model(layernorm_chain(n, x, 2)))
    assert any("is x - mean(x)" in r for r in reasons(FuseRmsNorm(), graph, "rmsnorm"))
    PassManager("fuse-rmsnorm,fuse-layernorm").run(graph)
    assert ops(graph) == ["LayerNormalization"]


@pytest.mark.parametrize("opset", [14, 17])
@pytest.mark.parametrize("matmul_bias", [False, True])
def test_skip_layernorm_from_the_chain_and_from_layernormalization(opset: int, matmul_bias: bool) -> None:
    """TorchScript below 17 writes the chain; dynamo and TorchScript at 17 LayerNormalization. With the dense
    layer's bias, the bias becomes the op's fifth input."""
    n = Net(opset)
    x, res = n.input(1, 6, 8), n.input(1, 6, 8)
    h = n.op("MatMul", x, n.rand(8, 8))
    if matmul_bias:
        h = n.op("Add", n.rand(8), h)
    s = n.op("Add", h, res)
    if opset >= 17:
        y = n.op("LayerNormalization", s, n.rand(8), n.rand(8), epsilon=1e-12)
    else:
        y = n.op("Add", n.op("Mul", layernorm_chain(n, s, 3, eps=1e-12), n.rand(8)), n.rand(8))
    g = fuse(n.model(y), n.feeds, "fuse-layernorm,fuse-skip-layernorm,eliminate-dead-code")
    assert ops(g) == ["MatMul", "com.microsoft.SkipLayerNormalization"]
    skip = g.nodes[1]
    assert len(skip.inputs) == (5 if matmul_bias else 4) and abs(skip.attr("epsilon") - 1e-12) < 1e-18


def test_skip_layernorm_keeps_a_sum_read_elsewhere_as_its_fourth_output() -> None:
    """Pre-norm residual streams (GPT-2, ViT): the sum feeds the norm and the next residual Add."""
    n = Net(17)
    a, b = n.input(2, 8), n.input(2, 8)
    s = n.op("Add", a, b)
    y = n.op("LayerNormalization", s, n.rand(8), n.rand(8))
    g = fuse(n.model(n.op("Add", n.op("MatMul", y, n.rand(8, 8)), s)), n.feeds, "fuse-skip-layernorm")
    assert ops(g) == ["com.microsoft.SkipLayerNormalization", "MatMul", "Add"]
    skip = g.nodes[0]
    assert len(skip.outputs) == 4 and g.nodes[2].inputs[1] is skip.outputs[3]


def test_skip_layernorm_needs_one_shape() -> None:
    n = Net(17)
    a, b = n.input(2, 8), n.input(1, 8)  # the Add broadcasts b
    graph = lepton_ir.load(n.model(n.op("LayerNormalization", n.op("Add", a, b), n.rand(8))))
    assert not run_pass(FuseSkipLayerNorm(), graph).modified
    assert any("of one shape" in r for r in reasons(FuseSkipLayerNorm(), graph, "skip-layernorm"))


# ----- attention --------------------------------------------------------------------------------------------------


def attention_block(n: Net, *, B: int, S: int, N: int, H: int, form: str, mask: str | None, guard: bool = False,
                    scale_form: str = "sqrt", bias: bool = True, probs_out: bool = False) -> tuple[str, ...]:
    """One self-attention block as an exporter writes it.

    form: "ts" (Hugging Face, TorchScript: three projections, K transposed [0, 2, 3, 1]), "dynamo" (K through
    3-d Reshape/Transpose/Reshape), "packed" (one projection Split three ways, GPT-2 style), "gemm" (2-d Gemm
    between Reshapes, then Split: GPT-2 TorchScript), "seq" (nn.MultiheadAttention: [S, B, E], Q/K from x + pos,
    V from x). mask: None, "add" (a float input added), "add4" (a [B, 1, 1, S] padding mask), "where"
    (Where(cond, scores, min)), "where_bias" (Where(cond, 0, min) added), "where_inf" (Where(cond, 0, -inf)
    added). scale_form: "sqrt" (sdpa: sqrt(scale) on Q and K^T), "div" (scores / sqrt(H)), "none".
    """
    E = N * H
    seq = form == "seq"
    x = n.input(*((S, B, E) if seq else (B, S, E)))

    def proj(inp: str, width: int) -> str:
        y = n.op("MatMul", inp, n.rand(E, width, scale=E ** -0.5))
        return n.op("Add", y, n.rand(width, scale=0.1)) if bias else y

    if form in ("ts", "dynamo"):
        q, k, v = proj(x, E), proj(x, E), proj(x, E)
    elif form == "packed":
        q, k, v = n.op("Split", proj(x, 3 * E), n.const([E, E, E], np.int64), axis=2, outputs=3)
    elif form == "gemm":
        g = n.op("Gemm", n.reshape(x, B * S, E), n.rand(E, 3 * E, scale=E ** -0.5), n.rand(3 * E, scale=0.1))
        q, k, v = n.op("Split", n.reshape(g, B, S, 3 * E), n.const([E, E, E], np.int64), axis=2, outputs=3)
    else:
        qk_in = n.op("Add", x, n.rand(S, B, E, scale=0.5))
        q, k, v = proj(qk_in, E), proj(qk_in, E), proj(x, E)

    def heads(t: str) -> str:
        if seq:
            return n.reshape(n.op("Transpose", n.reshape(t, S, B * N, H), perm=[1, 0, 2]), B, N, S, H)
        return n.op("Transpose", n.reshape(t, B, S, N, H), perm=[0, 2, 1, 3])

    qh, vh = heads(q), heads(v)
    if form == "ts":
        kt = n.op("Transpose", n.reshape(k, B, S, N, H), perm=[0, 2, 3, 1])
    elif form == "seq":
        kt = n.op("Transpose", heads(k), perm=[0, 1, 3, 2])
    else:
        kt = n.reshape(n.op("Transpose", n.reshape(heads(k), B * N, S, H), perm=[0, 2, 1]), B, N, H, S)
    if scale_form == "sqrt":
        c = n.const(H ** -0.25)
        scores = n.op("MatMul", n.op("Mul", qh, c), n.op("Mul", kt, c))
    else:
        scores = n.op("MatMul", qh, kt)
        if scale_form == "div":
            scores = n.op("Div", scores, n.const(math.sqrt(H)))
    if mask == "add":
        scores = n.op("Add", scores, n.input(B, 1, S, S, values=np.where(n.rng.random((B, 1, S, S)) < 0.3, -1e4, 0.0)))
    elif mask == "add4":
        pad = np.zeros((B, 1, 1, S))
        pad[..., S - S // 3:] = MIN
        scores = n.op("Add", n.input(B, 1, 1, S, values=pad), scores)
    elif mask == "where":
        scores = n.op("Where", n.input(B, 1, S, S, dtype=np.bool_), scores, n.const(MIN))
    elif mask in ("where_bias", "where_inf"):
        fill = MIN if mask == "where_bias" else -np.inf
        scores = n.op("Add", scores, n.op("Where", n.input(1, 1, S, S, dtype=np.bool_), n.const(0.0), n.const(fill)))
    p = n.op("Softmax", scores, axis=-1 if n.opset >= 13 else 3)
    if guard:
        p = n.op("Where", n.op("IsNaN", p), n.const(0.0), p)
    ctx = n.op("MatMul", p, vh)
    if seq:
        out = n.reshape(n.op("Transpose", ctx, perm=[2, 0, 1, 3]), S, B, E)
    else:
        out = n.reshape(n.op("Transpose", ctx, perm=[0, 2, 1, 3]), B, S, E)
    y = n.op("MatMul", out, n.rand(E, E, scale=E ** -0.5))
    return (y, p) if probs_out else (y,)


@pytest.mark.parametrize("form,mask", [("ts", "add"), ("dynamo", "add4"), ("packed", "where"), ("gemm", "where_bias"),
                                       ("ts", None)])
def test_attention_with_one_projection_input_becomes_contrib_attention(form: str, mask: str | None) -> None:
    n = Net(17, seed=1)
    g = fuse(n.model(*attention_block(n, B=2, S=5, N=2, H=4, form=form, mask=mask, guard=form == "gemm")), n.feeds)
    assert ops(g).count("com.microsoft.Attention") == 1
    assert "Softmax" not in ops(g) and "Split" not in ops(g)
    attn = next(x for x in g if x.op_type == "Attention")
    assert attn.attr("num_heads") == 2 and abs(attn.attr("scale") - 0.5) < 1e-6
    assert (len(attn.inputs) == 6) == (mask is not None) and attn.inputs[2].const_value is not None


def test_merge_qkv_makes_one_matmul_and_a_split() -> None:
    n = Net(17)
    x = n.input(1, 4, 8)
    outs = [n.op("Relu", n.op("Add", n.op("MatMul", x, n.rand(8, w)), n.rand(w))) for w in (8, 8, 6)]
    g = fuse(n.model(*outs), n.feeds, "merge-qkv")
    assert ops(g) == ["MatMul", "Add", "Split", "Relu", "Relu", "Relu"]
    assert g.nodes[0].inputs[1].shape == (8, 22)


def test_merge_qkv_needs_a_sibling() -> None:
    n = Net(17)
    x = n.input(1, 4, 8)
    graph = lepton_ir.load(n.model(n.op("MatMul", x, n.rand(8, 8)), n.op("MatMul", x, n.input(8, 8))))
    assert not run_pass(MergeQKV(), graph).modified
    assert any("no other constant matrix" in r for r in reasons(MergeQKV(), graph, "merge-projections"))


def test_sequence_major_attention_of_separate_inputs_becomes_multiheadattention() -> None:
    """nn.MultiheadAttention (DETR): [S, B, E], Q and K from x + pos, V from x: no single projection input."""
    n = Net(14, seed=2)
    g = fuse(n.model(*attention_block(n, B=2, S=6, N=2, H=4, form="seq", mask=None, scale_form="div")), n.feeds)
    assert ops(g).count("com.microsoft.MultiHeadAttention") == 1 and "Softmax" not in ops(g)
    mha = next(x for x in g if x.op_type == "MultiHeadAttention")
    assert [v.shape for v in mha.inputs[:3]] == [(2, 6, 8)] * 3


def test_attention_whose_probabilities_are_an_output_is_left_with_the_reason() -> None:
    n = Net(17)
    graph = lepton_ir.load(n.model(*attention_block(n, B=1, S=4, N=2, H=2, form="ts", mask="add", probs_out=True)))
    PassManager("merge-qkv").run(graph)
    assert not run_pass(FuseAttention(), graph).modified
    assert any("read outside the attention" in r for r in reasons(FuseAttention(), graph, "attention"))


def test_nan_guard_with_an_infinite_mask_is_left_with_the_reason() -> None:
    """GPT-2 TorchScript: Where(mask, 0, -inf) added, then Where(IsNaN(p), 0, p). A fully masked row is NaN in
    the fused op and 0 in the guarded graph, so the rule must not fire."""
    n = Net(17)
    graph = lepton_ir.load(n.model(*attention_block(n, B=1, S=4, N=2, H=2, form="packed", mask="where_inf", guard=True)))
    assert not run_pass(FuseAttention(), graph).modified
    assert any("mask is not known finite" in r for r in reasons(FuseAttention(), graph, "attention"))


def test_where_mask_with_a_small_fill_is_left_with_the_reason() -> None:
    n = Net(17)
    x = n.input(1, 2, 4, 4)
    v = n.input(1, 2, 4, 4)
    s = n.op("Where", n.input(1, 1, 4, 4, dtype=np.bool_), n.op("MatMul", x, n.op("Transpose", x, perm=[0, 1, 3, 2])),
             n.const(-1e4))
    graph = lepton_ir.load(n.model(n.op("MatMul", n.op("Softmax", s, axis=-1), v)))
    assert any("fully masked rows" in r for r in reasons(FuseAttention(), graph, "attention"))


# ----- the random chains ------------------------------------------------------------------------------------------


@st.composite
def transformer_chains(draw: st.DrawFn) -> tuple[onnx.ModelProto, dict[str, np.ndarray], str, str]:
    """A random instance of one chain: (model, feeds, kind, the op that must appear after the fusions)."""
    kind = draw(st.sampled_from(["gelu", "layernorm", "skip", "rmsnorm", "attention"]))
    seed = draw(st.integers(0, 2**16))
    if kind == "attention":
        form = draw(st.sampled_from(["ts", "dynamo", "packed", "gemm", "seq"]))
        n = Net(draw(st.sampled_from([14, 17, 18])), seed)
        mask = draw(st.sampled_from([None, "add", "add4", "where", "where_bias"]))
        guard = mask in (None, "where_bias") and draw(st.booleans())
        outs = attention_block(n, B=draw(st.integers(1, 2)), S=draw(st.integers(1, 6)), N=draw(st.integers(1, 3)),
                               H=draw(st.sampled_from([2, 3, 4, 8])), form=form, mask=mask, guard=guard,
                               scale_form=draw(st.sampled_from(["sqrt", "div", "none"])), bias=draw(st.booleans()))
        want = "MultiHeadAttention" if form == "seq" else "Attention"
        return n.model(*outs), n.feeds, kind, want
    rank = draw(st.integers(2, 4))
    shape = [draw(st.integers(1, 4)) for _ in range(rank - 1)] + [draw(st.integers(2, 12))]
    eps = draw(st.sampled_from([1e-12, 1e-6, 1e-5, 1e-3]))
    if kind == "gelu":
        n = Net(draw(st.sampled_from([17, 20])), seed)
        x = n.input(*shape)
        tanh = draw(st.booleans())
        form = draw(st.integers(0, 2))
        y = gelu_tanh(n, x, form, draw(st.sampled_from(["Pow", "Mul"]))) if tanh else \
            gelu_erf(n, x, form, draw(st.sampled_from(["Div", "Mul"])))
        return n.model(y), n.feeds, kind, "Gelu" if n.opset >= 20 else ("FastGelu" if tanh else "Gelu")
    square, div = draw(st.sampled_from(["Pow", "Mul"])), draw(st.sampled_from(["Div", "Reciprocal", "DivOne"]))
    if kind == "rmsnorm":
        n = Net(23, seed)
        x = n.input(*shape)
        return n.model(n.op("Mul", layernorm_chain(n, x, rank, eps=eps, square=square, div=div, centered=False),
                            n.rand(shape[-1]))), n.feeds, kind, "RMSNormalization"
    n = Net(draw(st.sampled_from([14, 16, 17, 18])), seed)
    x = n.input(*shape)
    if kind == "skip":
        rank, shape = min(rank, 3), shape[-min(rank, 3):]
        x = n.input(*shape)
        x = n.op("Add", x, n.input(*shape))
    y = layernorm_chain(n, x, rank, eps=eps, square=square, div=div,
                        axes=1 if kind == "skip" else draw(st.integers(1, rank - 1)))
    if draw(st.booleans()):
        y = n.op("Mul", y, n.rand(shape[-1]))
    if draw(st.booleans()):
        y = n.op("Add", n.rand(shape[-1]), y)
    if kind == "layernorm" and n.opset < 17:
        return n.model(y), n.feeds, kind, ""  # stays: only the outputs are checked
    return n.model(y), n.feeds, kind, "SkipLayerNormalization" if kind == "skip" else "LayerNormalization"


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(transformer_chains())
def test_random_chains_fuse_and_keep_onnxruntime_outputs(chain: tuple[onnx.ModelProto, dict[str, np.ndarray], str, str]) -> None:
    model, feeds, kind, want = chain
    graph = fuse(model, feeds)
    if want:
        assert want in [n.op_type for n in graph], (kind, ops(graph))
    again = PassManager(FUSIONS).run(graph)
    assert not any(r.modified for r in again.records if r.name not in ("eliminate-dead-code",)), "not idempotent"


# ----- the pipelines and the codegen ------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["x86", "x86-avx2", "x86-avx512", "arm", "arm-dotprod", "cuda", "opencl"])
def test_every_target_runs_the_transformer_fusions_after_cleanup(name: str) -> None:
    names = [p.name for p in parse_pipeline(targets.resolve(name).pipeline)]
    mine = [names.index(p) for p in FUSIONS.split(",")[:7]]
    assert mine == sorted(mine) and min(mine) > names.index("eliminate-dead-code")
    assert names[-1] == "eliminate-dead-code"  # cleanup again after them


@pytest.fixture(params=["ops", "kernel"])
def lowering(request: pytest.FixtureRequest) -> Any:
    from lepton.codegen import fused_transformer

    old = dict(fused_transformer.LOWERING)
    fused_transformer.LOWERING.update(attention=request.param, layernorm=request.param,
                                      projection="separate" if request.param == "ops" else "packed")
    yield request.param
    fused_transformer.LOWERING.update(old)


def test_the_contrib_ops_compile_and_verify_on_x86_under_both_lowerings(lowering: str) -> None:
    """One graph with every op the fusions leave (Attention, MultiHeadAttention, SkipLayerNormalization with and
    without its sum, Gelu, FastGelu, BiasGelu), compiled with the fusions and verified against onnxruntime."""
    import lepton

    n = Net(17, seed=4)
    (y,) = attention_block(n, B=1, S=6, N=2, H=4, form="ts", mask="add4")
    (z,) = attention_block(n, B=1, S=6, N=2, H=4, form="seq", mask="where", scale_form="div")
    s = n.op("Add", y, n.reshape(z, 1, 6, 8))
    ln = n.op("LayerNormalization", s, n.rand(8), n.rand(8))
    h = n.op("Add", n.op("MatMul", ln, n.rand(8, 16, scale=0.3)), n.rand(16))
    act = n.op("Add", gelu_erf(n, h, 0), gelu_tanh(n, n.op("MatMul", ln, n.rand(8, 16, scale=0.3)), 1))
    out = layernorm_chain(n, n.op("Add", n.op("MatMul", act, n.rand(16, 8, scale=0.3)), s), 3)
    model = n.model(out, gelu_erf(n, n.op("Add", n.op("MatMul", out, n.rand(8, 4)), n.rand(4)), 2))
    compiled = lepton.compile(model, "x86", use_cache=False, verify_inputs=n.feeds)
    graph = lepton_ir.load(f"{compiled.path}/model.opt.onnx")
    have = set(ops(graph))
    assert {"com.microsoft.Attention", "com.microsoft.MultiHeadAttention", "com.microsoft.SkipLayerNormalization",
            "com.microsoft.Gelu", "com.microsoft.FastGelu", "com.microsoft.BiasGelu"} <= have, have
    assert compiled.verify_report is not None and compiled.verify_report.ok


def _bert(dynamo: bool) -> onnx.ModelProto:
    """A Hugging Face BertModel (2 layers, hidden 32) with every weight random (biases, LayerNorm scales and
    shifts not 0/1, so the fusions meet the bias Adds and affine Mul/Adds of a trained model), attention mask."""
    torch = pytest.importorskip("torch")
    transformers = pytest.importorskip("transformers")
    from bench.corpus import export_torch

    torch.manual_seed(0)
    cfg = transformers.BertConfig(vocab_size=50, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                                  intermediate_size=64, max_position_embeddings=32)
    model = transformers.BertModel(cfg)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.1)
    ids = torch.randint(0, 50, (1, 12), generator=torch.Generator().manual_seed(1))
    mask = torch.ones(1, 12, dtype=torch.int64)
    mask[:, 9:] = 0
    return export_torch(model, {"input_ids": ids, "attention_mask": mask}, ["last_hidden_state", "pooler_output"],
                        opset=18 if dynamo else 16, dynamo=dynamo)


@pytest.mark.slow
@pytest.mark.parametrize("dynamo", [False, True], ids=["torchscript", "dynamo"])
def test_hugging_face_bert_compiles_and_verifies_with_the_fusions(dynamo: bool) -> None:
    import lepton

    model = _bert(dynamo)
    compiled = lepton.compile(model, "x86", use_cache=False, verify_samples=2,
                              input_shapes={"input_ids": [1, 12], "attention_mask": [1, 12]})
    graph = lepton_ir.load(f"{compiled.path}/model.opt.onnx")
    counts = {k: ops(graph).count(k) for k in ("com.microsoft.Attention", "com.microsoft.SkipLayerNormalization",
                                               "com.microsoft.BiasGelu", "Softmax", "Erf")}
    assert counts == {"com.microsoft.Attention": 2, "com.microsoft.SkipLayerNormalization": 5,
                      "com.microsoft.BiasGelu": 2, "Softmax": 0, "Erf": 0}, counts
    assert compiled.verify_report is not None and compiled.verify_report.ok
