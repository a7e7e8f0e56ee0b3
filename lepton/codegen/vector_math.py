"""Vectorizable float32 exp, erf, tanh and sigmoid for CPU kernels.

TVM 0.27 lowers `exp`, `erf`, `tanh` and `sigmoid` on LLVM CPU targets to one libm call per element
(`expf`, `erff`), which the vectorizer cannot widen: a GELU epilogue then costs more than a third of
its matmul, and softmax runs at ~2 ns per element. onnxruntime computes them with vector polynomials
(MLAS). These are the same kind of functions, written as TIR expressions of +, *, min/max, floor and
bit casts, which LLVM vectorizes:

- `exp`: Cody-Waite reduction x = n ln2 + r (ln2 split in two constants, so r is exact to float32
  rounding), Cephes' degree-7 polynomial for exp(r), and 2^n applied in two halves so that results in
  the subnormal range and overflow to infinity come out as libm's do.
- `erf` and `tanh`: Eigen's rational approximations (odd numerator, even denominator) on clamped
  arguments; outside the clamp the float32 result is +-1 anyway.
- `sigmoid`: 1 / (1 + exp(-x)), as e / (1 + e) with e = exp(x) for negative x.

Invariants (tests/test_vector_math.py checks them against float64 references): at most 6 float32 ulp from
the exact result (measured over 8M arguments: exp 1.0, erf 5.6, tanh 4.7, sigmoid 2.7; libm is within 1),
or an absolute error below 1e-38 where the result is subnormal; NaN in gives NaN out; +-inf give the limits.
The same table legalizes float32 ReLU as a select that keeps NaN (TVM's max(x, 0) gave 0, and so did Elu,
built on it); ResNet-18 runs at the same speed with it. `legalize_map` swaps these into TVM's legalization of
the Relax ops that use them (float32 only; other types keep TVM's lowering).
"""

from __future__ import annotations

import math
from collections.abc import Callable

import tvm
from tvm import relax, te, tirx

_F32 = "float32"


def _c(value: float) -> tirx.PrimExpr:
    return tirx.const(value, _F32)


def _poly(x: tirx.PrimExpr, coeffs: tuple[float, ...]) -> tirx.PrimExpr:
    """Horner's rule: coeffs[0] * x^(n-1) + ... + coeffs[-1]."""
    acc = _c(coeffs[0])
    for c in coeffs[1:]:
        acc = acc * x + _c(c)
    return acc


def _keep_nan(x: tirx.PrimExpr, value: tirx.PrimExpr) -> tirx.PrimExpr:
    """`value`, or x where x is NaN (clamping with min/max would turn a NaN into a bound)."""
    return tirx.Select(tirx.isnan(x), x, value)


def _pow2(n: tirx.PrimExpr) -> tirx.PrimExpr:
    """2^n as a float32 bit pattern, for integer n in [-126, 127]."""
    return tirx.reinterpret(_F32, tirx.shift_left(n + 127, tirx.const(23, "int32")))


# Cephes expf: ln2 = _LN2_HI + _LN2_LO, _LN2_HI exact in 9 bits so n * _LN2_HI is exact for |n| < 2^15.
_LOG2E = 1.44269504088896341
_LN2_HI, _LN2_LO = 0.693359375, -2.12194440e-4
_EXP_POLY = (1.9875691500e-4, 1.3981999507e-3, 8.3334519073e-3, 4.1665795894e-2, 1.6666665459e-1, 5.0000001201e-1)


def exp(x: tirx.PrimExpr) -> tirx.PrimExpr:
    """exp(x) in float32 (module docstring)."""
    xc = tirx.max(tirx.min(x, _c(89.0)), _c(-104.0))  # exp(89) overflows, exp(-104) is below the smallest subnormal
    n = tirx.floor(xc * _c(_LOG2E) + _c(0.5))
    r = xc - n * _c(_LN2_HI) - n * _c(_LN2_LO)
    y = _poly(r, _EXP_POLY) * r * r + r + _c(1.0)
    ni = n.astype("int32")  # in [-150, 129]: 2^n in two halves, each a normal number
    half = tirx.shift_right(ni, tirx.const(1, "int32"))
    return _keep_nan(x, y * _pow2(half) * _pow2(ni - half))


