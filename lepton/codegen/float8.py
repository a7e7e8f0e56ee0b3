"""Float8 conversions for TVM, bit-exact: Cast/CastLike/QuantizeLinear/DequantizeLinear to and from
the four ONNX float8 types (E4M3FN, E5M2, E4M3FNUZ, E5M2FNUZ).

TVM 0.27 holds float8 tensors (graph inputs and outputs pass through as they are) but its casts
are wrong: float32 -> E4M3FN flushes subnormals and overflows to -0, and the FNUZ types are
read as FN. So the frontend never asks TVM to convert a float8 value. Instead:

- decoding reinterprets the tensor as uint8 and looks each code up in a 256-entry table of its
  value in the target float type (every float8 value is exact in float16/32/64);
- encoding computes the code with float arithmetic that is exact in the working type (float32,
  float64 for float64 input): the binade from a log2 estimate corrected by comparisons with exact
  powers of two, the step count rounded half to even (TVM's `round`, like ONNX), overflow to the
  largest finite code (`saturate=1`) or to Inf/NaN as ONNX defines per type, NaN to the NaN code,
  the sign (negative zero included, except in FNUZ types, which have none) as the top bit; the
  uint8 code is then reinterpreted as the float8 type.

The encoder agrees bit for bit with ONNX's reference `Cast` on every float8 value, every midpoint
between neighbours (ties), subnormals, zeros of both signs, infinities, NaN and out-of-range
values (tests/test_float8_codegen.py).
"""

from __future__ import annotations

from dataclasses import dataclass

import ml_dtypes
import numpy as np
from tvm import relax, topi
from tvm.relax import op as R


@dataclass(frozen=True)
class Format:
    mantissa_bits: int
    bias: int
    max_code: int  # largest finite magnitude code
    nan_code: int
    inf_code: int | None  # None: no infinity (overflow without saturation gives NaN)
    fnuz: bool  # no negative zero; 0x80 is NaN

    def values(self, name: str) -> np.ndarray:
        """The float64 value of every code 0..255."""
        return np.arange(256, dtype=np.uint8).view(getattr(ml_dtypes, name)).astype(np.float64)


FORMATS: dict[str, Format] = {
    "float8_e4m3fn": Format(3, 7, 0x7E, 0x7F, None, False),
    "float8_e5m2": Format(2, 15, 0x7B, 0x7F, 0x7C, False),
    "float8_e4m3fnuz": Format(3, 8, 0x7F, 0x80, None, True),
    "float8_e5m2fnuz": Format(2, 16, 0x7F, 0x80, None, True),
}

#: Float types a float8 value converts to or from here.
FLOATS = ("float16", "float32", "float64")


def dtype_of(expr: relax.Expr) -> str:
    t = expr.ty.dtype
    return str(getattr(t, "dtype", t))


def _const(value: object, dtype: str) -> relax.Expr:
    return relax.const(np.asarray(value, dtype=dtype), dtype)


def decode(bb: relax.BlockBuilder, x: relax.Expr, to: str) -> relax.Expr:
    """The float8 tensor `x` as `to` (a type of FLOATS), exactly."""
    table = FORMATS[dtype_of(x)].values(dtype_of(x)).astype(to)
    codes = bb.emit_te(topi.reinterpret, x, "uint8")
    return bb.emit(R.take(relax.const(table, to), R.astype(codes, "int64"), axis=0))


