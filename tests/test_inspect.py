"""`inspect_model`: signature, op histogram, parameter count, FLOPs (hand-checked), unsupported ops."""

from __future__ import annotations

import json

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper
from rich.console import Console

import lepton_ir
import targets
from bench import models as bm
from lepton.inspect import ModelInfo, inspect_model
from lepton_ir import Graph, Node, Value

F = TensorProto.FLOAT


def _model(nodes: list[onnx.NodeProto], inputs: dict[str, list], outputs: dict[str, list],
           inits: dict[str, np.ndarray] | None = None, opsets: dict[str, int] | None = None) -> lepton_ir.Graph:
    graph = helper.make_graph(
        nodes, "g",
        [helper.make_tensor_value_info(n, F, s) for n, s in inputs.items()],
        [helper.make_tensor_value_info(n, F, s) for n, s in outputs.items()],
        [numpy_helper.from_array(a, n) for n, a in (inits or {}).items()],
    )
    ops = [helper.make_opsetid(d, v) for d, v in (opsets or {"": 17}).items()]
    return lepton_ir.load(helper.make_model(graph, opset_imports=ops, ir_version=8))


def _rand(*shape: int) -> np.ndarray:
    return np.random.default_rng(0).standard_normal(shape).astype(np.float32)


def _flops(info: ModelInfo, op: str) -> int:
    return sum(o.flops for o in info.ops if o.op_type == op)


def _text(info: ModelInfo) -> str:
    c = Console(record=True, width=140)
    info.render(c)
    return c.export_text()


