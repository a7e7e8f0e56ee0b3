"""Regression tests for the bugs the differential fuzzer (`make fuzz`, tests/fuzz.py) found.

Each test builds the fuzzer's minimized model with onnx.helper and runs the fuzzer's own check
(`fuzz.check`: compile for x86 with verification, then the module against onnxruntime), in a
worker process with a time limit where the bug is a hang. A bug that is not fixed yet is marked
`xfail(strict=True)` with its diagnosis, so the test turns into a failure the day it is fixed
(then drop the mark).
"""

from __future__ import annotations

import numpy as np
import onnx
from fuzz import Runner
from onnx import TensorProto, helper, numpy_helper

OPSET = 15


def _model(nodes, inputs, outputs, inits) -> onnx.ModelProto:
    graph = helper.make_graph(nodes, "fuzz_regression", inputs, outputs, initializer=inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)], ir_version=8)
    onnx.checker.check_model(model, full_check=True)
    return model


def symbolic_reshape_by_own_dim() -> tuple[onnx.ModelProto, dict[str, np.ndarray]]:
    """Fuzzer find 9c5f8404dfe2 (variant `symbolic`), minimized from 17 nodes to these 5:
    x[a,b,c,d] (every dim symbolic) -> Reshape(x, Concat([6], [4], Gather(Shape(x), [2]), [-1]))."""
    i64 = lambda name, v: numpy_helper.from_array(np.array(v, np.int64), name)  # noqa: E731
    nodes = [
        helper.make_node("Shape", ["x"], ["shape"], name="shape"),
        helper.make_node("Gather", ["shape", "two"], ["c"], name="gather", axis=0),
        helper.make_node("Concat", ["six", "four", "c", "minus_one"], ["target"], name="concat", axis=0),
        helper.make_node("Reshape", ["x", "target"], ["y"], name="reshape"),
    ]
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, ["a", "b", "c", "d"])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [6, 4, "c", "e"])
    model = _model(nodes, [x], [y], [i64("two", [2]), i64("six", [6]), i64("four", [4]), i64("minus_one", [-1])])
    feeds = {"x": np.random.default_rng(0).standard_normal((6, 4, 2, 5)).astype(np.float32)}
    return model, feeds


def test_reshape_over_symbolic_dims_compiles_in_bounded_time() -> None:
    """Fixed: Lepton's CPU rules fuse outer loops only when every extent is constant (else the outermost is
    made parallel alone); fused indices divided by symbolic extents made TVM's LLVM codegen run for minutes."""
    model, feeds = symbolic_reshape_by_own_dim()
    with Runner(timeout=20, warmup=180) as runner:
        out = runner.check(model, feeds)
    assert out.category == "ok", out.line()


def reversed_slice_of_broadcast_reshape() -> tuple[onnx.ModelProto, dict[str, np.ndarray]]:
    """Fuzzer find 2466a653bb91 (variant `static`), minimized from 31 nodes (and cleaned up by Lepton's passes)
    to: Slice(Add(Reshape(Sub(x[2,2,1,5], zeros[2,2,2,5]), [2,2,-1]), b[5,2,2,1]), reversed along the last axis)."""
    i64 = lambda name, v: numpy_helper.from_array(np.array(v, np.int64), name)  # noqa: E731
    nodes = [
        helper.make_node("Sub", ["x", "zeros"], ["s"], name="sub"),
        helper.make_node("Reshape", ["s", "target"], ["r"], name="reshape"),
        helper.make_node("Add", ["r", "b"], ["a"], name="add"),
        helper.make_node("Slice", ["a", "starts", "ends", "axes", "steps"], ["y"], name="slice"),
    ]
    x = helper.make_tensor_value_info("x", TensorProto.DOUBLE, [2, 2, 1, 5])
    b = helper.make_tensor_value_info("b", TensorProto.DOUBLE, [5, 2, 2, 1])
    y = helper.make_tensor_value_info("y", TensorProto.DOUBLE, [5, 2, 2, 10])
    inits = [numpy_helper.from_array(np.zeros((2, 2, 2, 5)), "zeros"), i64("target", [2, 2, -1]), i64("starts", [-1]),
             i64("ends", [np.iinfo(np.int64).min]), i64("axes", [3]), i64("steps", [-1])]
    model = _model(nodes, [x, b], [y], inits)
    rng = np.random.default_rng(0)
    return model, {"x": rng.standard_normal((2, 2, 1, 5)), "b": rng.standard_normal((5, 2, 2, 1))}


def test_reversed_slice_over_broadcast_reshape_matches_onnxruntime() -> None:
    """Was wrong: Lepton's Injective rule inlined the reshape into the reversed read, and TVM 0.27's simplifier,
    flattening buffers, rewrote floormod(4 - v, 5) to -floormod(v, -5). Blocks read at a reversed index are no
    longer inlined (`lepton.codegen.schedules.cpu._read_reversed`)."""
    model, feeds = reversed_slice_of_broadcast_reshape()
    with Runner(timeout=60, warmup=180) as runner:
        out = runner.check(model, feeds)
    assert out.category == "ok", out.line()
