"""Relax for the transformer fusions' ops (`passes.fusion.attention`, `.layernorm`, `.gelu`).

The fusions leave onnxruntime contrib ops (domain com.microsoft) where ONNX has no op or the model's opset
lacks it. TVM 0.27's frontend converts by op type, whatever the domain; its converters for these ops cover
part of them only (its `Attention` takes neither `scale` nor a broadcast `attention_bias`, it has no
`MultiHeadAttention`, its `SkipLayerNormalization` asserts a beta and a bias and returns no sum output), so
Lepton converts them here:

- `Attention(x, W, b, , , attention_bias)` (`num_heads`, `scale`, `qkv_hidden_sizes`): x @ W + b split into
  Q, K, V, then attention; `MultiHeadAttention(q, k, v, , , attention_bias)`: attention of the three.
- `SkipLayerNormalization(x, skip, gamma[, beta[, bias]])`: `nn.layer_norm(x + skip [+ bias])` over the last
  axis; outputs mean/inv_std_var are placeholders (the fusion never reads them), the 4th is the sum.
- `Gelu` (contrib: erf; ONNX opset 20: `approximate`) -> `nn.gelu` / `nn.gelu_tanh`.

Attention is lowered one of two ways (`LOWERING["attention"]`):
- `"kernel"`: `relax.nn.attention` (BSNH, bias, scale), which TVM legalizes to one TE function (batch
  matmul, softmax, batch matmul in one kernel);
- `"ops"`: the same as Relax matmul/softmax/matmul with the head transposes, which TVM legalizes and fuses
  op by op, so each matmul gets Lepton's matmul schedule.
Layer normalization (SkipLayerNormalization, and ONNX LayerNormalization over the last axis) likewise
(`LOWERING["layernorm"]`): `"kernel"` (`nn.layer_norm`, what TVM's own LayerNormalization converter emits)
or `"ops"` (mean, centered variance, rsqrt, scale and shift as Relax ops). The packed projection of
`Attention` is one matmul and a split (`LOWERING["projection"] = "packed"`) or three matmuls by the weight's
column slices (`"separate"`).

Chosen by measurement (bench/RESULTS.md, "Transformer fusions"; BERT/DistilBERT at BERT-Tiny shape, sequence
64, both exporters, x86 batch 1; `python -m bench.fusion_lowering`): attention "ops" (the one-kernel form
took 1.27-1.45x the time of the whole model with "ops"; single-threaded 1.5-3.2x), layer norm "kernel" (2-4%
faster than "ops" in every model on the quiet machine, within +-7% either way on the busy one; outputs equal,
both normalize with the variance of the centered values), projection
"separate" (at or below "packed" in 7 of 8 model x thread-count runs, by up to 15%: the split's copies
cost more than two extra matmul calls at these sizes). A packed bias of zeros (what the fusion adds where
the model has none: onnxruntime's kernel needs one) is not added.
"""

from __future__ import annotations

from typing import Any

import tvm
from tvm import relax, tirx

from lepton_ir import Node

CONTRIB = "com.microsoft"

#: The contrib op types converted here.
OPS = frozenset({"Attention", "MultiHeadAttention", "SkipLayerNormalization", "Gelu"})

#: How attention and layer normalization are lowered (see the module docstring).
LOWERING: dict[str, str] = {"attention": "ops", "layernorm": "kernel", "projection": "separate"}


def converts(node: Node) -> bool:
    """Whether `node` is a contrib op this module converts."""
    return node.domain == CONTRIB and node.op_type in OPS


