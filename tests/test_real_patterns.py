"""Real-model patterns: PyTorch exports (tests/patterns/torch_models.py) compiled for x86, and
`canonicalize-dynamic-shapes` on helper-built graphs.

Each corpus model is compiled with its symbolic dims pinned (`input_shapes=`) and, where
TVM can take it, without pinning; `compile` verifies against onnxruntime, and the module is
also run here on a second random input of the pinned shapes. Where a model cannot compile
unpinned, the error must name the dim to pin.
"""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from onnx import TensorProto, helper
from passutil import assert_outputs_close, assert_pass_preserves, run_pass
from patterns.base import Pattern
from strategies import onnx_models, random_inputs

import lepton
import lepton_ir
from lepton_ir.constants import constant_value
from lepton.errors import ConversionError, UnsupportedOpsError
from passes.lowering.dynamic_shapes import CanonicalizeDynamicShapes
from passes.ort import run_model

try:
    from patterns.torch_models import torch_patterns

    CORPUS = {p.name: p for p in torch_patterns()}
except ImportError:  # pragma: no cover
    CORPUS = {}

needs_torch = pytest.mark.skipif(not CORPUS, reason="the PyTorch corpus needs torch (pip install 'lepton-compiler[torch]')")

#: Corpus models compiled in the default run (the rest are `slow`).
QUICK = {"cnn_flatten", "transformer_encoder", "causal_attention", "arange_expand_repeat", "torch_gru",
         "torch_lstm_state"}

#: Models that must compile without pinning (others need pinning; see UNPINNED_ERRORS).
UNPINNED_OK = {"cnn_flatten", "attention_mask", "hf_bert_attention", "causal_attention", "multihead_reshape",
               "arange_expand_repeat", "layernorm_gelu", "layernorm_gelu_tanh_op20", "layernorm_gelu_op13"}


def compile_and_check(p: Pattern, pinned: bool) -> lepton.Compiled:
    model = p.build()
    c = lepton.compile(model, "x86", input_shapes=p.shapes if pinned else None, use_cache=False)
    assert c.verify_report is not None and c.verify_report.ok
    second = p.inputs(seed=1)
    assert_outputs_close(run_model(model, second), c.run(second))
    if not pinned:  # symbolic dims stay symbolic: other sizes run too
        third = p.inputs(seed=2, symbols={"batch": 3, "seq": 7})
        assert_outputs_close(run_model(model, third), c.run(third))
    return c


def _corpus_params(quick: bool) -> list:
    return [pytest.param(n, marks=[] if (n in QUICK) == quick else [pytest.mark.slow]) for n in sorted(CORPUS)]


@needs_torch
@pytest.mark.parametrize("name", _corpus_params(True))
def test_corpus_compiles_pinned(name: str) -> None:
    compile_and_check(CORPUS[name], pinned=True)


@needs_torch
@pytest.mark.parametrize("name", [pytest.param(n, marks=[] if n in QUICK else [pytest.mark.slow]) for n in sorted(UNPINNED_OK)])
def test_corpus_compiles_unpinned(name: str) -> None:
    compile_and_check(CORPUS[name], pinned=False)


@needs_torch
@pytest.mark.parametrize("name", sorted(n for n in CORPUS if n.startswith("torch_")))
def test_recurrent_exports_unpinned_name_the_dim_to_pin(name: str) -> None:
    p = CORPUS[name]
    with pytest.raises(UnsupportedOpsError) as err:
        lepton.compile(p.build(), "x86", use_cache=False)
    text = str(err.value)
    assert "sequence length" in text and "symbolic dim 'seq'" in text and "--input-shape x:" in text


@needs_torch
def test_resize_to_computed_sizes_unpinned_says_which_dims_to_pin() -> None:
    """TVM's Resize converter needs static output sizes: unpinned, the error names the symbolic dims."""
    with pytest.raises(ConversionError) as err:
        lepton.compile(CORPUS["interpolate_size"].build(), "x86", use_cache=False)
    text = str(err.value)
    assert "Resize" in text and "x[batch,3,h,w] dim 0, 2, 3" in text and "--input-shape" in text


@needs_torch
def test_torch_exports_use_the_ops_the_patterns_are_about() -> None:
    ops = {name: {n.op_type for n in CORPUS[name].build().graph.node} for name in CORPUS}
    assert {"Shape", "Gather", "Concat", "Reshape"} <= ops["cnn_flatten"]
    assert {"Expand", "Where"} <= ops["transformer_encoder"]
    assert "Range" in ops["causal_attention"] and "Tile" in ops["arange_expand_repeat"]
    assert "LayerNormalization" in ops["layernorm_gelu"] and "Gelu" in ops["layernorm_gelu_tanh_op20"]
    assert "LayerNormalization" not in ops["layernorm_gelu_op13"]
    assert {"LSTM"} <= ops["torch_lstm_2layer_bidir_state_bf"] and "GRU" in ops["torch_gru"] and "RNN" in ops["torch_rnn_tanh_2layer"]


