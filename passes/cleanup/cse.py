"""Common-subexpression elimination: merge nodes and constants that compute the same value.

Invariants:
- Two nodes merge only when they have the same domain, op type, overload, identical input
  `Value`s (identity, order, omitted positions), bit-identical attributes, the same number
  of outputs and the same omitted outputs. The later node's readers move to the earlier node
  (earlier in topological order, so the graph stays sorted), and the later node is removed.
- Non-deterministic nodes (random ops, training-mode Dropout) and nodes holding subgraphs
  never merge. Readers and graph-output slots move through the `Rewriter`, so graph-output
  names never change; a merge where the kept value cannot take over an output's name is
  skipped (never traded for an Identity).
- Duplicate initializers (same dtype, shape and bytes; not overridable graph inputs) merge
  into the first one; the duplicate is dropped from `graph.initializers`.
- Work is linear: nodes are bucketed by a hashable signature (tensor data by blake2b
  digest, confirmed with `tensors_equal`), in one sweep per graph in topological order. One
  sweep is the fixed point: a merge only changes the inputs of the merged node's readers,
  which come later in the order and are signed when the sweep reaches them; graphs go
  parents first, so merges reach the values subgraphs capture before those are swept.
"""

from __future__ import annotations

import hashlib
from collections import Counter
from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np
import onnx
from google.protobuf.message import Message

from lepton_ir import Attr, Graph, Node, Tensor, Value, tensors_equal
from lepton_ir.constants import constant_value
from lepton_ir.rewriter import Rewriter, replace_uses_problem

from passes.base import Pass, PassContext, PassResult, register

#: Ops whose outputs differ between two evaluations on the same inputs (any domain).
RANDOM_OPS = frozenset(
    {"RandomNormal", "RandomUniform", "RandomNormalLike", "RandomUniformLike", "Multinomial", "Bernoulli"}
)

_A = onnx.AttributeProto


class _Digests:
    """Per-run cache of tensor-data digests, keyed by tensor identity."""

    def __init__(self) -> None:
        self._cache: dict[int, tuple[Tensor, bytes]] = {}  # holds the tensor, so its id stays unique

    def __call__(self, t: Tensor) -> tuple[int, tuple[int, ...], bytes]:
        hit = self._cache.get(id(t))
        if hit is None:
            hit = self._cache[id(t)] = (t, hashlib.blake2b(t.numpy().tobytes(), digest_size=16).digest())
        return (t.dtype, t.shape, hit[1])


def is_deterministic(node: Node, graph: Graph) -> bool:
    """False for random ops and for Dropout that may run in training mode."""
    if node.op_type in RANDOM_OPS or "Random" in node.op_type:
        return False
    if "Dropout" in node.op_type:
        if node.domain or node.op_type != "Dropout":
            return False
        if node.attr("is_test", 1) == 0:  # opset <= 6
            return False
        training = node.inputs[2] if len(node.inputs) > 2 else None
        if training is None:
            return True
        arr = constant_value(graph, training)
        return arr is not None and not bool(np.asarray(arr).any())
    return True


def _attr_sig(a: Attr, digest: _Digests) -> Any:
    """A hashable stand-in for an attribute: equal attributes give equal signatures."""
    v = a.value
    if isinstance(v, Tensor):
        return (a.type, digest(v))
    if a.type == _A.TENSORS:
        return (a.type, tuple(digest(t) for t in v))
    if isinstance(v, Message):
        return (a.type, v.SerializeToString(deterministic=True))
    if isinstance(v, float):
        return (a.type, np.float32(v).tobytes())
    if isinstance(v, list):
        return (a.type, tuple(np.float32(x).tobytes() if isinstance(x, float) else x for x in v))
    return (a.type, v)


def _attrs_equal(a: dict[str, Attr], b: dict[str, Attr]) -> bool:
    """Bit-exact attribute equality (tensor data compared in full)."""
    if a.keys() != b.keys():
        return False
    for k, x in a.items():
        y = b[k]
        if x.type != y.type:
            return False
        if x.type == _A.TENSORS:
            if len(x.value) != len(y.value) or not all(tensors_equal(s, t) for s, t in zip(x.value, y.value)):
                return False
        elif x != y:
            return False
    return True


def _signature(node: Node, digest: _Digests) -> tuple[Any, ...]:
    attrs = tuple(sorted((k, _attr_sig(a, digest)) for k, a in node.attributes.items()))
    omitted = tuple(not o.name for o in node.outputs)
    return (node.domain, node.op_type, node.overload, node.inputs, attrs, omitted)


def _merge_nodes(rw: Rewriter, graph: Graph, digest: _Digests, stats: Counter[str]) -> None:
    """One sweep over `graph` in order, merging each node into the first equal one."""
    seen: dict[tuple[Any, ...], Node] = {}
    for node in graph:
        if not node.outputs or any(True for _ in node.subgraphs()) or not is_deterministic(node, graph):
            continue
        sig = _signature(node, digest)
        first = seen.setdefault(sig, node)
        if first is node or not _attrs_equal(first.attributes, node.attributes):
            continue
        pairs = dict(zip(node.outputs, first.outputs, strict=True))
        if any(replace_uses_problem(old, new, allow_identity=False) for old, new in pairs.items()):
            continue
        rw.replace([node], [], pairs)
        stats["constants_merged" if node.op_type == "Constant" and not node.domain else "nodes_merged"] += 1


def _merge_initializers(rw: Rewriter, graph: Graph, digest: _Digests, stats: Counter[str]) -> None:
    """Redirect readers of duplicate initializers to the first equal one and drop the duplicates."""
    inputs = {id(v) for v in graph.inputs}
    by_type: dict[tuple[int, tuple[int, ...]], list[Value]] = {}
    for v in graph.initializers.values():
        if id(v) not in inputs and v.const_value is not None:
            by_type.setdefault((v.const_value.dtype, v.const_value.shape), []).append(v)
    for group in by_type.values():
        if len(group) < 2:
            continue  # hash only tensors that have a same-typed rival
        seen: dict[bytes, list[Value]] = {}
        for v in group:
            assert v.const_value is not None
            bucket = seen.setdefault(digest(v.const_value)[2], [])
            keep = next((k for k in bucket if tensors_equal(k.const_value, v.const_value)), None)  # type: ignore[arg-type]
            if keep is None:
                bucket.append(v)
            elif replace_uses_problem(v, keep, allow_identity=False) is None:
                rw.replace_uses(v, keep)
                rw.erase_initializer(graph, v)
                stats["constants_merged"] += 1


@register
@dataclass(frozen=True)
class EliminateCommonSubexpressions(Pass):
    """Merge duplicate deterministic nodes, duplicate Constant nodes and duplicate initializers."""

    name: ClassVar[str] = "eliminate-common-subexpressions"
    summary: ClassVar[str] = "merge nodes and constants that compute the same value"

    def run(self, graph: Graph, ctx: PassContext) -> PassResult:
        stats: Counter[str] = Counter({"nodes_merged": 0, "constants_merged": 0})
        digest = _Digests()
        rw = Rewriter()
        for g in list(graph.all_graphs()):  # parents first: their merges reach captured values
            _merge_initializers(rw, g, digest, stats)
            _merge_nodes(rw, g, digest, stats)
        return PassResult(stats["nodes_merged"] + stats["constants_merged"] > 0, dict(stats))
