"""Winograd F(2x2, 3x3) for channels-last 3x3 stride-1 convolutions on CPU targets.

A 3x3 convolution over 2x2 output tiles costs 36 multiplies per tile, input channel and output
channel; Winograd's F(2x2, 3x3) costs 16 (2.25x fewer), plus cheap additions to transform input
tiles and results. The rewrite is done in Relax, before legalization, with ops Lepton's CPU
schedules already handle:

- weights: U = G w G^T per (input, output) channel pair, computed here in float64 from constant
  weights and stored as a [16, C, K] float32 constant (compile time, never per call); for weights
  dequantized from integers (`lepton.codegen.weights`) the transform is Relax ops that the module
  runs once, when it is loaded;
- input: padded, cut into overlapping 4x4 tiles by strided slices, V = B^T d B (additions and
  subtractions only, fused into one injective kernel), stacked as [16, tiles, C];
- one batched matmul [16, tiles, C] x [16, C, K] (Lepton's tiled matmul schedule);
- output: Y = A^T M A (additions only), tiles reassembled and cropped to the convolution's output
  shape; a following bias/activation fuses into that kernel.

The transforms of F(2x2, 3x3) have coefficients 0, +-1 and +-1/2 only, so the result differs from
direct convolution by rounding, well inside fp32 tolerance (F(4x4, 3x3) would save more multiplies
at a larger rounding error, and is not used). Only convolutions with constant (or dequantized integer) weights, float32,
NHWC/HWIO layouts, stride 1, dilation 1, one group and at least `MIN_CHANNELS` input and output
channels are rewritten; everything else is left as it is.
"""

from __future__ import annotations

import numpy as np
import tvm
from tvm import relax

from lepton.codegen.layout_ops import StepNote, node_name
from lepton.codegen.relax_mutate import mutate_functions
from lepton.codegen.weights import weight_params

#: Fewer channels do too little work per tile for the transforms to pay off. Measured on the reference
#: machine (chains of four 3x3 convolutions + ReLU, Winograd vs direct): 16 channels at 56x56 0.56x,
#: 32 at 56x56 0.90x, 48 at 28x28 0.86x, 64 at 28x28 1.25x, 128 at 28x28 1.57x, 512 at 7x7 1.56x.
MIN_CHANNELS = 64

_G = np.array([[1.0, 0.0, 0.0], [0.5, 0.5, 0.5], [0.5, -0.5, 0.5], [0.0, 0.0, 1.0]])


def winograd_conv2d(notes: list[str] | None = None) -> tvm.transform.Pass:
    """The Relax pass: every eligible conv2d (module docstring) becomes its Winograd F(2x2, 3x3) form;
    how many did is appended to `notes`."""

    @tvm.transform.module_pass(opt_level=0, name="LeptonWinograd")
    def _pass(mod: tvm.IRModule, _ctx: tvm.transform.PassContext) -> tvm.IRModule:
        rewriter = _Rewriter(mod)
        out = mutate_functions(mod, rewriter)
        if notes is not None and rewriter.rewritten:
            where = f": {', '.join(rewriter.where)}" if rewriter.where else ""
            notes.append(StepNote(f"{rewriter.rewritten} 3x3 convolution(s) computed as Winograd F(2x2, 3x3){where}",
                                  "winograd", {"convolutions": rewriter.rewritten}, rewriter.where))
        return out

    return _pass


def transformed_weights(w: np.ndarray) -> np.ndarray:
    """U = G w G^T for HWIO weights [3, 3, C, K], as [16, C, K] (row-major over the 4x4 tile)."""
    u = np.einsum("ai,ijck,bj->abck", _G, w.astype(np.float64), _G)
    return u.reshape(16, w.shape[2], w.shape[3]).astype(np.float32)


