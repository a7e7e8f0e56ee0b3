"""Constant folding: `Constant` nodes become initializers, and nodes whose inputs are all
constants are evaluated by onnxruntime and replaced by their results.

Invariants:
- Results are onnxruntime's own (CPU, graph optimizations off, see `passes.ort`): a folded
  value is bit-identical to what the unfolded graph computes, NaN/Inf payloads included.
  No arithmetic is re-implemented here.
- Never folded: `DequantizeLinear` (a quantized weight stays int8 codes + scale: the QDQ form is
  what quantized models carry and what integer codegen reads), non-default domains, nodes with subgraphs, random ops, Dropout in training
  mode, sequence/optional ops, outputs of unknown or non-numeric dtype (strings, bfloat16,
  float8, ...), values that another graph lists as its output (a subgraph naming an outer
  value), and dead nodes (left to `eliminate-dead-code`).
- Size: an output is folded only if its size bound is at most
  max(max_bytes, bytes of the node's distinct inputs). The bound comes from the static shape
  when known, else from the op (elementwise/reshape-like: <= largest input; broadcasting,
  Gather, MatMul: <= product of inputs; Concat: <= sum); other ops of unknown shape (Expand,
  ConstantOfShape, Tile, Range, ...) are never evaluated. Bounds use the product of
  max(dim, 1), so empty tensors cannot hide a huge result. Results above their bound are
  discarded. The bound is checked BEFORE evaluation, so a huge tensor is never allocated.
- Evaluation: one onnxruntime session per graph (the main graph and each subgraph), split
  into batches whose outputs total at most max(64 MiB, max_bytes) by bound; a single node above that
  runs alone, and only when its outputs are no larger than its inputs (e.g. transposing a big
  weight). If a batch fails in onnxruntime, its nodes are evaluated one by one and the
  failing ones (and their dependents) are left in place.
- A folded value that is an output of its graph keeps its name: it becomes a `Constant` node
  (initializers cannot take a graph output's slot); such Constant nodes stay Constant nodes.
  Every edit goes through a `lepton_ir.Rewriter` (readers and output slots move with
  `replace_uses`, nodes and initializers go with `erase` / `erase_initializer`).
- Folded nodes whose outputs are no longer read are removed, and so are initializers this
  pass created that nothing reads. Idempotent: everything foldable folds in one run.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import ClassVar

import numpy as np
import onnx
from onnx import TensorProto as T
from onnx import helper, numpy_helper

from lepton_ir import Graph, Node, Tensor, Value
from lepton_ir.constants import constant_node_tensor, constant_tensor, constant_value
from lepton_ir.exporter import ProtoWriter
from lepton_ir.rewriter import Builder, Rewriter
from lepton_ir.types import dtype_bits, np_to_onnx_dtype

from passes.base import Pass, PassContext, PassResult, register
from passes.ort import run_model
from passes.rewrite import static_shape

EVAL_BUDGET = 64 << 20  # bytes of outputs (by bound) one onnxruntime evaluation may produce

RANDOM_OPS = frozenset({
    "RandomNormal", "RandomUniform", "RandomNormalLike", "RandomUniformLike", "Multinomial", "Bernoulli",
})
NOT_FOLDABLE = RANDOM_OPS | frozenset({
    "Constant", "SequenceConstruct", "SequenceEmpty", "SequenceInsert", "SequenceErase", "SequenceAt",
    "SequenceLength", "SplitToSequence", "ConcatFromSequence", "SequenceMap", "Optional",
    "OptionalGetElement", "OptionalHasElement",
    "DequantizeLinear",
})
NUMERIC = frozenset({
    T.FLOAT, T.DOUBLE, T.FLOAT16, T.INT8, T.INT16, T.INT32, T.INT64, T.UINT8, T.UINT16, T.UINT32, T.UINT64, T.BOOL,
})
# Output elements <= the largest input's.
_NO_GROWTH = frozenset({
    "Abs", "Neg", "Relu", "Sigmoid", "Tanh", "Exp", "Log", "Sqrt", "Reciprocal", "Floor", "Ceil", "Round",
    "Sign", "Not", "Erf", "Sin", "Cos", "Tan", "Asin", "Acos", "Atan", "Sinh", "Cosh", "Asinh", "Acosh", "Atanh",
    "IsNaN", "IsInf", "Identity", "Cast", "CastLike", "Reshape", "Flatten", "Squeeze", "Unsqueeze", "Transpose",
    "Slice", "Clip", "LeakyRelu", "Elu", "Selu", "Celu", "HardSigmoid", "HardSwish", "Softplus", "Softsign",
    "Gelu", "Mish", "Softmax", "LogSoftmax", "Hardmax", "Dropout", "QuantizeLinear", "DequantizeLinear",
    "ReduceSum", "ReduceMean", "ReduceMax", "ReduceMin", "ReduceProd", "ReduceL1", "ReduceL2",
    "ReduceLogSum", "ReduceLogSumExp", "ReduceSumSquare", "ArgMax", "ArgMin", "CumSum", "BitwiseNot",
})
# Output elements <= the product of the inputs' (every output dim is some input's dim).
_PRODUCT = frozenset({
    "Add", "Sub", "Mul", "Div", "Pow", "Mod", "And", "Or", "Xor", "Equal", "Less", "Greater", "LessOrEqual",
    "GreaterOrEqual", "Max", "Min", "Sum", "Mean", "Where", "BitShift", "BitwiseAnd", "BitwiseOr", "BitwiseXor",
    "PRelu", "Gather", "GatherElements", "GatherND", "MatMul",
})


@register
@dataclass(frozen=True)
class FoldConstants(Pass):
    """Constant nodes -> initializers; evaluate constant-input nodes in onnxruntime."""

    name: ClassVar[str] = "fold-constants"
    summary: ClassVar[str] = "turn Constant nodes into initializers and evaluate nodes whose inputs are all constant"

    max_bytes: int = 1 << 20

    def run(self, graph: Graph, ctx: PassContext) -> PassResult:
        rw = Rewriter()
        created: list[tuple[Graph, Value]] = []
        n_const = n_folded = n_values = 0
        for g in list(graph.all_graphs()):
            n_const += _constants_to_initializers(rw, g, created)
            values, nodes = _Folder(rw, g, created, self.max_bytes).run()
            n_values += values
            n_folded += nodes
        for g, v in created:
            if not v.is_used() and g.initializers.get(v.name) is v:
                rw.erase_initializer(g, v)
        stats = {"constants_to_initializers": n_const, "nodes_folded": n_folded}
        return PassResult(bool(n_const or n_values), stats)


# ----- helpers shared with fold-shapes --------------------------------------------------


def listed_elsewhere(g: Graph, v: Value) -> bool:
    """True when a graph other than `g` lists `v` as its output (a subgraph naming an outer
    value): such a value keeps its producer."""
    return any(h is not g for h in v.graph_outputs)


def replace_by_constant(rw: Rewriter, g: Graph, old: Value, value: np.ndarray | Tensor) -> Value:
    """Make the readers and output slots of `old` (a node output in `g`, listed by no other
    graph) read a constant instead, through `rw`.

    The constant is a new initializer, or, when `old` is an output of `g`, a new `Constant`
    node inserted before `old`'s producer, which takes over the output's slot and name (an
    initializer cannot; an `Identity` of one would be folded again).
    """
    t = value if isinstance(value, Tensor) else Tensor.from_numpy(value)
    b = Builder(g, old.name or "folded")
    if old.graph_outputs:
        assert old.producer is not None and old.producer.graph is g
        new = b.op("Constant", [], {"value": t}, shape=t.shape)
        rw.insert_before(old.producer, b.nodes)
    else:
        new = b.tensor(t, "folded")
    rw.replace_uses(old, new)
    return new


def _nbytes(span: int, dtype: int) -> int:
    return (span * dtype_bits(dtype) + 7) // 8


def _span(shape: Iterable[int]) -> int:
    """Product of max(dim, 1): an element bound that empty dims cannot shrink."""
    return math.prod(max(int(d), 1) for d in shape)


# ----- Constant -> initializer -----------------------------------------------------------


def _constants_to_initializers(rw: Rewriter, g: Graph, created: list[tuple[Graph, Value]]) -> int:
    """Replace each read `Constant` node of `g` that is no graph's output by an initializer."""
    count = 0
    for node in g:
        if node.op_type != "Constant" or node.domain:
            continue
        out = node.outputs[0]
        if not out.uses or out.graph_outputs:
            continue
        t = constant_node_tensor(node)
        if t is None:
            continue  # value_string(s), sparse_value: left alone
        v = Builder(g, out.name).tensor(t, "init")
        rw.replace_uses(out, v)
        rw.erase(node)
        created.append((g, v))
        count += 1
    return count


