"""Helper-built single LSTM/GRU/RNN nodes covering their attributes, and their onnxruntime reference.

`RnnSpec` describes one node (op, sizes, direction, layout, optional inputs, attributes,
which outputs are named); `build(spec)` makes the model and `feeds(spec)` random inputs.
onnxruntime runs only layout 0, so `reference(spec, feeds)` runs the layout-0 twin of a
layout-1 node in onnxruntime and transposes inputs and outputs around it.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import numpy as np
import onnx
from onnx import TensorProto, helper

from passes.ort import run_model

GATES = {"LSTM": 4, "GRU": 3, "RNN": 1}


@dataclass(frozen=True)
class RnnSpec:
    op: str = "LSTM"
    seq: int = 3
    batch: int = 2
    input_size: int = 4
    hidden: int = 3
    direction: str = "forward"
    layout: int = 0
    bias: bool = True
    initial_h: bool = False
    initial_c: bool = False
    peepholes: bool = False
    clip: float | None = None
    linear_before_reset: int = 0
    input_forget: int = 0
    activations: tuple[str, ...] | None = None
    alpha: tuple[float, ...] | None = None
    beta: tuple[float, ...] | None = None
    lens: tuple[int, ...] | None = None  # sequence_lens values
    lens_input: bool = False  # sequence_lens a graph input (else a constant)
    outputs: tuple[bool, bool, bool] = (True, True, True)  # Y, Y_h, Y_c named
    weights_as_inputs: bool = False
    sym_seq: bool = False  # the sequence dim is the symbol "seq" in the model's input types
    sym_batch: bool = False  # the batch dim is the symbol "batch"
    opset: int = 17
    seed: int = 0

    @property
    def nd(self) -> int:
        return 2 if self.direction == "bidirectional" else 1


def _dims(s: RnnSpec) -> tuple:
    return ("seq" if s.sym_seq else s.seq), ("batch" if s.sym_batch else s.batch)


def _x_shape(s: RnnSpec) -> list:
    seq, batch = _dims(s)
    return [seq, batch, s.input_size] if s.layout == 0 else [batch, seq, s.input_size]


def _state_shape(s: RnnSpec) -> list:
    batch = _dims(s)[1]
    return [s.nd, batch, s.hidden] if s.layout == 0 else [batch, s.nd, s.hidden]


def weights(s: RnnSpec) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(1000 + s.seed)
    g = GATES[s.op] * s.hidden
    out = {
        "W": (rng.standard_normal((s.nd, g, s.input_size)) * 0.5).astype(np.float32),
        "R": (rng.standard_normal((s.nd, g, s.hidden)) * 0.5).astype(np.float32),
    }
    if s.bias:
        out["B"] = (rng.standard_normal((s.nd, 2 * g)) * 0.5).astype(np.float32)
    if s.peepholes and s.op == "LSTM":
        out["P"] = (rng.standard_normal((s.nd, 3 * s.hidden)) * 0.5).astype(np.float32)
    return out


def build(s: RnnSpec) -> onnx.ModelProto:
    f = TensorProto.FLOAT
    w = weights(s)
    inputs = [helper.make_tensor_value_info("X", f, _x_shape(s))]
    inits = []
    for name, arr in w.items():
        if s.weights_as_inputs:
            inputs.append(helper.make_tensor_value_info(name, f, list(arr.shape)))
        else:
            inits.append(onnx.numpy_helper.from_array(arr, name))
    names = ["X", "W", "R", "B" if s.bias else ""]
    if s.lens is not None:
        names.append("L")
        if s.lens_input:
            inputs.append(helper.make_tensor_value_info("L", TensorProto.INT32, [_dims(s)[1]]))
        else:
            inits.append(onnx.numpy_helper.from_array(np.array(s.lens, dtype=np.int32), "L"))
    else:
        names.append("")
    names.append("H0" if s.initial_h else "")
    if s.initial_h:
        inputs.append(helper.make_tensor_value_info("H0", f, _state_shape(s)))
    if s.op == "LSTM":
        names.append("C0" if s.initial_c else "")
        if s.initial_c:
            inputs.append(helper.make_tensor_value_info("C0", f, _state_shape(s)))
        names.append("P" if s.peepholes else "")
    while names and not names[-1]:
        names.pop()
    outs = [n if keep else "" for n, keep in zip(["Y", "Y_h", "Y_c"][: 3 if s.op == "LSTM" else 2], s.outputs)]
    while outs and not outs[-1]:
        outs.pop()
    attrs: dict = {"hidden_size": s.hidden}
    if s.direction != "forward":
        attrs["direction"] = s.direction
    if s.layout:
        attrs["layout"] = s.layout
    if s.clip is not None:
        attrs["clip"] = s.clip
    if s.op == "GRU" and s.linear_before_reset:
        attrs["linear_before_reset"] = s.linear_before_reset
    if s.op == "LSTM" and s.input_forget:
        attrs["input_forget"] = s.input_forget
    if s.activations is not None:
        attrs["activations"] = list(s.activations)
    if s.alpha is not None:
        attrs["activation_alpha"] = list(s.alpha)
    if s.beta is not None:
        attrs["activation_beta"] = list(s.beta)
    node = helper.make_node(s.op, names, outs, name=f"{s.op.lower()}_node", **attrs)
    seq, batch = _dims(s)
    y_shape = [seq, s.nd, batch, s.hidden] if s.layout == 0 else [batch, seq, s.nd, s.hidden]
    shapes = {"Y": y_shape, "Y_h": _state_shape(s), "Y_c": _state_shape(s)}
    graph_outs = [helper.make_tensor_value_info(o, f, shapes[o]) for o in outs if o]
    g = helper.make_graph([node], "recurrent", inputs, graph_outs, inits)
    return helper.make_model(g, opset_imports=[helper.make_opsetid("", s.opset)], ir_version=8)


def feeds(s: RnnSpec, seed: int | None = None, batch: int | None = None) -> dict[str, np.ndarray]:
    """Random inputs (weights too when they are inputs); `batch` overrides the spec's batch size."""
    rng = np.random.default_rng(s.seed if seed is None else seed)
    if batch is not None:
        s = replace(s, batch=batch)
    x = [s.seq, s.batch, s.input_size] if s.layout == 0 else [s.batch, s.seq, s.input_size]
    st = [s.nd, s.batch, s.hidden] if s.layout == 0 else [s.batch, s.nd, s.hidden]
    out = {"X": rng.standard_normal(x).astype(np.float32)}
    if s.initial_h:
        out["H0"] = rng.standard_normal(st).astype(np.float32)
    if s.initial_c and s.op == "LSTM":
        out["C0"] = rng.standard_normal(st).astype(np.float32)
    if s.lens is not None and s.lens_input:
        out["L"] = np.resize(np.array(s.lens, dtype=np.int32), s.batch)
    if s.weights_as_inputs:
        out.update(weights(s))
    return out


