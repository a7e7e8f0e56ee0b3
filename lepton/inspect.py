"""What a model is made of: signature, op mix, parameters, a FLOPs estimate, unsupported ops.

`inspect_model(graph, target)` reads the graph only (no weight data is loaded) and gives a
`ModelInfo`, which renders as rich tables (`render`) or JSON (`to_json`).

FLOPs count a multiply-add as 2: Conv/ConvTranspose/MatMul/Gemm/Einsum/RNN cells by their
multiply-adds (bias adds not counted), elementwise ops and activations 1 per output element,
pooling per window element, reductions, softmax and normalizations a small fixed number per
input element (`_PER_INPUT`), data movement 0. Invariants:

- `flops` is exact under that model for every node that was counted; a node whose shapes
  are unknown, whose op has no rule, or which holds subgraphs (If/Loop/Scan) is not counted
  and is listed in `skipped`; `flops_complete` is true exactly when `skipped` is empty.
  Nodes inside subgraphs are never counted (their node holding them is skipped instead).
- A symbolic dim of a graph input (e.g. `batch`) counts as 1; such symbols are listed in
  `symbolic_dims`, and the figure scales with them. A dim that is unknown, or a symbol
  that no graph input carries (one made up by shape inference), makes the node skipped.
- `params`/`param_bytes` sum every initializer and every Constant node tensor, in all graphs.
"""

from __future__ import annotations

import math
from collections import Counter
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Any

from rich.console import Console, Group
from rich.table import Table

from lepton.errors import UnsupportedNode
from lepton_ir import Graph, Node, Tensor, Value
from lepton_ir.types import Shape, dtype_name, format_shape

if TYPE_CHECKING:
    from targets import Target


@dataclass(frozen=True)
class TensorInfo:
    """A graph input or output: name, dtype name, shape (int, symbol or None per dim; None if rank unknown)."""

    name: str
    dtype: str
    shape: Shape


@dataclass(frozen=True)
class OpStats:
    """How often an op occurs (all graphs) and the FLOPs of its counted nodes."""

    op_type: str
    domain: str
    count: int
    flops: int

    @property
    def label(self) -> str:
        return f"{self.domain}::{self.op_type}" if self.domain else self.op_type


@dataclass(frozen=True)
class SkippedNode:
    """A node left out of the FLOPs total, and why."""

    node: str
    op_type: str
    reason: str


