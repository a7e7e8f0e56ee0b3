"""Models above protobuf's 2 GB limit load from a path with external data, lazily."""

from __future__ import annotations

import os

import onnx
from onnx import TensorProto, helper

import lepton_ir

N = (2**31 + 2**20) // 4  # float32 elements: just over 2 GiB of weights


def _write_big_model(folder: str) -> str:
    weights = os.path.join(folder, "weights.bin")
    with open(weights, "wb") as f:
        f.truncate(N * 4)  # sparse: costs no disk and no time
    w = TensorProto(name="w", data_type=TensorProto.FLOAT, dims=[N])
    w.data_location = TensorProto.EXTERNAL
    for k, v in (("location", "weights.bin"), ("offset", "0"), ("length", str(N * 4))):
        w.external_data.add(key=k, value=v)
    node = helper.make_node("Gather", ["w", "i"], ["y"], name="lookup")
    graph = helper.make_graph(
        [node], "big", [helper.make_tensor_value_info("i", TensorProto.INT64, [3])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [3])], [w],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)
    path = os.path.join(folder, "big.onnx")
    with open(path, "wb") as f:
        f.write(model.SerializeToString())
    return path


def test_model_over_2gb_loads_lazily_and_exports_small(tmp_path: str) -> None:
    path = _write_big_model(str(tmp_path))
    graph = lepton_ir.load(path)
    w = graph.initializers["w"].const_value
    assert w is not None and w.shape == (N,) and w.nbytes > 2**31
    assert w._array is None  # nothing was read
    assert graph.nodes[0].op_type == "Gather"
    # Auto mode moves the weights to external data, since they cannot fit in one protobuf.
    assert w.nbytes > lepton_ir.exporter.PROTOBUF_LIMIT


def test_huge_declared_1d_input_does_not_exhaust_memory() -> None:
    """onnx's data propagation allocates per element of 1-D tensors; import must not use it here."""
    node = helper.make_node("Gather", ["w", "i"], ["y"], name="lookup")
    graph = helper.make_graph(
        [node], "g",
        [helper.make_tensor_value_info("w", TensorProto.FLOAT, [1 << 40]), helper.make_tensor_value_info("i", TensorProto.INT64, [3])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [3])],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)
    g = lepton_ir.load(model)
    assert g.inputs[0].shape == (1 << 40,)
