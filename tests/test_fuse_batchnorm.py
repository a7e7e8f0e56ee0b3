"""fuse-batchnorm: Conv + inference BatchNormalization fold into one Conv, outputs preserved."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper
from passutil import assert_pass_preserves

from passes.cleanup.batchnorm import FuseBatchNorm


def _model(bias: bool = True, extra_reader: bool = False, const_params: bool = True, bn_out_is_graph_output: bool = True,
           group: int = 1) -> onnx.ModelProto:
    rng = np.random.default_rng(0)
    k, c = 6, 4
    inits = [onnx.numpy_helper.from_array(rng.standard_normal((k, c // group, 3, 3)).astype(np.float32), "W")]
    conv_in = ["x", "W"]
    if bias:
        inits.append(onnx.numpy_helper.from_array(rng.standard_normal(k).astype(np.float32), "b"))
        conv_in.append("b")
    params = {"scale": rng.standard_normal(k), "B": rng.standard_normal(k), "mean": rng.standard_normal(k),
              "var": rng.random(k) + 0.1}
    inputs = [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, c, 7, 7])]
    for name, v in params.items():
        if const_params or name != "mean":
            inits.append(onnx.numpy_helper.from_array(v.astype(np.float32), name))
        else:
            inputs.append(helper.make_tensor_value_info(name, TensorProto.FLOAT, [k]))
    nodes = [helper.make_node("Conv", conv_in, ["c"], pads=[1] * 4, group=group, name="conv"),
             helper.make_node("BatchNormalization", ["c", "scale", "B", "mean", "var"], ["bn"], epsilon=1e-3, name="bn")]
    outputs = []
    if bn_out_is_graph_output:
        outputs.append(helper.make_tensor_value_info("bn", TensorProto.FLOAT, [2, k, 7, 7]))
    else:
        nodes.append(helper.make_node("Relu", ["bn"], ["y"]))
        outputs.append(helper.make_tensor_value_info("y", TensorProto.FLOAT, [2, k, 7, 7]))
    if extra_reader:
        nodes.append(helper.make_node("Sigmoid", ["c"], ["s"]))
        outputs.append(helper.make_tensor_value_info("s", TensorProto.FLOAT, [2, k, 7, 7]))
    g = helper.make_graph(nodes, "g", inputs, outputs, inits)
    return helper.make_model(g, opset_imports=[helper.make_opsetid("", 15)], ir_version=8)


def _feeds(model: onnx.ModelProto) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(1)
    return {i.name: rng.standard_normal([d.dim_value for d in i.type.tensor_type.shape.dim]).astype(np.float32)
            for i in model.graph.input}


@pytest.mark.parametrize("bias", [True, False])
@pytest.mark.parametrize("as_output", [True, False])
@pytest.mark.parametrize("group", [1, 2])
def test_conv_batchnorm_becomes_one_conv(bias: bool, as_output: bool, group: int) -> None:
    model = _model(bias=bias, bn_out_is_graph_output=as_output, group=group)
    graph = assert_pass_preserves(model, FuseBatchNorm(), _feeds(model))
    ops = [n.op_type for n in graph]
    assert "BatchNormalization" not in ops and ops.count("Conv") == 1
    assert [o.name for o in graph.outputs] == [o.name for o in model.graph.output]


@pytest.mark.parametrize("kwargs", [{"extra_reader": True}, {"const_params": False}])
def test_not_fused_when_the_conv_output_is_shared_or_params_are_inputs(kwargs: dict[str, bool]) -> None:
    model = _model(**kwargs)
    graph = assert_pass_preserves(model, FuseBatchNorm(), _feeds(model))
    assert "BatchNormalization" in [n.op_type for n in graph]