@dataclass
class ModelInfo:
    """The result of `inspect_model`; `ops` is sorted by count (then name), descending."""

    name: str
    ir_version: int
    opsets: dict[str, int]
    producer: str
    inputs: list[TensorInfo]
    outputs: list[TensorInfo]
    node_count: int
    ops: list[OpStats]
    params: int
    param_bytes: int
    flops: int
    flops_complete: bool
    skipped: list[SkippedNode]
    symbolic_dims: list[str]
    target: str | None
    unsupported: list[UnsupportedNode]
    notes: list[str] = field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        """Everything as JSON-ready types (shapes as lists)."""
        d = asdict(self)
        for key in ("inputs", "outputs"):
            for t in d[key]:
                t["shape"] = None if t["shape"] is None else list(t["shape"])
        d["ops"] = [{**asdict(o), "op": o.label} for o in self.ops]
        return d

    def render(self, console: Console) -> None:
        """Header, op table with FLOPs share, skipped nodes, and the unsupported-op verdict."""
        console.print(Group(self._header(), self._op_table()))
        if self.skipped:
            console.print(f"[yellow]{len(self.skipped)} node(s) not in the FLOPs total:[/]", highlight=False)
            for s in self.skipped[:10]:
                console.print(f"  {s.node or '<unnamed>'} ({s.op_type}): {s.reason}", highlight=False)
            if len(self.skipped) > 10:
                console.print(f"  ... and {len(self.skipped) - 10} more", highlight=False)
        where = f" for {self.target}" if self.target else ""
        if not self.unsupported:
            console.print(f"[green]every op is supported by TVM's ONNX frontend{where}[/]", highlight=False)
            return
        table = Table(
            title=f"[red]{len(self.unsupported)} node(s) TVM's ONNX frontend cannot convert{where}[/]",
            title_justify="left", border_style="red",
        )
        for col in ("node", "op", "reason"):
            table.add_column(col, style="red" if col == "op" else None)
        for u in self.unsupported:
            table.add_row(u.node or "<unnamed>", f"{u.domain}::{u.op_type}" if u.domain else u.op_type, u.reason)
        console.print(table)

    def _header(self) -> Table:
        grid = Table.grid(padding=(0, 2))
        grid.add_column(style="bold", no_wrap=True)
        grid.add_column()
        opsets = ", ".join(f"{d or 'ai.onnx'} {v}" for d, v in sorted(self.opsets.items()))
        grid.add_row("model", f"{self.name}  [dim](producer {self.producer or '?'}, IR {self.ir_version}, {opsets})[/]")
        for label, values in (("inputs", self.inputs), ("outputs", self.outputs)):
            grid.add_row(label, "\n".join(f"{t.name}  {t.dtype}{format_shape(t.shape)}" for t in values) or "-")
        grid.add_row("nodes", f"{self.node_count:,} ({len(self.ops)} distinct ops)")
        grid.add_row("parameters", f"{_si(self.params)} ({self.param_bytes / 2**20:,.1f} MiB)")
        flops = _si(self.flops, "FLOPs")
        if not self.flops_complete:
            flops = f"at least {flops} [yellow](incomplete: {len(self.skipped)} node(s) not counted)[/]"
        grid.add_row("FLOPs", "\n".join([flops, *(f"[dim]{n}[/]" for n in self.notes)]))
        return grid

    def _op_table(self) -> Table:
        table = Table(title="ops", title_justify="left")
        table.add_column("op", no_wrap=True)
        for col in ("count", "FLOPs", "share"):
            table.add_column(col, justify="right", no_wrap=True)
        for o in self.ops:
            share = f"{100 * o.flops / self.flops:.1f}%" if o.flops else "-"
            table.add_row(o.label, str(o.count), _si(o.flops) if o.flops else "-", share)
        return table


def inspect_model(graph: Graph, target: Target | None = None) -> ModelInfo:
    """Describe `graph` (see the module docstring for what FLOPs and parameters count).

    Unsupported ops are those TVM's ONNX frontend cannot convert (independent of the target
    beyond that); `target` only names the target they are reported for.
    """
    from lepton.codegen.frontend import unsupported_nodes  # imports TVM

    counts: Counter[tuple[str, str]] = Counter()
    params = param_bytes = 0
    for g in graph.all_graphs():
        for v in g.initializers.values():
            assert v.const_value is not None
            params += v.const_value.size
            param_bytes += v.const_value.nbytes
        for node in g:
            counts[(node.domain, node.op_type)] += 1
            if node.op_type == "Constant" and node.domain == "":
                n, b = _constant_size(node)
                params, param_bytes = params + n, param_bytes + b

    symbols = {d for v in graph.inputs if v.shape is not None for d in v.shape if isinstance(d, str)}
    counter = _FlopCounter(symbols)
    per_op: Counter[tuple[str, str]] = Counter()
    skipped = []
    for node in graph:
        flops, reason = counter.count(node)
        if reason is None:
            per_op[(node.domain, node.op_type)] += flops
        else:
            skipped.append(SkippedNode(node.name, node.op_type, reason))
    used = sorted(counter.used_symbols)
    notes = []
    if used:
        notes.append(f"counted with {', '.join(f'{s}=1' for s in used)} (symbolic input dims): FLOPs scale with them")

    ops = [OpStats(op, dom, n, per_op[(dom, op)]) for (dom, op), n in counts.items()]
    ops.sort(key=lambda o: (-o.count, o.label))
    return ModelInfo(
        name=graph.name,
        ir_version=graph.ir_version,
        opsets=dict(graph.opset_imports),
        producer=f"{graph.producer_name} {graph.producer_version}".strip(),
        inputs=[_tensor_info(v) for v in graph.inputs],
        outputs=[_tensor_info(v) for v in graph.outputs],
        node_count=sum(counts.values()),
        ops=ops,
        params=params,
        param_bytes=param_bytes,
        flops=sum(per_op.values()),
        flops_complete=not skipped,
        skipped=skipped,
        symbolic_dims=used,
        target=target.name if target is not None else None,
        unsupported=unsupported_nodes(graph),
        notes=notes,
    )


