"""Quantization sites and the QDQ rewrite of the `quantize` pass (`passes.quantize.static`).

What `apply` does to the graph (onnxruntime's QDQ format, which onnxruntime and the codegen both read):
- Sites are the weighted ops: Conv, ConvTranspose, Gemm, MatMul, Lepton's fused Conv/Gemm +
  activation ops (they stay fused) and com.microsoft Attention (its packed Q/K/V projection, a
  MatMul). A site is left float when its name matches an `exclude` glob, when its operands are not float32, or when the accuracy budget returns it (`passes.quantize.budget`);
  a node that already reads a DequantizeLinear (a model quantized before, by Lepton or onnxruntime)
  is left as it is, so quantizing twice changes nothing.
- Each float32 activation a site reads goes through one `QuantizeLinear -> DequantizeLinear` pair
  (shared by all the sites reading it; other readers keep the float tensor), with parameters from
  the calibrated range (`passes.quantize.params.activation_params`), or, quantized dynamically,
  through `DynamicQuantizeLinear -> DequantizeLinear` (uint8 over each call's range).
- Each constant float32 weight becomes an int8 initializer read by a `DequantizeLinear`: symmetric,
  per output channel (Conv axis 0, ConvTranspose axis 1 when group is 1, Gemm by transB, MatMul the
  last axis) at opset >= 13, else per tensor. Biases stay float32.
- A Gather of a large constant float32 table (an embedding, `MIN_TABLE` elements or more) reads it as
  int8 codes through a `DequantizeLinear`, per gathered slice (one scale per row) at opset >= 13, in
  every scope; its output stays float32. Gathers of activations (shape arithmetic) are not sites.
- Weight-only (`scope="weights"`): the weights as above, every activation stays float32; or, with
  `Weights(bits=4, block_size=B)`, each weight as int4 codes in [-7, 7] read by a blocked `DequantizeLinear`
  (opset 21): one scale per B consecutive elements along the reduction axis (Conv's input channels, a MatMul's
  rows, an embedding's columns), no zero point.
- Graph outputs are never quantized; nothing else changes. A graph with no site is left untouched
  (`modified` false) and calibration does not run.
"""

from __future__ import annotations

import fnmatch
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
from onnx import TensorProto as T

from lepton_ir import Graph, Node, Value
from lepton_ir.constants import constant_value
from lepton_ir.functions import DOMAIN
from lepton_ir.rewriter import Builder, Rewriter

from passes.fusion.activation import FUSED_OPS
from passes.quantize.params import ActivationType, QParams, activation_params, quantize_block_weight, quantize_weight

WEIGHTED = frozenset({"Conv", "ConvTranspose", "Gemm", "MatMul"})
ALREADY = "already quantized (it reads a DequantizeLinear)"
"""The reason `find_sites` gives for a weighted node quantized before: not a node left float."""


#: A Gather of a constant float table with at least this many elements is quantized (an embedding table:
#: weights only, its output stays float); smaller tables and Gathers of activations are not sites.
MIN_TABLE = 4096


@dataclass(frozen=True)
class Site:
    """One node to quantize: which of its inputs are activations, and its constant weight (input
    `weight_input`: 1, or 0 for a Gather's table) if any, with the axis of its per-channel scales and the
    axis its blocks run along (the one the op reduces over)."""

    node: Node
    activations: tuple[int, ...]
    weight_axis: int | None | Literal["none"]  # "none": the node has no constant weight
    weight_input: int = 1
    block_axis: int = 0


@dataclass(frozen=True)
class Weights:
    """How constant weights are stored: int8 (per channel), or with `bits=4` int4 in blocks of `block_size`."""

    bits: Literal[8, 4] = 8
    block_size: int = 0


def kind(node: Node) -> str | None:
    """The weighted op `node` computes (its producer, for a fused op), or None."""
    if not node.domain and node.op_type in WEIGHTED:
        return node.op_type
    if node.domain == DOMAIN and node.op_type in FUSED_OPS:
        return FUSED_OPS[node.op_type][0]
    if node.domain == "com.microsoft" and node.op_type == "Attention":  # `fuse-attention`'s packed projection
        return "MatMul"  # x [..., H] @ W [H, 3H]: weight input 1, one scale per output column
    return None