@relax.expr_functor.mutator
class _Rewriter(relax.PyExprMutator):
    def __init__(self, mod: tvm.IRModule) -> None:
        super().__init__(mod)
        self.weight_params = [p for f in mod.functions.values() if isinstance(f, relax.Function) for p in weight_params(f)]
        self.rewritten = 0
        self.where: list[str] = []  # the ONNX nodes, where the calls name them (`layout_ops.node_name`)

    def visit_call_(self, call: relax.Call) -> relax.Expr:  # noqa: D102 - PyExprMutator hook
        call = self.visit_expr_post_order(call)
        if not _is_candidate(call):
            return call
        w = call.args[1]
        shape = tuple(int(d) for d in w.ty.shape.values)
        if shape[:2] != (3, 3) or min(shape[2], shape[3]) < MIN_CHANNELS:
            return call
        constant = self._constant(w)
        if constant is not None:
            u: relax.Expr = relax.const(transformed_weights(constant))
        elif self._from_weights(w):
            u = self._transform(w, shape)
        else:
            return call
        self.rewritten += 1
        name = node_name(call)
        if name:
            self.where.append(name)
        return self._winograd(call.args[0], u, shape[3], [int(p) for p in call.attrs.padding])

    def _from_weights(self, expr: relax.Expr) -> bool:
        """Whether `expr` is computed from constants and `main`'s weight parameters alone (a dequantized
        integer weight, `lepton.codegen.weights`): its transform is then computed once, at load."""
        if isinstance(expr, relax.Var):
            if any(expr.same_as(p) for p in self.weight_params):
                return True
            bound = self.lookup_binding(expr)
            return bound is not None and self._from_weights(bound)
        if isinstance(expr, (tvm.ir.expr.Constant, relax.ShapeExpr)):
            return True
        if isinstance(expr, relax.Call) and isinstance(expr.op, tvm.ir.Op):
            return all(self._from_weights(a) for a in expr.args)
        return False

    def _transform(self, w: relax.Expr, shape: tuple[int, ...]) -> relax.Expr:
        """U = G w G^T for HWIO weights [3, 3, C, K] as Relax ops (`transformed_weights`, in float32), [16, C, K]."""
        op, emit = relax.op, self.builder_.emit
        ck = shape[2] * shape[3]
        g = relax.const(_G.astype(np.float32))
        t = emit(op.matmul(g, emit(op.reshape(w, [3, 3 * ck]))))  # [a, (j, c, k)]
        t = emit(op.reshape(emit(op.permute_dims(emit(op.reshape(t, [4, 3, ck])), [1, 0, 2])), [3, 4 * ck]))
        u = emit(op.reshape(emit(op.matmul(g, t)), [4, 4, ck]))  # [b, a, (c, k)]
        return emit(op.reshape(emit(op.permute_dims(u, [1, 0, 2])), [16, shape[2], shape[3]]))

    def _constant(self, expr: relax.Expr) -> np.ndarray | None:
        """The value of `expr` when it is a constant, or a constant with its axes permuted (layout conversion)."""
        if isinstance(expr, relax.Var):
            bound = self.lookup_binding(expr)
            return None if bound is None else self._constant(bound)
        if isinstance(expr, tvm.ir.expr.Constant):
            return expr.value.numpy()
        if isinstance(expr, relax.Call) and expr.op.same_as(tvm.ir.Op.get("relax.permute_dims")):
            inner = self._constant(expr.args[0])
            if inner is None:
                return None
            axes = expr.attrs.axes
            return np.transpose(inner, None if axes is None else [int(a) for a in axes])
        return None

    def _winograd(self, x: relax.Expr, u: relax.Expr, k: int, padding: list[int]) -> relax.Expr:
        """The convolution of `x` with transformed weights `u` [16, C, K]."""
        op, emit = relax.op, self.builder_.emit
        n, h, wd, c = (int(d) for d in x.ty.shape.values)
        top, left, bottom, right = padding
        out_h, out_w = h + top + bottom - 2, wd + left + right - 2
        tiles_h, tiles_w = -(-out_h // 2), -(-out_w // 2)
        # pad so that every 4x4 tile (stride 2) lies inside: rows 2 * tiles_h + 2, columns 2 * tiles_w + 2
        xp = emit(op.nn.pad(x, [0, 0, top, 2 * tiles_h + 2 - h - top, left, 2 * tiles_w + 2 - wd - left, 0, 0]))

        def every_other(t: relax.Expr, i: int, count: int, axis: int) -> relax.Expr:  # t[i], t[i+2], ... along axis
            return emit(op.strided_slice(t, axes=[axis], begin=[i], end=[i + 2 * count - 1], strides=[2]))

        def bt(parts: list[relax.Expr]) -> list[relax.Expr]:  # B^T applied along one tile axis
            d0, d1, d2, d3 = parts
            return [emit(op.subtract(d0, d2)), emit(op.add(d1, d2)), emit(op.subtract(d2, d1)), emit(op.subtract(d1, d3))]

        t_rows = bt([every_other(xp, i, tiles_h, 1) for i in range(4)])
        v = [vab for t in t_rows for vab in bt([every_other(t, j, tiles_w, 2) for j in range(4)])]
        tiles = n * tiles_h * tiles_w
        v_all = emit(op.reshape(emit(op.stack(v, axis=0)), [16, tiles, c]))
        m = emit(op.matmul(v_all, u))  # [16, tiles, K]
        m6 = emit(op.reshape(m, [4, 4, n, tiles_h, tiles_w, k]))

        def m_at(a: int, b: int) -> relax.Expr:
            s = emit(op.strided_slice(m6, axes=[0, 1], begin=[a, b], end=[a + 1, b + 1]))
            return emit(op.reshape(s, [n, tiles_h, tiles_w, k]))

        def at(parts: list[relax.Expr]) -> list[relax.Expr]:  # A^T applied along one tile axis
            m0, m1, m2, m3 = parts
            return [emit(op.add(emit(op.add(m0, m1)), m2)), emit(op.subtract(emit(op.subtract(m1, m2)), m3))]

        grid = [[m_at(a, b) for b in range(4)] for a in range(4)]
        by_column = [at([grid[a][b] for a in range(4)]) for b in range(4)]  # A^T along tile rows, per column b
        s = [[by_column[b][i] for b in range(4)] for i in range(2)]
        y = [at(s[i]) for i in range(2)]  # y[i][j]: [n, tiles_h, tiles_w, K]
        yi = [emit(op.stack(y[i], axis=3)) for i in range(2)]  # [n, tiles_h, tiles_w, 2 (j), K]
        out = emit(op.stack(yi, axis=2))  # [n, tiles_h, 2 (i), tiles_w, 2 (j), K]
        out = emit(op.reshape(out, [n, 2 * tiles_h, 2 * tiles_w, k]))
        if (2 * tiles_h, 2 * tiles_w) != (out_h, out_w):
            out = emit(op.strided_slice(out, axes=[1, 2], begin=[0, 0], end=[out_h, out_w]))
        return out


def _is_candidate(call: relax.Call) -> bool:
    if not isinstance(call.op, tvm.ir.Op) or call.op.name != "relax.nn.conv2d":
        return False
    a = call.attrs
    x, w = call.args
    return (
        a.data_layout == "NHWC"
        and a.kernel_layout == "HWIO"
        and a.out_layout == "NHWC"
        and [int(s) for s in a.strides] == [1, 1]
        and [int(d) for d in a.dilation] == [1, 1]
        and int(a.groups) == 1
        and str(a.out_dtype) in ("None", "", "float32")
        and _static_f32(x)
        and _static_f32(w)
    )


def _static_f32(e: relax.Expr) -> bool:
    t = e.ty
    return (
        isinstance(t, relax.TensorType)
        and t.dtype == "float32"
        and isinstance(t.shape, relax.ShapeExpr)
        and all(isinstance(d, tvm.tirx.IntImm) for d in t.shape.values)
    )