# ----- FLOPs rules ----------------------------------------------------------------------

#: 1 FLOP per output element.
_ELEMENTWISE = frozenset(
    "Add Sub Mul Div Pow Mod Neg Abs Reciprocal Sqrt Exp Log Erf Sin Cos Tan Asin Acos Atan Sinh Cosh Asinh Acosh "
    "Atanh Floor Ceil Round Sign Relu LeakyRelu PRelu Elu Selu Celu Gelu Sigmoid HardSigmoid HardSwish Tanh Softplus "
    "Softsign Mish ThresholdedRelu Swish Shrink Clip Max Min Mean Sum Where Equal Less LessOrEqual Greater "
    "GreaterOrEqual And Or Xor Not BitwiseAnd BitwiseOr BitwiseXor BitwiseNot BitShift IsNaN IsInf QuantizeLinear "
    "DequantizeLinear Resize Upsample GridSample CumSum CumProd".split()
)

#: FLOPs per input element (rough: e.g. softmax = exp, sum, divide; layer norm = mean, variance, normalize, affine).
_PER_INPUT: dict[str, int] = {
    **dict.fromkeys(
        "ReduceSum ReduceMean ReduceMax ReduceMin ReduceProd ReduceL1 ReduceL2 ReduceLogSum ReduceLogSumExp "
        "ReduceSumSquare ArgMax ArgMin GlobalAveragePool GlobalMaxPool GlobalLpPool TopK Hardmax".split(), 1
    ),
    "Softmax": 3, "LogSoftmax": 3, "BatchNormalization": 2, "LpNormalization": 3, "RMSNormalization": 4,
    "LayerNormalization": 5, "InstanceNormalization": 5, "GroupNormalization": 5, "MeanVarianceNormalization": 5,
}

#: Data movement, shape computation and constants: 0 FLOPs.
_FREE = frozenset(
    "Constant ConstantOfShape Identity Reshape Flatten Squeeze Unsqueeze Transpose Concat Split Slice Gather "
    "GatherElements GatherND Scatter ScatterND ScatterElements Shape Size Cast CastLike Expand Tile Pad DepthToSpace "
    "SpaceToDepth Range NonZero OneHot EyeLike Dropout Compress Trilu ReverseSequence CenterCropPad".split()
)

#: Conv-like ops -> input index of the weight [Cout, Cin/groups, *kernel].
_CONV = {"Conv": 1, "ConvInteger": 1, "DeformConv": 1, "QLinearConv": 3}
#: MatMul-like ops -> input indices of A and B.
_MATMUL = {"MatMul": (0, 1), "MatMulInteger": (0, 1), "QLinearMatMul": (0, 3)}


class _UnknownShape(Exception):
    """A shape the FLOPs rule needs is not static (after substituting input symbols)."""


