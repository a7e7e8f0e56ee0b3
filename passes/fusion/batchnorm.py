"""`fuse-batchnorm`: fold an inference-mode BatchNormalization into the Conv that feeds it.

Rule (default domain, every graph and subgraph): `BatchNormalization(Conv(x, W[, b]), scale,
B, mean, var)` with W, b and all four BN inputs constant, the Conv output read by nothing
but the BN, the BN in inference form (no `training_mode=1`, no used running-stat outputs),
and the BN's channel count equal to the Conv's output channels. It becomes
`Conv(x, W', b')` with, per output channel k, `s = scale[k] / sqrt(var[k] + epsilon)`,
`W'[k] = W[k] * s` and `b'[k] = (b[k] - mean[k]) * s + B[k]` (computed in float64, stored in
W's dtype). The original W and b stay for other readers; `eliminate-dead-code` drops them
otherwise. Results differ from the unfused graph only by rounding (the same fusion
onnxruntime applies at session creation).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import numpy as np

from lepton_ir.rewriter import Rewriter
from lepton_ir import Graph, Node

from passes.base import register
from passes.rewrite import Match, RewritePass, Rule, constant_value, failed, matched, replace_node_output


class ConvBatchNorm(Rule):
    """`BatchNormalization(Conv(x, W, b))` -> `Conv(x, W', b')`."""

    name = "batchnorms_fused"
    op_types = ("BatchNormalization",)

    def check(self, node: Node, graph: Graph) -> Match:
        if int(node.attr("training_mode", 0)) != 0:
            return failed("training-mode BatchNormalization")
        if any(o.uses or graph.is_graph_output(o) for o in node.outputs[1:]):
            return failed("running statistics outputs are used")
        if len(node.inputs) != 5 or node.inputs[0] is None:
            return failed("BatchNormalization without its five inputs")
        conv = node.inputs[0].producer
        if conv is None or conv.op_type != "Conv" or conv.domain:
            return failed("input is not produced by a Conv")
        c = node.inputs[0]
        if len(c.uses) != 1 or conv.graph.is_graph_output(c) or conv.graph is not graph:
            return failed("the Conv output has other readers")
        w = constant_value(graph, conv.inputs[1] if len(conv.inputs) > 1 else None)
        if w is None or w.ndim < 3 or w.dtype.kind != "f":
            return failed("the Conv weight is not a constant float tensor")
        b = None
        if len(conv.inputs) > 2 and conv.inputs[2] is not None:
            b = constant_value(graph, conv.inputs[2])
            if b is None:
                return failed("the Conv bias is not constant")
        params = [constant_value(graph, v) for v in node.inputs[1:]]
        if any(p is None for p in params):
            return failed("a BatchNormalization parameter is not constant")
        k = w.shape[0]
        if any(p.shape != (k,) for p in params) or (b is not None and b.shape != (k,)):  # type: ignore[union-attr]
            return failed("parameter shapes do not match the Conv's output channels")
        scale, bias, mean, var = (p.astype(np.float64) for p in params)  # type: ignore[union-attr]
        s = scale / np.sqrt(var + float(node.attr("epsilon", 1e-5)))
        w2 = (w.astype(np.float64) * s.reshape((k,) + (1,) * (w.ndim - 1))).astype(w.dtype)
        b0 = np.zeros(k) if b is None else b.astype(np.float64)
        b2 = ((b0 - mean) * s + bias).astype(w.dtype)
        return matched(conv=conv, weight=w2, bias=b2)

    def rewrite(self, rw: Rewriter, node: Node, m: Match) -> None:
        graph = node.graph
        assert graph is not None
        conv: Node = m["conv"]
        prefix = conv.name or "conv"
        w = graph.add_constant(m["weight"], prefix + "_W_bn")
        b = graph.add_constant(m["bias"], prefix + "_B_bn")
        inputs = list(conv.inputs) + [None] * (3 - len(conv.inputs))
        inputs[1], inputs[2] = w, b
        conv.set_inputs(inputs)
        replace_node_output(graph, node, conv.outputs[0])


@register
@dataclass(frozen=True)
class FuseBatchNorm(RewritePass):
    """Inference BatchNormalization after a Conv folds into the Conv's weights and bias."""

    name: ClassVar[str] = "fuse-batchnorm"
    summary: ClassVar[str] = "fold inference BatchNormalization into the preceding Conv's weight and bias"
    rules: ClassVar[tuple[Rule, ...]] = (ConvBatchNorm(),)
