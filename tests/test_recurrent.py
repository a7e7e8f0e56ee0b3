"""`lower-recurrent`: LSTM/GRU/RNN unrolled into primitive ops, checked against onnxruntime.

Helper-built nodes (tests/patterns/recurrent.py) cover direction, layout, optional inputs
(B, sequence_lens, initial_h, initial_c, P), clip, activations with alpha/beta,
linear_before_reset, input_forget and output subsets. onnxruntime does not run layout 1; its
reference is the layout-0 twin with transposed inputs and outputs.
"""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from patterns.recurrent import SPECS, RnnSpec, build, feeds, input_shapes, reference
from passutil import assert_outputs_close, run_pass

import lepton
import lepton_ir
from lepton.codegen.frontend import CONVERTED_OPS, unsupported_nodes
from lepton.errors import UnsupportedOpsError
from passes import parse_pipeline
from passes.lowering.recurrent import LowerRecurrent, reason
from passes.ort import run_model

#: Every op the unrolled graph may contain.
ALLOWED = {
    "MatMul", "Add", "Sub", "Mul", "Gather", "Reshape", "Transpose", "Concat", "Split", "Max", "Min", "Where",
    "Less", "Sigmoid", "Tanh", "Relu", "LeakyRelu", "ThresholdedRelu", "Elu", "HardSigmoid", "Softsign", "Softplus",
}


def lowered(spec: RnnSpec) -> lepton_ir.Graph:
    graph = lepton_ir.load(build(spec))
    result = run_pass(LowerRecurrent(), graph)
    assert result.modified and result.stats == {spec.op: 1}, result.stats
    return graph


def check_equivalent(spec: RnnSpec, graph: lepton_ir.Graph, seed: int = 0, batch: int | None = None) -> None:
    inputs = feeds(spec, seed, batch)
    assert_outputs_close(reference(spec, inputs), run_model(lepton_ir.to_onnx(graph), inputs))


def expected_matmuls(spec: RnnSpec) -> int:
    """The hoisted input projection, plus the recurrent products of every step with a state."""
    per_step = 2 if spec.op == "GRU" and not spec.linear_before_reset else 1
    steps = spec.seq if spec.initial_h else spec.seq - 1  # the first step of a zero state has no H·R^T
    return 1 + spec.nd * per_step * steps


@pytest.mark.parametrize("name", sorted(SPECS))
def test_lowered_graph_matches_onnxruntime(name: str) -> None:
    spec = SPECS[name]
    graph = lowered(spec)
    ops = [n.op_type for n in graph]
    assert set(ops) <= ALLOWED, set(ops) - ALLOWED
    assert set(ops) <= CONVERTED_OPS
    check_equivalent(spec, graph)
    check_equivalent(spec, graph, seed=5)
    again = run_pass(LowerRecurrent(), graph)
    assert not again.modified


@pytest.mark.parametrize("name", ["lstm_forward", "lstm_bidirectional", "gru_forward", "gru_linear_before_reset",
                                  "rnn_layout1", "lstm_layout1", "gru_reverse"])
def test_input_projection_is_hoisted(name: str) -> None:
    spec = SPECS[name]
    graph = lowered(spec)
    x = graph.inputs[0]
    readers = [n for n, _ in x.uses]
    assert [n.op_type for n in readers] == ["MatMul"], "X is read once, by the hoisted projection"
    proj = readers[0].outputs[0]
    g = {"LSTM": 4, "GRU": 3, "RNN": 1}[spec.op]
    assert proj.shape is not None and proj.shape[-1] == spec.nd * g * spec.hidden
    assert sum(n.op_type == "MatMul" for n in graph) == expected_matmuls(spec)