class _FlopCounter:
    """FLOPs of one top-level node at a time; records which input symbols it set to 1."""

    def __init__(self, symbols: set[str]) -> None:
        self.symbols = symbols
        self.used_symbols: set[str] = set()

    def count(self, node: Node) -> tuple[int, str | None]:
        """(FLOPs, None), or (0, why the node is not counted)."""
        if next(node.subgraphs(), None) is not None:
            return 0, "holds subgraphs (If/Loop/Scan bodies are not counted)"
        if node.domain != "":
            return 0, f"no FLOPs rule for domain {node.domain!r}"
        used = set(self.used_symbols)
        try:
            flops = self._flops(node)
        except _UnknownShape as e:
            self.used_symbols = used  # a skipped node does not depend on the symbols it read
            return 0, f"shape of {e} is not static"
        if flops is None:
            return 0, "no FLOPs rule for this op"
        return flops, None

    def dims(self, value: Value | None) -> tuple[int, ...]:
        if value is None:
            raise _UnknownShape("an omitted input")
        if value.shape is None or any(not isinstance(d, int) and d not in self.symbols for d in value.shape):
            raise _UnknownShape(f"{value.name!r} ({format_shape(value.shape)})")
        self.used_symbols.update(d for d in value.shape if isinstance(d, str))
        return tuple(d if isinstance(d, int) else 1 for d in value.shape)

    def _flops(self, node: Node) -> int | None:
        op, ins = node.op_type, node.inputs
        if op in _FREE:
            return 0
        if op in _ELEMENTWISE:
            return _prod(self.dims(node.outputs[0]))
        if op in _PER_INPUT:
            return _PER_INPUT[op] * _prod(self.dims(ins[0]))
        if op in _CONV:
            return 2 * _prod(self.dims(node.outputs[0])) * _prod(self.dims(ins[_CONV[op]])[1:])
        if op == "ConvTranspose":
            return 2 * _prod(self.dims(ins[0])) * _prod(self.dims(ins[1])[1:])
        if op in _MATMUL:  # K from the weight side when it is known, as it usually is
            a, b = _MATMUL[op]
            try:
                wdims = self.dims(ins[b])
                k = wdims[-2] if len(wdims) > 1 else wdims[0]
            except _UnknownShape:
                k = self.dims(ins[a])[-1]
            return 2 * _prod(self.dims(node.outputs[0])) * k
        if op == "Gemm":
            b_dims = self.dims(ins[1])
            return 2 * _prod(self.dims(node.outputs[0])) * b_dims[1 if node.attr("transB", 0) else 0]
        if op in ("MaxPool", "AveragePool", "LpPool"):
            return _prod(self.dims(node.outputs[0])) * _prod(node.attr("kernel_shape", []))
        if op in ("LSTM", "GRU", "RNN"):
            x = self.dims(ins[0])  # [seq, batch, input] or [batch, seq, input]
            return 2 * x[0] * x[1] * (_prod(self.dims(ins[1])) + _prod(self.dims(ins[2])))
        if op == "Einsum":
            return self._einsum(node)
        return None

    def _einsum(self, node: Node) -> int | None:
        """2 * product of all index sizes for a contraction; per input element for one operand."""
        eq = node.attr("equation", b"")
        eq = (eq.decode() if isinstance(eq, bytes) else eq).replace(" ", "")
        lhs = eq.split("->")[0].split(",")
        if "..." in eq or len(lhs) != len(node.inputs):
            return None
        sizes: dict[str, int] = {}
        for letters, value in zip(lhs, node.inputs, strict=True):
            shape = self.dims(value)
            if len(shape) != len(letters):
                return None
            sizes.update(zip(letters, shape, strict=True))
        if len(lhs) == 1:
            return _prod(self.dims(node.inputs[0]))
        return 2 * _prod(sizes.values())


def _prod(xs: Any) -> int:
    return math.prod(int(x) for x in xs)


# ----- helpers --------------------------------------------------------------------------


def _constant_size(node: Node) -> tuple[int, int]:
    """(elements, bytes) held by a Constant node's value attribute."""
    for name, attr in node.attributes.items():
        v = attr.value
        if isinstance(v, Tensor):
            return v.size, v.nbytes
        if name in ("value_float", "value_int"):
            return 1, 4 if name == "value_float" else 8
        if name in ("value_floats", "value_ints"):
            return len(v), len(v) * (4 if name == "value_floats" else 8)
        if name == "value_string":
            return 1, len(v)
        if name == "value_strings":
            return len(v), sum(len(s) for s in v)
    return 0, 0


def _tensor_info(v: Value) -> TensorInfo:
    return TensorInfo(v.name, dtype_name(v.dtype), v.shape)


def _si(n: float, unit: str = "") -> str:
    """`_si(8.21e9, "FLOPs")` -> '8.21 GFLOPs'; below 1000 the plain number."""
    for scale, prefix in ((1e12, "T"), (1e9, "G"), (1e6, "M"), (1e3, "k")):
        if n >= scale:
            return f"{n / scale:.3g} {prefix}{unit}".rstrip()
    return f"{int(n)} {unit}".rstrip()


__all__ = ["ModelInfo", "OpStats", "SkippedNode", "TensorInfo", "inspect_model"]
