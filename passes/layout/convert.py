"""`convert-layout{format=NHWC}`: lay convolutions and the ops around them out channels-last.

Model: TVM's `ConvertLayout` and onnxruntime's NHWC transformer, done on Lepton's IR, so that the
layout decisions are visible (pass log, exported graph) and testable in onnxruntime.

Plan (no edit yet), in graph order: every 2-d `Conv` with constant weights is converted; every other
op that has a channels-last form (below) is converted when one of its 4-d inputs is already
channels-last, so regions grow forward from the convolutions. Ops without a kernel in the layout
keep NCHW and read their input through a transpose at the region's edge: `ConvTranspose` (TVM 0.27
legalizes conv2d_transpose only in NCHW/IOHW: the failure of 2026-12-03), 1-d and 3-d convolutions and
pooling, Instance/Group/LayerNormalization, Flatten/Reshape, MatMul, Lepton-domain fused ops (`fuse-activation`'s:
the pass goes before it, `with_layout_pass`) and every op not listed here.

Rewrite, per converted op:
- `Conv` -> `lepton.NhwcConv` with the weights transposed OIHW -> HWIO once, at compile time (a new
  initializer; shared weights are converted once); `MaxPool`/`AveragePool` (2-d, one output) ->
  `lepton.NhwcMaxPool`/`NhwcAveragePool`; `Resize` (2-d, constant scales/sizes/roi) -> `lepton.NhwcResize`;
  `GlobalAveragePool`/`GlobalMaxPool` -> `ReduceMean`/`ReduceMax` over H, W. `auto_pad` becomes explicit pads.
  These ops are ONNX functions (`passes.layout.functions`), so the graph still runs in onnxruntime.
- Elementwise and broadcasting ops run on the NHWC tensors as they are; a constant operand of lower rank
  is right-aligned to rank 4 and transposed at compile time (a per-channel [C, 1, 1] bias becomes
  [1, 1, 1, C]); a 4-d non-constant operand from outside the region is transposed in.
- Axis-carrying ops get their axes remapped: Concat, Split, Slice (constant axes), Reduce*/ArgMax/ArgMin
  with keepdims, Softmax/LogSoftmax/Hardmax (opset 13+), Pad (constant pads).
- An inference BatchNormalization inside a region (one not folded into a convolution) becomes x * s + t with
  s, t [1, 1, 1, C] computed at compile time (in float64, stored in the parameters' type).
- Transposes only at region edges: NHWC -> NCHW (perm 0,3,1,2) once per value that a non-converted op or a
  graph output reads; NCHW -> NHWC (0,2,3,1) once per value from outside. A transpose the model already
  has next to a region is composed with the edge's: back-to-back pairs cancel (no node left), other
  compositions become one Transpose. Graph inputs and outputs keep their layout.

The graph's `metadata_props["lepton.layout"]` records that Lepton laid the graph out (the codegen then skips
TVM's own layout conversion, `lepton.codegen.layout_ops`). Stats: converted ops by op type, kept ops
(convolutions, pooling and resizes that stay NCHW) by op type, edge transposes inserted, model transposes
cancelled or merged, weights converted. `layout_plan(graph)` says, per node, whether it would be converted
and why not. One-shot and idempotent: a second run finds nothing to convert.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import ClassVar, Literal

import numpy as np
import onnx

from lepton_ir import Graph, Node, Value
from lepton_ir.constants import constant_value
from lepton_ir.functions import DOMAIN
from lepton_ir.rewriter import Builder, Rewriter

from passes.base import Pass, PassContext, PassResult, register
from passes.layout.functions import OIHW_TO_HWIO, TO_NCHW, TO_NHWC

#: Physical (NHWC) axis j holds logical (NCHW) axis TO_NHWC[j]; logical axis a is physical axis PHYS[a].
PHYS = TO_NCHW
METADATA_KEY = "lepton.layout"

UNARY = frozenset({
    "Relu", "LeakyRelu", "Sigmoid", "HardSigmoid", "HardSwish", "Tanh", "Elu", "Selu", "Celu", "Softplus",
    "Softsign", "Gelu", "Erf", "Exp", "Log", "Neg", "Abs", "Sqrt", "Reciprocal", "Floor", "Ceil", "Round", "Sign",
    "Sin", "Cos", "Identity", "Cast", "Mish", "ThresholdedRelu", "IsNaN", "IsInf", "Not", "Clip", "Dropout",
})
BROADCAST = frozenset({
    "Add", "Sub", "Mul", "Div", "Pow", "Max", "Min", "Sum", "Mean", "Equal", "Less", "Greater", "LessOrEqual",
    "GreaterOrEqual", "And", "Or", "Xor", "Where", "PRelu", "Mod", "BitShift",
})
#: Inputs after the first that are scalars or parameters, not tensors laid out like the first.
_SCALAR_INPUTS = {"Clip": (1, 2), "Dropout": (1, 2)}
REDUCE = frozenset({"ReduceMean", "ReduceSum", "ReduceMax", "ReduceMin", "ReduceProd", "ReduceL1", "ReduceL2",
                    "ReduceLogSum", "ReduceLogSumExp", "ReduceSumSquare"})
#: Ops that have no kernel in NHWC and so stay NCHW, with the reason the plan gives.
NO_NHWC_KERNEL = {
    "ConvTranspose": "no channels-last kernel: TVM 0.27 legalizes conv2d_transpose only in NCHW/IOHW "
                     "(an NHWC one failed to build on 2026-12-03)",
}
#: Ops the plan reports when they stay NCHW (the others are simply outside every region).
_REPORTED = frozenset({"Conv", "ConvTranspose", "MaxPool", "AveragePool", "Resize", "GlobalAveragePool",
                       "GlobalMaxPool"})


def _rank(v: Value | None) -> int | None:
    return None if v is None or v.shape is None else len(v.shape)


def _ints(node: Node, name: str, default: Sequence[int]) -> list[int]:
    value = node.attr(name)
    return [int(x) for x in value] if value is not None else list(default)


def _nhwc_shape(v: Value) -> tuple | None:
    return None if v.shape is None else tuple(v.shape[a] for a in TO_NHWC)


def _compose(p1: Sequence[int], p2: Sequence[int]) -> list[int]:
    """The perm of `Transpose(Transpose(x, p1), p2)`."""
    return [p1[j] for j in p2]


def _phys_axis(axis: int) -> int:
    return PHYS[axis % 4]


@dataclass
class _Decision:
    """One node's plan: `convert` (None: stays), or the reason it stays."""

    convert: Callable[[], None] | None
    reason: str = ""