Scope = Literal["static", "dynamic", "weights"]
"""What is quantized: activations and weights (static int8), Gemm/MatMul with a constant weight and activations
per call (dynamic), or constant weights only, activations staying float (weight-only)."""


def find_sites(graph: Graph, exclude: Iterable[str] = (), *, scope: Scope = "static") -> tuple[list[Site], dict[str, str]]:
    """The sites of the main graph in graph order, and the weighted nodes left float with the reason (`Scope`)."""
    patterns = tuple(exclude)
    per_channel = graph.opset_imports.get("", 1) >= 13
    sites: list[Site] = []
    skipped: dict[str, str] = {}
    for node in graph:
        op = kind(node)
        if op is None:
            table = _table_site(graph, node, patterns, per_channel)
            if table is not None:
                sites.append(table)
            continue
        if any(fnmatch.fnmatchcase(node.name, p) for p in patterns):
            skipped[node.name] = "excluded"
            continue
        if any(v is not None and v.producer is not None and v.producer.op_type == "DequantizeLinear"
               and not v.producer.domain for v in node.inputs[:2]):
            skipped[node.name] = ALREADY
            continue
        x = node.inputs[0]
        if x is None or x.dtype != T.FLOAT:
            skipped[node.name] = "its input is not float32"
            continue
        w = node.inputs[1] if len(node.inputs) > 1 else None
        if w is None or w.dtype != T.FLOAT:
            skipped[node.name] = "its second operand is not float32"
            continue
        weight = constant_value(graph, w)
        if scope == "dynamic" and (op not in ("Gemm", "MatMul") or weight is None):
            skipped[node.name] = "dynamic quantization takes Gemm/MatMul with a constant weight"
            continue
        if scope == "weights" and weight is None:
            skipped[node.name] = "weight-only quantization takes a constant weight"
            continue
        if weight is None:
            sites.append(Site(node, (0, 1), "none"))  # activation x activation (attention scores)
            continue
        axis = _weight_axis(node, op, weight.ndim) if per_channel else None
        sites.append(Site(node, () if scope == "weights" else (0,), axis, block_axis=_reduce_axis(node, op, weight.ndim)))
    return sites, skipped


def _table_site(graph: Graph, node: Node, patterns: tuple[str, ...], per_channel: bool) -> Site | None:
    """The site of a Gather reading a large constant float32 table (an embedding), quantized per gathered
    slice (one scale per row of an embedding) at opset >= 13; None for any other node, an excluded one, or a
    table quantized before."""
    if node.domain or node.op_type != "Gather" or any(fnmatch.fnmatchcase(node.name, p) for p in patterns):
        return None
    table = node.inputs[0]
    if table is None or table.dtype != T.FLOAT:
        return None
    value = constant_value(graph, table)
    if value is None or value.ndim < 2 or value.size < MIN_TABLE:
        return None
    axis = int(node.attr("axis", 0)) % value.ndim
    columns = value.ndim - 1 if axis != value.ndim - 1 else value.ndim - 2  # blocks run within each gathered slice
    return Site(node, (), axis if per_channel else None, weight_input=0, block_axis=columns)


def _weight_axis(node: Node, op: str, rank: int) -> int | None:
    if op == "Conv":
        return 0
    if op == "ConvTranspose":
        return 1 if int(node.attr("group", 1)) == 1 else None
    if op == "Gemm":
        return 0 if int(node.attr("transB", 0)) else 1
    return rank - 1 if rank >= 1 else None  # MatMul: one scale per output column


def _reduce_axis(node: Node, op: str, rank: int) -> int:
    """The axis of the weight `op` sums over (where int4 blocks run)."""
    if op == "Conv":
        return 1
    if op == "ConvTranspose":
        return 0
    if op == "Gemm":
        return 1 if int(node.attr("transB", 0)) else 0
    return rank - 2 if rank >= 2 else 0  # MatMul (and Attention's packed weight): the rows


def activation_names(sites: Sequence[Site]) -> list[str]:
    """The activation tensors `sites` read, each once, in first-use order."""
    names: dict[str, None] = {}
    for s in sites:
        for i in s.activations:
            v = s.node.inputs[i]
            assert v is not None
            names.setdefault(v.name, None)
    return list(names)