def test_grouped_conv_flops_by_hand() -> None:
    # N=2, Cin=8, Cout=12, groups=2, 3x3 kernel, stride 2, dilation 2, pads 2: output 8x8
    conv = helper.make_node("Conv", ["x", "w", "b"], ["y"], name="conv", group=2, strides=[2, 2], dilations=[2, 2],
                            pads=[2, 2, 2, 2], kernel_shape=[3, 3])
    g = _model([conv], {"x": [2, 8, 16, 16]}, {"y": [2, 12, 8, 8]}, {"w": _rand(12, 4, 3, 3), "b": _rand(12)})
    info = inspect_model(g)
    assert info.flops == 2 * 2 * 12 * (8 * 8) * (8 // 2) * (3 * 3) == 110_592
    assert info.flops_complete and not info.skipped and not info.symbolic_dims
    assert info.params == 12 * 4 * 9 + 12 and info.param_bytes == 4 * info.params
    assert [(o.op_type, o.count) for o in info.ops] == [("Conv", 1)]


def test_conv_transpose_flops() -> None:
    # every input pixel of each input channel scatters into Cout/groups x kernel outputs
    node = helper.make_node("ConvTranspose", ["x", "w"], ["y"], name="up", strides=[2, 2], kernel_shape=[2, 2])
    g = _model([node], {"x": [1, 6, 5, 5]}, {"y": [1, 4, 10, 10]}, {"w": _rand(6, 4, 2, 2)})
    assert inspect_model(g).flops == 2 * 1 * 6 * 25 * 4 * 4


def test_matmul_broadcast_batch_flops() -> None:
    g = _model([helper.make_node("MatMul", ["a", "b"], ["y"], name="mm")], {"a": [3, 1, 4, 5], "b": [2, 5, 6]},
               {"y": [3, 2, 4, 6]})
    info = inspect_model(g)
    assert info.flops == 2 * (3 * 2) * 4 * 6 * 5 == 1440
    assert info.outputs[0].shape == (3, 2, 4, 6)


def test_gemm_trans_flops() -> None:
    gemm_b = helper.make_node("Gemm", ["a", "w", "c"], ["y"], name="fc", transB=1)
    gemm_a = helper.make_node("Gemm", ["at", "w2"], ["z"], name="fc_t", transA=1)
    g = _model([gemm_b, gemm_a], {"a": [4, 7], "at": [7, 4]}, {"y": [4, 5], "z": [4, 3]},
               {"w": _rand(5, 7), "c": _rand(5), "w2": _rand(7, 3)})
    assert _flops(inspect_model(g), "Gemm") == 2 * 4 * 5 * 7 + 2 * 4 * 3 * 7


def test_elementwise_reduction_pool_rules() -> None:
    nodes = [
        helper.make_node("Relu", ["x"], ["r"], name="relu"),
        helper.make_node("Add", ["r", "bias"], ["s"], name="add"),  # broadcast: counted per output element
        helper.make_node("Softmax", ["s"], ["p"], name="softmax", axis=1),
        helper.make_node("MaxPool", ["p"], ["m"], name="pool", kernel_shape=[2, 2], strides=[2, 2]),
        helper.make_node("Reshape", ["m", "shape"], ["y"], name="reshape"),
    ]
    g = _model(nodes, {"x": [1, 3, 8, 8]}, {"y": [1, 48]},
               {"bias": _rand(3, 1, 1), "shape": np.array([1, 48], np.int64)})
    info = inspect_model(g)
    n = 3 * 8 * 8
    assert {o.op_type: o.flops for o in info.ops} == {
        "Relu": n, "Add": n, "Softmax": 3 * n, "MaxPool": 48 * 4, "Reshape": 0,
    }
    assert info.flops_complete


def test_resnet50_flops_and_params() -> None:
    model = bm.resnet50()
    info = inspect_model(lepton_ir.load(model), targets.resolve("x86"))
    # ResNet-50 at 224x224: ~4.09 G multiply-adds in its convolutions and classifier
    macs = (_flops(info, "Conv") + _flops(info, "Gemm")) / 2
    assert macs == pytest.approx(4.09e9, rel=0.02)
    assert _flops(info, "Conv") / info.flops > 0.99
    assert info.flops_complete
    assert info.node_count == len(model.graph.node)
    assert {o.op_type: o.count for o in info.ops}["Conv"] == 53
    const_elems = sum(numpy_helper.to_array(n.attribute[0].t).size for n in model.graph.node if n.op_type == "Constant")
    assert info.params == sum(int(np.prod(t.dims)) for t in model.graph.initializer) + const_elems
    assert info.params == pytest.approx(25.6e6, rel=0.01)
    assert info.target == "x86" and info.unsupported == []
    text = _text(info)
    assert "every op is supported by TVM's ONNX frontend for x86" in text
    assert "8.22 GFLOPs" in text and "Conv" in text and "99.5%" in text


def test_symbolic_batch_counts_with_one_and_says_so() -> None:
    model = bm.resnet18()
    static = inspect_model(lepton_ir.load(model))
    for v in (model.graph.input[0], model.graph.output[0]):
        v.type.tensor_type.shape.dim[0].dim_param = "batch"
    info = inspect_model(lepton_ir.load(model))
    assert info.inputs[0].shape == ("batch", 3, 224, 224)
    assert info.symbolic_dims == ["batch"]
    assert info.flops == static.flops and info.flops_complete
    assert any("batch=1" in note for note in info.notes)
    assert "batch=1" in _text(info)
    assert static.symbolic_dims == [] and static.notes == []


def test_unknown_dims_skip_nodes_and_count_the_rest() -> None:
    nodes = [
        helper.make_node("Relu", ["x"], ["r"], name="relu_known"),
        helper.make_node("Relu", ["u"], ["s"], name="relu_unknown"),
    ]
    g = _model(nodes, {"x": [2, 3], "u": [None, 3]}, {"r": [2, 3], "s": [None, 3]})
    info = inspect_model(g)
    assert info.flops == 6 and not info.flops_complete
    assert [(s.node, s.op_type) for s in info.skipped] == [("relu_unknown", "Relu")]
    assert "'s' ([unk__0,3]) is not static" in info.skipped[0].reason
    text = _text(info)
    assert "at least 6 FLOPs" in text and "relu_unknown" in text


def test_subgraph_nodes_are_skipped_not_counted() -> None:
    def branch(name: str, op: str) -> onnx.GraphProto:
        return helper.make_graph([helper.make_node(op, ["x"], [f"{name}_y"], name=f"{name}_op")], name, [],
                                 [helper.make_tensor_value_info(f"{name}_y", F, [4])])

    cond = helper.make_node("Constant", [], ["c"], name="cond", value=numpy_helper.from_array(np.array(True)))
    if_node = helper.make_node("If", ["c"], ["y"], name="if", then_branch=branch("then", "Relu"),
                               else_branch=branch("else", "Neg"))
    info = inspect_model(_model([cond, if_node], {"x": [4]}, {"y": [4]}))
    assert [(s.node, s.op_type) for s in info.skipped] == [("if", "If")]
    assert info.node_count == 4  # Constant, If, and one node in each branch
    assert info.flops == 0 and not info.flops_complete


def test_params_count_constant_nodes() -> None:
    nodes = [
        helper.make_node("Constant", [], ["k"], name="k", value=numpy_helper.from_array(_rand(2, 3))),
        helper.make_node("Constant", [], ["f"], name="f", value_floats=[1.0, 2.0, 3.0]),
        helper.make_node("Add", ["x", "k"], ["a"], name="add"),
        helper.make_node("Mul", ["a", "f"], ["m"], name="mul"),
        helper.make_node("Add", ["m", "w"], ["y"], name="add2"),
    ]
    g = _model(nodes, {"x": [2, 3]}, {"y": [2, 3]}, {"w": np.ones((2, 3), np.float64).astype(np.float32)})
    info = inspect_model(g)
    assert info.params == 6 + 3 + 6
    assert info.param_bytes == 4 * 15


def test_unsupported_ops_are_listed_for_the_target() -> None:
    def vi(name: str, shape: list[int]) -> onnx.ValueInfoProto:
        return helper.make_tensor_value_info(name, F, shape)

    nodes = [
        helper.make_node("Det", ["x"], ["d"], name="det"),
        helper.make_node("DFT", ["sig"], ["f"], name="dft"),
        helper.make_node("FusedMatMul", ["x", "x"], ["z"], name="fused", domain="com.microsoft"),
        helper.make_node("Relu", ["x"], ["r"], name="relu"),
    ]
    graph = helper.make_graph(nodes, "g", [vi("x", [3, 3]), vi("sig", [1, 8, 1])],
                              [vi("d", []), vi("f", [1, 8, 2]), vi("z", [3, 3]), vi("r", [3, 3])])
    opsets = [helper.make_opsetid("", 17), helper.make_opsetid("com.microsoft", 1)]
    model = helper.make_model(graph, opset_imports=opsets)
    info = inspect_model(lepton_ir.load(model), targets.resolve("arm"))
    assert [(u.node, u.op_type, u.domain) for u in info.unsupported] == [
        ("det", "Det", ""), ("dft", "DFT", ""), ("fused", "FusedMatMul", "com.microsoft"),
    ]
    assert ("com.microsoft", "FusedMatMul") in {(o.domain, o.op_type) for o in info.ops}
    text = _text(info)
    assert "3 node(s) TVM's ONNX frontend cannot convert for arm" in text
    assert "com.microsoft::FusedMatMul" in text and "no converter for this op" in text
    assert "every op is supported" not in text
    data = json.loads(json.dumps(info.to_json()))
    assert data["target"] == "arm"
    assert [u["node"] for u in data["unsupported"]] == ["det", "dft", "fused"]
    assert {"op": "com.microsoft::FusedMatMul", "op_type": "FusedMatMul", "domain": "com.microsoft", "count": 1,
            "flops": 0} in data["ops"]


def test_custom_domain_node_built_in_ir() -> None:
    x = Value("x", F, (2, 3))
    y = Value("y", F, (2, 3))
    node = Node("my.ops", "Foo", [x], outputs=[y], name="foo")
    g = Graph(inputs=[x], outputs=[y], nodes=[node], opset_imports={"": 17, "my.ops": 1})
    info = inspect_model(g)
    (u,) = info.unsupported
    assert (u.node, u.domain) == ("foo", "my.ops") and "custom domain 'my.ops'" in u.reason
    assert info.skipped[0].reason == "no FLOPs rule for domain 'my.ops'"
    assert info.target is None
    text = _text(info)
    assert "1 node(s) TVM's ONNX frontend cannot convert " in text and "my.ops::Foo" in text


def test_json_is_plain_and_complete() -> None:
    g = _model([helper.make_node("Relu", ["x"], ["y"], name="r")], {"x": ["n", 4]}, {"y": ["n", 4]})
    data = json.loads(json.dumps(inspect_model(g).to_json()))
    assert data["inputs"] == [{"name": "x", "dtype": "float32", "shape": ["n", 4]}]
    assert data["flops"] == 4 and data["flops_complete"] is True and data["symbolic_dims"] == ["n"]
    assert data["opsets"] == {"": 17} and data["ir_version"] == 8 and data["node_count"] == 1
    assert data["unsupported"] == [] and data["skipped"] == []