def test_pipeline_text_and_cleanup_fold_the_weights() -> None:
    spec = SPECS["lstm_bidirectional"]
    graph = lepton_ir.load(build(spec))
    from passes import PassManager
    from passes.cleanup import CLEANUP_PIPELINE

    PassManager(parse_pipeline("lower-recurrent," + CLEANUP_PIPELINE)).run(graph)
    ops = {n.op_type for n in graph}
    assert "Transpose" not in ops, "weight transposes fold into initializers"
    check_equivalent(spec, graph)


def test_static_seq_symbolic_batch_is_lowered() -> None:
    spec = dataclasses.replace(SPECS["lstm_bidirectional"], sym_batch=True)
    graph = lowered(spec)
    for batch in (1, 3):
        check_equivalent(spec, graph, seed=batch, batch=batch)


def test_symbolic_sequence_length_is_left_with_a_reason_naming_the_dim() -> None:
    spec = dataclasses.replace(SPECS["gru_forward"], sym_seq=True, sym_batch=True)
    graph = lepton_ir.load(build(spec))
    result = run_pass(LowerRecurrent(), graph)
    assert not result.modified and result.stats == {"skipped_sequence_length": 1}
    node = next(iter(graph))
    why = reason(node)
    assert why is not None and "'seq'" in why and "input 'X' dim 0" in why and "--input-shape X:<seq>,<batch>,4" in why
    missing = unsupported_nodes(graph)
    assert [m.node for m in missing] == ["gru_node"] and missing[0].reason == why


def test_unknown_sequence_length_says_to_pin_input_shapes() -> None:
    spec = dataclasses.replace(SPECS["rnn_tanh"], sym_seq=True)
    model = build(spec)
    model.graph.input[0].type.tensor_type.shape.dim[0].Clear()  # neither a value nor a symbol
    graph = lepton_ir.load(model)
    why = reason(next(iter(graph)))
    assert why is not None and "not known at compile time" in why and "--input-shape" in why


def test_unknown_activation_is_refused_with_its_name() -> None:
    spec = SPECS["rnn_tanh"]
    graph = lepton_ir.load(build(spec))
    node = next(iter(graph))
    node.attributes["activations"] = lepton_ir.core.Attr.infer(["Swish"])
    result = run_pass(LowerRecurrent(), graph)
    assert not result.modified and result.stats == {"skipped_activation": 1}
    assert "'Swish'" in (reason(node) or "")


def test_non_recurrent_nodes_have_no_reason() -> None:
    graph = lepton_ir.load(build(SPECS["rnn_tanh"]))
    run_pass(LowerRecurrent(), graph)
    assert all(reason(n) is None for n in graph)


# ----- end to end through lepton.compile --------------------------------------------------

E2E = ["lstm_bidirectional", "lstm_peepholes", "gru_linear_before_reset_no_init", "gru_lens", "rnn_activations",
       "lstm_lens_zero"]


def compile_and_check(spec: RnnSpec, shapes: dict | None = None) -> None:
    c = lepton.compile(build(spec), "x86", input_shapes=shapes, use_cache=False)
    assert c.verify_report is not None and c.verify_report.ok
    inputs = feeds(spec, seed=11)
    got = c.run({k: v for k, v in inputs.items() if k in {s.name for s in c.module.inputs}})
    assert_outputs_close(reference(spec, inputs), got)


@pytest.mark.parametrize("name", E2E[:2])
def test_compile_x86(name: str) -> None:
    compile_and_check(SPECS[name])


@pytest.mark.slow
@pytest.mark.parametrize("name", E2E[2:])
def test_compile_x86_more(name: str) -> None:
    compile_and_check(SPECS[name])


@pytest.mark.slow
@pytest.mark.parametrize("name", sorted(n for n in SPECS if SPECS[n].layout == 0 and n not in E2E))
def test_compile_x86_every_layout0_spec(name: str) -> None:
    compile_and_check(SPECS[name])


