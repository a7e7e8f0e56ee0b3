"""`Net`: a small ONNX graph builder for pass tests, with random inputs and weights from one seed."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import onnx
from onnx import TensorProto as T
from onnx import helper as oh
from onnx import numpy_helper as nh


class Net:
    """`x = n.input(2, 3)`, `y = n.op("Relu", x)`, `n.model(y)`; `n.feeds` holds random inputs (bool inputs
    random, float inputs standard normal). With `node_names`, every node gets a unique name (`op(..., name=)`
    sets one); value names count up from one counter either way (`relu3`, `c4`)."""

    def __init__(self, opset: int = 17, seed: int = 0, node_names: bool = False) -> None:
        self.opset = opset
        self.rng = np.random.default_rng(seed)
        self.node_names = node_names
        self.nodes: list[onnx.NodeProto] = []
        self.inits: list[onnx.TensorProto] = []
        self.inputs: list[onnx.ValueInfoProto] = []
        self.feeds: dict[str, np.ndarray] = {}
        self.count = 0

    def name(self, base: str) -> str:
        self.count += 1
        return f"{base}{self.count}"

    def input(self, *shape: int, name: str | None = None, dtype: Any = np.float32, values: np.ndarray | None = None) -> str:
        name = name or self.name("in")
        self.inputs.append(oh.make_tensor_value_info(name, oh.np_dtype_to_tensor_dtype(np.dtype(dtype)), list(shape)))
        if values is not None:
            self.feeds[name] = np.asarray(values).astype(dtype)
        elif np.dtype(dtype) == np.bool_:
            self.feeds[name] = self.rng.random(shape) < 0.7
        else:
            self.feeds[name] = self.rng.standard_normal(shape).astype(dtype)
        return name

    def const(self, arr: Any, dtype: Any = np.float32, *, name: str | None = None) -> str:
        name = name or self.name("c")
        self.inits.append(nh.from_array(np.asarray(arr, dtype=dtype), name))
        return name

    def rand(self, *shape: int, scale: float = 1.0, dtype: Any = np.float32) -> str:
        return self.const(self.rng.standard_normal(shape) * scale, dtype=dtype)

    def op(self, op_type: str, *inputs: str, name: str | None = None, outputs: int = 1, domain: str = "", **attrs: Any) -> Any:
        """The node's output name (a list of them with `outputs` > 1)."""
        outs = [self.name(op_type.lower()) for _ in range(outputs)]
        if name is None and self.node_names:
            name = self.name(op_type)
        self.nodes.append(oh.make_node(op_type, list(inputs), outs, name=name, domain=domain, **attrs))
        return outs[0] if outputs == 1 else outs

    def bn(self, x: str, channels: int, **attrs: Any) -> str:
        r = self.rng
        return self.op("BatchNormalization", x, self.const(r.standard_normal(channels)), self.const(r.standard_normal(channels)),
                       self.const(r.standard_normal(channels) * 0.5), self.const(r.random(channels) + 0.5), **attrs)

    def mean(self, x: str, axes: Sequence[int]) -> str:
        if self.opset >= 18:
            return self.op("ReduceMean", x, self.const(list(axes), dtype=np.int64))
        return self.op("ReduceMean", x, axes=list(axes))

    def reshape(self, x: str, *shape: int) -> str:
        return self.op("Reshape", x, self.const(list(shape), dtype=np.int64))

    def model(self, *outputs: str, shapes: dict[str, list[int]] | None = None) -> onnx.ModelProto:
        """The checked model; output types are inferred, or given in `shapes` (float32) for ops ONNX cannot
        infer; other domains the nodes use are imported at version 1."""
        shapes = shapes or {}
        ir = 8 if self.opset < 21 else 10
        infos = [oh.make_tensor_value_info(o, T.FLOAT, shapes[o]) if o in shapes else oh.make_tensor_value_info(o, T.UNDEFINED, None)
                 for o in outputs]
        g = oh.make_graph(self.nodes, "net", self.inputs, infos, self.inits)
        domains = sorted({n.domain for n in self.nodes if n.domain})
        m = oh.make_model(g, opset_imports=[oh.make_opsetid("", self.opset), *(oh.make_opsetid(d, 1) for d in domains)],
                          ir_version=ir)
        inferred = onnx.shape_inference.infer_shapes(m, strict_mode=True)
        del m.graph.output[:]
        m.graph.output.extend(inferred.graph.output)
        onnx.checker.check_model(m, full_check=True)
        return m