def convert(bb: relax.BlockBuilder, op_name: str, inputs: list, attrs: dict) -> relax.Expr | None:  # type: ignore[type-arg]
    """The Relax code of one op (None: not one of `OPS`, or the ONNX `Attention`, which has no `num_heads`)."""
    if op_name == "Attention" and "num_heads" in attrs:
        return _attention_packed(bb, inputs, attrs)
    if op_name == "MultiHeadAttention":
        return _mha(bb, inputs, attrs)
    if op_name == "SkipLayerNormalization":
        return _skip_layer_norm(bb, inputs, attrs)
    if op_name == "LayerNormalization" and LOWERING["layernorm"] == "ops":
        return _onnx_layer_norm(bb, inputs, attrs)
    if op_name == "Gelu":
        approximate = attrs.get("approximate", b"none")
        approximate = approximate.decode() if isinstance(approximate, bytes) else str(approximate)
        if approximate not in ("none", "tanh"):
            raise ValueError(f"Gelu approximate={approximate!r} is not none or tanh")
        return relax.op.nn.gelu_tanh(inputs[0]) if approximate == "tanh" else relax.op.nn.gelu(inputs[0])
    return None


def _dims(x: relax.Expr) -> list[int]:
    return [int(d) for d in x.ty.shape.values]  # static shapes only: the fusions require them


def _input(inputs: list, i: int) -> Any:  # type: ignore[type-arg]
    return inputs[i] if len(inputs) > i else None