# ----- evaluation -------------------------------------------------------------------------


class _Folder:
    """Folds one graph. `bound[id(v)]` is the span bound of each candidate output."""

    def __init__(self, rw: Rewriter, g: Graph, created: list[tuple[Graph, Value]], max_bytes: int) -> None:
        self.rw = rw
        self.g = g
        self.created = created
        self.max_bytes = max_bytes
        self.cap = max(EVAL_BUDGET, max_bytes)
        self.bound: dict[int, int] = {}
        self.cost: dict[int, int] = {}  # id(node) -> bytes of its outputs by bound
        self.results: dict[int, np.ndarray] = {}

    def run(self) -> tuple[int, int]:
        """Fold; return (values replaced by constants, nodes removed)."""
        g = self.g
        cands = [n for n in g if self._admit(n)]
        if not cands:
            return 0, 0
        ids = {id(n) for n in cands}
        needed = {
            id(o): o for n in cands for o in n.outputs
            if o.name and (o.graph_outputs or any(id(u) not in ids for u, _ in o.uses))
        }
        keep: list[Node] = []  # candidates that contribute to a needed value, in reverse order
        kept: set[int] = set()
        for n in reversed(cands):
            if any(id(o) in needed or any(id(u) in kept for u, _ in o.uses) for o in n.outputs):
                keep.append(n)
                kept.add(id(n))
        keep.reverse()
        for batch in self._batches(keep):
            self._evaluate(batch)
        replaced = 0
        for vid, v in needed.items():
            if vid in self.results:
                nv = replace_by_constant(self.rw, g, v, self.results[vid])
                if nv.producer is None:
                    self.created.append((g, nv))
                replaced += 1
        removed = 0
        for n in reversed(keep):
            if not any(o.is_used() for o in n.outputs):
                self.rw.erase(n)
                removed += 1
        return replaced, removed

    def _admit(self, node: Node) -> bool:
        """Whether `node` can be folded (inputs constant or admitted; size bounds hold); records bounds."""
        g = self.g
        if node.domain or node.op_type in NOT_FOLDABLE or next(node.subgraphs(), None) is not None:
            return False
        inputs = [v for v in node.inputs if v is not None]
        if not inputs or any(o.name and listed_elsewhere(g, o) for o in node.outputs):
            return False
        spans: dict[int, tuple[int, int]] = {}  # id -> (span, bytes), distinct inputs
        for v in inputs:
            if id(v) in self.bound:
                assert v.dtype is not None
                spans[id(v)] = (self.bound[id(v)], _nbytes(self.bound[id(v)], v.dtype))
                continue
            t = constant_tensor(g, v)
            if t is None:
                return False
            spans[id(v)] = (_span(t.shape), _nbytes(_span(t.shape), t.dtype))
        if node.op_type == "Dropout" and len(node.inputs) > 2 and node.inputs[2] is not None:
            mode = constant_value(g, node.inputs[2])
            if mode is None or bool(np.any(mode)):
                return False
        in_spans = [s for s, _ in spans.values()]
        in_bytes = sum(b for _, b in spans.values())
        limit = max(self.max_bytes, in_bytes)
        bounds: dict[int, int] = {}
        for o in node.outputs:
            if not o.name:
                continue
            if o.dtype not in NUMERIC:
                return False
            span = self._out_span(node, o, in_spans)
            if span is None or _nbytes(span, o.dtype) > limit:
                return False
            bounds[id(o)] = span
        cost = sum(_nbytes(bounds[id(o)], o.dtype) for o in node.outputs if id(o) in bounds)  # type: ignore[arg-type]
        if cost > max(self.cap, in_bytes):
            return False
        self.bound.update(bounds)
        self.cost[id(node)] = cost
        return True

    @staticmethod
    def _out_span(node: Node, o: Value, in_spans: Sequence[int]) -> int | None:
        shape = static_shape(o)
        if shape is not None:
            return _span(shape)
        if node.op_type in _NO_GROWTH:
            return max(in_spans)
        if node.op_type in _PRODUCT:
            return math.prod(in_spans)
        if node.op_type == "Concat":
            return sum(in_spans)
        return None

    def _batches(self, nodes: list[Node]) -> Iterable[list[Node]]:
        """Consecutive runs of `nodes` whose total cost stays within the evaluation budget."""
        batch: list[Node] = []
        total = 0
        for n in nodes:
            c = self.cost[id(n)]
            if batch and total + c > self.cap:
                yield batch
                batch, total = [], 0
            batch.append(n)
            total += c
        if batch:
            yield batch

    def _evaluate(self, batch: list[Node]) -> None:
        """Evaluate `batch` into `self.results` (whole batch at once, else node by node)."""
        if self._run(batch):
            return
        for n in batch:
            self._run([n])

    def _run(self, nodes: list[Node]) -> bool:
        """One onnxruntime session over `nodes`; False when it cannot run. Nodes whose inputs
        are missing (an earlier failure) are left out."""
        g = self.g
        made: set[int] = set()
        feeds: dict[str, onnx.TensorProto] = {}
        run: list[Node] = []
        for n in nodes:
            protos = {}
            ok = True
            for v in n.inputs:
                if v is None or id(v) in made or v.name in feeds:
                    continue
                if id(v) in self.results:
                    protos[v.name] = numpy_helper.from_array(self.results[id(v)], v.name)
                elif id(v) in self.bound:
                    ok = False  # produced by a candidate that failed
                    break
                else:
                    t = constant_tensor(g, v)
                    assert t is not None, "admitted nodes read constants"
                    protos[v.name] = t.to_proto(v.name)
            if not ok:
                continue
            feeds.update(protos)
            run.append(n)
            made.update(id(o) for o in n.outputs)
        if not run:
            return True
        ids = {id(n) for n in run}
        wanted = [o for n in run for o in n.outputs if o.name and (o.graph_outputs or any(id(u) not in ids for u, _ in o.uses))]
        if not wanted:
            return True
        root = g.root()
        writer = ProtoWriter(None)
        model = helper.make_model(
            helper.make_graph(
                [writer.node(n) for n in run], "fold", [],
                [helper.make_tensor_value_info(o.name, o.dtype, None) for o in wanted],  # type: ignore[arg-type]
                initializer=list(feeds.values()),
            ),
            opset_imports=[helper.make_opsetid(d, v) for d, v in root.opset_imports.items()],
            ir_version=max(root.ir_version, 7),
        )
        try:
            out = run_model(model, {}, [o.name for o in wanted])
        except Exception:  # noqa: BLE001 - onnxruntime raises many types; the nodes simply stay
            return False
        for o in wanted:
            arr = out[o.name]
            if self._valid(o, arr):
                self.results[id(o)] = arr
        return True

    def _valid(self, o: Value, arr: object) -> bool:
        """The result has the value's dtype, its static shape (if known) and fits its bound."""
        if not isinstance(arr, np.ndarray) or o.dtype is None:
            return False
        try:
            if np_to_onnx_dtype(arr.dtype) != o.dtype:
                return False
        except (KeyError, TypeError, ValueError):
            return False
        shape = static_shape(o)
        if shape is not None and tuple(arr.shape) != shape:
            return False
        return arr.nbytes <= _nbytes(self.bound[id(o)], o.dtype)
