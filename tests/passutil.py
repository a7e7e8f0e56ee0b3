"""Shared checks for pass tests: run a pass, compare onnxruntime outputs, check `modified`.

Tolerances are DESIGN.md §6 (fp32 on CPU: rtol 1e-4, atol 1e-5; integer/bool exact; NaN
positions must match).
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np
import onnx

import lepton_ir
from passes import Pass, PassContext, PassResult
from passes.ort import run_model

RTOL = {np.dtype(np.float32): 1e-4, np.dtype(np.float64): 1e-4, np.dtype(np.float16): 1e-2}
ATOL = {np.dtype(np.float32): 1e-5, np.dtype(np.float64): 1e-5, np.dtype(np.float16): 1e-2}


def serialized(graph: lepton_ir.Graph) -> bytes:
    """The graph's exported bytes: equal bytes mean an unchanged graph."""
    return lepton_ir.to_onnx(graph).SerializeToString()


def run_pass(p: Pass, graph: lepton_ir.Graph) -> PassResult:
    """Run one pass; assert `modified` is exactly whether the graph changed and the IR still verifies."""
    before = serialized(graph)
    result = p.run(graph, PassContext())
    lepton_ir.verify(graph)
    changed = serialized(graph) != before
    assert result.modified == changed, f"{p.name}: modified={result.modified} but graph changed={changed}"
    return result


def assert_outputs_close(expected: Mapping[str, np.ndarray], actual: Mapping[str, np.ndarray]) -> None:
    """Per DESIGN.md §6: floats within tolerance, NaN positions equal; everything else exact."""
    assert set(expected) == set(actual), (sorted(expected), sorted(actual))
    for name, exp in expected.items():
        got = actual[name]
        assert got.dtype == exp.dtype, f"{name}: dtype {got.dtype} != {exp.dtype}"
        assert got.shape == exp.shape, f"{name}: shape {got.shape} != {exp.shape}"
        if exp.dtype in RTOL:
            np.testing.assert_allclose(got, exp, rtol=RTOL[exp.dtype], atol=ATOL[exp.dtype], equal_nan=True, err_msg=name)
        else:
            np.testing.assert_array_equal(got, exp, err_msg=name)


def assert_pass_preserves(model: onnx.ModelProto, p: Pass, inputs: Mapping[str, np.ndarray]) -> lepton_ir.Graph:
    """Import `model`, run `p`, check outputs against onnxruntime on the original and idempotence."""
    expected = run_model(model, inputs)
    graph = lepton_ir.load(model)
    run_pass(p, graph)
    actual = run_model(lepton_ir.to_onnx(graph), inputs)
    assert_outputs_close(expected, actual)
    again = run_pass(p, graph)
    assert not again.modified, f"{p.name} is not idempotent: second run modified the graph ({dict(again.stats)})"
    return graph
