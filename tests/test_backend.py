"""lepton.backend: Lepton as an ONNX backend (prepare/run, value specialization, ONNX's own runner)."""

from __future__ import annotations

import numpy as np
import onnx
import onnx.helper as oh
import pytest
from onnx import TensorProto as T

from lepton.backend import LeptonBackend, shape_inputs, with_constants
from lepton_ir import LeptonError, UserError


def _reshape_model() -> onnx.ModelProto:
    nodes = [oh.make_node("Reshape", ["x", "shape"], ["r"]), oh.make_node("Relu", ["r"], ["y"])]
    g = oh.make_graph(nodes, "g", [oh.make_tensor_value_info("x", T.FLOAT, [2, 3, 4]), oh.make_tensor_value_info("shape", T.INT64, [2])],
                      [oh.make_tensor_value_info("y", T.FLOAT, ["a", "b"])])
    return oh.make_model(g, opset_imports=[oh.make_opsetid("", 17)], ir_version=9)


def test_prepare_and_run_in_output_order() -> None:
    nodes = [oh.make_node("Sub", ["a", "b"], ["d"]), oh.make_node("Add", ["a", "b"], ["s"])]
    g = oh.make_graph(nodes, "g", [oh.make_tensor_value_info(n, T.FLOAT, [3]) for n in "ab"],
                      [oh.make_tensor_value_info("s", T.FLOAT, [3]), oh.make_tensor_value_info("d", T.FLOAT, [3])])
    rep = LeptonBackend.prepare(oh.make_model(g, opset_imports=[oh.make_opsetid("", 17)]))
    a, b = np.arange(3, dtype=np.float32), np.ones(3, np.float32)
    s, d = rep.run([a, b])
    np.testing.assert_array_equal(s, a + b)
    np.testing.assert_array_equal(d, a - b)
    assert rep.specialized_on == []
    np.testing.assert_array_equal(rep.run({"a": a, "b": b})[0], a + b)


def test_shape_inputs_are_specialized_and_guarded() -> None:
    m = _reshape_model()
    assert shape_inputs(m) == ["shape"]
    rep = LeptonBackend.prepare(m)
    x = np.random.default_rng(0).standard_normal((2, 3, 4)).astype(np.float32)
    for shape in ([6, 4], [4, 6], [6, 4]):
        (y,) = rep.run([x, np.array(shape, np.int64)])
        np.testing.assert_array_equal(y, np.maximum(x.reshape(shape), 0))
        assert rep.specialized_on == ["shape"]
    assert len(rep._modules) == 2  # one module per value, reused when a value comes back


def test_without_specialization_the_compile_error_is_raised() -> None:
    with pytest.raises(LeptonError):
        LeptonBackend.prepare(_reshape_model(), specialize=False)


def test_specialized_value_of_the_wrong_type_is_refused() -> None:
    with pytest.raises(UserError, match="int64"):
        with_constants(_reshape_model(), {"shape": np.array([6, 4], np.int32)})


def test_devices_and_run_node() -> None:
    assert LeptonBackend.supports_device("CPU")
    assert not LeptonBackend.supports_device("CUDA")
    assert not LeptonBackend.supports_device("TPU")
    with pytest.raises(UserError):
        LeptonBackend.prepare(_reshape_model(), "CUDA")
    x = np.array([[1.0, -2.0], [3.0, -4.0]], np.float32)
    (y,) = LeptonBackend.run_node(oh.make_node("Abs", ["x"], ["y"]), [x])
    np.testing.assert_array_equal(y, np.abs(x))


def test_onnx_backend_test_runner_uses_it() -> None:
    """ONNX's own unittest runner (onnx.backend.test.BackendTest) drives the backend."""
    import unittest

    import onnx.backend.test

    tests = onnx.backend.test.BackendTest(LeptonBackend, __name__)
    tests.include(r"^test_(abs|relu|reshape_reordered_all_dims|softmax_axis_0)_cpu$")
    suite = unittest.TestSuite(unittest.defaultTestLoader.loadTestsFromTestCase(tests.tests))
    result = unittest.TextTestRunner(verbosity=0).run(suite)
    ran = result.testsRun - len(result.skipped)  # the runner skips every test `include` does not select
    assert ran == 4 and result.wasSuccessful(), (ran, result.failures, result.errors)
