"""Channels-last transposed 2-d convolutions on CPU targets, computed as sub-pixel convolutions.

TVM 0.27 legalizes `conv2d_transpose` only in NCHW/IOHW, and its TOPI kernel convolves a zero-dilated
input (a stride-s kernel does s*s times the multiplies it needs). Layout conversion to NHWC therefore puts
transposed convolutions in NHWC/IOHW (`tvm_build.CHANNELS_LAST`) and this pass lowers each one, before
legalization, to ops Lepton's CPU schedules handle in NHWC:

Along one spatial axis (stride s, kernel k, dilation d, pads (pb, pe), output padding op), the output
row o' = o + pb = q*s + r receives tap t exactly when t*d = m*s + r, from input row q - m. So phase r is
an ordinary stride-1 correlation of the input, padded by M = (k-1)*d // s rows before it, with a kernel of
M + 1 taps (tap j = M - m holds w[t]; taps no t lands on are zero). All s_h * s_w phases are the output
channels of one NHWC/HWIO conv2d (grouped like the original), depth-to-space interleaves them, and a
slice drops the pads. The conv2d weights are gathered from the original ones by a constant index (zero
where no tap lands), which constant folding evaluates at compile time for constant weights. With k = s
(DBNet/FPN-style 2x2 stride-2 upsampling) this is exactly the original work; with k = 2s (U-Net 4x4
stride 2 pad 1) too; otherwise at most ((M + 1) * s / k)^2 times it. Every result element is the sum of
the same products as in the direct definition (in another order) plus, where taps are zero, products 0 * x,
which change it only where such an x is inf or NaN (the result is then NaN).

A transposed convolution without static spatial shapes is computed in NCHW between two transposes.
"""

from __future__ import annotations

import numpy as np
import tvm
from tvm import relax

from lepton.codegen.relax_mutate import mutate_functions

_OP = "relax.nn.conv2d_transpose"


def lower_conv2d_transpose(notes: list[str] | None = None) -> tvm.transform.Pass:
    """The Relax pass: every NHWC/IOHW conv2d_transpose becomes its sub-pixel form (or, with symbolic spatial
    dims, NCHW between transposes); how many of each is appended to `notes`."""

    @tvm.transform.module_pass(opt_level=0, name="LeptonConvTranspose")
    def _pass(mod: tvm.IRModule, _ctx: tvm.transform.PassContext) -> tvm.IRModule:
        rewriter = _Rewriter(mod)
        out = mutate_functions(mod, rewriter)
        if notes is not None and rewriter.subpixel:
            notes.append(f"{rewriter.subpixel} transposed 2-d convolution(s) computed channels-last as sub-pixel "
                         "convolutions (NHWC conv2d + depth-to-space)")
        if notes is not None and rewriter.nchw:
            notes.append(f"{rewriter.nchw} transposed 2-d convolution(s) with symbolic spatial dims kept NCHW "
                         "between transposes")
        return out

    return _pass


def subpixel_taps(k: int, s: int, d: int) -> tuple[int, np.ndarray]:
    """Along one axis: (M, tap) where tap[r, j] is the original tap that phase r's tap j holds, or -1."""
    m_max = (k - 1) * d // s
    tap = np.full((s, m_max + 1), -1, np.int64)
    for t in range(k):
        m, r = divmod(t * d, s)
        tap[r, m_max - m] = t
    return m_max, tap


def subpixel_index(c: int, kg: int, groups: int, kernel: tuple[int, int], strides: tuple[int, int],
                   dilation: tuple[int, int]) -> np.ndarray:
    """For IOHW weights [c, kg, kh, kw] flattened (plus one zero appended at index c*kg*kh*kw), the index of
    each element of the sub-pixel conv2d's HWIO weights [Mh+1, Mw+1, c/groups, groups*sh*sw*kg], whose output
    channels are ordered (group, row phase, column phase, channel within the group)."""
    (mh, tap_h), (mw, tap_w) = (subpixel_taps(k, s, d) for k, s, d in zip(kernel, strides, dilation, strict=True))
    sh, sw = strides
    cg = c // groups
    zero = c * kg * kernel[0] * kernel[1]
    jh, jw, ci, g, rh, rw, ko = np.meshgrid(np.arange(mh + 1), np.arange(mw + 1), np.arange(cg), np.arange(groups),
                                            np.arange(sh), np.arange(sw), np.arange(kg), indexing="ij")
    th, tw = tap_h[rh, jh], tap_w[rw, jw]
    flat = (((g * cg + ci) * kg + ko) * kernel[0] + th) * kernel[1] + tw
    idx = np.where((th >= 0) & (tw >= 0), flat, zero)
    return idx.reshape(mh + 1, mw + 1, cg, groups * sh * sw * kg)