def test_compile_pins_symbolic_sequence() -> None:
    spec = dataclasses.replace(SPECS["gru_bidirectional"], sym_seq=True, sym_batch=True)
    with pytest.raises(UnsupportedOpsError) as err:
        lepton.compile(build(spec), "x86", use_cache=False)
    assert "gru_node" in str(err.value) and "'seq'" in str(err.value) and "--input-shape X:" in str(err.value)
    compile_and_check(spec, input_shapes(spec))


# ----- property: random small configurations ----------------------------------------------


@st.composite
def rnn_specs(draw: st.DrawFn) -> RnnSpec:
    op = draw(st.sampled_from(["LSTM", "GRU", "RNN"]))
    seq, batch = draw(st.integers(1, 4)), draw(st.integers(1, 3))
    direction = draw(st.sampled_from(["forward", "reverse", "bidirectional"]))
    lens = None
    if draw(st.booleans()):
        lens = tuple(draw(st.lists(st.integers(0, seq), min_size=batch, max_size=batch)))
    outputs = draw(st.tuples(st.booleans(), st.booleans(), st.booleans()).filter(
        lambda o: any(o[: 3 if op == "LSTM" else 2])))
    return RnnSpec(
        op=op, seq=seq, batch=batch, input_size=draw(st.integers(1, 5)), hidden=draw(st.integers(1, 4)),
        direction=direction, layout=draw(st.sampled_from([0, 1])), bias=draw(st.booleans()),
        initial_h=draw(st.booleans()), initial_c=draw(st.booleans()), peepholes=op == "LSTM" and draw(st.booleans()),
        clip=draw(st.one_of(st.none(), st.floats(0.25, 2.0))),
        linear_before_reset=int(op == "GRU" and draw(st.booleans())),
        input_forget=int(op == "LSTM" and draw(st.booleans())),
        lens=lens, lens_input=lens is not None and draw(st.booleans()),
        outputs=outputs, weights_as_inputs=draw(st.booleans()), seed=draw(st.integers(0, 1000)),
    )


@settings(max_examples=20, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(rnn_specs())
def test_lowering_preserves_onnxruntime_outputs(spec: RnnSpec) -> None:
    graph = lowered(spec)
    assert not {"LSTM", "GRU", "RNN"} & {n.op_type for n in graph}
    inputs = feeds(spec)
    expected = reference(spec, inputs)
    actual = run_model(lepton_ir.to_onnx(graph), inputs)
    assert_outputs_close(expected, actual)
    assert np.all(np.isfinite(np.concatenate([v.reshape(-1) for v in actual.values()])))


# ----- ONNX's own backend node tests: an independent reference (layout 1 included) ----------


def _backend_cases() -> list:
    import importlib
    import warnings

    import onnx.backend.test.case.node as node_cases

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for mod in ("lstm", "gru", "rnn"):
            importlib.import_module(f"{node_cases.__name__}.{mod}")
    return [c for c in node_cases._NodeTestCases
            if c.model is not None and c.model.graph.node[0].op_type in ("LSTM", "GRU", "RNN")]


@pytest.mark.parametrize("case", _backend_cases(), ids=lambda c: c.name)
def test_onnx_backend_cases_match_their_expected_outputs(case) -> None:  # type: ignore[no-untyped-def]
    """The unrolled graph reproduces the outputs ONNX ships with its node tests (computed by
    ONNX's reference implementation, so layout-1 "batchwise" cases are checked too)."""
    import onnx.numpy_helper as onh

    graph = lepton_ir.load(case.model)
    assert run_pass(LowerRecurrent(), graph).modified
    inputs, outputs = case.data_sets[0]
    feeds = {v.name: np.asarray(onh.to_array(a) if not isinstance(a, np.ndarray) else a)
             for v, a in zip(case.model.graph.input, inputs, strict=True)}
    got = run_model(lepton_ir.to_onnx(graph), feeds)
    for vi, expected in zip(case.model.graph.output, outputs, strict=True):
        np.testing.assert_allclose(got[vi.name], expected, rtol=1e-4, atol=1e-5, err_msg=vi.name)