def encode(bb: relax.BlockBuilder, x: relax.Expr, fmt: str, saturate: bool) -> relax.Expr:
    """The float tensor `x` (a type of FLOATS) as float8 type `fmt`, as ONNX's Cast defines it."""
    f = FORMATS[fmt]
    src = dtype_of(x)
    work = "float64" if src == "float64" else "float32"
    xf = x if src == work else bb.emit(R.astype(x, work))
    maxval = float(f.values(fmt)[f.max_code])
    emin = 1 - f.bias
    emax = int(np.floor(np.log2(maxval))) + 1  # binade of values that round to overflow
    size = emax + 3 - emin  # binade indices 0..size-1 cover emin..emax+2
    a = bb.emit(R.minimum(R.abs(xf), _const(2.0 ** (emax + 1), work)))  # Inf -> a value that overflows
    m = bb.emit(R.maximum(a, _const(2.0 ** emin, work)))  # subnormals share the lowest binade's step
    k = bb.emit(R.astype(R.subtract(R.floor(R.divide(R.log(m), _const(np.log(2.0), work))), _const(emin, work)), "int64"))
    k = bb.emit(R.clip(k, 0, size - 1))
    pow2 = _const([2.0 ** (emin + i) for i in range(size)], work)
    low = bb.emit(R.take(pow2, k, axis=0))
    k = bb.emit(R.add(k, R.astype(R.greater_equal(m, R.multiply(low, _const(2.0, work))), "int64")))  # log2 said too low
    k = bb.emit(R.subtract(k, R.astype(R.less(m, low), "int64")))  # log2 said too high
    k = bb.emit(R.clip(k, 0, size - 1))
    inv_step = _const([2.0 ** (f.mantissa_bits - (emin + i)) for i in range(size)], work)
    steps = bb.emit(R.round(R.multiply(a, R.take(inv_step, k, axis=0))))  # exact scaling, ties to even
    code = bb.emit(R.add(R.multiply(R.astype(k, work), _const(2**f.mantissa_bits, work)), steps))
    overflow = f.max_code if saturate else (f.inf_code if f.inf_code is not None else f.nan_code)
    code = bb.emit(R.where(R.greater(code, _const(f.max_code, work)), _const(overflow, work), code))
    negative = R.logical_or(R.less(xf, _const(0, work)), R.less(R.divide(_const(1, work), xf), _const(0, work)))  # -0 too
    sign = bb.emit(R.astype(negative, work))
    if f.fnuz:  # no negative zero, and the NaN code has no sign
        signed = R.logical_and(R.not_equal(code, _const(0, work)), R.not_equal(code, _const(f.nan_code, work)))
        sign = bb.emit(R.multiply(sign, R.astype(signed, work)))
    code = bb.emit(R.add(code, R.multiply(sign, _const(128, work))))
    code = bb.emit(R.where(R.isnan(xf), _const(f.nan_code, work), code))
    return bb.emit_te(topi.reinterpret, bb.emit(R.astype(code, "uint8")), fmt)


E8M0 = "float8_e8m0fnu"
_E8M0_VALUES = np.arange(256, dtype=np.uint8).view(ml_dtypes.float8_e8m0fnu)


def decode_e8m0(bb: relax.BlockBuilder, x: relax.Expr, to: str) -> relax.Expr:
    """FLOAT8E8M0 (2^(code - 127), 0xFF NaN) as `to`, as ml_dtypes converts it."""
    table = _E8M0_VALUES.astype(to)
    codes = bb.emit_te(topi.reinterpret, x, "uint8")
    return bb.emit(R.take(relax.const(table, to), R.astype(codes, "int64"), axis=0))


def encode_e8m0(bb: relax.BlockBuilder, x: relax.Expr, saturate: bool, round_mode: str) -> relax.Expr:
    """A float tensor as FLOAT8E8M0, from its float32 bits, as ONNX's reference (`to_float8e8m0`) does:
    the exponent field, rounded up/to nearest/down by the mantissa bits; Inf/NaN to 0xFF; with
    `saturate`, never rounded past 0xFE."""
    xf = x if dtype_of(x) == "float32" else bb.emit(R.astype(x, "float32"))
    bits = bb.emit(R.astype(bb.emit_te(topi.reinterpret, xf, "int32"), "int64"))
    bits = bb.emit(R.bitwise_and(bits, _const(0xFFFFFFFF, "int64")))
    exponent = bb.emit(R.bitwise_and(R.right_shift(bits, _const(23, "int64")), _const(0xFF, "int64")))
    special = bb.emit(R.equal(exponent, _const(0xFF, "int64")))

    def has(mask: int) -> relax.Expr:
        return R.greater(R.bitwise_and(bits, _const(mask, "int64")), _const(0, "int64"))

    if round_mode == "up":
        up = has(0x7FFFFF)
    elif round_mode == "nearest":
        lsb = R.greater(exponent, _const(0, "int64"))
        up = R.logical_and(has(0x400000), R.logical_or(R.logical_or(has(0x200000), has(0x1FFFFF)), lsb))
    else:
        up = None
    if up is not None:
        if saturate:
            up = R.logical_and(up, R.not_equal(exponent, _const(0xFE, "int64")))
        exponent = bb.emit(R.add(exponent, R.astype(up, "int64")))
    code = bb.emit(R.where(special, _const(0xFF, "int64"), exponent))
    return bb.emit_te(topi.reinterpret, bb.emit(R.astype(code, "uint8")), E8M0)