@dataclass(frozen=True)
class Activations:
    """How activations are quantized: with parameters from calibrated `ranges` (by tensor name) as `kind`, or,
    with `ranges` None, per call by `DynamicQuantizeLinear` (uint8, the range of each call's tensor)."""

    ranges: Mapping[str, tuple[float, float]] | None
    kind: ActivationType = "uint8"


def apply(graph: Graph, sites: Sequence[Site], activations: Activations, weights: Weights = Weights()) -> dict[str, int]:
    """Rewrite `sites` into QDQ form, weights stored as `weights` says; counts by kind."""
    rw = Rewriter()
    b = Builder(graph, "quant")
    dq: dict[int, Value] = {}  # float value id -> its dequantized copy
    dequantized: dict[tuple[int, int | None], Value] = {}  # (weight value id, axis) -> its DequantizeLinear
    blocked = weights.bits == 4
    stats = {"sites": 0, "activations": 0, "weights": 0, ("blocked_weights" if blocked else "per_channel_weights"): 0}
    for s in sites:
        node = s.node
        for i in s.activations:
            v = node.inputs[i]
            assert v is not None
            if id(v) not in dq:
                ranges = activations.ranges
                dq[id(v)] = _dynamic_qdq(b, v) if ranges is None else _qdq(b, v, activation_params(*ranges[v.name],
                                                                                                   activations.kind))
                stats["activations"] += 1
        if s.weight_axis != "none":
            w = node.inputs[s.weight_input]
            assert w is not None
            key = (id(w), s.block_axis if blocked else s.weight_axis)
            if key not in dequantized:
                arr = constant_value(graph, w)
                assert arr is not None
                if blocked:
                    codes, p = quantize_block_weight(arr, s.block_axis, weights.block_size)
                    dequantized[key] = b.op("DequantizeLinear", [b.const(codes, "w"), b.const(p.scale, "scale")],
                                            {"axis": s.block_axis, "block_size": weights.block_size}, dtype=T.FLOAT,
                                            shape=w.shape)
                    stats["blocked_weights"] += 1
                else:
                    codes, p = quantize_weight(arr, s.weight_axis)
                    dequantized[key] = _dequantize(b, b.const(codes, "w"), p, w.shape)
                    stats["per_channel_weights"] += int(s.weight_axis is not None)
                stats["weights"] += 1
        new_nodes = list(b.nodes)
        b.nodes.clear()
        if new_nodes:
            rw.insert_before(node, new_nodes)
        for i in s.activations:
            rw.set_input(node, i, dq[id(node.inputs[i])])
        if s.weight_axis != "none":
            w = node.inputs[s.weight_input]
            rw.set_input(node, s.weight_input, dequantized[(id(w), s.block_axis if blocked else s.weight_axis)])
        stats["sites"] += 1
    return stats


def _qdq(b: Builder, v: Value, p: QParams) -> Value:
    scale, zp = b.const(p.scale, "scale"), b.const(p.zero_point, "zero_point")
    q = b.QuantizeLinear(v, scale, zp, dtype=T.UINT8 if p.zero_point.dtype == np.uint8 else T.INT8, shape=v.shape)
    return _dequantize(b, q, p, v.shape, scale, zp)


def _dynamic_qdq(b: Builder, v: Value) -> Value:
    q, scale, zp = b.op("DynamicQuantizeLinear", [v], num_outputs=3, dtypes=[T.UINT8, T.FLOAT, T.UINT8],
                        shapes=[v.shape, (), ()])
    return b.op("DequantizeLinear", [q, scale, zp], dtype=T.FLOAT, shape=v.shape)


def _dequantize(b: Builder, q: Value, p: QParams, shape: Any, scale: Value | None = None,
                zp: Value | None = None) -> Value:
    scale = scale or b.const(p.scale, "scale")
    zp = zp or b.const(p.zero_point, "zero_point")
    attrs = {"axis": p.axis} if p.axis is not None else {}
    return b.op("DequantizeLinear", [q, scale, zp], attrs, dtype=T.FLOAT, shape=shape)
