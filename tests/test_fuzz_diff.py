"""Differential fuzzing in `make test`: random models (tests/strategies.py) through the whole x86
pipeline (all passes + codegen) against onnxruntime, a fixed, derandomized set of examples; and
the fuzzer's own machinery (categories, minimizer, saved failures). `make fuzz` runs the same
check for minutes (tests/fuzz.py); bugs it found have regression tests in tests/regressions/."""

from __future__ import annotations

import json
import os
import signal
import time

import numpy as np
import onnx
import pytest
from fuzz import (
    VARIANTS,
    Minimizer,
    Outcome,
    Runner,
    check,
    compare_outputs,
    examples,
    load_failure,
    main,
    make_example,
    minimize,
    save_failure,
    symbolize,
)
from hypothesis import HealthCheck, given, settings
from onnx import TensorProto, helper, numpy_helper
from strategies import random_inputs

from passes.ort import run_model

DIFF = settings(max_examples=25, derandomize=True, deadline=None, database=None,
                suppress_health_check=list(HealthCheck))


@DIFF
@given(ex=examples(max_nodes=16, opsets=(13, 23), variants=VARIANTS))
def test_random_models_compile_and_match_onnxruntime(ex) -> None:
    """Every variant (static, value_info, symbolic dims pinned or not): compile verifies, and the module
    matches onnxruntime on the strategy's inputs; a clean UserError (unsupported) is allowed, bugs are not."""
    out = check(ex.model, ex.feeds, ex.input_shapes)
    assert not out.bug, f"{ex.variant}: {out.line()}\n{out.message[:3000]}"


# ---- the fuzzer's machinery ---------------------------------------------------------------------


def _chain_model() -> onnx.ModelProto:
    """x -> Relu -> Sigmoid -> Abs -> Tanh (y), and Relu -> Neg (z): 5 nodes, 2 outputs."""
    nodes = [
        helper.make_node("Relu", ["x"], ["a"], name="relu"),
        helper.make_node("Sigmoid", ["a"], ["b"], name="sigmoid"),
        helper.make_node("Abs", ["b"], ["c"], name="abs"),
        helper.make_node("Tanh", ["c"], ["y"], name="tanh"),
        helper.make_node("Neg", ["a"], ["z"], name="neg"),
    ]
    f = lambda n: helper.make_tensor_value_info(n, TensorProto.FLOAT, [2, 3])  # noqa: E731
    g = helper.make_graph(nodes, "chain", [f("x")], [f("y"), f("z")])
    return helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)


def test_minimizer_cuts_to_the_node_that_fails_and_feeds_it_its_original_values() -> None:
    model = _chain_model()
    feeds = {"x": np.linspace(-1, 1, 6, dtype=np.float32).reshape(2, 3)}
    target = Outcome("internal", "FakeError")
    seen = []

    def checker(m: onnx.ModelProto, f: dict) -> Outcome:  # "fails" while an Abs node is present
        seen.append(len(m.graph.node))
        return Outcome("internal", "FakeError") if any(n.op_type == "Abs" for n in m.graph.node) else Outcome("ok")

    small, small_feeds, checks = minimize(model, feeds, target, checker)
    assert [n.op_type for n in small.graph.node] == ["Abs"]
    assert checks == len(seen) and checks < 20
    onnx.checker.check_model(small, full_check=True)
    # The cut input is fed with what Sigmoid(Relu(x)) computed in the original model.
    (name,) = small_feeds
    np.testing.assert_allclose(small_feeds[name], 1 / (1 + np.exp(-np.maximum(feeds["x"], 0))), rtol=1e-6)
    np.testing.assert_allclose(run_model(small, small_feeds)["c"], small_feeds[name], rtol=0)


def test_minimizer_keeps_integer_cuts_as_initializers() -> None:
    """A cut int64 value (a shape) becomes an initializer, so a Reshape target stays constant."""
    nodes = [
        helper.make_node("Shape", ["x"], ["s"], name="shape"),
        helper.make_node("Reshape", ["x", "s"], ["r"], name="reshape"),
        helper.make_node("Exp", ["r"], ["y"], name="exp"),
    ]
    g = helper.make_graph(nodes, "shape", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 3])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, [2, 3])])
    model = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)
    feeds = {"x": np.ones((2, 3), np.float32)}

    def checker(m: onnx.ModelProto, f: dict) -> Outcome:
        ops = [n.op_type for n in m.graph.node]
        shape_is_input = any(i.name == "s" for i in m.graph.input)
        return Outcome("mismatch", "X") if "Reshape" in ops and not shape_is_input else Outcome("ok")

    small, _, _ = minimize(model, feeds, Outcome("mismatch", "X"), checker)
    assert [n.op_type for n in small.graph.node] == ["Reshape"]
    assert [t.name for t in small.graph.initializer] == ["s"]
    assert numpy_helper.to_array(small.graph.initializer[0]).tolist() == [2, 3]


def test_minimizer_never_returns_a_model_that_passes() -> None:
    model = _chain_model()
    feeds = random_inputs(model)
    mz = Minimizer(model, feeds, lambda m, f: False)
    small, _ = mz.run()
    assert len(small.graph.node) == len(model.graph.node)


def test_outcome_categories_and_signature() -> None:
    assert Outcome("mismatch").bug and Outcome("crash").bug and Outcome("hang").bug and Outcome("internal").bug
    assert not Outcome("ok").bug and not Outcome("unsupported").bug and not Outcome("invalid").bug
    a = Outcome("internal", "tvm.error.InternalError", "Check failed: 'node_7' has 3 dims")
    b = Outcome("internal", "tvm.error.InternalError", "Check failed: 'node_12' has 4 dims")
    assert a.signature == b.signature and a.same_failure(b)
    assert not a.same_failure(Outcome("internal", "ValueError"))


