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

from lepton_ir import Graph, Node, Value
from lepton_ir.constants import constant_value
from lepton_ir.rewriter import Builder, Rewriter
from lepton_ir.types import is_float, np_dtype

from passes.base import register
from passes.rewrite import Match, RewritePass, Rule, failed, matched, static_shape

T = onnx.TensorProto


def _builder(node: Node) -> Builder:
    """A builder for the nodes replacing `node`, named after it."""
    assert node.graph is not None
    return Builder(node.graph, node.name or node.op_type.lower())


def _swap(rw: Rewriter, node: Node, b: Builder, results: list[Value | None]) -> None:
    """Replace `node` by the nodes `b` built: `results[i]` takes over output i where that is read."""
    rw.replace([node], b.nodes, {out: new for out, new in zip(node.outputs, results, strict=False)
                                 if new is not None and out.is_used()})


def _opset(graph: Graph) -> int:
    return graph.root().opset_imports.get("", 1)


def _axes_input(b: Builder, axes: list[int], data: Value, op: str, dtype: int | None, shape: Any,
                keepdims: int = 1) -> Value:
    """`op` (a Reduce op) over `axes`, as an input (opset 18+, 13+ for ReduceSum) or an attribute."""
    opset = _opset(b.graph)
    as_input = opset >= 18 or (op == "ReduceSum" and opset >= 13)
    if as_input:
        return b.op(op, [data, b.const(np.array(axes, dtype=np.int64))], {"keepdims": keepdims}, dtype=dtype, shape=shape)
    return b.op(op, [data], {"axes": axes, "keepdims": keepdims}, dtype=dtype, shape=shape)


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
        b = _builder(node)
        x = node.inputs[0]
        shape = node.outputs[0].shape
        inf = b.IsInf(x, dtype=T.BOOL, shape=shape)
        zero = b.const(np.zeros((), dtype=np_dtype(x.dtype)))
        if m["pos"]:
            side = b.Greater(x, zero, dtype=T.BOOL, shape=shape)
        elif m["neg"]:
            side = b.Less(x, zero, dtype=T.BOOL, shape=shape)
        else:
            side = b.Not(inf, dtype=T.BOOL, shape=shape)
        _swap(rw, node, b, [b.And(inf, side, dtype=T.BOOL, shape=shape)])


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
        bld = _builder(node)
        b, x = node.inputs[0], node.inputs[1]
        out = node.outputs[0]
        if is_float(b.dtype):
            cast = bld.Cast(x, dtype=b.dtype, shape=x.shape, to=b.dtype)
            _swap(rw, node, bld, [bld.Pow(b, cast, dtype=b.dtype, shape=out.shape)])
            return
        bd = bld.Cast(b, dtype=T.DOUBLE, shape=b.shape, to=T.DOUBLE)
        xd = x if x.dtype == T.DOUBLE else bld.Cast(x, dtype=T.DOUBLE, shape=x.shape, to=T.DOUBLE)
        p = bld.Pow(bd, xd, dtype=T.DOUBLE, shape=out.shape)
        _swap(rw, node, bld, [bld.Cast(p, dtype=b.dtype, shape=out.shape, to=b.dtype)])


