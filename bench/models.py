"""Benchmark models, built as ONNX graphs in code.

Each builder returns an ``onnx.ModelProto`` with a real architecture (ResNet-18/50,
MobileNetV2, BERT) and random, seeded, deterministic weights, written the way the
PyTorch TorchScript exporter writes such models at opset 17 / IR version 8: one node per
torch op, BatchNormalization left unfused, ``Shape -> Gather -> Unsqueeze -> Concat``
chains feeding Reshape, Constant nodes for every scalar, torch-style node and tensor
names (``/layer1/layer1.0/conv1/Conv``, ``onnx::MatMul_123``), plus the noise real exports
carry (Identity, inference-mode Dropout, no-op Casts, duplicated Constants and Shapes).
So a graph-cleanup pipeline has real work to do on them.

``generated()`` builds a synthetic graph of about ``n_nodes`` nodes on small tensors, with
dead branches, duplicated subexpressions, foldable constants and Shape chains.

This module depends on onnx and numpy only (no lepton imports), so benchmark baselines
can use it unchanged.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import onnx
from onnx import TensorProto, helper

__all__ = [
    "BENCH_MODELS",
    "OPSET",
    "IR_VERSION",
    "resnet18",
    "resnet50",
    "mobilenet_v2",
    "bert_small",
    "bert_base",
    "generated",
    "synth_inputs",
]

OPSET = 17
IR_VERSION = 8
_PRODUCER = "lepton.bench.models"

_F = TensorProto.FLOAT
_I64 = TensorProto.INT64


# --------------------------------------------------------------------------------------
# Graph builder
# --------------------------------------------------------------------------------------


class _Builder:
    """Appends nodes and initializers straight into a ModelProto (no copies of weights)."""

    def __init__(self, graph_name: str, seed: int) -> None:
        self.rng = np.random.default_rng(seed)
        self.model = onnx.ModelProto()
        self.model.ir_version = IR_VERSION
        self.model.producer_name = _PRODUCER
        self.model.producer_version = "1"
        op = self.model.opset_import.add()
        op.domain = ""
        op.version = OPSET
        self.graph = self.model.graph
        self.graph.name = graph_name
        self._node_names: dict[str, int] = {}
        self._anon = 0

    # -- names ---------------------------------------------------------------------
    def _unique(self, name: str) -> str:
        """torch style: '/a/Conv', '/a/Conv_1', '/a/Conv_2', ..."""
        n = self._node_names.get(name)
        if n is None:
            self._node_names[name] = 0
            return name
        n += 1
        while f"{name}_{n}" in self._node_names:
            n += 1
        self._node_names[name] = n
        self._node_names[f"{name}_{n}"] = 0
        return f"{name}_{n}"

    def anon(self, op_type: str) -> str:
        """A name like the exporter's ``onnx::MatMul_1234`` for unnamed parameters."""
        self._anon += 1
        return f"onnx::{op_type}_{1000 + self._anon}"

    # -- graph content ---------------------------------------------------------------
    def input(self, name: str, elem: int, shape: Sequence[int | str]) -> str:
        self.graph.input.append(helper.make_tensor_value_info(name, elem, list(shape)))
        return name

    def output(self, name: str, elem: int, shape: Sequence[int | str]) -> None:
        self.graph.output.append(helper.make_tensor_value_info(name, elem, list(shape)))

    def init(self, name: str, arr: np.ndarray) -> str:
        arr = np.ascontiguousarray(arr)
        t = self.graph.initializer.add()
        t.name = name
        t.data_type = helper.np_dtype_to_tensor_dtype(arr.dtype)
        t.dims.extend(arr.shape)
        t.raw_data = arr.tobytes()
        return name

    def node(
        self,
        op_type: str,
        inputs: Sequence[str],
        name: str,
        *,
        n_out: int = 1,
        outputs: Sequence[str] | None = None,
        **attrs: Any,
    ) -> str:
        name = self._unique(name)
        if outputs is None:
            outputs = [f"{name}_output_{i}" for i in range(n_out)]
        self.graph.node.append(helper.make_node(op_type, list(inputs), list(outputs), name=name, **attrs))
        return outputs[0]

    def const(self, value: Any, scope: str, dtype: Any = None) -> str:
        """A Constant node (the exporter emits one per use, so identical ones repeat)."""
        arr = np.asarray(value, dtype=dtype)
        if arr.dtype == np.float64:
            arr = arr.astype(np.float32)
        name = self._unique(f"{scope}/Constant")
        out = f"{name}_output_0"
        self.graph.node.append(
            helper.make_node("Constant", [], [out], name=name, value=onnx.numpy_helper.from_array(arr))
        )
        return out

    # -- random parameters -------------------------------------------------------------
    def normal(self, shape: Sequence[int], std: float, mean: float = 0.0) -> np.ndarray:
        a = self.rng.standard_normal(tuple(shape), dtype=np.float32)
        if std != 1.0:
            a *= np.float32(std)
        if mean:
            a += np.float32(mean)
        return a

    def uniform(self, shape: Sequence[int], lo: float, hi: float) -> np.ndarray:
        return self.rng.uniform(lo, hi, size=tuple(shape)).astype(np.float32)


