"""`unroll-scan`: replace a `Scan` whose sequence length is static by its body, once per step.

TVM 0.27's ONNX frontend has no converter for Scan (nor for control flow beyond If). ONNX
writes recurrences with it (LinearAttention's function body, exported RNN loops). When the
length of the scanned axis is a static int, the Scan is the body repeated that many times:

- step t reads slice t of every scan input (`Gather(x, t, axis)`; from the end for a reverse
  scan input) and the state values of step t-1 (the initial states at t = 0);
- the final states are the states after the last step;
- scan output k stacks the step values along its axis (`Unsqueeze` + `Concat`), in step order
  or reversed for a reverse scan output.

Invariants: outputs are exactly what ONNX's Scan (opset 9 and later) computes (the same ops
on the same values, in the same order); the Scan's outputs keep their names and types; body
initializers become initializers of the Scan's graph, added once. Not unrolled (counted in
`stats`): opset-8 Scan (batched, with sequence lengths), a scanned axis that is not a static
int or is 0, bodies holding subgraphs, and unrollings past `max_nodes` body copies.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from typing import ClassVar

import numpy as np

from lepton_ir import Graph, Node, Value
from lepton_ir.rewriter import Builder, Rewriter

from passes.base import Pass, PassContext, PassResult, register


@register
@dataclass(frozen=True)
class UnrollScan(Pass):
    """Unroll Scan nodes over a static sequence length (at most `max_nodes` nodes per Scan)."""

    name: ClassVar[str] = "unroll-scan"
    summary: ClassVar[str] = "replace Scan over a static sequence length by copies of its body"

    max_nodes: int = 4096

    def run(self, graph: Graph, ctx: PassContext) -> PassResult:
        opset = graph.root().opset_imports.get("", 1)
        stats: Counter[str] = Counter()
        rw = Rewriter()
        for g in list(graph.all_graphs()):
            for node in list(g):
                if node.op_type != "Scan" or node.domain or node.graph is not g:
                    continue
                why = self._why_not(node, opset)
                if why:
                    stats[f"skipped_{why}"] += 1
                    continue
                _unroll(rw, g, node, opset)
                stats["Scan"] += 1
        return PassResult(stats["Scan"] > 0, dict(stats))

    def _why_not(self, node: Node, opset: int) -> str | None:
        if opset < 9:
            return "opset8"
        body = node.attr("body")
        if body is None or any(True for n in body for _ in n.subgraphs()):
            return "nested_subgraph"
        steps = _steps(node)
        if steps is None:
            return "dynamic_length"
        if steps == 0:
            return "empty"
        if steps * max(len(body), 1) > self.max_nodes:
            return "too_long"
        return None


def _scan_axes(node: Node) -> tuple[int, list[int], list[int]]:
    """(number of scan inputs, their axes normalized, their directions)."""
    m = int(node.attr("num_scan_inputs"))
    axes = list(node.attr("scan_input_axes") or [0] * m)
    dirs = list(node.attr("scan_input_directions") or [0] * m)
    xs = node.inputs[len(node.inputs) - m:]
    out = []
    for a, x in zip(axes, xs, strict=True):
        rank = len(x.shape) if x is not None and x.shape is not None else None
        out.append(a + rank if a < 0 and rank is not None else a)
    return m, out, dirs


def _steps(node: Node) -> int | None:
    """The static sequence length (the scanned dim of every scan input), or None."""
    m, axes, _ = _scan_axes(node)
    xs = node.inputs[len(node.inputs) - m:]
    lengths = set()
    for x, a in zip(xs, axes, strict=True):
        if x is None or x.shape is None or not 0 <= a < len(x.shape) or not isinstance(x.shape[a], int):
            return None
        lengths.add(x.shape[a])
    return lengths.pop() if len(lengths) == 1 else None


def _unroll(rw: Rewriter, g: Graph, node: Node, opset: int) -> None:
    body: Graph = node.attr("body")
    m, in_axes, in_dirs = _scan_axes(node)
    n_state = len(node.inputs) - m
    n_scan_out = len(body.outputs) - n_state
    out_axes = list(node.attr("scan_output_axes") or [0] * n_scan_out)
    out_dirs = list(node.attr("scan_output_directions") or [0] * n_scan_out)
    steps = _steps(node)
    assert steps is not None
    b = Builder(g, node.name or "scan")

    consts = {id(v): b.const(v.const_value.numpy(), v.name) for v in body.initializers.values()}
    states = list(node.inputs[:n_state])
    xs = node.inputs[n_state:]
    step_values: list[list[Value]] = [[] for _ in range(n_scan_out)]
    for t in range(steps):
        env: dict[int, Value] = dict(consts)
        for formal, v in zip(body.inputs[:n_state], states, strict=True):
            env[id(formal)] = v
        index: dict[int, Value] = {}
        for j, (x, a, d) in enumerate(zip(xs, in_axes, in_dirs, strict=True)):
            if d not in index:
                index[d] = b.const(np.array(steps - 1 - t if d else t, dtype=np.int64), f"t{t}")
            shape = tuple(s for k, s in enumerate(x.shape) if k != a) if x.shape is not None else None
            env[id(body.inputs[n_state + j])] = b.Gather(x, index[d], dtype=x.dtype, shape=shape, axis=a)
        for bn in body:
            inputs = [None if v is None else env.get(id(v), v) for v in bn.inputs]
            outs = b.op(bn.op_type, inputs, bn.attributes, domain=bn.domain, num_outputs=len(bn.outputs),
                        dtypes=[o.dtype for o in bn.outputs], shapes=[o.shape for o in bn.outputs])
            b.nodes[-1].overload = bn.overload
            for o, c in zip(bn.outputs, outs if len(bn.outputs) > 1 else (outs,), strict=True):
                env[id(o)] = c
        results = [env.get(id(v), v) for v in body.outputs]
        states = results[:n_state]
        for k, v in enumerate(results[n_state:]):
            step_values[k].append(v)

    finals: list[Value] = list(states)
    for k, values in enumerate(step_values):
        v0 = body.outputs[n_state + k]
        rank = len(v0.shape) if v0.shape is not None else None
        axis = out_axes[k] + (rank + 1) if out_axes[k] < 0 and rank is not None else out_axes[k]
        if out_dirs[k]:
            values = values[::-1]
        shape1 = None if v0.shape is None else (*v0.shape[:axis], 1, *v0.shape[axis:])
        parts = []
        for v in values:
            if opset >= 13:
                parts.append(b.Unsqueeze(v, b.const(np.array([axis], dtype=np.int64), "axes"), dtype=v0.dtype, shape=shape1))
            else:
                parts.append(b.Unsqueeze(v, dtype=v0.dtype, shape=shape1, axes=[axis]))
        if len(parts) == 1:
            finals.append(parts[0])
        else:
            shape = None if shape1 is None else (*shape1[:axis], steps, *shape1[axis + 1:])
            finals.append(b.op("Concat", parts, {"axis": axis}, dtype=v0.dtype, shape=shape))

    # Every Scan output gets a value produced by a new node, and each value serves one output
    # (so each takes its output's name).
    ours = {id(o) for n in b.nodes for o in n.outputs}
    taken: set[int] = set()
    for k, v in enumerate(finals):
        if id(v) not in ours or id(v) in taken:
            finals[k] = b.Identity(v, dtype=v.dtype, shape=v.shape)
            ours.add(id(finals[k]))
        taken.add(id(finals[k]))
    rw.replace([node], b.nodes, {out: new for out, new in zip(node.outputs, finals, strict=True) if out.name},
               inherit=True)