class _Converter:
    def __init__(self, graph: Graph) -> None:
        self.g = graph
        self.opset = graph.opset_imports.get("", graph.opset_imports.get("ai.onnx", 1))
        self.rw = Rewriter()
        self.nhwc: dict[int, Value] = {}  # logical value (old graph) -> its NHWC value
        self.to_nhwc_memo: dict[int, Value] = {}  # plain value -> its NHWC transpose / constant
        self.converted: list[tuple[Node, list[tuple[Value, Value, bool]]]] = []  # old node, (old, new, is_nhwc)
        self.stats: Counter[str] = Counter()
        self.anchor: Node | None = None
        self.bypassed: list[Node] = []  # model Transposes an edge was composed with
        self.replaced_consts: list[Value] = []

    # ----- planning ---------------------------------------------------------------------------
    def tagged(self, v: Value | None) -> bool:
        return v is not None and id(v) in self.planned

    def plan(self) -> dict[str, str]:
        """Decide every node of the graph; returns node name -> "NHWC" or the reason it stays."""
        self.planned: set[int] = set()
        self.decisions: list[tuple[Node, _Decision]] = []
        out = {}
        for node in self.g:
            d = self.decide(node)
            self.decisions.append((node, d))
            if d.convert is not None:
                out[node.name] = "NHWC"
            elif d.reason:
                out[node.name] = d.reason
        return out

    def decide(self, node: Node) -> _Decision:
        if node.domain:
            why = "a Lepton-domain op with no channels-last form" + (
                " (a fused convolution: run convert-layout before fuse-activation)" if "Conv" in node.op_type else "")
            return _Decision(None, why if node.domain == DOMAIN else "")
        if any(True for _ in node.subgraphs()):
            return _Decision(None)
        op = node.op_type
        if op in NO_NHWC_KERNEL:
            return _Decision(None, NO_NHWC_KERNEL[op])
        if op == "Conv":
            return self._conv(node)
        if op == "Transpose":
            return self._transpose(node)
        layout_inputs = [v for v in node.inputs if v is not None and _rank(v) == 4]
        if not any(self.tagged(v) for v in layout_inputs):
            return _Decision(None, "its input is not channels-last" if op in _REPORTED else "")
        if op in ("MaxPool", "AveragePool"):
            return self._pool(node)
        if op in ("GlobalAveragePool", "GlobalMaxPool"):
            return self._global_pool(node)
        if op == "Resize":
            return self._resize(node)
        if op in UNARY or op in BROADCAST:
            return self._elementwise(node)
        if op == "Concat":
            return self._concat(node)
        if op == "Split":
            return self._split(node)
        if op == "Slice":
            return self._slice(node)
        if op in REDUCE or op in ("ArgMax", "ArgMin"):
            return self._reduce(node)
        if op in ("Softmax", "LogSoftmax", "Hardmax"):
            return self._softmax(node)
        if op == "Pad":
            return self._pad(node)
        if op == "BatchNormalization":
            return self._batchnorm(node)
        return _Decision(None, "no channels-last form" if op in _REPORTED else "")

    def _accept(self, node: Node, build: Callable[[], None], outputs: Sequence[Value] | None = None) -> _Decision:
        for o in node.outputs if outputs is None else outputs:
            self.planned.add(id(o))
        return _Decision(build)

    def _explicit_pads(self, node: Node, x: Value, kernel: Sequence[int], strides: Sequence[int],
                       dilations: Sequence[int]) -> list[int] | str:
        auto = node.attr("auto_pad", b"NOTSET")
        auto = auto.decode() if isinstance(auto, bytes) else str(auto)
        if auto == "NOTSET":
            return _ints(node, "pads", [0, 0, 0, 0])
        if auto == "VALID":
            return [0, 0, 0, 0]
        if auto not in ("SAME_UPPER", "SAME_LOWER"):
            return f"auto_pad {auto!r}"
        spatial = x.shape[2:] if x.shape is not None else None
        if spatial is None or not all(isinstance(d, int) for d in spatial):
            return f"auto_pad {auto} with symbolic spatial dims"
        begins, ends = [], []
        for size, k, s, d in zip(spatial, kernel, strides, dilations, strict=True):
            out = -(-size // s)
            total = max(0, (out - 1) * s + (k - 1) * d + 1 - size)
            first = total // 2 if auto == "SAME_UPPER" else total - total // 2
            begins.append(first)
            ends.append(total - first)
        return begins + ends

    def _conv(self, node: Node) -> _Decision:
        x, w = node.inputs[0], node.inputs[1]
        b = node.inputs[2] if len(node.inputs) > 2 else None
        if _rank(x) != 4:
            return _Decision(None, "not a 2-d convolution" if _rank(x) is not None else "input rank unknown")
        weights = constant_value(self.g, w)
        if weights is None or weights.ndim != 4:
            return _Decision(None, "weights are not a constant (they would be transposed at every call)")
        strides = _ints(node, "strides", [1, 1])
        dilations = _ints(node, "dilations", [1, 1])
        pads = self._explicit_pads(node, x, weights.shape[2:], strides, dilations)
        if isinstance(pads, str):
            return _Decision(None, pads)

        def build() -> None:
            attrs = {"strides": strides, "pads": pads, "dilations": dilations, "group": int(node.attr("group", 1))}
            inputs = [self.to_nhwc(x), self.hwio(w, weights)] + ([b] if b is not None else [])
            self.emit(node, "NhwcConv", inputs, attrs, domain=DOMAIN)

        return self._accept(node, build)

    def _pool(self, node: Node) -> _Decision:
        x = node.inputs[0]
        kernel = _ints(node, "kernel_shape", [])
        if len(kernel) != 2:
            return _Decision(None, "not a 2-d pooling")
        if len(node.outputs) > 1:
            return _Decision(None, "MaxPool with Indices (they index NCHW)")
        strides = _ints(node, "strides", [1, 1])
        dilations = _ints(node, "dilations", [1, 1])
        pads = self._explicit_pads(node, x, kernel, strides, dilations)
        if isinstance(pads, str):
            return _Decision(None, pads)

        def build() -> None:
            attrs = {"kernel_shape": kernel, "strides": strides, "pads": pads, "ceil_mode": int(node.attr("ceil_mode", 0))}
            if node.attr("dilations") is not None:
                attrs["dilations"] = dilations
            if node.op_type == "AveragePool":
                attrs["count_include_pad"] = int(node.attr("count_include_pad", 0))
            self.emit(node, "Nhwc" + node.op_type, [self.to_nhwc(x)], attrs, domain=DOMAIN)

        return self._accept(node, build)

    def _global_pool(self, node: Node) -> _Decision:
        op = "ReduceMean" if node.op_type == "GlobalAveragePool" else "ReduceMax"

        def build() -> None:
            x = self.to_nhwc(node.inputs[0])
            if self.opset >= 18:
                self.emit(node, op, [x, self.const(np.array([1, 2], np.int64), "axes")], {"keepdims": 1})
            else:
                self.emit(node, op, [x], {"axes": [1, 2], "keepdims": 1})

        return self._accept(node, build)

    def _resize(self, node: Node) -> _Decision:
        if self.opset < 11:
            return _Decision(None, "Resize before opset 11")
        if _rank(node.inputs[0]) != 4:
            return _Decision(None, "not a 2-d resize")
        for a in ("axes", "antialias"):
            if node.attr(a):
                return _Decision(None, f"Resize with {a}")
        policy = node.attr("keep_aspect_ratio_policy", b"stretch")
        if (policy.decode() if isinstance(policy, bytes) else policy) != "stretch":
            return _Decision(None, "Resize keeping the aspect ratio")
        params = list(node.inputs[1:]) + [None] * (4 - len(node.inputs))
        roi, scales, sizes = params[:3]
        values = [constant_value(self.g, v) if v is not None else None for v in (roi, scales, sizes)]
        if any(v is not None and val is None for v, val in zip((roi, scales, sizes), values, strict=True)):
            return _Decision(None, "Resize with runtime roi, scales or sizes")
        sc, sz = values[1], values[2]
        if sc is not None and sc.size == 0:
            sc = None
        if sz is not None and sz.size == 0:
            sz = None
        if (sc is None) == (sz is None):
            return _Decision(None, "Resize needs exactly one of scales and sizes")
        x = node.inputs[0]
        if sc is not None and (sc.size != 4 or sc[0] != 1 or sc[1] != 1):
            return _Decision(None, "Resize scales batch or channels")
        if sz is not None and (sz.size != 4 or x.shape is None or [sz[0], sz[1]] != list(x.shape[:2])):
            return _Decision(None, "Resize sizes change batch or channels (or they are not known)")

        def build() -> None:
            keep = {k: a for k, a in node.attributes.items()}
            self.emit(node, "NhwcResize", [self.to_nhwc(x), roi, scales, sizes], keep, domain=DOMAIN)

        return self._accept(node, build)

    def _operand_problem(self, v: Value | None) -> str | None:
        if v is None or self.tagged(v):
            return None
        r = _rank(v)
        if r is None:
            return f"operand {v.name!r} has unknown rank"
        if r > 4:
            return f"operand {v.name!r} broadcasts to rank {r}"
        if r in (0, 4) or constant_value(self.g, v) is not None:
            return None
        return f"operand {v.name!r} of rank {r} is not a constant"

    def _elementwise(self, node: Node) -> _Decision:
        if node.op_type == "Dropout" and len(node.outputs) > 1:
            return _Decision(None, "Dropout with a mask")
        if len(node.outputs) != 1 or _rank(node.outputs[0]) != 4:
            return _Decision(None, "output is not 4-d")
        scalars = _SCALAR_INPUTS.get(node.op_type, ())
        for i, v in enumerate(node.inputs):
            if i not in scalars:
                problem = self._operand_problem(v)
                if problem:
                    return _Decision(None, problem)

        def build() -> None:
            ins = [v if (i in scalars or v is None) else self.operand(v) for i, v in enumerate(node.inputs)]
            self.emit(node, node.op_type, ins, dict(node.attributes))

        return self._accept(node, build)

    def _concat(self, node: Node) -> _Decision:
        for v in node.inputs:
            if _rank(v) != 4:
                return _Decision(None, "an input is not 4-d")

        def build() -> None:
            attrs = dict(node.attributes)
            attrs["axis"] = _phys_axis(int(node.attr("axis")))
            self.emit(node, "Concat", [self.to_nhwc(v) for v in node.inputs], attrs)

        return self._accept(node, build)

    def _split(self, node: Node) -> _Decision:
        if _rank(node.inputs[0]) != 4 or not self.tagged(node.inputs[0]):
            return _Decision(None, "input is not channels-last")

        def build() -> None:
            attrs = dict(node.attributes)
            attrs["axis"] = _phys_axis(int(node.attr("axis", 0)))
            self.emit(node, "Split", [self.to_nhwc(node.inputs[0]), *node.inputs[1:]], attrs)

        return self._accept(node, build)

    def _slice(self, node: Node) -> _Decision:
        if self.opset < 10:
            return _Decision(None, "Slice before opset 10")
        if not self.tagged(node.inputs[0]):
            return _Decision(None, "input is not channels-last")
        starts = constant_value(self.g, node.inputs[1])
        axes_in = node.inputs[3] if len(node.inputs) > 3 else None
        axes = constant_value(self.g, axes_in) if axes_in is not None else None
        if starts is None or (axes_in is not None and axes is None):
            return _Decision(None, "Slice with runtime starts or axes")
        if axes is None:
            axes = np.arange(starts.size)

        def build() -> None:
            new_axes = self.const(np.array([_phys_axis(int(a)) for a in axes.reshape(-1)], np.int64), "axes")
            ins = [self.to_nhwc(node.inputs[0]), node.inputs[1], node.inputs[2], new_axes,
                   node.inputs[4] if len(node.inputs) > 4 else None]
            while ins[-1] is None:
                ins.pop()
            self.emit(node, "Slice", ins, dict(node.attributes))

        return self._accept(node, build)

    def _reduce(self, node: Node) -> _Decision:
        if not self.tagged(node.inputs[0]):
            return _Decision(None, "input is not channels-last")
        if int(node.attr("keepdims", 1)) != 1:
            return _Decision(None, "keepdims=0 drops axes")
        if node.op_type in ("ArgMax", "ArgMin"):
            def build_arg() -> None:
                attrs = dict(node.attributes)
                attrs["axis"] = _phys_axis(int(node.attr("axis", 0)))
                self.emit(node, node.op_type, [self.to_nhwc(node.inputs[0])], attrs)

            return self._accept(node, build_arg)
        axes_in = node.inputs[1] if len(node.inputs) > 1 else None
        axes = constant_value(self.g, axes_in) if axes_in is not None else None
        if axes_in is not None and axes is None:
            return _Decision(None, "runtime axes")

        def build() -> None:
            attrs = dict(node.attributes)
            ins = [self.to_nhwc(node.inputs[0])]
            if node.attr("axes") is not None:  # sorted, the order TVM's ConvertLayout gives
                attrs["axes"] = sorted(_phys_axis(int(a)) for a in node.attr("axes"))
            if axes is not None:
                ins.append(self.const(np.array(sorted(_phys_axis(int(a)) for a in axes.reshape(-1)), np.int64), "axes"))
            self.emit(node, node.op_type, ins, attrs)

        return self._accept(node, build)

    def _softmax(self, node: Node) -> _Decision:
        if self.opset < 13:
            return _Decision(None, f"{node.op_type} before opset 13 flattens from its axis")

        def build() -> None:
            attrs = dict(node.attributes)
            attrs["axis"] = _phys_axis(int(node.attr("axis", -1)))
            self.emit(node, node.op_type, [self.to_nhwc(node.inputs[0])], attrs)

        return self._accept(node, build)

    def _pad(self, node: Node) -> _Decision:
        if not self.tagged(node.inputs[0]):
            return _Decision(None, "input is not channels-last")
        if self.opset < 11:
            pads = node.attr("pads")
        else:
            if len(node.inputs) > 3 and node.inputs[3] is not None:
                return _Decision(None, "Pad with axes")
            pads = constant_value(self.g, node.inputs[1])
        if pads is None or len(pads) != 8:
            return _Decision(None, "runtime pads")
        pads = [int(p) for p in np.asarray(pads).reshape(-1)]
        new = [pads[a] for a in TO_NHWC] + [pads[4 + a] for a in TO_NHWC]

        def build() -> None:
            x = self.to_nhwc(node.inputs[0])
            if self.opset < 11:
                attrs = dict(node.attributes)
                attrs["pads"] = new
                self.emit(node, "Pad", [x], attrs)
            else:
                self.emit(node, "Pad", [x, self.const(np.array(new, np.int64), "pads"), *node.inputs[2:]],
                          dict(node.attributes))

        return self._accept(node, build)

    def _batchnorm(self, node: Node) -> _Decision:
        """Inference BatchNormalization in a region: x * s + t over the last axis, s and t computed here."""
        if len(node.outputs) > 1 or int(node.attr("training_mode", 0)):
            return _Decision(None, "BatchNormalization in training mode")
        params = [constant_value(self.g, v) for v in node.inputs[1:5]]
        if len(params) != 4 or any(p is None or p.ndim != 1 for p in params):
            return _Decision(None, "BatchNormalization with runtime parameters")
        gamma, beta, mean, var = (p.astype(np.float64) for p in params)  # type: ignore[union-attr]
        scale = gamma / np.sqrt(var + float(node.attr("epsilon", 1e-5)))
        dtype = params[0].dtype  # type: ignore[union-attr]

        def build() -> None:
            x = self.to_nhwc(node.inputs[0])
            s = self.const(scale.astype(dtype).reshape(1, 1, 1, -1), "scale")
            t = self.const((beta - mean * scale).astype(dtype).reshape(1, 1, 1, -1), "shift")
            b = Builder(self.g, node.name or "batchnorm")
            y = b.Add(b.Mul(x, s, shape=_nhwc_shape(node.outputs[0])), t, shape=_nhwc_shape(node.outputs[0]))
            self.rw.insert_before(node, b.nodes)
            self.nhwc[id(node.outputs[0])] = y
            self.converted.append((node, [(node.outputs[0], y, True)]))
            self.stats["converted_BatchNormalization"] += 1
            self.replaced_consts.extend(v for v in node.inputs[1:5] if v is not None)

        return self._accept(node, build)

    def _transpose(self, node: Node) -> _Decision:
        """A model Transpose after a region (through other Transposes): composed with the region's layout into
        one Transpose of the NHWC value, or none when they cancel. Its output is NCHW-plain as before."""
        perm = node.attr("perm")
        if perm is None or len(perm) != 4 or not self._reaches_region(node.inputs[0]):
            return _Decision(None)
        own = [int(a) for a in perm]

        def build() -> None:
            src, p = self.resolve(node.inputs[0])
            total = _compose(p, own)
            if total == [0, 1, 2, 3]:
                self.converted.append((node, [(node.outputs[0], src, False)]))
                self.stats["transposes_cancelled"] += 1
                return
            b = Builder(self.g, node.name or "transpose")
            out = b.Transpose(src, perm=total, shape=node.outputs[0].shape, dtype=node.outputs[0].dtype)
            self.rw.insert_before(node, b.nodes)
            self.converted.append((node, [(node.outputs[0], out, False)]))
            self.stats["transposes_merged"] += 1

        return _Decision(build)

    def _reaches_region(self, v: Value | None) -> bool:
        """Whether `v` is an NHWC value or a chain of model 4-d Transposes of one."""
        while v is not None and not self.tagged(v):
            p = v.producer
            if p is None or p.domain or p.op_type != "Transpose" or p.graph is not self.g or len(p.attr("perm") or ()) != 4:
                return False
            v = p.inputs[0]
        return v is not None

    def resolve(self, v: Value) -> tuple[Value, list[int]]:
        """`(s, p)` with `v == Transpose(s, p)` and `s` a value of the rewritten graph: through the model's 4-d
        Transposes (noted for removal once unused), down to an NHWC value (whose logical value is
        `Transpose(s, PHYS)`) or to a value that is neither."""
        perm, cur = [0, 1, 2, 3], v
        walked = []
        while not self.tagged(cur):
            p = cur.producer
            if p is None or p.domain or p.op_type != "Transpose" or p.graph is not self.g or len(p.attr("perm") or ()) != 4:
                break
            walked.append(p)
            perm, cur = _compose([int(a) for a in p.attr("perm")], perm), p.inputs[0]
        self.bypassed.extend(walked)
        if self.tagged(cur):
            return self.nhwc[id(cur)], _compose(list(PHYS), perm)
        return cur, perm

    # ----- rewriting --------------------------------------------------------------------------
    def run(self) -> PassResult:
        self.plan()
        work = [(n, d) for n, d in self.decisions if d.convert is not None]
        if not work and not self._needs_mark():
            return PassResult(False)
        for node, d in work:
            self.anchor = node
            assert d.convert is not None
            d.convert()
        self._finish()
        self.g.metadata_props[METADATA_KEY] = "NHWC"
        if work:
            self.g.opset_imports.setdefault(DOMAIN, 1)
        return PassResult(True, dict(self.stats))

    def _needs_mark(self) -> bool:
        """The graph has 2-d convolutions (TVM's own conversion would act on them) and is not marked yet."""
        if self.g.metadata_props.get(METADATA_KEY) == "NHWC":
            return False
        return any(n.op_type in ("Conv", "ConvTranspose") and not n.domain and _rank(n.inputs[0]) == 4
                   for n in self.g)

    def emit(self, node: Node, op_type: str, inputs: Sequence[Value | None], attrs: dict, domain: str = "") -> None:
        """The converted form of `node` (its outputs NHWC), inserted just before it."""
        b = Builder(self.g, node.name or op_type.lower())
        outs = b.op(op_type, list(inputs), attrs, domain=domain, num_outputs=len(node.outputs),
                    dtypes=[o.dtype for o in node.outputs], shapes=[_nhwc_shape(o) for o in node.outputs])
        outs = outs if isinstance(outs, tuple) else (outs,)
        self.rw.insert_before(node, b.nodes)
        pairs = []
        for old, new in zip(node.outputs, outs, strict=True):
            self.nhwc[id(old)] = new
            pairs.append((old, new, True))
        self.converted.append((node, pairs))
        self.stats[f"converted_{node.op_type}"] += 1

    def const(self, array: np.ndarray, name: str) -> Value:
        return self.g.add_constant(array, f"{self.anchor.name if self.anchor else 'layout'}_{name}")

    def hwio(self, w: Value, weights: np.ndarray) -> Value:
        """The HWIO constant of the OIHW weights `w` (one per weight value)."""
        if id(w) not in self.to_nhwc_memo:
            self.to_nhwc_memo[id(w)] = self.g.add_constant(np.ascontiguousarray(weights.transpose(OIHW_TO_HWIO)),
                                                           f"{w.name}_hwio")
            self.stats["weights_converted"] += 1
            self.replaced_consts.append(w)
        return self.to_nhwc_memo[id(w)]

    def operand(self, v: Value) -> Value:
        """`v` as an operand of an NHWC op: NHWC if 4-d, a scalar as it is, a lower-rank constant re-laid out."""
        r = _rank(v)
        if self.tagged(v) or r == 4:
            return self.to_nhwc(v)
        if r == 0:
            return v
        key = ("operand", id(v))
        if key not in self.to_nhwc_memo:  # type: ignore[comparison-overlap]
            arr = constant_value(self.g, v)
            assert arr is not None
            full = arr.reshape((1,) * (4 - arr.ndim) + arr.shape)
            self.to_nhwc_memo[key] = self.g.add_constant(np.ascontiguousarray(full.transpose(TO_NHWC)),  # type: ignore[index]
                                                         f"{v.name}_nhwc")
            self.stats["constants_converted"] += 1
            self.replaced_consts.append(v)
        return self.to_nhwc_memo[key]  # type: ignore[index]

    def to_nhwc(self, v: Value) -> Value:
        """The NHWC form of the 4-d value `v`: its converted value, a transposed constant, or a transpose edge
        (composed with the model's own transposes before it; cancelled when they compose to the identity)."""
        if self.tagged(v):
            return self.nhwc[id(v)]
        if id(v) in self.to_nhwc_memo:
            return self.to_nhwc_memo[id(v)]
        arr = constant_value(self.g, v)
        if arr is not None:
            out = self.g.add_constant(np.ascontiguousarray(arr.transpose(TO_NHWC)), f"{v.name}_nhwc")
            self.stats["constants_converted"] += 1
            self.replaced_consts.append(v)
        else:
            src, perm = self.resolve(v)
            total = _compose(perm, list(TO_NHWC))
            if total == [0, 1, 2, 3]:
                out = src
                if src is not v:
                    self.stats["transposes_cancelled"] += 1
            else:
                b = Builder(self.g, f"{v.name}_to_nhwc")
                out = b.Transpose(src, perm=total, shape=_nhwc_shape(v), dtype=v.dtype)
                assert self.anchor is not None
                self.rw.insert_before(self.anchor, b.nodes)
                self.stats["transposes_inserted"] += 1
        self.to_nhwc_memo[id(v)] = out
        return out

    def _finish(self) -> None:
        """Edges back to NCHW for what non-converted readers and graph outputs see; old nodes erased, then the
        model Transposes and constants the rewrite left unused."""
        doomed = {id(n) for n, _ in self.converted}
        for _node, pairs in self.converted:
            for old, new, is_nhwc in pairs:
                if not is_nhwc:
                    self.rw.replace_uses(old, new)
                elif old.graph_outputs or any(id(u) not in doomed for u in old.users()):
                    b = Builder(self.g, f"{old.name}_to_nchw")
                    back = b.Transpose(new, perm=list(TO_NCHW), shape=old.shape, dtype=old.dtype)
                    assert new.producer is not None
                    self.rw.insert_after(new.producer, b.nodes)
                    self.stats["transposes_inserted"] += 1
                    self.rw.replace_uses(old, back)
        for node, _ in reversed(self.converted):  # readers before producers
            self.rw.erase(node)
        for t in reversed(list(dict.fromkeys(self.bypassed))):
            if t.graph is self.g and not any(o.is_used() for o in t.outputs):
                self.rw.erase(t)
                self.stats["model_transposes_removed"] += 1
        for v in dict.fromkeys(self.replaced_consts):
            if v.is_used():
                continue
            if v.name in self.g.initializers and not self.g.is_graph_input(v):
                del self.g.initializers[v.name]
            elif v.producer is not None and v.producer.graph is self.g:
                self.rw.erase(v.producer)


#: Passes that hide convolutions inside Lepton-domain ops `convert-layout` does not convert: it goes before them.
HIDES_CONVOLUTIONS = ("fuse-activation",)


def with_layout_pass(pipeline: str, spec: str = "convert-layout") -> str:
    """`pipeline` with `spec` where it belongs: after cleanup and BatchNorm/bias folding (convolutions with their
    biases), before the first pass that fuses convolutions into ops it cannot convert (`HIDES_CONVOLUTIONS`);
    at the end when there is none. A pipeline that already names `convert-layout` is returned as it is."""
    items, depth, cur = [], 0, ""
    for ch in pipeline:
        depth += (ch in "{[") - (ch in "}]")
        if ch == "," and depth == 0:
            items.append(cur.strip())
            cur = ""
        else:
            cur += ch
    items = [i for i in [*items, cur.strip()] if i]
    names = [i.split("{")[0].strip() for i in items]
    if ConvertLayout.name in names:
        return pipeline
    at = next((i for i, n in enumerate(names) if n in HIDES_CONVOLUTIONS), len(items))
    return ",".join([*items[:at], spec, *items[at:]])


@register
@dataclass(frozen=True)
class ConvertLayout(Pass):
    """Lay 2-d convolutions and the ops around them out in `format` (module docstring)."""

    name: ClassVar[str] = "convert-layout"
    summary: ClassVar[str] = "channels-last regions around 2-d convolutions: Lepton NHWC ops, weights HWIO, transposes at edges"
    repeat: ClassVar[bool] = False

    format: Literal["NHWC"] = "NHWC"

    def run(self, graph: Graph, ctx: PassContext) -> PassResult:
        return _Converter(graph).run()


def layout_plan(graph: Graph) -> dict[str, str]:
    """Per node of `graph` (not subgraphs) that `convert-layout` would convert: "NHWC"; per convolution, pooling
    or resize it would leave (and other ops it gives a reason for): why. The graph is not changed."""
    return _Converter(graph).plan()
