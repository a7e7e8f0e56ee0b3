"""Regression tests for the bugs the corpus of models from the wild (`bench/corpus.py`, tests/test_corpus.py) found,
reduced to a few ONNX nodes. A bug not fixed yet is `xfail(strict=True)` with its diagnosis, so the test fails the
day it is fixed (then drop the mark)."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

import lepton
from passes.ort import run_model


def gathernd_with_constant_indices(dtype: int) -> onnx.ModelProto:
    """`y[0, j] = x[0, j]` through GatherND(x[1,16], constant indices [1,16,2]): how the dynamo exporter's GPT-2 reads
    the padding mask (`attention_mask` cast to bool, then GatherND with (0, j) index pairs)."""
    idx = np.stack([np.zeros(16, np.int64), np.arange(16)], axis=-1)[None]
    graph = helper.make_graph(
        [helper.make_node("GatherND", ["x", "idx"], ["y"], name="gather_nd")], "gathernd",
        [helper.make_tensor_value_info("x", dtype, [1, 16])], [helper.make_tensor_value_info("y", dtype, [1, 16])],
        [numpy_helper.from_array(idx, "idx")],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)
    onnx.checker.check_model(model, full_check=True)
    return model


@pytest.mark.parametrize("dtype", [TensorProto.FLOAT, TensorProto.BOOL])
def test_gathernd_with_constant_indices_matches_onnxruntime(dtype: int) -> None:
    """Weight prepacking (TVM's RewriteLayout) re-laid the [1,16,2] index constant out as [2,8], dropping the parallel
    loop j // 8, so both 8-lane chunks gathered x[0, 8:16]; prepacking now takes only parameters read in reductions."""
    model = gathernd_with_constant_indices(dtype)
    x = np.arange(16, dtype=np.float32)[None]
    feeds = {"x": x if dtype == TensorProto.FLOAT else x % 5 != 3}
    res = lepton.compile(model, "x86", use_cache=False, verify=False)
    np.testing.assert_array_equal(res.run(feeds)["y"], run_model(model, feeds)["y"])
