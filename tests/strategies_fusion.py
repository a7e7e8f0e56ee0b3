"""A hypothesis strategy for CNN fusion chains: a Conv/ConvTranspose/Gemm/MatMul and then up to three steps of
Add (bias), BatchNormalization and activation, with random shapes, attributes and weights.

Public API
----------
- ``fusion_chains()``: a strategy for ``Chain``: ``model`` (an ``onnx.ModelProto`` that onnxruntime runs),
  ``feeds`` (inputs for it), ``steps`` (what was built, for the failure report) and ``fewer_nodes``: by how
  many nodes the fusion passes must shrink the graph at least (None where a blocker makes that unknowable).

Like tests/strategies.py, only onnx helpers and numpy build the models (no Lepton import): the generator is an
oracle independent of the passes. Shapes are static, weights are scaled by 1/sqrt(fan_in) and BatchNorm
variances are in [0.5, 1.5], so outputs stay O(1) and DESIGN.md section 6 tolerances hold after folding.

Producers: Conv (1-d or 2-d, groups, strides, dilations, explicit pads or auto_pad, optional bias),
ConvTranspose (2-d, groups, strides, pads, output_padding, optional bias), Gemm (transA/transB, alpha/beta,
C omitted or of shape [N], [1, N], [M, N] or a scalar), MatMul (x of rank 2, or of rank 3, where Gemm cannot
take it). Weights are initializers, or sometimes a graph input (then nothing may fold into them).
Steps: Add of a per-output-channel constant (or, as a negative, of a constant broadcast over the whole
output), inference BatchNormalization, and an activation: Relu, LeakyRelu, HardSigmoid, HardSwish
(opset >= 14), Clip (bounds constant, one may be omitted), x * Sigmoid(x), Gelu (opset 20), or GELU written
with Erf as PyTorch's TorchScript exporter writes it. Blockers (each now and then): an intermediate that is
also a graph output, or read by a second node.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import onnx
from hypothesis import strategies as st
from onnx import TensorProto as T
from onnx import helper as oh
from onnx import numpy_helper as nh

ACTIVATIONS = ("Relu", "LeakyRelu", "HardSigmoid", "HardSwish", "Clip", "Silu", "Gelu", "GeluErf")
#: Nodes each activation is written with.
ACTIVATION_NODES = {"Silu": 2, "GeluErf": 5}


@dataclass
class Chain:
    model: onnx.ModelProto
    feeds: dict[str, np.ndarray]
    steps: list[str] = field(default_factory=list)
    fewer_nodes: int | None = 0

    def __repr__(self) -> str:
        return f"Chain({' -> '.join(self.steps)}, fewer_nodes={self.fewer_nodes})"


class _Builder:
    def __init__(self, rng: np.random.Generator) -> None:
        self.rng = rng
        self.nodes: list[onnx.NodeProto] = []
        self.inits: list[onnx.TensorProto] = []
        self.inputs: list[onnx.ValueInfoProto] = []
        self.feeds: dict[str, np.ndarray] = {}
        self.count = 0

    def fresh(self, base: str) -> str:
        self.count += 1
        return f"{base}_{self.count}"

    def const(self, arr: Any, base: str = "c") -> str:
        name = self.fresh(base)
        self.inits.append(nh.from_array(np.asarray(arr, np.float32), name))
        return name

    def input(self, arr: np.ndarray, base: str = "x") -> str:
        name = self.fresh(base)
        self.inputs.append(oh.make_tensor_value_info(name, T.FLOAT, list(arr.shape)))
        self.feeds[name] = arr.astype(np.float32)
        return name

    def weight(self, arr: np.ndarray, as_input: bool) -> str:
        return self.input(arr, "w") if as_input else self.const(arr, "w")

    def op(self, op_type: str, inputs: list[str], **attrs: Any) -> str:
        out = self.fresh(op_type.lower())
        self.nodes.append(oh.make_node(op_type, inputs, [out], name=self.fresh(op_type), **attrs))
        return out

    def normal(self, *shape: int, scale: float = 1.0) -> np.ndarray:
        return (self.rng.standard_normal(shape) * scale).astype(np.float32)


def _conv(draw: st.DrawFn, b: _Builder, weights_as_input: bool) -> tuple[str, int, int, str]:
    """A Conv; returns (output, channels, rank, kind)."""
    dims = draw(st.sampled_from([1, 2]))
    group = draw(st.integers(1, 3))
    cin, cout = group * draw(st.integers(1, 3)), group * draw(st.integers(1, 3))
    kernel = [draw(st.integers(1, 3)) for _ in range(dims)]
    strides = [draw(st.integers(1, 2)) for _ in range(dims)]
    dilations = [draw(st.integers(1, 2)) for _ in range(dims)]
    spatial = [draw(st.integers(max(4, (k - 1) * d + 1), 7)) for k, d in zip(kernel, dilations, strict=True)]
    x = b.input(b.normal(draw(st.integers(1, 2)), cin, *spatial))
    w = b.weight(b.normal(cout, cin // group, *kernel, scale=1 / math.sqrt(cin // group * math.prod(kernel))), weights_as_input)
    inputs = [x, w] + ([b.const(b.normal(cout, scale=0.5), "b")] if draw(st.booleans()) else [])
    attrs: dict[str, Any] = {"kernel_shape": kernel, "strides": strides, "dilations": dilations, "group": group}
    if draw(st.booleans()):
        attrs["pads"] = [draw(st.integers(0, 2)) for _ in range(2 * dims)]
    else:
        attrs["auto_pad"] = draw(st.sampled_from(["NOTSET", "SAME_UPPER", "SAME_LOWER", "VALID"]))
        if attrs["auto_pad"].startswith("SAME"):
            attrs["dilations"] = [1] * dims  # onnxruntime: "Dilation not supported for AutoPadType::SAME_*"
    return b.op("Conv", inputs, **attrs), cout, dims + 2, "Conv"


def _conv_transpose(draw: st.DrawFn, b: _Builder, weights_as_input: bool) -> tuple[str, int, int, str]:
    group = draw(st.integers(1, 3))
    cin, per = group * draw(st.integers(1, 2)), draw(st.integers(1, 3))
    kernel = [draw(st.integers(1, 3)) for _ in range(2)]
    strides = [draw(st.integers(1, 2)) for _ in range(2)]
    pads = [draw(st.integers(0, k - 1)) for k in kernel * 2]
    out_pad = [draw(st.integers(0, s - 1)) for s in strides]
    x = b.input(b.normal(1, cin, draw(st.integers(3, 5)), draw(st.integers(3, 5))))
    w = b.weight(b.normal(cin, per, *kernel, scale=1 / math.sqrt(cin // group * math.prod(kernel))), weights_as_input)
    inputs = [x, w] + ([b.const(b.normal(per * group, scale=0.5), "b")] if draw(st.booleans()) else [])
    out = b.op("ConvTranspose", inputs, kernel_shape=kernel, strides=strides, pads=pads, output_padding=out_pad, group=group)
    return out, per * group, 4, "ConvTranspose"


def _gemm(draw: st.DrawFn, b: _Builder, weights_as_input: bool) -> tuple[str, int, int, str]:
    m, k, n = draw(st.integers(1, 4)), draw(st.integers(1, 6)), draw(st.integers(1, 6))
    trans_a, trans_b = draw(st.booleans()), draw(st.booleans())
    a = b.input(b.normal(*((k, m) if trans_a else (m, k))))
    w = b.weight(b.normal(*((n, k) if trans_b else (k, n)), scale=1 / math.sqrt(k)), weights_as_input)
    c_shape = draw(st.sampled_from([None, (n,), (1, n), (m, n), ()]))
    inputs = [a, w] + ([] if c_shape is None else [b.const(b.normal(*c_shape, scale=0.5), "c")])
    attrs = {"transA": int(trans_a), "transB": int(trans_b)}
    if draw(st.booleans()):
        attrs |= {"alpha": draw(st.sampled_from([0.5, 1.5])), "beta": draw(st.sampled_from([0.5, 2.0]))}
    return b.op("Gemm", inputs, **attrs), n, 2, "Gemm"


def _matmul(draw: st.DrawFn, b: _Builder, weights_as_input: bool) -> tuple[str, int, int, str]:
    rank = draw(st.sampled_from([2, 2, 3]))
    k, n = draw(st.integers(1, 6)), draw(st.integers(1, 6))
    lead = [draw(st.integers(1, 3)) for _ in range(rank - 1)]
    x = b.input(b.normal(*lead, k))
    w = b.weight(b.normal(k, n, scale=1 / math.sqrt(k)), weights_as_input)
    return b.op("MatMul", [x, w]), n, rank, "MatMul" if rank == 2 else "MatMul3"


def _activation(b: _Builder, draw: st.DrawFn, name: str, y: str) -> str:
    if name == "LeakyRelu":
        return b.op("LeakyRelu", [y], alpha=draw(st.sampled_from([0.01, 0.2, 1.5])))
    if name == "HardSigmoid":
        return b.op("HardSigmoid", [y], alpha=draw(st.sampled_from([0.2, 1 / 6])), beta=draw(st.sampled_from([0.5, 0.25])))
    if name == "Clip":
        lo, hi = draw(st.sampled_from([(0.0, 6.0), (-0.5, 0.5), (None, 0.3), (-0.2, None)]))
        ins = [y, "" if lo is None else b.const(np.float32(lo), "lo"), "" if hi is None else b.const(np.float32(hi), "hi")]
        while ins[-1] == "":
            ins.pop()
        return b.op("Clip", ins)
    if name == "Silu":
        return b.op("Mul", [y, b.op("Sigmoid", [y])])
    if name == "GeluErf":  # torch.onnx.export (TorchScript): x * 0.5 * (1 + erf(x / sqrt(2)))
        erf = b.op("Erf", [b.op("Div", [y, b.const(np.float32(math.sqrt(2.0)), "sqrt2")])])
        return b.op("Mul", [b.op("Mul", [y, b.op("Add", [erf, b.const(np.float32(1.0), "one")])]), b.const(np.float32(0.5), "half")])
    return b.op(name, [y])


@st.composite
def fusion_chains(draw: st.DrawFn) -> Chain:
    opset = draw(st.sampled_from([13, 14, 17, 20]))
    b = _Builder(np.random.default_rng(draw(st.integers(0, 2**32 - 1))))
    weights_as_input = draw(st.integers(0, 5)) == 0
    producer = draw(st.sampled_from([_conv, _conv, _conv_transpose, _gemm, _gemm, _matmul]))
    y, channels, rank, kind = producer(draw, b, weights_as_input)
    steps = [kind + (" (weights as input)" if weights_as_input else "")]
    outputs = []
    # What the fusion passes can still fold into: "open" producer kind, or None once folded into something final.
    state: str | None = kind
    fewer: int | None = 0
    for _ in range(draw(st.integers(1, 3))):
        step = draw(st.sampled_from(["add", "add", "add-broadcast", "bn", "bn", "act", "act", "act"]))
        blocker = draw(st.integers(0, 7)) == 0
        if blocker:
            if draw(st.booleans()):
                outputs.append(y)
            else:
                outputs.append(b.op("Neg", [y]))
            steps.append("blocker")
            fewer = None
        if step == "add":
            shape = draw(st.sampled_from([(channels,) + (1,) * (rank - 2), (1, channels) + (1,) * (rank - 2), (1,)]))
            if rank == 2 or kind == "MatMul3":
                shape = draw(st.sampled_from([(channels,), (1, channels), ()]))
            y = b.op("Add", [y, b.const(b.normal(*shape, scale=0.5), "bias")] if draw(st.booleans())
                     else [b.const(b.normal(*shape, scale=0.5), "bias"), y])
            steps.append(f"Add{list(shape)}")
            if state in ("Conv", "ConvTranspose", "Gemm", "MatMul") and not (state == "MatMul" and weights_as_input):
                fewer = None if fewer is None else fewer + 1
                state = "Gemm" if state == "MatMul" else state
            else:
                state = None
        elif step == "add-broadcast":  # a constant over the whole output: no bias
            y = b.op("Add", [y, b.const(b.normal(*_output_shape(b, y, opset), scale=0.5), "full")])
            steps.append("Add(full)")
            state = None
        elif step == "bn":
            scale, bias, mean = b.normal(channels), b.normal(channels), b.normal(channels, scale=0.5)
            var = (b.rng.random(channels) + 0.5).astype(np.float32)
            if kind == "MatMul3":  # BN's channel axis 1 is not the MatMul's last dim: normalize axis 1 instead
                channels1 = _output_shape(b, y, opset)[1]
                scale, bias, mean = b.normal(channels1), b.normal(channels1), b.normal(channels1, scale=0.5)
                var = (b.rng.random(channels1) + 0.5).astype(np.float32)
            y = b.op("BatchNormalization", [y, b.const(scale), b.const(bias), b.const(mean), b.const(var)],
                     epsilon=draw(st.sampled_from([1e-5, 1e-3])))
            steps.append("BatchNormalization")
            if state in ("Conv", "ConvTranspose", "Gemm", "MatMul") and not weights_as_input:
                fewer = None if fewer is None else fewer + 1
                state = "Gemm" if state == "MatMul" else state
            else:  # decomposed: one node becomes two
                fewer = None if fewer is None else fewer - 1
                state = None
        else:
            name = draw(st.sampled_from(ACTIVATIONS))
            if name == "HardSwish" and opset < 14 or name == "Gelu" and opset < 20:
                name = "Relu"
            y = _activation(b, draw, name, y)
            steps.append(name)
            if state in ("Conv", "Gemm"):
                fewer = None if fewer is None else fewer + ACTIVATION_NODES.get(name, 1)
            state = None
    outputs.insert(0, y)
    return _finish(b, outputs, opset, steps, fewer)


def _model(b: _Builder, outputs: list[str], opset: int) -> onnx.ModelProto:
    g = oh.make_graph(list(b.nodes), "chain", list(b.inputs), [oh.make_tensor_value_info(o, T.FLOAT, None) for o in outputs],
                      list(b.inits))
    m = oh.make_model(g, opset_imports=[oh.make_opsetid("", opset)], ir_version=8)
    inferred = onnx.shape_inference.infer_shapes(m, strict_mode=True)
    del m.graph.output[:]
    m.graph.output.extend(inferred.graph.output)
    return m


def _output_shape(b: _Builder, y: str, opset: int) -> list[int]:
    m = _model(b, [y], opset)
    return [d.dim_value for d in m.graph.output[0].type.tensor_type.shape.dim]


def _finish(b: _Builder, outputs: list[str], opset: int, steps: list[str], fewer: int | None) -> Chain:
    m = _model(b, list(dict.fromkeys(outputs)), opset)
    onnx.checker.check_model(m, full_check=True)
    return Chain(m, dict(b.feeds), steps, fewer)


__all__ = ["ACTIVATIONS", "Chain", "fusion_chains"]