@relax.expr_functor.mutator
class _Rewriter(relax.PyExprMutator):
    def __init__(self, mod: tvm.IRModule) -> None:
        super().__init__(mod)
        self.subpixel = 0
        self.nchw = 0

    def visit_call_(self, call: relax.Call) -> relax.Expr:  # noqa: D102 - PyExprMutator hook
        call = self.visit_expr_post_order(call)
        if not (isinstance(call.op, tvm.ir.Op) and call.op.name == _OP):
            return call
        a = call.attrs
        if (a.data_layout, a.kernel_layout, a.out_layout) != ("NHWC", "IOHW", "NHWC"):
            return call
        x, w = call.args
        if not (_static(x, (1, 2, 3)) and _static(w, (0, 1, 2, 3))):
            self.nchw += 1
            return self._nchw(call)
        self.subpixel += 1
        return self._subpixel(call)

    def _nchw(self, call: relax.Call) -> relax.Expr:
        op, emit, a = relax.op, self.builder_.emit, call.attrs
        x = emit(op.permute_dims(call.args[0], [0, 3, 1, 2]))
        y = emit(op.nn.conv2d_transpose(
            x, call.args[1], strides=a.strides, padding=a.padding, output_padding=a.output_padding,
            dilation=a.dilation, groups=a.groups, data_layout="NCHW", kernel_layout="IOHW", out_layout="NCHW",
            out_dtype=a.out_dtype))
        return op.permute_dims(y, [0, 2, 3, 1])

    def _subpixel(self, call: relax.Call) -> relax.Expr:
        op, emit, a = relax.op, self.builder_.emit, call.attrs
        x, w = call.args
        n, h, wd, c = x.ty.shape.values
        h, wd, c = int(h), int(wd), int(c)
        _, kg, kh, kw = (int(v) for v in w.ty.shape.values)
        groups = int(a.groups)
        strides = (int(a.strides[0]), int(a.strides[1]))
        dilation = (int(a.dilation[0]), int(a.dilation[1]))
        top, left = int(a.padding[0]), int(a.padding[1])
        out_h, out_w = (int(v) for v in call.ty.shape.values[1:3])
        idx = subpixel_index(c, kg, groups, (kh, kw), strides, dilation)
        mh, mw = idx.shape[0] - 1, idx.shape[1] - 1
        # Q rows of phase outputs cover the output and its dropped top pads; at least the input's rows
        qh = max(-(-(top + out_h) // strides[0]), h)
        qw = max(-(-(left + out_w) // strides[1]), wd)
        flat = emit(op.concat([op.reshape(w, [-1]), op.zeros([1], w.ty.dtype)], axis=0))
        weights = emit(op.take(flat, relax.const(idx), axis=0, mode="clip"))
        xp = emit(op.nn.pad(x, [0, 0, mh, qh - h, mw, qw - wd, 0, 0]))
        y = emit(op.nn.conv2d(xp, weights, groups=groups, data_layout="NHWC", kernel_layout="HWIO",
                              out_dtype=a.out_dtype))
        sh, sw = strides
        y = emit(op.reshape(y, [n, qh, qw, groups, sh, sw, kg]))
        y = emit(op.permute_dims(y, [0, 1, 4, 2, 5, 3, 6]))  # [n, qh, sh, qw, sw, groups, kg]
        y = emit(op.reshape(y, [n, qh * sh, qw * sw, groups * kg]))
        return op.strided_slice(y, axes=[1, 2], begin=[top, left], end=[top + out_h, left + out_w])


def _static(e: relax.Expr, axes: tuple[int, ...]) -> bool:
    shape = e.ty.shape
    return isinstance(shape, relax.ShapeExpr) and all(isinstance(shape.values[i], tvm.tirx.IntImm) for i in axes)