# ----- canonicalize-dynamic-shapes --------------------------------------------------------


def _model(nodes: list, inputs: list, outputs: list, inits: list = (), opset: int = 17) -> onnx.ModelProto:
    g = helper.make_graph(nodes, "g", inputs, outputs, list(inits))
    return helper.make_model(g, opset_imports=[helper.make_opsetid("", opset)], ir_version=8)


def _i64(name: str, values: object) -> onnx.TensorProto:
    return onnx.numpy_helper.from_array(np.array(values, dtype=np.int64), name)


def mask_expand_model() -> onnx.ModelProto:
    """A key-padding mask [batch,1,1,seq] expanded per head to [batch,4,1,seq] with a constant
    target (what nn.MultiheadAttention's export leaves once its Equal/Where chain folds)."""
    f = TensorProto.FLOAT
    nodes = [
        helper.make_node("Expand", ["m", "target"], ["e"]),
        helper.make_node("Relu", ["m"], ["r"]),
        helper.make_node("Expand", ["r", "same"], ["noop"]),  # keeps r's shape: removed
        helper.make_node("Mul", ["e", "noop"], ["y"]),
    ]
    return _model(nodes, [helper.make_tensor_value_info("m", f, ["batch", 1, 1, "seq"])],
                  [helper.make_tensor_value_info("y", f, ["batch", 4, 1, "seq"])],
                  [_i64("target", [1, 4, 1, 1]), _i64("same", [1, 1])])


def range_model(float_range: bool = False, start: int = 0) -> onnx.ModelProto:
    """`x + arange(x.size(1))` (int64, cast) or `x * arange(2 * x.size(1), dtype=float)[:seq]`-style float range."""
    f = TensorProto.FLOAT
    nodes = [
        helper.make_node("Shape", ["x"], ["s"]),
        helper.make_node("Gather", ["s", "one"], ["n"], axis=0),
    ]
    inits = [_i64("one", 1)]
    if float_range:
        nodes += [
            helper.make_node("Mul", ["n", "two"], ["n2"]),
            helper.make_node("Cast", ["n2"], ["lim"], to=f),
            helper.make_node("Range", ["zf", "lim", "onef"], ["r2"]),
            helper.make_node("Reshape", ["r2", "tail"], ["r3"]),
            helper.make_node("Concat", ["x", "x"], ["xx"], axis=1),
            helper.make_node("Mul", ["xx", "r3"], ["y"]),
        ]
        inits += [_i64("two", 2), _i64("tail", [1, -1]),
                  onnx.numpy_helper.from_array(np.array(0.0, np.float32), "zf"),
                  onnx.numpy_helper.from_array(np.array(1.0, np.float32), "onef")]
        out = helper.make_tensor_value_info("y", f, ["batch", None])
    else:
        nodes += [
            helper.make_node("Range", ["st", "n", "d"], ["r"]),
            helper.make_node("Cast", ["r"], ["rf"], to=f),
            helper.make_node("Add", ["x", "rf"], ["y"]),
        ]
        inits += [_i64("st", start), _i64("d", 1)]
        out = helper.make_tensor_value_info("y", f, ["batch", "seq"])
    return _model(nodes, [helper.make_tensor_value_info("x", f, ["batch", "seq"])], [out], inits)


def _feeds(model: onnx.ModelProto, dims: dict[str, int], seed: int = 0) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    out = {}
    for vi in model.graph.input:
        shape = [d.dim_value or dims[d.dim_param] for d in vi.type.tensor_type.shape.dim]
        out[vi.name] = rng.standard_normal(shape).astype(np.float32)
    return out


def test_expand_target_copies_symbolic_dims_and_noop_expand_goes() -> None:
    model = mask_expand_model()
    graph = assert_pass_preserves(model, CanonicalizeDynamicShapes(), _feeds(model, {"batch": 2, "seq": 3}))
    expands = [n for n in graph if n.op_type == "Expand"]
    assert len(expands) == 2  # the no-op one is dead, left for eliminate-dead-code
    assert not expands[1].outputs[0].uses
    target = expands[0].inputs[1].producer
    assert target is not None and target.op_type == "Concat"
    run = run_model(lepton_ir.to_onnx(graph), _feeds(model, {"batch": 3, "seq": 5}, seed=1))
    assert_outputs_close(run_model(model, _feeds(model, {"batch": 3, "seq": 5}, seed=1)), run)


def test_expand_with_static_input_is_left_alone() -> None:
    f = TensorProto.FLOAT
    model = _model([helper.make_node("Expand", ["x", "t"], ["y"])], [helper.make_tensor_value_info("x", f, [2, 1])],
                   [helper.make_tensor_value_info("y", f, [2, 3])], [_i64("t", [1, 3])])
    graph = lepton_ir.load(model)
    assert not run_pass(CanonicalizeDynamicShapes(), graph).modified
    reasons = [r for _, rule, r in CanonicalizeDynamicShapes().explain(graph) if rule == "expand_target_from_input"]
    assert reasons == ["the data input's shape is static (the frontend takes it)"]