def _scope(path: str) -> str:
    """Module path -> torch exporter scope: 'layer1.0.conv1' -> '/layer1/layer1.0/conv1'."""
    parts: list[str] = []
    for p in path.split("."):
        if p.isdigit() and parts:
            parts.append(f"{parts[-1]}.{p}")
        else:
            parts.append(p)
    return "/" + "/".join(parts) if path else ""


# --------------------------------------------------------------------------------------
# CNN pieces
# --------------------------------------------------------------------------------------


def _conv(
    b: _Builder, x: str, path: str, cin: int, cout: int, k: int, stride: int = 1, pad: int = 0, group: int = 1
) -> str:
    fan_in = (cin // group) * k * k
    w = b.init(f"{path}.weight", b.normal((cout, cin // group, k, k), math.sqrt(2.0 / fan_in)))
    return b.node(
        "Conv",
        [x, w],
        f"{_scope(path)}/Conv",
        dilations=[1, 1],
        group=group,
        kernel_shape=[k, k],
        pads=[pad, pad, pad, pad],
        strides=[stride, stride],
    )


def _bn(b: _Builder, x: str, path: str, c: int, gamma: float = 1.0) -> str:
    scale = b.init(f"{path}.weight", b.uniform((c,), 0.8 * gamma, 1.2 * gamma))
    bias = b.init(f"{path}.bias", b.normal((c,), 0.05))
    mean = b.init(f"{path}.running_mean", b.normal((c,), 0.05))
    var = b.init(f"{path}.running_var", b.uniform((c,), 0.8, 1.2))
    return b.node(
        "BatchNormalization", [x, scale, bias, mean, var], f"{_scope(path)}/BatchNormalization", epsilon=1e-5, momentum=0.9
    )


def _relu(b: _Builder, x: str, path: str) -> str:
    return b.node("Relu", [x], f"{_scope(path)}/Relu")


def _relu6(b: _Builder, x: str, path: str) -> str:
    """torch's ReLU6 at opset >= 11: Clip with min/max from two Constant nodes."""
    s = _scope(path)
    lo = b.const(np.float32(0.0), s)
    hi = b.const(np.float32(6.0), s)
    return b.node("Clip", [x, lo, hi], f"{s}/Clip")


def _flatten_view(b: _Builder, x: str, scope: str = "") -> str:
    """``x.view(x.size(0), -1)`` as the TorchScript exporter writes it."""
    shape = b.node("Shape", [x], f"{scope}/Shape")
    idx = b.const(np.int64(0), scope)
    n = b.node("Gather", [shape, idx], f"{scope}/Gather", axis=0)
    axes = b.const(np.array([0], np.int64), scope)
    n1 = b.node("Unsqueeze", [n, axes], f"{scope}/Unsqueeze")
    minus1 = b.const(np.array([-1], np.int64), scope)
    target = b.node("Concat", [n1, minus1], f"{scope}/Concat", axis=0)
    return b.node("Reshape", [x, target], f"{scope}/Reshape", allowzero=0)


def _gemm(b: _Builder, x: str, path: str, cin: int, cout: int) -> str:
    bound = 1.0 / math.sqrt(cin)
    w = b.init(f"{path}.weight", b.uniform((cout, cin), -bound, bound))
    bias = b.init(f"{path}.bias", b.uniform((cout,), -bound, bound))
    return b.node("Gemm", [x, w, bias], f"{_scope(path)}/Gemm", alpha=1.0, beta=1.0, transB=1)


# --------------------------------------------------------------------------------------
# ResNet
# --------------------------------------------------------------------------------------


def _resnet(name: str, block: str, layers: Sequence[int], batch: int, seed: int, flatten: str) -> onnx.ModelProto:
    b = _Builder(name, seed)
    x = b.input("input", _F, [batch, 3, 224, 224])
    x = _conv(b, x, "conv1", 3, 64, 7, 2, 3)
    x = _bn(b, x, "bn1", 64)
    x = b.node("Relu", [x], "/relu/Relu")
    x = b.node("MaxPool", [x], "/maxpool/MaxPool", ceil_mode=0, kernel_shape=[3, 3], pads=[1, 1, 1, 1], strides=[2, 2])
    expansion = 4 if block == "bottleneck" else 1
    inplanes = 64
    # the last BN of each residual branch gets a smaller gamma so activations stay in a
    # sane range through the residual sum (random weights, not a trained model).
    last_gamma = 0.35
    for li, (planes, n) in enumerate(zip((64, 128, 256, 512), layers), start=1):
        for bi in range(n):
            stride = 2 if (bi == 0 and li > 1) else 1
            p = f"layer{li}.{bi}"
            s = _scope(p)
            identity = x
            if block == "bottleneck":
                y = _conv(b, x, f"{p}.conv1", inplanes, planes, 1)
                y = _bn(b, y, f"{p}.bn1", planes)
                y = b.node("Relu", [y], f"{s}/relu/Relu")
                y = _conv(b, y, f"{p}.conv2", planes, planes, 3, stride, 1)
                y = _bn(b, y, f"{p}.bn2", planes)
                y = b.node("Relu", [y], f"{s}/relu_1/Relu")
                y = _conv(b, y, f"{p}.conv3", planes, planes * 4, 1)
                y = _bn(b, y, f"{p}.bn3", planes * 4, gamma=last_gamma)
            else:
                y = _conv(b, x, f"{p}.conv1", inplanes, planes, 3, stride, 1)
                y = _bn(b, y, f"{p}.bn1", planes)
                y = b.node("Relu", [y], f"{s}/relu/Relu")
                y = _conv(b, y, f"{p}.conv2", planes, planes, 3, 1, 1)
                y = _bn(b, y, f"{p}.bn2", planes, gamma=last_gamma)
            if stride != 1 or inplanes != planes * expansion:
                identity = _conv(b, x, f"{p}.downsample.0", inplanes, planes * expansion, 1, stride)
                identity = _bn(b, identity, f"{p}.downsample.1", planes * expansion)
            y = b.node("Add", [y, identity], f"{s}/Add")
            x = b.node("Relu", [y], f"{s}/relu_{2 if block == 'bottleneck' else 1}/Relu")
            inplanes = planes * expansion
    x = b.node("GlobalAveragePool", [x], "/avgpool/GlobalAveragePool")
    if flatten == "view":
        x = _flatten_view(b, x)
    else:
        x = b.node("Flatten", [x], "/Flatten", axis=1)
    _ = x
    bound = 1.0 / math.sqrt(inplanes)
    w = b.init("fc.weight", b.uniform((1000, inplanes), -bound, bound))
    bias = b.init("fc.bias", b.uniform((1000,), -bound, bound))
    b.node("Gemm", [x, w, bias], "/fc/Gemm", outputs=["logits"], alpha=1.0, beta=1.0, transB=1)
    b.output("logits", _F, [batch, 1000])
    return b.model


def resnet50(batch: int = 1, *, seed: int = 50) -> onnx.ModelProto:
    """ResNet-50 (torchvision v1.5 bottlenecks [3,4,6,3]); flatten via the Shape->Reshape chain."""
    return _resnet("resnet50", "bottleneck", (3, 4, 6, 3), batch, seed, flatten="view")


def resnet18(batch: int = 1, *, seed: int = 18) -> onnx.ModelProto:
    """ResNet-18 (basic blocks [2,2,2,2]); flatten via ``torch.flatten`` -> Flatten."""
    return _resnet("resnet18", "basic", (2, 2, 2, 2), batch, seed, flatten="flatten")


# --------------------------------------------------------------------------------------
# MobileNetV2
# --------------------------------------------------------------------------------------


def mobilenet_v2(batch: int = 1, *, seed: int = 2) -> onnx.ModelProto:
    """torchvision MobileNetV2 (width 1.0): inverted residuals, depthwise convs, ReLU6 as Clip."""
    b = _Builder("mobilenet_v2", seed)
    x = b.input("input", _F, [batch, 3, 224, 224])
    x = _conv(b, x, "features.0.0", 3, 32, 3, 2, 1)
    x = _bn(b, x, "features.0.1", 32)
    x = _relu6(b, x, "features.0.2")
    settings = [(1, 16, 1, 1), (6, 24, 2, 2), (6, 32, 3, 2), (6, 64, 4, 2), (6, 96, 3, 1), (6, 160, 3, 2), (6, 320, 1, 1)]
    inp = 32
    fi = 1
    for t, c, n, s in settings:
        for i in range(n):
            stride = s if i == 0 else 1
            hidden = inp * t
            p = f"features.{fi}.conv"
            y = x
            j = 0
            if t != 1:
                y = _conv(b, y, f"{p}.{j}.0", inp, hidden, 1)
                y = _bn(b, y, f"{p}.{j}.1", hidden)
                y = _relu6(b, y, f"{p}.{j}.2")
                j += 1
            y = _conv(b, y, f"{p}.{j}.0", hidden, hidden, 3, stride, 1, group=hidden)
            y = _bn(b, y, f"{p}.{j}.1", hidden)
            y = _relu6(b, y, f"{p}.{j}.2")
            j += 1
            y = _conv(b, y, f"{p}.{j}", hidden, c, 1)
            use_res = stride == 1 and inp == c
            y = _bn(b, y, f"{p}.{j + 1}", c, gamma=0.5 if use_res else 1.0)
            if use_res:
                y = b.node("Add", [x, y], f"{_scope(f'features.{fi}')}/Add")
            x = y
            inp = c
            fi += 1
    x = _conv(b, x, f"features.{fi}.0", inp, 1280, 1)
    x = _bn(b, x, f"features.{fi}.1", 1280)
    x = _relu6(b, x, f"features.{fi}.2")
    x = b.node("GlobalAveragePool", [x], "/GlobalAveragePool")
    x = b.node("Flatten", [x], "/Flatten", axis=1)
    ratio = b.const(np.float32(0.2), "/classifier/classifier.0")
    x = b.node("Dropout", [x, ratio], "/classifier/classifier.0/Dropout")
    bound = 1.0 / math.sqrt(1280)
    w = b.init("classifier.1.weight", b.uniform((1000, 1280), -bound, bound))
    bias = b.init("classifier.1.bias", b.uniform((1000,), -bound, bound))
    b.node("Gemm", [x, w, bias], "/classifier/classifier.1/Gemm", outputs=["logits"], alpha=1.0, beta=1.0, transB=1)
    b.output("logits", _F, [batch, 1000])
    return b.model


# --------------------------------------------------------------------------------------
# BERT
# --------------------------------------------------------------------------------------

_BERT_VOCAB = 30522
_BERT_MAX_POS = 512
_BERT_TYPE_VOCAB = 2
_BERT_STD = 0.02
_LN_EPS = 1e-12


def _layer_norm(b: _Builder, x: str, path: str, hidden: int, decomposed: bool) -> str:
    s = _scope(path)
    gamma = b.init(f"{path}.weight", b.normal((hidden,), 0.02, mean=1.0))
    beta = b.init(f"{path}.bias", b.normal((hidden,), 0.02))
    if not decomposed:
        return b.node("LayerNormalization", [x, gamma, beta], f"{s}/LayerNormalization", axis=-1, epsilon=_LN_EPS)
    # what opset < 17 exports wrote for nn.LayerNorm
    mean = b.node("ReduceMean", [x], f"{s}/ReduceMean", axes=[-1], keepdims=1)
    d = b.node("Sub", [x, mean], f"{s}/Sub")
    two = b.const(np.float32(2.0), s)
    sq = b.node("Pow", [d, two], f"{s}/Pow")
    var = b.node("ReduceMean", [sq], f"{s}/ReduceMean", axes=[-1], keepdims=1)
    eps = b.const(np.float32(_LN_EPS), s)
    var = b.node("Add", [var, eps], f"{s}/Add")
    std = b.node("Sqrt", [var], f"{s}/Sqrt")
    y = b.node("Div", [d, std], f"{s}/Div")
    y = b.node("Mul", [y, gamma], f"{s}/Mul")
    return b.node("Add", [y, beta], f"{s}/Add")


def _linear(b: _Builder, x: str, path: str, cin: int, cout: int) -> str:
    """nn.Linear on a 3-D input: MatMul with the transposed weight (an 'onnx::MatMul_N'
    initializer) followed by Add of the bias."""
    s = _scope(path)
    w = b.init(b.anon("MatMul"), b.normal((cin, cout), _BERT_STD))
    bias = b.init(f"{path}.bias", b.normal((cout,), _BERT_STD))
    y = b.node("MatMul", [x, w], f"{s}/MatMul")
    return b.node("Add", [bias, y], f"{s}/Add")


def _dropout(b: _Builder, x: str, path: str, p: float = 0.1) -> str:
    """Dropout in inference form (no training_mode input): an identity at run time."""
    s = _scope(path)
    ratio = b.const(np.float32(p), s)
    return b.node("Dropout", [x, ratio], f"{s}/Dropout")


def _dims_of(b: _Builder, x: str, scope: str, dims: Sequence[int]) -> list[str]:
    """``x.size(d)`` for each d, unsqueezed to 1-D: Shape -> Gather -> Unsqueeze, one Shape
    node per use, as the TorchScript exporter writes it (CSE opportunities)."""
    out = []
    for d in dims:
        shp = b.node("Shape", [x], f"{scope}/Shape")
        idx = b.const(np.int64(d), scope)
        g = b.node("Gather", [shp, idx], f"{scope}/Gather", axis=0)
        axes = b.const(np.array([0], np.int64), scope)
        out.append(b.node("Unsqueeze", [g, axes], f"{scope}/Unsqueeze"))
    return out


def _bert(
    name: str, seq: int, batch: int, layers: int, hidden: int, heads: int, seed: int, vocab: int = _BERT_VOCAB
) -> onnx.ModelProto:
    if hidden % heads:
        raise ValueError(f"hidden ({hidden}) must be a multiple of heads ({heads})")
    if seq > _BERT_MAX_POS:
        raise ValueError(f"seq ({seq}) must be <= {_BERT_MAX_POS}")
    head_dim = hidden // heads
    inter = 4 * hidden
    b = _Builder(name, seed)
    ids = b.input("input_ids", _I64, [batch, seq])
    mask = b.input("attention_mask", _I64, [batch, seq])

    # ---- embeddings -------------------------------------------------------------------
    word = b.init("embeddings.word_embeddings.weight", b.normal((vocab, hidden), _BERT_STD))
    pos = b.init("embeddings.position_embeddings.weight", b.normal((_BERT_MAX_POS, hidden), _BERT_STD))
    tok = b.init("embeddings.token_type_embeddings.weight", b.normal((_BERT_TYPE_VOCAB, hidden), _BERT_STD))
    pos_ids_buf = b.init("embeddings.position_ids", np.arange(_BERT_MAX_POS, dtype=np.int64)[None, :])
    tok_ids_buf = b.init("embeddings.token_type_ids", np.zeros((1, _BERT_MAX_POS), np.int64))

    ids = b.node("Cast", [ids], "/Cast", to=_I64)  # input_ids.long(): a Cast to the same dtype
    # seq_length = input_ids.size(1); batch_size = input_ids.size(0)
    bs, sl = _dims_of(b, ids, "", [0, 1])
    # token_type_ids = self.token_type_ids[:, :seq_length].expand(batch_size, seq_length)
    es = "/embeddings"
    start = b.const(np.array([0], np.int64), "")
    ax1 = b.const(np.array([1], np.int64), "")
    step = b.const(np.array([1], np.int64), "")
    (sl2,) = _dims_of(b, ids, "", [1])  # a second Shape(input_ids) -> same value
    tt = b.node("Slice", [tok_ids_buf, start, sl2, ax1, step], "/Slice")
    (bs2, sl3) = _dims_of(b, ids, "", [0, 1])
    tshape = b.node("Concat", [bs2, sl3], "/Concat", axis=0)
    tt = b.node("Expand", [tt, tshape], "/Expand")
    # position_ids = self.position_ids[:, 0:seq_length]
    start = b.const(np.array([0], np.int64), es)
    ax1 = b.const(np.array([1], np.int64), es)
    step = b.const(np.array([1], np.int64), es)
    pids = b.node("Slice", [pos_ids_buf, start, sl, ax1, step], f"{es}/Slice")
    _ = bs

    e = b.node("Gather", [word, ids], f"{es}/word_embeddings/Gather")
    t_e = b.node("Gather", [tok, tt], f"{es}/token_type_embeddings/Gather")
    e = b.node("Add", [e, t_e], f"{es}/Add")
    p_e = b.node("Gather", [pos, pids], f"{es}/position_embeddings/Gather")
    e = b.node("Add", [e, p_e], f"{es}/Add")
    h = _layer_norm(b, e, "embeddings.LayerNorm", hidden, decomposed=True)
    h = _dropout(b, h, "embeddings.dropout")

    # ---- extended attention mask: (1.0 - mask[:, None, None, :].float()) * -10000.0 ---
    m = b.node("Identity", [mask], "/Identity")
    ax = b.const(np.array([1], np.int64), "")
    m = b.node("Unsqueeze", [m, ax], "/Unsqueeze")
    ax = b.const(np.array([2], np.int64), "")
    m = b.node("Unsqueeze", [m, ax], "/Unsqueeze")
    m = b.node("Cast", [m], "/Cast", to=_F)
    m = b.node("Cast", [m], "/Cast", to=_F)  # .to(dtype=self.dtype): same dtype again
    one = b.const(np.float32(1.0), "")
    m = b.node("Sub", [one, m], "/Sub")
    big = b.const(np.float32(-10000.0), "")
    ext_mask = b.node("Mul", [m, big], "/Mul")

    # ---- encoder ---------------------------------------------------------------------
    for li in range(layers):
        lp = f"encoder.layer.{li}"
        sp = f"/encoder/layer.{li}/attention/self"
        q = _linear(b, h, f"encoder.layer.{li}.attention.self.query", hidden, hidden)
        k = _linear(b, h, f"encoder.layer.{li}.attention.self.key", hidden, hidden)
        v = _linear(b, h, f"encoder.layer.{li}.attention.self.value", hidden, hidden)

        def to_heads(t: str) -> str:
            # new_shape = t.size()[:-1] + (heads, head_dim); t.view(new_shape).permute(0, 2, 1, 3)
            d0, d1 = _dims_of(b, t, sp, [0, 1])
            c_h = b.const(np.array([heads], np.int64), sp)
            c_d = b.const(np.array([head_dim], np.int64), sp)
            shape = b.node("Concat", [d0, d1, c_h, c_d], f"{sp}/Concat", axis=0)
            r = b.node("Reshape", [t, shape], f"{sp}/Reshape", allowzero=0)
            return b.node("Transpose", [r], f"{sp}/Transpose", perm=[0, 2, 1, 3])

        kh = to_heads(k)
        vh = to_heads(v)
        qh = to_heads(q)
        kt = b.node("Transpose", [kh], f"{sp}/Transpose", perm=[0, 1, 3, 2])  # key.transpose(-1, -2)
        scores = b.node("MatMul", [qh, kt], f"{sp}/MatMul")
        scale = b.const(np.float32(math.sqrt(head_dim)), sp)
        scores = b.node("Div", [scores, scale], f"{sp}/Div")
        scores = b.node("Add", [scores, ext_mask], f"{sp}/Add")
        probs = b.node("Softmax", [scores], f"{sp}/Softmax", axis=-1)
        probs = _dropout(b, probs, f"encoder.layer.{li}.attention.self.dropout")
        ctx = b.node("MatMul", [probs, vh], f"{sp}/MatMul")
        ctx = b.node("Transpose", [ctx], f"{sp}/Transpose", perm=[0, 2, 1, 3])
        d0, d1 = _dims_of(b, ctx, sp, [0, 1])
        c_all = b.const(np.array([hidden], np.int64), sp)
        shape = b.node("Concat", [d0, d1, c_all], f"{sp}/Concat", axis=0)
        ctx = b.node("Reshape", [ctx, shape], f"{sp}/Reshape", allowzero=0)

        a = _linear(b, ctx, f"{lp}.attention.output.dense", hidden, hidden)
        a = _dropout(b, a, f"{lp}.attention.output.dropout")
        a = b.node("Add", [a, h], f"{_scope(lp + '.attention.output')}/Add")
        a = _layer_norm(b, a, f"{lp}.attention.output.LayerNorm", hidden, decomposed=False)

        f = _linear(b, a, f"{lp}.intermediate.dense", hidden, inter)
        gs = f"{_scope(lp + '.intermediate.intermediate_act_fn')}"
        sqrt2 = b.const(np.float32(1.4142135381698608), gs)
        g = b.node("Div", [f, sqrt2], f"{gs}/Div")
        g = b.node("Erf", [g], f"{gs}/Erf")
        one = b.const(np.float32(1.0), gs)
        g = b.node("Add", [g, one], f"{gs}/Add")
        g = b.node("Mul", [f, g], f"{gs}/Mul")
        half = b.const(np.float32(0.5), gs)
        f = b.node("Mul", [g, half], f"{gs}/Mul")

        o = _linear(b, f, f"{lp}.output.dense", inter, hidden)
        o = _dropout(b, o, f"{lp}.output.dropout")
        o = b.node("Add", [o, a], f"{_scope(lp + '.output')}/Add")
        h = _layer_norm(b, o, f"{lp}.output.LayerNorm", hidden, decomposed=(li % 2 == 1))

    b.node("Identity", [h], "/Identity", outputs=["last_hidden_state"])
    b.output("last_hidden_state", _F, [batch, seq, hidden])
    return b.model


def bert_base(
    seq: int = 128, batch: int = 1, layers: int = 12, hidden: int = 768, heads: int = 12, *, seed: int = 110
) -> onnx.ModelProto:
    """BERT-base encoder (HF BertModel without the pooler), ~440 MB of weights at defaults."""
    return _bert("bert_base", seq, batch, layers, hidden, heads, seed)


def bert_small(
    seq: int = 128, batch: int = 1, layers: int = 4, hidden: int = 512, heads: int = 8, *, seed: int = 29
) -> onnx.ModelProto:
    """BERT-small (L=4, H=512, A=8; the google/bert_uncased_L-4_H-512_A-8 shape)."""
    return _bert("bert_small", seq, batch, layers, hidden, heads, seed)


# --------------------------------------------------------------------------------------
# Synthetic large graph
# --------------------------------------------------------------------------------------

_GEN_SHAPE = (4, 8)


def generated(n_nodes: int = 10_000, seed: int = 0) -> onnx.ModelProto:
    """A synthetic graph of about ``n_nodes`` nodes (within a few) on [4, 8] float32 tensors.

    Every live value stays in [-1, 1] (inputs go through Tanh first, every block is
    bounded), so the model runs in onnxruntime with finite outputs at any size. The mix:
    elementwise unary/binary ops, MatMul+Add+Tanh, Reshape/Transpose round trips,
    Transpose pairs that cancel, Shape->Gather->Unsqueeze->Concat->Reshape chains,
    constant-only subgraphs (foldable), Identity and same-dtype Cast (no-ops), duplicated
    Constant nodes and duplicated subexpressions (CSE), and dead branches (DCE). All
    values that are neither consumed nor deliberately dead are summed into ``output``.
    """
    if n_nodes < 16:
        raise ValueError("n_nodes must be >= 16")
    b = _Builder(f"generated_{n_nodes}", seed)
    rng = b.rng
    R, C = _GEN_SHAPE
    x_in = b.input("x", _F, [R, C])
    y_in = b.input("y", _F, [R, C])
    pool: list[str] = []
    used: set[str] = set()
    emitted: list[tuple[str, list[str], dict[str, Any]]] = []  # nodes making [4, 8] values

    def nn() -> int:
        return len(b.graph.node)

    last: list[tuple[str, list[str], dict[str, Any]]] = []

    def emit(op: str, ins: list[str], **attrs: Any) -> str:
        out = b.node(op, ins, f"/g/{op}", **attrs)
        used.update(ins)
        last[:] = [(op, ins, attrs)]
        return out

    def pick() -> str:
        window = min(len(pool), 48)
        return pool[len(pool) - 1 - int(rng.integers(window))]

    def cst(arr: np.ndarray) -> str:
        return b.const(arr.astype(np.float32), "/g")

    half = np.float32(0.5)
    pool.append(emit("Tanh", [x_in]))
    pool.append(emit("Tanh", [y_in]))
    unary = ["Relu", "Tanh", "Sigmoid", "Neg", "Abs", "Sin"]
    weights = [b.init(f"g.w{i}", b.uniform((C, C), -1.0, 1.0) / np.float32(C)) for i in range(8)]
    biases = [b.init(f"g.b{i}", b.uniform((C,), -0.5, 0.5)) for i in range(8)]
    kinds = [
        "unary", "unary", "avg", "mul", "sub", "matmul", "reshape", "transpose_pair", "reshape_pair",
        "shape_chain", "const_mul", "fold", "identity", "cast", "dead", "dup", "minmax", "sqrt",
    ]  # fmt: skip
    probs = np.array([3, 3, 3, 2, 1, 2, 1, 1, 1, 1, 2, 1, 1, 1, 1, 2, 1, 1], dtype=np.float64)
    probs /= probs.sum()
    dead_values: set[str] = set()
    reserve = 3  # final Constant, Sum, Mul

    while nn() < n_nodes - reserve:
        kind = kinds[int(rng.choice(len(kinds), p=probs))]
        a = pick()
        if kind == "unary":
            out = emit(unary[int(rng.integers(len(unary)))], [a])
        elif kind == "sqrt":
            out = emit("Sqrt", [emit("Abs", [a])])
        elif kind == "avg":
            s = emit("Add", [a, pick()])
            out = emit("Mul", [s, cst(np.full((), half))])
        elif kind == "sub":
            s = emit("Sub", [a, pick()])
            out = emit("Mul", [s, cst(np.full((), half))])
        elif kind == "mul":
            out = emit("Mul", [a, pick()])
        elif kind == "minmax":
            out = emit("Max" if rng.integers(2) else "Min", [a, pick()])
        elif kind == "matmul":
            i = int(rng.integers(len(weights)))
            m = emit("MatMul", [a, weights[i]])
            m = emit("Add", [m, biases[i]])
            out = emit("Tanh", [m])
        elif kind == "reshape":
            shp = b.const(np.array([C, R], np.int64), "/g")
            r = emit("Reshape", [a, shp])
            out = emit("Transpose", [r], perm=[1, 0])
        elif kind == "transpose_pair":
            t = emit("Transpose", [a], perm=[1, 0])
            out = emit("Transpose", [t], perm=[1, 0])
        elif kind == "reshape_pair":
            r = emit("Reshape", [a, b.const(np.array([R * C], np.int64), "/g")])
            out = emit("Reshape", [r, b.const(np.array([R, C], np.int64), "/g")])
        elif kind == "shape_chain":
            src = pick()
            shp = emit("Shape", [src])
            g = emit("Gather", [shp, b.const(np.int64(0), "/g")], axis=0)
            u = emit("Unsqueeze", [g, b.const(np.array([0], np.int64), "/g")])
            cc = emit("Concat", [u, b.const(np.array([-1], np.int64), "/g")], axis=0)
            out = emit("Reshape", [a, cc])
        elif kind == "const_mul":
            out = emit("Mul", [a, cst(b.uniform((C,), -1.0, 1.0))])
        elif kind == "fold":
            c1 = cst(b.uniform((C,), -0.5, 0.5))
            c2 = cst(b.uniform((C,), -0.5, 0.5))
            c = emit("Add", [c1, c2])
            c = emit("Neg", [c])
            out = emit("Mul", [a, c])
        elif kind == "identity":
            out = emit("Identity", [a])
        elif kind == "cast":
            out = emit("Cast", [a], to=_F)
        elif kind == "dead":
            d = a
            for _ in range(int(rng.integers(1, 5))):
                d = emit(unary[int(rng.integers(len(unary)))], [d])
            dead_values.add(d)
            if rng.integers(3) == 0:
                dead_values.add(cst(b.uniform((C,), -1.0, 1.0)))  # an unused Constant
            continue
        else:  # "dup": repeat an earlier node with the same inputs and attributes
            if not emitted:
                continue
            op, ins, attrs = emitted[int(rng.integers(len(emitted)))]
            out = emit(op, ins, **attrs)
        pool.append(out)
        if last[0][0] != "Identity":
            emitted.append(last[0])  # the node that made `out`: a [4, 8] float value

    live = [v for v in pool if v not in used and v not in dead_values]
    if not live:
        live = [pool[-1]]
    s = b.node("Sum", live, "/g/Sum")
    inv = cst(np.full((), 1.0 / len(live)))
    b.node("Mul", [s, inv], "/g/Mul", outputs=["output"])
    b.output("output", _F, [R, C])
    return b.model


# --------------------------------------------------------------------------------------
# Registry and inputs
# --------------------------------------------------------------------------------------

BENCH_MODELS: dict[str, Callable[[], onnx.ModelProto]] = {
    "resnet18": resnet18,
    "resnet50": resnet50,
    "mobilenet_v2": mobilenet_v2,
    "bert_small": bert_small,
    "bert_base": bert_base,
    "generated_10k": generated,
}


def synth_inputs(model: onnx.ModelProto, seed: int = 0) -> dict[str, np.ndarray]:
    """Deterministic inputs for a bench model: float inputs ~ N(0, 1); int64 ``input_ids``
    in [0, vocab) (vocab read from the word-embedding initializer); ``attention_mask`` all
    ones except the last quarter of each row (padding)."""
    rng = np.random.default_rng(seed)
    vocab = _BERT_VOCAB
    for t in model.graph.initializer:
        if t.name == "embeddings.word_embeddings.weight":
            vocab = int(t.dims[0])
    feeds: dict[str, np.ndarray] = {}
    for vi in model.graph.input:
        tt = vi.type.tensor_type
        shape = [d.dim_value if d.HasField("dim_value") else 1 for d in tt.shape.dim]
        if tt.elem_type == _F:
            feeds[vi.name] = rng.standard_normal(shape, dtype=np.float32)
        elif vi.name == "attention_mask":
            m = np.ones(shape, np.int64)
            m[..., shape[-1] - shape[-1] // 4 :] = 0
            feeds[vi.name] = m
        elif tt.elem_type == _I64:
            feeds[vi.name] = rng.integers(0, vocab, size=shape, dtype=np.int64)
        else:
            raise ValueError(f"no synthetic input for {vi.name} (elem_type {tt.elem_type})")
    return feeds