def per_axis(bb: relax.BlockBuilder, v: relax.Expr, rank: int, axis: int) -> relax.Expr:
    """A 1-D per-axis parameter reshaped to broadcast along `axis` of a rank-`rank` tensor."""
    shape = v.ty.shape
    if shape is None or len(shape) != 1 or rank <= 1:
        return v
    dims = [1] * rank
    dims[axis % rank] = int(shape[0])
    return bb.emit(R.reshape(v, dims))


def convert(bb: relax.BlockBuilder, op: str, inputs: list[relax.Expr | None], attrs: dict, to: str | None) -> relax.Expr | None:
    """The Relax expression for a float8 conversion node, or None when the node is none of those.

    `to` is the TVM dtype of the node's output (Cast: the `to` attribute; CastLike: the second input's).
    """
    if op in ("Cast", "CastLike"):
        x = inputs[0]
        src = dtype_of(x)
        if src == E8M0 and to in FLOATS:
            return decode_e8m0(bb, x, to)
        if to == E8M0 and src in FLOATS:
            mode = attrs.get("round_mode", "up")
            mode = mode.decode() if isinstance(mode, bytes) else mode
            return encode_e8m0(bb, x, bool(attrs.get("saturate", 1)), mode)
        if src in FORMATS and to in FLOATS:
            return decode(bb, x, to)
        if to in FORMATS and src in FLOATS:
            return encode(bb, x, to, bool(attrs.get("saturate", 1)))
        return None
    if op == "DequantizeLinear" and dtype_of(inputs[0]) in FORMATS and not attrs.get("block_size", 0):
        x, scale = inputs[0], inputs[1]
        work = dtype_of(scale)
        if work not in FLOATS:
            return None
        rank = len(x.ty.shape) if x.ty.shape is not None else 0
        axis = int(attrs.get("axis", 1))
        y = decode(bb, x, work)
        zp = inputs[2] if len(inputs) > 2 else None
        if zp is not None:
            y = bb.emit(R.subtract(y, per_axis(bb, decode(bb, zp, work), rank, axis)))
        return bb.emit(R.multiply(y, per_axis(bb, scale, rank, axis)))
    if op == "QuantizeLinear" and not attrs.get("block_size", 0):
        x, scale = inputs[0], inputs[1]
        zp = inputs[2] if len(inputs) > 2 else None
        fmt = dtype_of(zp) if zp is not None else to
        if fmt not in FORMATS or dtype_of(x) not in FLOATS:
            return None
        rank = len(x.ty.shape) if x.ty.shape is not None else 0
        axis = int(attrs.get("axis", 1))
        work = "float64" if dtype_of(x) == "float64" else "float32"
        xs = x if dtype_of(x) == work else bb.emit(R.astype(x, work))
        s = scale if dtype_of(scale) == work else bb.emit(R.astype(scale, work))
        v = bb.emit(R.divide(xs, per_axis(bb, s, rank, axis)))
        if zp is not None:
            v = bb.emit(R.add(v, per_axis(bb, decode(bb, zp, work), rank, axis)))
        return encode(bb, v, fmt, bool(attrs.get("saturate", 1)))
    return None