@pytest.mark.parametrize("float_range", [False, True])
def test_range_over_dims_becomes_cumsum(float_range: bool) -> None:
    model = range_model(float_range)
    graph = assert_pass_preserves(model, CanonicalizeDynamicShapes(), _feeds(model, {"batch": 2, "seq": 4}))
    live = [n.op_type for n in graph if any(o.uses or graph.is_graph_output(o) for o in n.outputs)]
    assert "Range" not in live and "CumSum" in live and "ConstantOfShape" in live
    for dims in ({"batch": 1, "seq": 1}, {"batch": 3, "seq": 7}):
        feeds = _feeds(model, dims, seed=2)
        assert_outputs_close(run_model(model, feeds), run_model(lepton_ir.to_onnx(graph), feeds))


def test_range_with_other_start_is_left_alone() -> None:
    graph = lepton_ir.load(range_model(start=1))
    assert not run_pass(CanonicalizeDynamicShapes(), graph).modified


@pytest.mark.parametrize("build", [mask_expand_model, range_model, lambda: range_model(True)],
                         ids=["mask_expand", "range", "float_range"])
def test_unpinned_compile_of_dynamic_shape_patterns(build) -> None:  # type: ignore[no-untyped-def]
    model = build()
    c = lepton.compile(model, "x86", use_cache=False)
    assert c.verify_report is not None and c.verify_report.ok
    feeds = _feeds(model, {"batch": 2, "seq": 3}, seed=3)
    assert_outputs_close(run_model(model, feeds), c.run(feeds))


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(model=onnx_models())
def test_canonicalize_preserves_random_graphs_with_symbolic_inputs(model: onnx.ModelProto) -> None:
    """Random graphs whose input dims are made symbolic (a symbol per input and axis): the
    rewrites fire on whatever Expand/Range they meet and must keep onnxruntime's outputs."""
    feeds = random_inputs(model)
    symbolic = onnx.ModelProto()
    symbolic.CopyFrom(model)
    for i, vi in enumerate(symbolic.graph.input):
        for k, d in enumerate(vi.type.tensor_type.shape.dim):
            d.dim_param = f"in{i}_{k}"
    for j, vi in enumerate(symbolic.graph.output):
        for k, d in enumerate(vi.type.tensor_type.shape.dim):
            d.dim_param = f"out{j}_{k}"
    assert_pass_preserves(symbolic, CanonicalizeDynamicShapes(), feeds)


@st.composite
def expand_cases(draw: st.DrawFn) -> tuple[list[int], list[int], list[bool]]:
    """(x's shape, a constant Expand target valid for it, which dims of x are symbolic)."""
    x = draw(st.lists(st.integers(1, 3), min_size=1, max_size=4))
    target = [draw(st.sampled_from([1, d]) if d > 1 else st.integers(1, 3)) for d in x]
    lead = draw(st.lists(st.integers(1, 3), max_size=2))
    cut = draw(st.integers(0, len(target) - 1))  # a target may be shorter than x's rank
    symbolic = draw(st.lists(st.booleans(), min_size=len(x), max_size=len(x)))
    return x, (lead + target) if not cut or lead else target[cut:], symbolic


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(expand_cases())
def test_expand_rewrite_preserves_outputs(case: tuple[list[int], list[int], list[bool]]) -> None:
    shape, target, symbolic = case
    f = TensorProto.FLOAT
    dims = [f"d{i}" if sym else d for i, (d, sym) in enumerate(zip(shape, symbolic, strict=True))]
    model = _model([helper.make_node("Expand", ["x", "t"], ["e"]), helper.make_node("Relu", ["e"], ["y"])],
                   [helper.make_tensor_value_info("x", f, dims)], [helper.make_tensor_value_info("y", f, None)],
                   [_i64("t", target)])
    model.graph.output[0].type.tensor_type.shape.SetInParent()
    del model.graph.output[0].type.tensor_type.shape.dim[:]
    out_rank = max(len(shape), len(target))
    for k in range(out_rank):
        model.graph.output[0].type.tensor_type.shape.dim.add().dim_param = f"o{k}"
    feeds = {"x": np.random.default_rng(len(shape)).standard_normal(shape).astype(np.float32)}
    graph = assert_pass_preserves(model, CanonicalizeDynamicShapes(), feeds)

    def under_one(i: int) -> bool:  # x's dim i meets a target 1 (or no target entry)
        k = i - len(shape) + len(target)
        return k < 0 or target[k] == 1

    fires = any(sym and under_one(i) for i, sym in enumerate(symbolic)) and all(
        under_one(i) for i, sym in enumerate(symbolic) if sym)  # a symbolic dim under a target > 1 is left alone
    if fires:
        live = [n for n in graph if n.op_type == "Expand" and n.outputs[0].uses]
        assert all(constant_value(graph, n.inputs[1]) is None for n in live), "target copied from Shape(x)"