# Eigen's generic_fast_erf_float: erf(x) = x * P(x^2) / Q(x^2) on [-4, 4].
_ERF_P = (-2.72614225801306e-10, 2.77068142495902e-08, -2.10102402082508e-06, -5.69250639462346e-05,
          -7.34990630326855e-04, -2.95459980854025e-03, -1.60960333262415e-02)
_ERF_Q = (-1.45660718464996e-05, -2.13374055278905e-04, -1.68282697438203e-03, -7.37332916720468e-03,
          -1.42647390514189e-02)


def erf(x: tirx.PrimExpr) -> tirx.PrimExpr:
    """erf(x) in float32 (module docstring)."""
    xc = tirx.max(tirx.min(x, _c(4.0)), _c(-4.0))
    x2 = xc * xc
    return _keep_nan(x, xc * _poly(x2, _ERF_P) / _poly(x2, _ERF_Q))


# Eigen's generic_fast_tanh_float: tanh(x) = x * P(x^2) / Q(x^2) on [-c, c], +-1 beyond in float32.
_TANH_CLAMP = 7.90531110763549805
_TANH_ONE = 9.02  # tanh(x) rounds to 1.0f from about 9.01 on; the rational holds 1 - 2.4e-7 past the clamp
_TANH_P = (-2.76076847742355e-16, 2.00018790482477e-13, -8.60467152213735e-11, 5.12229709037114e-08,
           1.48572235717979e-05, 6.37261928875436e-04, 4.89352455891786e-03)
_TANH_Q = (1.19825839466702e-06, 1.18534705686654e-04, 2.26843463243900e-03, 4.89352518554385e-03)


def tanh(x: tirx.PrimExpr) -> tirx.PrimExpr:
    """tanh(x) in float32 (module docstring)."""
    xc = tirx.max(tirx.min(x, _c(_TANH_CLAMP)), _c(-_TANH_CLAMP))
    x2 = xc * xc
    rational = xc * _poly(x2, _TANH_P) / _poly(x2, _TANH_Q)
    one = tirx.Select(x > _c(0.0), _c(1.0), _c(-1.0))
    return _keep_nan(x, tirx.Select(tirx.abs(x) >= _c(_TANH_ONE), one, rational))


def sigmoid(x: tirx.PrimExpr) -> tirx.PrimExpr:
    """1 / (1 + exp(-x)) in float32, as e / (1 + e) with e = exp(x) for negative x (so that it does not
    overflow to 0 where the result is a subnormal)."""
    e = exp(-tirx.abs(x))
    s = _c(1.0) / (_c(1.0) + e)
    return tirx.Select(x >= _c(0.0), s, e * s)


# ------------------------------------------------------------------------------------------------
# Legalization of the Relax ops that use them
# ------------------------------------------------------------------------------------------------

LegalizeFunc = Callable[[relax.BlockBuilder, relax.Call], relax.Expr]


def _elementwise(name: str, f: Callable[[tirx.PrimExpr], tirx.PrimExpr]) -> Callable[[te.Tensor], te.Tensor]:
    return lambda x: te.compute(x.shape, lambda *i: f(x(*i)), name=name, tag="elemwise")


def _gelu(x: tirx.PrimExpr) -> tirx.PrimExpr:
    return x * (_c(0.5) + erf(x * _c(0.5**0.5)) * _c(0.5))


def _gelu_tanh(x: tirx.PrimExpr) -> tirx.PrimExpr:
    return _c(0.5) * x * (_c(1.0) + tanh(_c(math.sqrt(2.0 / math.pi)) * x * (_c(1.0) + _c(0.044715) * x * x)))


