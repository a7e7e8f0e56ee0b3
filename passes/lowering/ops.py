"""`lower-ops`: rewrite ops TVM 0.27's ONNX frontend lacks, or converts wrongly, into ops it takes.

One rule per case; each keeps onnxruntime's (ONNX's) outputs:

- `isinf_directions`: `IsInf` with `detect_negative=0` or `detect_positive=0` (the converter
  ignores both attributes) -> `And(IsInf(x), x > 0)` / `And(IsInf(x), x < 0)` / all false.
- `pow_types`: `Pow` whose base and exponent types differ, or whose base is an integer (the
  converter needs one float type): a float base takes the exponent cast to its type; an
  integer base is computed in float64 and cast back (ONNX's integer Pow truncates the same way).
- `sinh_cosh`: `Sinh`/`Cosh` (LLVM has no intrinsic; the build fails) -> exponentials, with a
  Taylor polynomial for `Sinh` where |x| < 1 (the exponential difference cancels there).
- `dropout_inference`: `Dropout` in inference form (no `training_mode`, or a constant false
  one, or a constant ratio of 0) -> its data input, and a mask of ones (the converter's mask is
  float, ONNX's is bool).
- `eye_like_static`: `EyeLike` of a static shape -> the constant (the converter rejects a
  `dtype` attribute that differs from the input's).
- `space_to_depth_crd`: `SpaceToDepth` with `mode="CRD"` (opset 28; the converter ignores
  `mode`) -> Reshape/Transpose/Reshape.
- `lp_normalization`: `LpNormalization` (no converter) -> `x / norm` along the axis, 0 where
  the norm is 0 (ONNX's reference).
- `conv_transpose_output_shape`: `ConvTranspose` with `output_shape` (the converter ignores it)
  -> the same node with explicit `pads` (ONNX's formula, `auto_pad` rules for the split).
- `cum_prod`: `CumProd` over a static axis (no converter) -> the running product, one Mul per
  step along the axis (the order ONNX's reference multiplies in), `exclusive`/`reverse` kept.
- `one_hot`: `OneHot` with a constant depth (the converter also wants constant values) ->
  `Where(Equal(indices, positions), on, off)`; negative indices count from the end, indices out
  of range give all-off rows, as ONNX defines.
- `pad_runtime_value`: constant-mode `Pad` whose `constant_value` is not a constant (the
  converter needs one) -> zero padding, then `Where` puts the value in the padded positions.
- `reduce_extreme_infinity`: float `ReduceMax`/`ReduceMin` (TVM starts from the lowest/highest
  finite value, so a row of -inf/+inf or an empty one gives -FLT_MAX/FLT_MAX) -> the same
  reduction, set to the infinity where no element differs from it.
- `float_mod`: float `Mod` with `fmod=0` (TVM's floor-mod is NaN for an infinite divisor) ->
  the truncated remainder, corrected by the divisor where the signs differ (numpy's `mod`).
- `reduce_bool`: `ReduceMax`/`ReduceMin` of bool (no bool kernel) -> the same reduction of
  uint8 0/1 (any/all; the empty set's identities are 0 and 255, False and True) cast back.

Nodes in other configurations are left alone (the check says why).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np
import onnx

from lepton_ir.rewriter import Rewriter
from lepton_ir import Graph, Node, Value
from lepton_ir.core import Attr
from lepton_ir.types import is_float, np_dtype

from passes.base import register
from passes.rewrite import (
    Match,
    RewritePass,
    Rule,
    constant_value,
    failed,
    matched,
    replace_value,
    static_shape,
)

T = onnx.TensorProto


class _Emit:
    """Builds nodes to insert before `anchor`, named after it."""

    def __init__(self, graph: Graph, anchor: Node) -> None:
        self.graph, self.anchor, self.nodes = graph, anchor, []
        self.prefix = anchor.name or anchor.op_type.lower()

    def __call__(self, op: str, inputs: list[Value | None], dtype: int | None, shape: Any, **attrs: Any) -> Value:
        out = Value(self.graph.fresh_name(f"{self.prefix}_{op.lower()}"), dtype, None if shape is None else tuple(shape))
        self.nodes.append(Node("", op, inputs, attrs, outputs=[out], name=self.graph.fresh_name(f"{self.prefix}_{op}")))
        return out

    def const(self, array: np.ndarray) -> Value:
        return self.graph.add_constant(np.asarray(array), f"{self.prefix}_c")

    def replace(self, results: list[Value | None]) -> None:
        """Insert the nodes, make readers of each output of the anchor read `results[i]`, remove it."""
        self.graph.insert_before(self.anchor, self.nodes)
        for out, new in zip(self.anchor.outputs, results, strict=False):
            if new is not None and (out.uses or self.graph.is_graph_output(out)):
                ok = replace_value(self.graph, out, new)
                assert ok, "checked by the rule"
        self.graph.remove(self.anchor)


def _opset(graph: Graph) -> int:
    return graph.root().opset_imports.get("", 1)


def _axes_input(e: _Emit, graph: Graph, axes: list[int], data: Value, op: str, dtype: int | None, shape: Any,
                keepdims: int = 1) -> Value:
    """`op` (a Reduce op) over `axes`, as an input (opset 18+, 13+ for ReduceSum) or an attribute."""
    opset = _opset(graph)
    as_input = opset >= 18 or (op == "ReduceSum" and opset >= 13)
    if as_input:
        return e(op, [data, e.const(np.array(axes, dtype=np.int64))], dtype, shape, keepdims=keepdims)
    return e(op, [data], dtype, shape, axes=axes, keepdims=keepdims)


# ----- rules ----------------------------------------------------------------------------


class IsInfDirections(Rule):
    name = "isinf_directions"
    op_types = ("IsInf",)

    def check(self, node: Node, graph: Graph) -> Match:
        neg, pos = int(node.attr("detect_negative", 1)), int(node.attr("detect_positive", 1))
        if neg and pos:
            return failed("detects both infinities (the converter's behaviour)")
        if node.inputs[0] is None or not is_float(node.inputs[0].dtype):
            return failed("input type unknown")
        return matched(neg=neg, pos=pos)

    def rewrite(self, rw: Rewriter, node: Node, m: Match) -> None:
        graph = node.graph
        assert graph is not None
        e = _Emit(graph, node)
        x = node.inputs[0]
        shape = node.outputs[0].shape
        inf = e("IsInf", [x], T.BOOL, shape)
        zero = e.const(np.zeros((), dtype=np_dtype(x.dtype)))
        if m["pos"]:
            side = e("Greater", [x, zero], T.BOOL, shape)
        elif m["neg"]:
            side = e("Less", [x, zero], T.BOOL, shape)
        else:
            side = e("Not", [inf], T.BOOL, shape)
        e.replace([e("And", [inf, side], T.BOOL, shape)])


class PowTypes(Rule):
    name = "pow_types"
    op_types = ("Pow",)

    def check(self, node: Node, graph: Graph) -> Match:
        b, x = node.inputs[0], node.inputs[1]
        if b is None or x is None or b.dtype is None or x.dtype is None:
            return failed("operand types unknown")
        if is_float(b.dtype) and b.dtype == x.dtype:
            return failed("one float type (the converter takes it)")
        if b.dtype == T.BFLOAT16 or x.dtype == T.BFLOAT16:
            return failed("bfloat16 operand")
        return matched()

    def rewrite(self, rw: Rewriter, node: Node, m: Match) -> None:
        graph = node.graph
        assert graph is not None
        e = _Emit(graph, node)
        b, x = node.inputs[0], node.inputs[1]
        out = node.outputs[0]
        if is_float(b.dtype):
            e.replace([e("Pow", [b, e("Cast", [x], b.dtype, x.shape, to=b.dtype)], b.dtype, out.shape)])
            return
        bd = e("Cast", [b], T.DOUBLE, b.shape, to=T.DOUBLE)
        xd = x if x.dtype == T.DOUBLE else e("Cast", [x], T.DOUBLE, x.shape, to=T.DOUBLE)
        p = e("Pow", [bd, xd], T.DOUBLE, out.shape)
        e.replace([e("Cast", [p], b.dtype, out.shape, to=b.dtype)])


class SinhCosh(Rule):
    name = "sinh_cosh"
    op_types = ("Sinh", "Cosh")

    def check(self, node: Node, graph: Graph) -> Match:
        x = node.inputs[0]
        if x is None or x.dtype not in (T.FLOAT, T.DOUBLE, T.FLOAT16):
            return failed("input is not float32/float64/float16")
        return matched()

    def rewrite(self, rw: Rewriter, node: Node, m: Match) -> None:
        graph = node.graph
        assert graph is not None
        e = _Emit(graph, node)
        x = node.inputs[0]
        dt, shape = x.dtype, x.shape
        work = T.FLOAT if dt == T.FLOAT16 else dt
        nd = np_dtype(work)
        xw = x if work == dt else e("Cast", [x], work, shape, to=work)
        ex = e("Exp", [xw], work, shape)
        emx = e("Exp", [e("Neg", [xw], work, shape)], work, shape)
        half = e.const(np.array(0.5, dtype=nd))
        if node.op_type == "Cosh":
            y = e("Mul", [e("Add", [ex, emx], work, shape), half], work, shape)
        else:
            big = e("Mul", [e("Sub", [ex, emx], work, shape), half], work, shape)
            x2 = e("Mul", [xw, xw], work, shape)
            # x (1 + x^2/6 (1 + x^2/20 (1 + x^2/42 (1 + x^2/72)))): |error| < x^11/4e7 for |x| < 1
            poly = e.const(np.array(1.0, dtype=nd))
            for d in (72.0, 42.0, 20.0, 6.0):
                poly = e("Add", [e.const(np.array(1.0, dtype=nd)), e("Mul", [x2, e("Mul", [poly, e.const(np.array(1 / d, dtype=nd))], work, shape)], work, shape)], work, shape)
            small = e("Mul", [xw, poly], work, shape)
            near = e("Less", [e("Abs", [xw], work, shape), e.const(np.array(1.0, dtype=nd))], T.BOOL, shape)
            y = e("Where", [near, small, big], work, shape)
        e.replace([y if work == dt else e("Cast", [y], dt, shape, to=dt)])


class DropoutInference(Rule):
    name = "dropout_inference"
    op_types = ("Dropout",)

    def check(self, node: Node, graph: Graph) -> Match:
        x = node.inputs[0]
        if x is None or x.dtype is None:
            return failed("data type unknown")
        if len(node.inputs) > 2 and node.inputs[2] is not None:
            training = constant_value(graph, node.inputs[2])
            if training is None:
                return failed("training_mode is not a constant")
            if bool(np.asarray(training).reshape(-1)[0]):
                ratio = constant_value(graph, node.inputs[1]) if len(node.inputs) > 1 and node.inputs[1] is not None else None
                if ratio is None or float(np.asarray(ratio).reshape(-1)[0]) != 0.0:
                    return failed("training mode with a ratio that is not a constant 0 (random)")
        mask = node.outputs[1] if len(node.outputs) > 1 else None
        if mask is not None and (mask.uses or graph.is_graph_output(mask)) and static_shape(x) is None:
            return failed("mask is used and the data shape is not static")
        return matched()

    def rewrite(self, rw: Rewriter, node: Node, m: Match) -> None:
        graph = node.graph
        assert graph is not None
        e = _Emit(graph, node)
        x = node.inputs[0]
        y = e("Identity", [x], x.dtype, x.shape)
        results: list[Value | None] = [y]
        if len(node.outputs) > 1:
            shape = static_shape(x)
            results.append(e("Identity", [e.const(np.ones(shape, dtype=bool))], T.BOOL, shape) if shape is not None else None)
        e.replace(results)


class EyeLikeStatic(Rule):
    name = "eye_like_static"
    op_types = ("EyeLike",)

    def check(self, node: Node, graph: Graph) -> Match:
        shape = static_shape(node.inputs[0])
        if shape is None or len(shape) != 2:
            return failed("input shape is not a static 2-D shape")
        dtype = node.attr("dtype", node.inputs[0].dtype)
        try:
            nd = np_dtype(int(dtype))
        except (KeyError, TypeError, ValueError):
            return failed("output dtype unknown")
        return matched(shape=shape, nd=nd, dtype=int(dtype))

    def rewrite(self, rw: Rewriter, node: Node, m: Match) -> None:
        graph = node.graph
        assert graph is not None
        e = _Emit(graph, node)
        rows, cols = m["shape"]
        eye = np.eye(rows, cols, k=int(node.attr("k", 0)), dtype=m["nd"])
        e.replace([e("Identity", [e.const(eye)], m["dtype"], (rows, cols))])


class SpaceToDepthCRD(Rule):
    name = "space_to_depth_crd"
    op_types = ("SpaceToDepth",)

    def check(self, node: Node, graph: Graph) -> Match:
        mode = node.attr("mode", "DCR")
        mode = mode.decode() if isinstance(mode, bytes) else mode
        if mode != "CRD":
            return failed("DCR mode (the converter's)")
        shape = static_shape(node.inputs[0])
        if shape is None or len(shape) != 4:
            return failed("input shape is not a static 4-D shape")
        return matched(shape=shape)

    def rewrite(self, rw: Rewriter, node: Node, m: Match) -> None:
        graph = node.graph
        assert graph is not None
        e = _Emit(graph, node)
        b, c, h, w = m["shape"]
        bs = int(node.attr("blocksize"))
        x = node.inputs[0]
        six = (b, c, h // bs, bs, w // bs, bs)
        t = e("Reshape", [x, e.const(np.array(six, dtype=np.int64))], x.dtype, six)
        perm = [0, 1, 3, 5, 2, 4]
        t = e("Transpose", [t], x.dtype, [six[p] for p in perm], perm=perm)
        out = (b, c * bs * bs, h // bs, w // bs)
        e.replace([e("Reshape", [t, e.const(np.array(out, dtype=np.int64))], x.dtype, out)])


class LpNormalization(Rule):
    name = "lp_normalization"
    op_types = ("LpNormalization",)

    def check(self, node: Node, graph: Graph) -> Match:
        x = node.inputs[0]
        if x is None or x.shape is None or not is_float(x.dtype) or x.dtype == T.BFLOAT16:
            return failed("input rank or float type unknown")
        p = int(node.attr("p", 2))
        if p not in (1, 2):
            return failed(f"p={p}")
        axis = int(node.attr("axis", -1))
        if not -len(x.shape) <= axis < len(x.shape):
            return failed("axis out of range")
        return matched(p=p, axis=axis % len(x.shape))

    def rewrite(self, rw: Rewriter, node: Node, m: Match) -> None:
        graph = node.graph
        assert graph is not None
        e = _Emit(graph, node)
        x = node.inputs[0]
        kshape = list(x.shape)
        kshape[m["axis"]] = 1
        op = "ReduceL1" if m["p"] == 1 else "ReduceL2"
        norm = _axes_input(e, graph, [m["axis"]], x, op, x.dtype, kshape)
        zero = e.const(np.zeros((), dtype=np_dtype(x.dtype)))
        is_zero = e("Equal", [norm, zero], T.BOOL, kshape)
        e.replace([e("Where", [is_zero, zero, e("Div", [x, norm], x.dtype, x.shape)], x.dtype, x.shape)])


class ConvTransposeOutputShape(Rule):
    name = "conv_transpose_output_shape"
    op_types = ("ConvTranspose",)

    def check(self, node: Node, graph: Graph) -> Match:
        out_shape = node.attr("output_shape")
        if out_shape is None:
            return failed("no output_shape")
        x, w = node.inputs[0], node.inputs[1]
        xs, ws = static_shape(x), static_shape(w)
        if xs is None or ws is None:
            return failed("input or weight shape is not static")
        nsp = len(xs) - 2
        out_shape = [int(v) for v in out_shape][-nsp:]
        strides = list(node.attr("strides") or [1] * nsp)
        dil = list(node.attr("dilations") or [1] * nsp)
        opad = list(node.attr("output_padding") or [0] * nsp)
        kernel = list(node.attr("kernel_shape") or ws[2:])
        auto = node.attr("auto_pad", "NOTSET")
        auto = auto.decode() if isinstance(auto, bytes) else auto
        begin, end, extra = [], [], []
        for i in range(nsp):
            total = strides[i] * (xs[2 + i] - 1) + opad[i] + ((kernel[i] - 1) * dil[i] + 1) - out_shape[i]
            # ONNX's reference (floor division): SAME_UPPER puts the smaller half first, else the larger
            b = total // 2 if auto == "SAME_UPPER" else total - total // 2
            begin.append(b)
            end.append(total - b)
            if begin[-1] < 0:
                return failed("output_shape needs output before the first input position")
            extra.append(max(0, -end[-1]))  # a negative end pad is extra output at the end
            end[-1] = max(0, end[-1])
            if opad[i] + extra[-1] >= max(strides[i], dil[i]):
                return failed("output_padding would reach the stride")
        return matched(pads=begin + end, output_padding=[p + x for p, x in zip(opad, extra, strict=True)])

    def rewrite(self, rw: Rewriter, node: Node, m: Match) -> None:
        graph = node.graph
        assert graph is not None
        del node.attributes["output_shape"]
        node.attributes.pop("auto_pad", None)
        node.attributes["pads"] = Attr.infer(list(m["pads"]))
        if any(m["output_padding"]):
            node.attributes["output_padding"] = Attr.infer(list(m["output_padding"]))


class CumProd(Rule):
    name = "cum_prod"
    op_types = ("CumProd",)

    #: Longest axis unrolled (one Slice and one Mul per step).
    MAX_STEPS = 256

    def check(self, node: Node, graph: Graph) -> Match:
        x = node.inputs[0]
        axis = constant_value(graph, node.inputs[1]) if len(node.inputs) > 1 else None
        if x is None or x.shape is None or axis is None:
            return failed("rank unknown or axis not constant")
        rank = len(x.shape)
        a = int(np.asarray(axis).reshape(-1)[0])
        if not -rank <= a < rank:
            return failed("axis out of range")
        a %= rank
        n = x.shape[a]
        if not isinstance(n, int) or n == 0 or n > self.MAX_STEPS:
            return failed("axis length is not a static int in 1..MAX_STEPS")
        return matched(axis=a, n=n)

    def rewrite(self, rw: Rewriter, node: Node, m: Match) -> None:
        graph = node.graph
        assert graph is not None
        e = _Emit(graph, node)
        x = node.inputs[0]
        a, n = m["axis"], m["n"]
        exclusive, reverse = int(node.attr("exclusive", 0)), int(node.attr("reverse", 0))
        one_shape = tuple(1 if k == a else d for k, d in enumerate(x.shape))
        axes = e.const(np.array([a], dtype=np.int64))

        def take(i: int) -> Value:
            return e("Slice", [x, e.const(np.array([i], dtype=np.int64)), e.const(np.array([i + 1], dtype=np.int64)), axes],
                     x.dtype, one_shape)

        order = list(range(n))[::-1] if reverse else list(range(n))
        running: Value | None = None
        parts: dict[int, Value] = {}
        for i in order:
            if exclusive:
                parts[i] = running if running is not None else e("Identity", [e.const(np.ones(one_shape, dtype=np_dtype(x.dtype)))], x.dtype, one_shape)
                xi = take(i)
                running = xi if running is None else e("Mul", [running, xi], x.dtype, one_shape)
            else:
                xi = take(i)
                running = xi if running is None else e("Mul", [running, xi], x.dtype, one_shape)
                parts[i] = running
        seq = [parts[i] for i in range(n)]
        y = seq[0] if n == 1 else e("Concat", seq, x.dtype, x.shape, axis=a)
        if y.producer is None or y.producer not in e.nodes:
            y = e("Identity", [y], x.dtype, x.shape)
        e.replace([y])


class OneHot(Rule):
    name = "one_hot"
    op_types = ("OneHot",)

    def check(self, node: Node, graph: Graph) -> Match:
        indices, depth, values = node.inputs[0], node.inputs[1], node.inputs[2]
        d = constant_value(graph, depth)
        if indices is None or indices.shape is None or d is None or values is None or values.dtype is None:
            return failed("depth is not a constant, or the indices' rank or the values' type is unknown")
        if indices.dtype not in _INDEX_TYPES:
            return failed("indices of a type Cast cannot take exactly")
        rank = len(indices.shape) + 1
        axis = int(node.attr("axis", -1))
        if not -rank <= axis < rank:
            return failed("axis out of range")
        return matched(depth=int(np.asarray(d).reshape(-1)[0]), axis=axis % rank)

    def rewrite(self, rw: Rewriter, node: Node, m: Match) -> None:
        graph = node.graph
        assert graph is not None
        e = _Emit(graph, node)
        indices, values = node.inputs[0], node.inputs[2]
        d, a = m["depth"], m["axis"]
        out = node.outputs[0]
        idx = indices if indices.dtype == T.INT64 else e("Cast", [indices], T.INT64, indices.shape, to=T.INT64)
        neg = e("Less", [idx, e.const(np.array(0, np.int64))], T.BOOL, indices.shape)
        idx = e("Where", [neg, e("Add", [idx, e.const(np.array(d, np.int64))], T.INT64, indices.shape), idx], T.INT64, indices.shape)
        shape1 = (*indices.shape[:a], 1, *indices.shape[a:])
        if _opset(graph) >= 13:
            idx = e("Unsqueeze", [idx, e.const(np.array([a], np.int64))], T.INT64, shape1)
        else:
            idx = e("Unsqueeze", [idx], T.INT64, shape1, axes=[a])
        positions = np.arange(d, dtype=np.int64).reshape([d if k == a else 1 for k in range(len(shape1))])
        hit = e("Equal", [idx, e.const(positions)], T.BOOL, out.shape)
        off = e("Gather", [values, e.const(np.array(0, np.int64))], values.dtype, (), axis=0)
        on = e("Gather", [values, e.const(np.array(1, np.int64))], values.dtype, (), axis=0)
        e.replace([e("Where", [hit, on, off], values.dtype, out.shape)])


_INDEX_TYPES = {T.INT8, T.INT16, T.INT32, T.INT64, T.UINT8, T.UINT16, T.UINT32, T.FLOAT, T.DOUBLE, T.FLOAT16}


class PadRuntimeValue(Rule):
    name = "pad_runtime_value"
    op_types = ("Pad",)

    def check(self, node: Node, graph: Graph) -> Match:
        if _opset(graph) < 11 or len(node.inputs) < 3 or node.inputs[2] is None:
            return failed("no constant_value input")
        mode = node.attr("mode", "constant")
        mode = mode.decode() if isinstance(mode, bytes) else mode
        if mode != "constant":
            return failed(f"mode {mode!r}")
        if constant_value(graph, node.inputs[2]) is not None:
            return failed("constant_value is a constant (the converter takes it)")
        x = node.inputs[0]
        shape = static_shape(x)
        if shape is None or x.dtype is None or constant_value(graph, node.inputs[1]) is None:
            return failed("data shape not static or pads not constant")
        return matched(shape=shape)

    def rewrite(self, rw: Rewriter, node: Node, m: Match) -> None:
        graph = node.graph
        assert graph is not None
        e = _Emit(graph, node)
        x, pads, value = node.inputs[0], node.inputs[1], node.inputs[2]
        axes = node.inputs[3:4] if len(node.inputs) > 3 else []
        out = node.outputs[0]
        zero = e.const(np.zeros((), dtype=np_dtype(x.dtype)))
        padded = e("Pad", [x, pads, zero, *axes], x.dtype, out.shape, mode="constant")
        inside = e("ConstantOfShape", [e.const(np.array(m["shape"], np.int64))], T.BOOL, m["shape"],
                   value=np.zeros(1, dtype=bool))
        outside = e("Pad", [inside, pads, e.const(np.array(True)), *axes], T.BOOL, out.shape, mode="constant")
        e.replace([e("Where", [outside, value, padded], x.dtype, out.shape)])


class ReduceBool(Rule):
    name = "reduce_bool"
    op_types = ("ReduceMax", "ReduceMin")

    def check(self, node: Node, graph: Graph) -> Match:
        x = node.inputs[0]
        if x is None or x.dtype != T.BOOL:
            return failed("input is not bool")
        return matched()

    def rewrite(self, rw: Rewriter, node: Node, m: Match) -> None:
        graph = node.graph
        assert graph is not None
        e = _Emit(graph, node)
        x = node.inputs[0]
        out = node.outputs[0]
        xu = e("Cast", [x], T.UINT8, x.shape, to=T.UINT8)  # max = any, min = all; the empty set's identities too
        red = e(node.op_type, [xu, *node.inputs[1:]], T.UINT8, out.shape,
                **{k: a.value for k, a in node.attributes.items()})
        e.replace([e("Cast", [red], T.BOOL, out.shape, to=T.BOOL)])


class ReduceExtremeInfinity(Rule):
    """TVM starts a float max (min) reduction at the lowest (highest) finite value, not -inf (+inf):
    a row of -inf (+inf), or an empty one, reduces to -FLT_MAX (FLT_MAX). Where no element differs
    from the infinity, the result is set to it, as ONNX defines (masked attention rows need it)."""

    name = "reduce_extreme_infinity"
    op_types = ("ReduceMax", "ReduceMin")

    def check(self, node: Node, graph: Graph) -> Match:
        x = node.inputs[0]
        if x is None or not is_float(x.dtype) or x.dtype == T.BFLOAT16:
            return failed("input is not float16/32/64")
        out = node.outputs[0]
        if len(out.uses) == 1 and out.uses[0][1] == 1 and out.uses[0][0].op_type == "Where" \
                and out.uses[0][0].name.startswith(f"{node.name}_fixinf"):
            return failed("already fixed")
        return matched()

    def rewrite(self, rw: Rewriter, node: Node, m: Match) -> None:
        graph = node.graph
        assert graph is not None
        x, out = node.inputs[0], node.outputs[0]
        e = _Emit(graph, node)
        inf = np.array(-np.inf if node.op_type == "ReduceMax" else np.inf, dtype=np_dtype(x.dtype))
        differs = e("Not", [e("Equal", [x, e.const(inf)], T.BOOL, x.shape)], T.BOOL, x.shape)
        seen = e("ReduceMax", [e("Cast", [differs], T.UINT8, x.shape, to=T.UINT8), *node.inputs[1:]], T.UINT8, out.shape,
                 **{k: a.value for k, a in node.attributes.items()})
        seen = e("Cast", [seen], T.BOOL, out.shape, to=T.BOOL)
        graph.insert_after(node, e.nodes)
        fixed = Value(graph.fresh_name(f"{e.prefix}_fixed"), out.dtype, out.shape)
        where = Node("", "Where", [seen, out, e.const(inf)], outputs=[fixed], name=graph.fresh_name(f"{node.name}_fixinf"))
        graph.insert_after(e.nodes[-1], where)
        users = [(u, i) for u, i in out.uses if u is not where]
        for u, i in users:
            u.replace_input(i, fixed)
        if graph.is_graph_output(out):
            name = out.name
            out.name = graph.fresh_name(name + "_unfixed")
            fixed.name = name
            graph.outputs = [fixed if v is out else v for v in graph.outputs]


class FloatMod(Rule):
    """Float `Mod` with `fmod=0` (Python's sign-of-divisor remainder): TVM's floor-mod computes
    `x - floor(x / y) * y`, NaN for an infinite divisor. Rewritten as ONNX's own definition from the
    truncated remainder: `r = fmod(x, y)`, plus `y` where `r` is non-zero and its sign differs from y's."""

    name = "float_mod"
    op_types = ("Mod",)

    def check(self, node: Node, graph: Graph) -> Match:
        x = node.inputs[0]
        if int(node.attr("fmod", 0)) or x is None or not is_float(x.dtype) or x.dtype == T.BFLOAT16:
            return failed("fmod=1 or not a float16/32/64 input")
        return matched()

    def rewrite(self, rw: Rewriter, node: Node, m: Match) -> None:
        graph = node.graph
        assert graph is not None
        e = _Emit(graph, node)
        x, y = node.inputs[0], node.inputs[1]
        out = node.outputs[0]
        dt, shape = out.dtype, out.shape
        r = e("Mod", [x, y], dt, shape, fmod=1)
        zero = e.const(np.zeros((), dtype=np_dtype(x.dtype)))
        nonzero = e("Not", [e("Equal", [r, zero], T.BOOL, shape)], T.BOOL, shape)
        differ = e("Xor", [e("Less", [r, zero], T.BOOL, shape), e("Less", [y, zero], T.BOOL, y.shape)], T.BOOL, shape)
        fix = e("And", [nonzero, differ], T.BOOL, shape)
        e.replace([e("Where", [fix, e("Add", [r, y], dt, shape), r], dt, shape)])


@register
@dataclass(frozen=True)
class LowerOps(RewritePass):
    """Rewrite ops TVM's frontend lacks or misconverts (see the module docstring)."""

    name: ClassVar[str] = "lower-ops"
    summary: ClassVar[str] = "rewrite ops TVM's frontend lacks or misconverts (IsInf directions, mixed-type Pow, CumProd, ...)"
    rules: ClassVar[tuple[Rule, ...]] = (
        IsInfDirections(), PowTypes(), SinhCosh(), DropoutInference(), EyeLikeStatic(), SpaceToDepthCRD(),
        LpNormalization(), ConvTransposeOutputShape(), CumProd(), OneHot(), PadRuntimeValue(), ReduceBool(), ReduceExtremeInfinity(), FloatMod(),
    )