def test_compare_outputs_follows_the_fp32_policy() -> None:
    want = {"y": np.array([1.0, np.nan, 3.0], np.float32), "i": np.array([1, 2], np.int64)}
    assert compare_outputs(dict(want), want) == []
    close = {"y": np.array([1.00005, np.nan, 3.0], np.float32), "i": want["i"]}
    assert compare_outputs(close, want) == []
    far = {"y": np.array([1.01, np.nan, 3.0], np.float32), "i": np.array([1, 3], np.int64)}
    problems = compare_outputs(far, want)
    assert len(problems) == 2 and problems[0].startswith("y:") and problems[1].startswith("i:")
    assert compare_outputs({"y": np.array([1.0, 2.0, 3.0], np.float32), "i": want["i"]}, want)  # NaN moved
    assert "missing" in compare_outputs({}, want)[0]


def test_check_reports_wrong_results_and_internal_errors(monkeypatch: pytest.MonkeyPatch) -> None:
    import lepton.compiler

    model = _chain_model()
    assert check(model).category == "ok"
    real_run = lepton.compiler.Compiled.run

    def off_by_one(self, *args, **kw):  # a miscompiled module
        return {k: v + 1 for k, v in real_run(self, *args, **kw).items()}

    monkeypatch.setattr(lepton.compiler.Compiled, "run", off_by_one)
    out = check(model)
    assert out.category == "mismatch" and out.error == "OutputMismatch" and out.feeds is not None
    monkeypatch.undo()

    def broken_build(*_a, **_k):
        raise RuntimeError("boom in codegen")

    monkeypatch.setattr(lepton.compiler, "build", broken_build)
    out = check(model)
    assert out.category == "internal" and out.error == "RuntimeError" and "boom in codegen" in out.message


def test_symbolic_variants_pin_or_keep_dims() -> None:
    model = _chain_model()
    sym = symbolize(model)
    assert all(d.dim_param for vi in sym.graph.input for d in vi.type.tensor_type.shape.dim)
    ex = make_example(model, "pinned")
    assert ex.input_shapes == {"x": [2, 3]} and set(ex.feeds) == {"x"}
    assert make_example(model, "symbolic").input_shapes is None
    assert check(ex.model, ex.feeds, ex.input_shapes).category == "ok"


def test_saved_failure_has_a_one_line_reproduction(tmp_path) -> None:
    model = _chain_model()
    feeds = random_inputs(model)
    out = Outcome("mismatch", "OutputMismatch", "y: out of tolerance", feeds)
    d = save_failure(str(tmp_path), model, feeds, model, feeds, out, minimized=True, variant="pinned",
                     input_shapes={"x": [2, 3], "gone": [1]})
    assert sorted(os.listdir(d)) == ["README.txt", "inputs.npz", "model.onnx", "original.onnx",
                                     "original_inputs.npz", "outcome.json"]
    last = open(os.path.join(d, "README.txt")).read().strip().splitlines()[-1]
    assert last.endswith(f"tests/fuzz.py --reproduce {d}")
    info = json.load(open(os.path.join(d, "outcome.json")))
    assert info["category"] == "mismatch" and info["input_shapes"] == {"x": [2, 3]}
    m, f, shapes = load_failure(d)
    assert m.SerializeToString() == model.SerializeToString() and shapes == {"x": [2, 3]}
    np.testing.assert_array_equal(f["x"], feeds["x"])
    assert main(["--reproduce", d]) == 0  # the model is fine: the "failure" no longer reproduces


def test_fuzz_loop_runs_in_a_worker_and_writes_a_summary(tmp_path) -> None:
    from fuzz import fuzz

    summary = fuzz(minutes=2, out_dir=str(tmp_path), seed=7, max_nodes=6, max_examples=3, quiet=True)
    assert summary["examples"] == 3 and sum(summary["categories"].values()) == 3
    assert summary["bugs"] == 0, summary
    assert json.load(open(tmp_path / "summary.json"))["seed"] == 7


def _fake_serve(conn, tmp, log) -> None:
    """A stand-in worker (spawned, so module-level): crashes or hangs on a model whose node says so."""
    conn.send("ready")
    while True:
        try:
            msg = conn.recv()
        except EOFError:
            return
        if msg is None:
            return
        node = onnx.load_from_string(msg[0]).graph.node[0].name
        if node == "crash":
            os.kill(os.getpid(), signal.SIGKILL)  # like a segfault, without a core file
        if node == "hang":
            time.sleep(30)
        conn.send(Outcome("ok"))


def test_runner_turns_a_dead_worker_into_a_crash_and_a_silent_one_into_a_hang() -> None:
    def model(name: str) -> onnx.ModelProto:
        m = _chain_model()
        m.graph.node[0].name = name
        return m

    with Runner(timeout=2, warmup=20, serve=_fake_serve) as runner:
        assert runner.check(model("fine")).category == "ok"
        crash = runner.check(model("crash"))
        assert crash.category == "crash" and crash.bug and "signal 9" in crash.error
        assert crash.feeds is not None and set(crash.feeds) == {"x"}  # witness inputs for the minimizer
        assert runner.check(model("fine")).category == "ok"  # a fresh worker took over
        hang = runner.check(model("hang"))
        assert hang.category == "hang" and hang.bug
        assert runner.check(model("fine")).category == "ok"
        assert runner.restarts == 2 and runner.checks == 5