def input_shapes(s: RnnSpec) -> dict[str, list[int]]:
    """Static shapes of the non-weight graph inputs (for `input_shapes=`)."""
    x = [s.seq, s.batch, s.input_size] if s.layout == 0 else [s.batch, s.seq, s.input_size]
    st = [s.nd, s.batch, s.hidden] if s.layout == 0 else [s.batch, s.nd, s.hidden]
    out = {"X": x}
    if s.initial_h:
        out["H0"] = st
    if s.initial_c and s.op == "LSTM":
        out["C0"] = st
    if s.lens is not None and s.lens_input:
        out["L"] = [s.batch]
    return out


def reference(s: RnnSpec, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """onnxruntime's outputs for the spec's node (through the layout-0 twin for layout 1)."""
    if s.layout == 0:
        return run_model(build(s), inputs)
    twin = replace(s, layout=0)
    moved = dict(inputs)
    moved["X"] = np.ascontiguousarray(inputs["X"].transpose(1, 0, 2))
    for k in ("H0", "C0"):
        if k in inputs:
            moved[k] = np.ascontiguousarray(inputs[k].transpose(1, 0, 2))
    out = run_model(build(twin), moved)
    back = {}
    for k, v in out.items():
        back[k] = np.ascontiguousarray(v.transpose(2, 0, 1, 3) if k == "Y" else v.transpose(1, 0, 2))
    return back


#: Named corpus entries: one spec per attribute the issue lists (and a few combinations).
SPECS: dict[str, RnnSpec] = {
    "lstm_forward": RnnSpec("LSTM"),
    "lstm_reverse": RnnSpec("LSTM", direction="reverse"),
    "lstm_bidirectional": RnnSpec("LSTM", direction="bidirectional", initial_h=True, initial_c=True),
    "lstm_no_bias": RnnSpec("LSTM", bias=False),
    "lstm_initial_h_only": RnnSpec("LSTM", initial_h=True),
    "lstm_initial_c_only": RnnSpec("LSTM", initial_c=True),
    "lstm_peepholes": RnnSpec("LSTM", peepholes=True, initial_c=True, direction="bidirectional"),
    "lstm_clip": RnnSpec("LSTM", clip=0.7, peepholes=True),
    "lstm_clip_no_peepholes": RnnSpec("LSTM", clip=0.5),
    "lstm_input_forget": RnnSpec("LSTM", input_forget=1, initial_c=True),
    "lstm_input_forget_peepholes": RnnSpec("LSTM", input_forget=1, peepholes=True, initial_c=True),
    "lstm_layout1": RnnSpec("LSTM", layout=1, direction="bidirectional", initial_h=True, initial_c=True),
    "lstm_y_only": RnnSpec("LSTM", outputs=(True, False, False)),
    "lstm_yh_only": RnnSpec("LSTM", outputs=(False, True, False)),
    "lstm_yc_only": RnnSpec("LSTM", outputs=(False, False, True), direction="reverse"),
    "lstm_activations": RnnSpec("LSTM", activations=("HardSigmoid", "LeakyRelu", "Softsign"), alpha=(0.3, 0.05), beta=(0.4,)),
    "lstm_seq1": RnnSpec("LSTM", seq=1, initial_h=True, initial_c=True),
    "lstm_weights_inputs": RnnSpec("LSTM", weights_as_inputs=True, initial_h=True),
    "lstm_lens_const": RnnSpec("LSTM", lens=(3, 2), direction="bidirectional", initial_h=True, initial_c=True),
    "lstm_lens_full": RnnSpec("LSTM", lens=(3, 3)),
    "lstm_lens_input": RnnSpec("LSTM", lens=(1, 3), lens_input=True, direction="reverse"),
    "lstm_lens_zero": RnnSpec("LSTM", lens=(0, 2), initial_h=True, initial_c=True),
    "lstm_opset9": RnnSpec("LSTM", opset=9, direction="bidirectional"),
    "gru_forward": RnnSpec("GRU"),
    "gru_reverse": RnnSpec("GRU", direction="reverse", initial_h=True),
    "gru_bidirectional": RnnSpec("GRU", direction="bidirectional"),
    "gru_linear_before_reset": RnnSpec("GRU", linear_before_reset=1, initial_h=True),
    "gru_linear_before_reset_no_init": RnnSpec("GRU", linear_before_reset=1, direction="bidirectional"),
    "gru_linear_before_reset_no_bias": RnnSpec("GRU", linear_before_reset=1, bias=False, initial_h=True),
    "gru_clip": RnnSpec("GRU", clip=0.6, initial_h=True),
    "gru_no_bias": RnnSpec("GRU", bias=False),
    "gru_layout1": RnnSpec("GRU", layout=1, initial_h=True, direction="bidirectional"),
    "gru_activations": RnnSpec("GRU", activations=("HardSigmoid", "Softsign", "Sigmoid", "Relu"), alpha=(0.25,), beta=(0.45,),
                              direction="bidirectional"),
    "gru_yh_only": RnnSpec("GRU", outputs=(False, True, False)),
    "gru_lens": RnnSpec("GRU", lens=(2, 3), lens_input=True, direction="bidirectional", initial_h=True),
    "rnn_tanh": RnnSpec("RNN"),
    "rnn_relu": RnnSpec("RNN", activations=("Relu",), initial_h=True),
    "rnn_reverse": RnnSpec("RNN", direction="reverse"),
    "rnn_bidirectional": RnnSpec("RNN", direction="bidirectional", initial_h=True),
    "rnn_clip": RnnSpec("RNN", clip=0.3),
    "rnn_layout1": RnnSpec("RNN", layout=1, initial_h=True),
    "rnn_no_bias_y_only": RnnSpec("RNN", bias=False, outputs=(True, False, False)),
    "rnn_activations": RnnSpec("RNN", activations=("Affine", "ScaledTanh"), alpha=(0.8, 1.5), beta=(0.1, 0.7),
                               direction="bidirectional"),
    "rnn_elu": RnnSpec("RNN", activations=("Elu",), alpha=(0.5,)),
    "rnn_thresholded": RnnSpec("RNN", activations=("ThresholdedRelu",), alpha=(0.2,)),
    "rnn_softplus": RnnSpec("RNN", activations=("Softplus",)),
    "rnn_lens": RnnSpec("RNN", lens=(3, 1)),
}