class SinhCosh(Rule):
    name = "sinh_cosh"
    op_types = ("Sinh", "Cosh")

    def check(self, node: Node, graph: Graph) -> Match:
        x = node.inputs[0]
        if x is None or x.dtype not in (T.FLOAT, T.DOUBLE, T.FLOAT16):
            return failed("input is not float32/float64/float16")
        return matched()

    def rewrite(self, rw: Rewriter, node: Node, m: Match) -> None:
        b = _builder(node)
        x = node.inputs[0]
        dt, shape = x.dtype, x.shape
        work = T.FLOAT if dt == T.FLOAT16 else dt
        nd = np_dtype(work)
        xw = x if work == dt else b.Cast(x, dtype=work, shape=shape, to=work)
        ex = b.Exp(xw, dtype=work, shape=shape)
        emx = b.Exp(b.Neg(xw, dtype=work, shape=shape), dtype=work, shape=shape)
        half = b.const(np.array(0.5, dtype=nd))
        if node.op_type == "Cosh":
            y = b.Mul(b.Add(ex, emx, dtype=work, shape=shape), half, dtype=work, shape=shape)
        else:
            big = b.Mul(b.Sub(ex, emx, dtype=work, shape=shape), half, dtype=work, shape=shape)
            x2 = b.Mul(xw, xw, dtype=work, shape=shape)
            # x (1 + x^2/6 (1 + x^2/20 (1 + x^2/42 (1 + x^2/72)))): |error| < x^11/4e7 for |x| < 1
            poly = b.const(np.array(1.0, dtype=nd))
            for d in (72.0, 42.0, 20.0, 6.0):
                step = b.Mul(x2, b.Mul(poly, b.const(np.array(1 / d, dtype=nd)), dtype=work, shape=shape), dtype=work, shape=shape)
                poly = b.Add(b.const(np.array(1.0, dtype=nd)), step, dtype=work, shape=shape)
            small = b.Mul(xw, poly, dtype=work, shape=shape)
            near = b.Less(b.Abs(xw, dtype=work, shape=shape), b.const(np.array(1.0, dtype=nd)), dtype=T.BOOL, shape=shape)
            y = b.Where(near, small, big, dtype=work, shape=shape)
        _swap(rw, node, b, [y if work == dt else b.Cast(y, dtype=dt, shape=shape, to=dt)])


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
        if mask is not None and mask.is_used() and static_shape(x) is None:
            return failed("mask is used and the data shape is not static")
        return matched()

    def rewrite(self, rw: Rewriter, node: Node, m: Match) -> None:
        b = _builder(node)
        x = node.inputs[0]
        y = b.Identity(x, dtype=x.dtype, shape=x.shape)
        results: list[Value | None] = [y]
        if len(node.outputs) > 1:
            shape = static_shape(x)
            ones = None if shape is None else b.Identity(b.const(np.ones(shape, dtype=bool)), dtype=T.BOOL, shape=shape)
            results.append(ones)
        _swap(rw, node, b, results)


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
        b = _builder(node)
        rows, cols = m["shape"]
        eye = np.eye(rows, cols, k=int(node.attr("k", 0)), dtype=m["nd"])
        _swap(rw, node, b, [b.Identity(b.const(eye), dtype=m["dtype"], shape=(rows, cols))])


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
        b = _builder(node)
        n, c, h, w = m["shape"]
        bs = int(node.attr("blocksize"))
        x = node.inputs[0]
        six = (n, c, h // bs, bs, w // bs, bs)
        t = b.Reshape(x, b.const(np.array(six, dtype=np.int64)), dtype=x.dtype, shape=six)
        perm = [0, 1, 3, 5, 2, 4]
        t = b.Transpose(t, dtype=x.dtype, shape=[six[p] for p in perm], perm=perm)
        out = (n, c * bs * bs, h // bs, w // bs)
        _swap(rw, node, b, [b.Reshape(t, b.const(np.array(out, dtype=np.int64)), dtype=x.dtype, shape=out)])


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
        b = _builder(node)
        x = node.inputs[0]
        kshape = list(x.shape)
        kshape[m["axis"]] = 1
        op = "ReduceL1" if m["p"] == 1 else "ReduceL2"
        norm = _axes_input(b, [m["axis"]], x, op, x.dtype, kshape)
        zero = b.const(np.zeros((), dtype=np_dtype(x.dtype)))
        is_zero = b.Equal(norm, zero, dtype=T.BOOL, shape=kshape)
        q = b.Div(x, norm, dtype=x.dtype, shape=x.shape)
        _swap(rw, node, b, [b.Where(is_zero, zero, q, dtype=x.dtype, shape=x.shape)])


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
        rw.set_attribute(node, "output_shape", None)
        if "auto_pad" in node.attributes:
            rw.set_attribute(node, "auto_pad", None)
        rw.set_attribute(node, "pads", list(m["pads"]))
        if any(m["output_padding"]):
            rw.set_attribute(node, "output_padding", list(m["output_padding"]))


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
        b = _builder(node)
        x = node.inputs[0]
        a, n = m["axis"], m["n"]
        exclusive, reverse = int(node.attr("exclusive", 0)), int(node.attr("reverse", 0))
        one_shape = tuple(1 if k == a else d for k, d in enumerate(x.shape))
        axes = b.const(np.array([a], dtype=np.int64))

        def take(i: int) -> Value:
            start, end = b.const(np.array([i], dtype=np.int64)), b.const(np.array([i + 1], dtype=np.int64))
            return b.Slice(x, start, end, axes, dtype=x.dtype, shape=one_shape)

        order = list(range(n))[::-1] if reverse else list(range(n))
        running: Value | None = None
        parts: dict[int, Value] = {}
        for i in order:
            if exclusive:
                first = running is None
                ones = b.const(np.ones(one_shape, dtype=np_dtype(x.dtype))) if first else None
                parts[i] = b.Identity(ones, dtype=x.dtype, shape=one_shape) if first else running
                xi = take(i)
                running = xi if running is None else b.Mul(running, xi, dtype=x.dtype, shape=one_shape)
            else:
                xi = take(i)
                running = xi if running is None else b.Mul(running, xi, dtype=x.dtype, shape=one_shape)
                parts[i] = running
        seq = [parts[i] for i in range(n)]
        y = seq[0] if n == 1 else b.op("Concat", seq, {"axis": a}, dtype=x.dtype, shape=x.shape)
        if y.producer is None or y.producer not in b.nodes:
            y = b.Identity(y, dtype=x.dtype, shape=x.shape)
        _swap(rw, node, b, [y])


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
        b = _builder(node)
        indices, values = node.inputs[0], node.inputs[2]
        d, a = m["depth"], m["axis"]
        out = node.outputs[0]
        idx = indices if indices.dtype == T.INT64 else b.Cast(indices, dtype=T.INT64, shape=indices.shape, to=T.INT64)
        neg = b.Less(idx, b.const(np.array(0, np.int64)), dtype=T.BOOL, shape=indices.shape)
        wrapped = b.Add(idx, b.const(np.array(d, np.int64)), dtype=T.INT64, shape=indices.shape)
        idx = b.Where(neg, wrapped, idx, dtype=T.INT64, shape=indices.shape)
        shape1 = (*indices.shape[:a], 1, *indices.shape[a:])
        if _opset(b.graph) >= 13:
            idx = b.Unsqueeze(idx, b.const(np.array([a], np.int64)), dtype=T.INT64, shape=shape1)
        else:
            idx = b.Unsqueeze(idx, dtype=T.INT64, shape=shape1, axes=[a])
        positions = np.arange(d, dtype=np.int64).reshape([d if k == a else 1 for k in range(len(shape1))])
        hit = b.Equal(idx, b.const(positions), dtype=T.BOOL, shape=out.shape)
        off = b.Gather(values, b.const(np.array(0, np.int64)), dtype=values.dtype, shape=(), axis=0)
        on = b.Gather(values, b.const(np.array(1, np.int64)), dtype=values.dtype, shape=(), axis=0)
        _swap(rw, node, b, [b.Where(hit, on, off, dtype=values.dtype, shape=out.shape)])


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
        b = _builder(node)
        x, pads, value = node.inputs[0], node.inputs[1], node.inputs[2]
        axes = node.inputs[3:4] if len(node.inputs) > 3 else []
        out = node.outputs[0]
        zero = b.const(np.zeros((), dtype=np_dtype(x.dtype)))
        padded = b.Pad(x, pads, zero, *axes, dtype=x.dtype, shape=out.shape, mode="constant")
        inside = b.ConstantOfShape(b.const(np.array(m["shape"], np.int64)), dtype=T.BOOL, shape=m["shape"],
                                   value=np.zeros(1, dtype=bool))
        outside = b.Pad(inside, pads, b.const(np.array(True)), *axes, dtype=T.BOOL, shape=out.shape, mode="constant")
        _swap(rw, node, b, [b.Where(outside, value, padded, dtype=x.dtype, shape=out.shape)])


class ReduceBool(Rule):
    name = "reduce_bool"
    op_types = ("ReduceMax", "ReduceMin")

    def check(self, node: Node, graph: Graph) -> Match:
        x = node.inputs[0]
        if x is None or x.dtype != T.BOOL:
            return failed("input is not bool")
        return matched()

    def rewrite(self, rw: Rewriter, node: Node, m: Match) -> None:
        b = _builder(node)
        x = node.inputs[0]
        out = node.outputs[0]
        xu = b.Cast(x, dtype=T.UINT8, shape=x.shape, to=T.UINT8)  # max = any, min = all; the empty set's identities too
        red = b.op(node.op_type, [xu, *node.inputs[1:]], dict(node.attributes), dtype=T.UINT8, shape=out.shape)
        _swap(rw, node, b, [b.Cast(red, dtype=T.BOOL, shape=out.shape, to=T.BOOL)])


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
        x, out = node.inputs[0], node.outputs[0]
        b = _builder(node)
        inf = np.array(-np.inf if node.op_type == "ReduceMax" else np.inf, dtype=np_dtype(x.dtype))
        differs = b.Not(b.Equal(x, b.const(inf), dtype=T.BOOL, shape=x.shape), dtype=T.BOOL, shape=x.shape)
        count = b.Cast(differs, dtype=T.UINT8, shape=x.shape, to=T.UINT8)
        seen = b.op("ReduceMax", [count, *node.inputs[1:]], dict(node.attributes), dtype=T.UINT8, shape=out.shape)
        seen = b.Cast(seen, dtype=T.BOOL, shape=out.shape, to=T.BOOL)
        fix = Builder(b.graph, f"{node.name}_fixinf")  # the name `check` knows a fixed reduction by
        fixed = fix.op("Where", [seen, out, b.const(inf)], dtype=out.dtype, shape=out.shape)
        rw.insert_after(node, [*b.nodes, *fix.nodes])
        rw.replace_uses(out, fixed, keep=fix.nodes[0])


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
        b = _builder(node)
        x, y = node.inputs[0], node.inputs[1]
        out = node.outputs[0]
        dt, shape = out.dtype, out.shape
        r = b.Mod(x, y, dtype=dt, shape=shape, fmod=1)
        zero = b.const(np.zeros((), dtype=np_dtype(x.dtype)))
        nonzero = b.Not(b.Equal(r, zero, dtype=T.BOOL, shape=shape), dtype=T.BOOL, shape=shape)
        r_neg, y_neg = b.Less(r, zero, dtype=T.BOOL, shape=shape), b.Less(y, zero, dtype=T.BOOL, shape=y.shape)
        differ = b.Xor(r_neg, y_neg, dtype=T.BOOL, shape=shape)
        fix = b.And(nonzero, differ, dtype=T.BOOL, shape=shape)
        _swap(rw, node, b, [b.Where(fix, b.Add(r, y, dtype=dt, shape=shape), r, dtype=dt, shape=shape)])


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