def _softmax(x: te.Tensor, axis: int, log: bool) -> te.Tensor:
    """topi's softmax/log_softmax blocks (max, exp, sum, normalize) with `exp` above."""
    shape, axis = x.shape, axis % len(x.shape)
    k1 = te.reduce_axis((0, shape[axis]), name="k")
    k2 = te.reduce_axis((0, shape[axis]), name="k")

    def around(idx: tuple, k: tirx.PrimExpr) -> tuple:
        return (*idx[:axis], k, *idx[axis:])

    def without(idx: tuple) -> tuple:
        return (*idx[:axis], *idx[axis + 1 :])

    reduced = tuple(d for i, d in enumerate(shape) if i != axis)
    max_elem = te.compute(reduced, lambda *i: te.max(x(*around(i, k1)), axis=k1), name="T_softmax_maxelem")
    if log:
        expsum = te.compute(
            reduced, lambda *i: te.sum(exp(x(*around(i, k2)) - max_elem(*i)), axis=k2), name="T_softmax_expsum"
        )
        return te.compute(
            shape, lambda *i: x(*i) - max_elem(*without(i)) - te.log(expsum(*without(i))), name="T_log_softmax_norm"
        )
    e = te.compute(shape, lambda *i: exp(x(*i) - max_elem(*without(i))), name="T_softmax_exp")
    expsum = te.compute(reduced, lambda *i: te.sum(e(*around(i, k2)), axis=k2), name="T_softmax_expsum")
    return te.compute(shape, lambda *i: e(*i) / expsum(*without(i)), name="T_softmax_norm", attrs={"axis": axis})


def _relu(x: tirx.PrimExpr) -> tirx.PrimExpr:
    """max(x, 0) that keeps NaN (TVM's `max` gives 0 for NaN; ONNX and onnxruntime give NaN)."""
    return tirx.Select(x < _c(0.0), _c(0.0), x)


_UNARY = {
    "relax.nn.relu": ("relu", _relu),
    "relax.exp": ("tir_exp", exp),
    "relax.erf": ("erf", erf),
    "relax.tanh": ("tir_tanh", tanh),
    "relax.sigmoid": ("tir_sigmoid", sigmoid),
    "relax.nn.gelu": ("gelu", _gelu),
    "relax.nn.gelu_tanh": ("gelu_tanh", _gelu_tanh),
    "relax.nn.silu": ("silu", lambda x: x * sigmoid(x)),
}


def _float32_only(op: str, ours: LegalizeFunc) -> LegalizeFunc:
    """`ours` for float32 calls, TVM's own legalization for any other type."""
    default = tvm.ir.Op.get(op).get_attr("FLegalize")  # TVM's registered legalization

    def legalize(bb: relax.BlockBuilder, call: relax.Call) -> relax.Expr:
        ty = call.args[0].ty
        if isinstance(ty, relax.TensorType) and str(ty.dtype) == _F32:
            return ours(bb, call)
        return default(bb, call)

    return legalize


def legalize_map() -> dict[str, LegalizeFunc]:
    """Custom legalizations (for `relax.transform.LegalizeOps`) of the float32 Relax ops that use exp, erf,
    tanh or sigmoid: elementwise ops, GELU (both forms), SiLU, softmax and log-softmax; and ReLU."""
    table: dict[str, LegalizeFunc] = {}
    for op, (name, f) in _UNARY.items():
        te_func = _elementwise(name, f)
        table[op] = _float32_only(op, lambda bb, call, te_func=te_func, name=name: bb.call_te(
            te_func, call.args[0], primfunc_name_hint=name))
    for op, log in (("relax.nn.softmax", False), ("relax.nn.log_softmax", True)):
        table[op] = _float32_only(op, lambda bb, call, log=log: bb.call_te(
            _softmax, call.args[0], int(call.attrs.axis), log))
    return table