def _attention_packed(bb: relax.BlockBuilder, inputs: list, attrs: dict) -> relax.Expr:  # type: ignore[type-arg]
    x, w, b = inputs[0], inputs[1], _input(inputs, 2)
    for i, what in ((3, "mask_index"), (4, "past"), (6, "past_sequence_length")):
        if _input(inputs, i) is not None:
            raise ValueError(f"Attention with {what} is not supported")
    if int(attrs.get("unidirectional", 0)):
        raise ValueError("Attention with unidirectional=1 is not supported")
    n = int(attrs["num_heads"])
    wd = _dims(w)
    sizes = [int(s) for s in attrs.get("qkv_hidden_sizes", ())] or [wd[1] // 3] * 3
    if isinstance(b, tvm.ir.GenericConst) and not b.value.numpy().any():
        b = None  # the zeros the fusion adds where the model had no bias (onnxruntime's kernel needs one)
    bounds = [0, sizes[0], sizes[0] + sizes[1], sum(sizes)]
    if LOWERING["projection"] == "packed":
        qkv = bb.normalize(relax.op.matmul(x, w))
        if b is not None:
            qkv = bb.normalize(relax.op.add(qkv, b))
        parts = bb.normalize(relax.op.split(qkv, bounds[1:3], axis=-1))
        q, k, v = (bb.normalize(relax.TupleGetItem(parts, i)) for i in range(3))
    else:  # one matmul per projection, the weight's columns sliced (constants: folded at compile time)
        q, k, v = (_project(bb, x, w, b, lo, hi) for lo, hi in zip(bounds, bounds[1:], strict=False))
    out = _attend(bb, q, k, v, _input(inputs, 5), n, attrs)
    return relax.Tuple([out, relax.const(0, "float32")])


def _project(bb: relax.BlockBuilder, x: relax.Expr, w: relax.Expr, b: relax.Expr | None, lo: int, hi: int) -> relax.Expr:
    y = bb.normalize(relax.op.matmul(x, relax.op.strided_slice(w, [1], [lo], [hi])))
    return y if b is None else bb.normalize(relax.op.add(y, relax.op.strided_slice(b, [0], [lo], [hi])))


def _mha(bb: relax.BlockBuilder, inputs: list, attrs: dict) -> relax.Expr:  # type: ignore[type-arg]
    for i, what in ((3, "bias"), (4, "key_padding_mask"), (6, "past_key"), (7, "past_value")):
        if _input(inputs, i) is not None:
            raise ValueError(f"MultiHeadAttention with {what} is not supported")
    if int(attrs.get("unidirectional", 0)):
        raise ValueError("MultiHeadAttention with unidirectional=1 is not supported")
    q, k, v = inputs[0], inputs[1], inputs[2]
    return _attend(bb, q, k, v, _input(inputs, 5), int(attrs["num_heads"]), attrs)


def _attend(bb: relax.BlockBuilder, q: relax.Expr, k: relax.Expr, v: relax.Expr, bias: relax.Expr | None, n: int,
            attrs: dict) -> relax.Expr:  # type: ignore[type-arg]
    """softmax(scale * Q K^T + bias) V for q [B, S, N*H], k [B, T, N*H], v [B, T, N*Hv] -> [B, S, N*Hv]."""
    bsz, s, d = _dims(q)
    t = _dims(k)[1]
    dv = _dims(v)[2]
    h, hv = d // n, dv // n
    scale = float(attrs["scale"]) if "scale" in attrs else h ** -0.5
    dtype = q.ty.dtype
    q4 = bb.normalize(relax.op.reshape(q, [bsz, s, n, h]))
    k4 = bb.normalize(relax.op.reshape(k, [bsz, t, n, h]))
    v4 = bb.normalize(relax.op.reshape(v, [bsz, t, n, hv]))
    if LOWERING["attention"] == "kernel":
        o = bb.normalize(relax.op.nn.attention(q4, k4, v4, bias, scale=tirx.FloatImm("float32", scale)))
        return relax.op.reshape(o, [bsz, s, n * hv])
    qh = bb.normalize(relax.op.permute_dims(q4, [0, 2, 1, 3]))
    kt = bb.normalize(relax.op.permute_dims(k4, [0, 2, 3, 1]))
    vh = bb.normalize(relax.op.permute_dims(v4, [0, 2, 1, 3]))
    scores = bb.normalize(relax.op.multiply(relax.op.matmul(qh, kt), relax.const(scale, dtype)))
    if bias is not None:
        scores = bb.normalize(relax.op.add(scores, bias))
    probs = bb.normalize(relax.op.nn.softmax(scores, axis=-1))
    o = bb.normalize(relax.op.matmul(probs, vh))
    return relax.op.reshape(relax.op.permute_dims(o, [0, 2, 1, 3]), [bsz, s, n * hv])


def _skip_layer_norm(bb: relax.BlockBuilder, inputs: list, attrs: dict) -> relax.Expr:  # type: ignore[type-arg]
    x, skip, gamma = inputs[0], inputs[1], inputs[2]
    beta, bias = _input(inputs, 3), _input(inputs, 4)
    eps = float(attrs.get("epsilon", 1e-12))
    total = bb.normalize(relax.op.add(x, skip))
    if bias is not None:
        total = bb.normalize(relax.op.add(total, bias))
    out = layer_norm(bb, total, gamma, beta, eps)
    placeholder = relax.const(0, "float32")
    return relax.Tuple([out, placeholder, placeholder, total])


def _onnx_layer_norm(bb: relax.BlockBuilder, inputs: list, attrs: dict) -> relax.Expr | None:  # type: ignore[type-arg]
    """ONNX LayerNormalization over the last axis as Relax ops (None: another axis, left to TVM's converter)."""
    x = inputs[0]
    rank = len(x.ty.shape.values)
    if int(attrs.get("axis", -1)) % rank != rank - 1:
        return None
    out = layer_norm(bb, x, inputs[1], _input(inputs, 2), float(attrs.get("epsilon", 1e-5)))
    placeholder = relax.const(0, "float32")
    return relax.Tuple([out, placeholder, placeholder])


def layer_norm(bb: relax.BlockBuilder, x: relax.Expr, gamma: relax.Expr, beta: relax.Expr | None,
               eps: float) -> relax.Expr:
    """Layer normalization over the last axis, as `LOWERING["layernorm"]` says."""
    dtype = x.ty.dtype
    if LOWERING["layernorm"] == "kernel":
        if beta is None:
            beta = relax.op.zeros_like(gamma)
        return relax.op.nn.layer_norm(x, gamma, beta, [-1], eps)
    mean = bb.normalize(relax.op.mean(x, axis=[-1], keepdims=True))
    centered = bb.normalize(relax.op.subtract(x, mean))
    var = bb.normalize(relax.op.mean(relax.op.multiply(centered, centered), axis=[-1], keepdims=True))
    inv = bb.normalize(relax.op.rsqrt(relax.op.add(var, relax.const(eps, dtype))))
    y = relax.op.multiply(relax.op.multiply(centered, inv), gamma)
    return y if beta is None else relax.op.add(y, beta)
