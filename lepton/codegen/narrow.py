"""Sub-byte types for TVM: INT4, UINT4, INT2, UINT2 and FLOAT4E2M1 in Cast/CastLike/QuantizeLinear/
DequantizeLinear, computed in byte-wide storage.

TVM packs sub-byte tensors, while numpy (ml_dtypes) holds one element per byte, so TVM never sees
these types: in the ONNX model handed to TVM's frontend (`to_storage`) every such value is typed
by its storage type, int8 for INT4/INT2 (the value), uint8 for UINT4/UINT2 (the value) and for
FLOAT4E2M1 (the 4-bit code, sign in bit 3), and the nodes that make or read them carry their ONNX
type in an extra attribute the converters read (`convert`). The compiled module takes and returns
the storage arrays; `lepton.module` converts at its boundary (`to_storage_array`/`from_storage_array`).

Conversions follow ONNX's reference (ml_dtypes) where ONNX defines them: a float cast to an integer
type truncates toward zero; values outside the type's range, which ONNX leaves undefined, saturate to
the nearest bound and NaN becomes 0 (Lepton's rule, stated in the README); to FLOAT4E2M1 it rounds to nearest even and saturates at ±6
(NaN becomes a zero); quantization rounds half to even, adds the zero point and clips to the type's
range; dequantization is `(x - zero_point) * scale`.
"""

from __future__ import annotations

from typing import Any

import ml_dtypes
import numpy as np
import onnx
from onnx import TensorProto as T
import tvm
from tvm import relax
from tvm.relax import op as R

from lepton.codegen import float8
from lepton_ir.structure import all_graphs

#: ONNX type -> (numpy type, storage numpy type, TVM storage dtype).
NARROW: dict[int, tuple[np.dtype, np.dtype, str]] = {
    T.INT4: (np.dtype(ml_dtypes.int4), np.dtype(np.int8), "int8"),
    T.UINT4: (np.dtype(ml_dtypes.uint4), np.dtype(np.uint8), "uint8"),
    T.INT2: (np.dtype(ml_dtypes.int2), np.dtype(np.int8), "int8"),
    T.UINT2: (np.dtype(ml_dtypes.uint2), np.dtype(np.uint8), "uint8"),
    T.FLOAT4E2M1: (np.dtype(ml_dtypes.float4_e2m1fn), np.dtype(np.uint8), "uint8"),
}
BY_NAME = {v[0].name: k for k, v in NARROW.items()}
#: Node attributes carrying the ONNX type of a narrow input/output to the converters.
IN_ATTR, OUT_ATTR = "lepton_narrow_in", "lepton_narrow_out"
_FLOAT4 = float8.Format(1, 1, 0x7, 0x8, None, False)
_FLOAT4_VALUES = np.arange(16, dtype=np.uint8).view(ml_dtypes.float4_e2m1fn).astype(np.float64)


# ----- the module boundary -----------------------------------------------------------------


def to_storage_array(a: np.ndarray) -> np.ndarray:
    """A numpy array of a narrow type as its storage array (other arrays unchanged)."""
    t = BY_NAME.get(a.dtype.name)
    if t is None:
        return a
    return a.view(np.uint8) & np.uint8(0xF) if t == T.FLOAT4E2M1 else a.astype(NARROW[t][1])


def from_storage_array(a: np.ndarray, dtype_name: str) -> np.ndarray:
    """A storage array returned by the module as the narrow type `dtype_name` (others unchanged)."""
    t = BY_NAME.get(dtype_name)
    if t is None or a.dtype.name == dtype_name:
        return a
    return a.astype(np.uint8).view(NARROW[t][0]) if t == T.FLOAT4E2M1 else a.astype(NARROW[t][0])


# ----- the model handed to TVM ---------------------------------------------------------------


def to_storage(model: onnx.ModelProto) -> None:
    """In place: narrow types become storage types (graph inputs, outputs, value infos, initializers,
    Constant values); nodes reading or making narrow values are marked with their ONNX types."""
    for g in all_graphs(model.graph):
        types: dict[str, int] = {}
        for vi in [*g.input, *g.output, *g.value_info]:
            t = vi.type.tensor_type.elem_type
            if t in NARROW:
                types[vi.name] = t
                vi.type.tensor_type.elem_type = onnx.helper.np_dtype_to_tensor_dtype(NARROW[t][1])
        for i, init in enumerate(g.initializer):
            if init.data_type in NARROW:
                types[init.name] = init.data_type
                g.initializer[i].CopyFrom(_storage_tensor(init))
        for n in g.node:
            for a in n.attribute:
                if a.type == onnx.AttributeProto.TENSOR and a.t.data_type in NARROW:
                    types.update(dict.fromkeys(n.output, a.t.data_type))
                    a.t.CopyFrom(_storage_tensor(a.t))
        for n in g.node:
            ins = [types.get(x, 0) for x in n.input]
            outs = [types.get(x, 0) for x in n.output]
            if n.op_type == "Cast":
                to = next((a.i for a in n.attribute if a.name == "to"), 0)
                outs = [to if to in NARROW else 0]
            if any(ins):
                n.attribute.append(onnx.helper.make_attribute(IN_ATTR, ins))
            if any(outs):
                n.attribute.append(onnx.helper.make_attribute(OUT_ATTR, outs))


def _storage_tensor(t: onnx.TensorProto) -> onnx.TensorProto:
    return onnx.numpy_helper.from_array(to_storage_array(onnx.numpy_helper.to_array(t)), t.name)


# ----- converters ------------------------------------------------------------------------------


def _const(value: object, dtype: str) -> relax.Expr:
    return relax.const(np.asarray(value, dtype=dtype), dtype)


def _saturate(bb: relax.BlockBuilder, x: relax.Expr, t: int) -> relax.Expr:
    """`x` cast to the sub-byte integer type `t`, as its storage dtype (Lepton's rule, stated in the README):
    a float truncates toward zero, then every value outside the type's range saturates to its nearest
    bound (±Inf too); NaN becomes 0. ONNX leaves out-of-range casts undefined; this is QuantizeLinear's rule."""
    info = ml_dtypes.iinfo(NARROW[t][0])
    src = float8.dtype_of(x)
    if src in float8.FLOATS:
        work = "float64" if src == "float64" else "float32"
        xf = x if src == work else bb.emit(R.astype(x, work))
        v = bb.emit(R.clip(xf, int(info.min), int(info.max)))
        v = bb.emit(R.where(R.isnan(xf), _const(0, work), v))
    elif src.startswith("uint"):  # never below the bound 0 or min; compared in its own type, which holds max
        v = bb.emit(R.minimum(x, _const(int(info.max), src)))
    else:  # signed integers and bool: compared in int64, which holds every value and both bounds
        v = bb.emit(R.clip(bb.emit(R.astype(x, "int64")), int(info.min), int(info.max)))
    return bb.emit(R.astype(v, NARROW[t][2]))  # in range now: the float -> int cast truncates exactly


def _decode_float4(bb: relax.BlockBuilder, codes: relax.Expr, to: str) -> relax.Expr:
    return bb.emit(R.take(relax.const(_FLOAT4_VALUES.astype(to), to), R.astype(codes, "int64"), axis=0))


def _encode_float4(bb: relax.BlockBuilder, x: relax.Expr) -> relax.Expr:
    """Float codes of FLOAT4E2M1 as uint8 (round to nearest even, saturate at 6, NaN to 0)."""
    src = float8.dtype_of(x)
    work = "float64" if src == "float64" else "float32"
    xf = x if src == work else bb.emit(R.astype(x, work))
    a = bb.emit(R.minimum(R.abs(xf), _const(6.0, work)))  # saturates (Inf too)
    # binades: [0, 1) step 0.5 (subnormal and first normal), [1, 2) step 0.5, [2, 4) step 1, [4, 6] step 2
    step = bb.emit(R.where(R.less(a, _const(2.0, work)), _const(0.5, work),
                           R.where(R.less(a, _const(4.0, work)), _const(1.0, work), _const(2.0, work))))
    value = bb.emit(R.multiply(R.round(R.divide(a, step)), step))  # ties to even on the step grid
    # code of a grid value: 0, .5, 1, 1.5 -> 2v; 2, 3 -> v + 2; 4, 6 -> v/2 + 4
    code = R.where(R.less(value, _const(2.0, work)), R.multiply(value, _const(2.0, work)),
                   R.where(R.less(value, _const(4.0, work)), R.add(value, _const(2.0, work)),
                           R.add(R.multiply(value, _const(0.5, work)), _const(4.0, work))))
    code = bb.emit(R.astype(code, "int32"))
    negative = R.logical_or(R.less(xf, _const(0, work)), R.less(R.divide(_const(1, work), xf), _const(0, work)))
    code = bb.emit(R.add(code, R.multiply(R.astype(negative, "int32"), _const(8, "int32"))))
    code = bb.emit(R.where(R.isnan(xf), _const(0, "int32"), code))
    return bb.emit(R.astype(code, "uint8"))


def convert(bb: relax.BlockBuilder, op: str, inputs: list[relax.Expr | None], attrs: dict) -> relax.Expr | None:
    """The Relax expression for a node marked by `to_storage` or a blocked (de)quantization, or None for the
    frontend's converter."""
    ins, outs = list(attrs.get(IN_ATTR, ())), list(attrs.get(OUT_ATTR, ()))
    if op in ("QuantizeLinear", "DequantizeLinear") and int(attrs.get("block_size", 0) or 0) > 0:
        return _blocked(bb, op, inputs, attrs, ins[0] if ins else 0, outs[0] if outs else 0)
    if not any(ins) and not any(outs):
        return None
    src_t = ins[0] if ins else 0
    out_t = outs[0] if outs else 0
    x = inputs[0]
    if op in ("Cast", "CastLike"):
        to_t = out_t or int(attrs.get("to", 0))
        to = float8.dtype_of(inputs[1]) if op == "CastLike" and not out_t else onnx.helper.tensor_dtype_to_np_dtype(to_t).name
        if src_t == T.FLOAT4E2M1:
            if to in float8.FLOATS:
                return _decode_float4(bb, x, to)
            return None
        if src_t in NARROW:  # an integer narrow type: the storage holds the value
            return None if out_t else bb.emit(R.astype(x, to))
        if out_t == T.FLOAT4E2M1:
            return _encode_float4(bb, x) if float8.dtype_of(x) in float8.FLOATS else None
        if out_t in NARROW:
            return _saturate(bb, x, out_t)
        return None
    if op == "QuantizeLinear" and out_t in NARROW and not attrs.get("block_size", 0):
        scale = inputs[1]
        zp = inputs[2] if len(inputs) > 2 else None
        rank = len(x.ty.shape) if x.ty.shape is not None else 0
        axis = int(attrs.get("axis", 1))
        work = "float64" if float8.dtype_of(x) == "float64" else "float32"
        xs = x if float8.dtype_of(x) == work else bb.emit(R.astype(x, work))
        s = scale if float8.dtype_of(scale) == work else bb.emit(R.astype(scale, work))
        v = bb.emit(R.divide(xs, float8.per_axis(bb, s, rank, axis)))
        if out_t == T.FLOAT4E2M1:
            if zp is not None:
                v = bb.emit(R.add(v, float8.per_axis(bb, _decode_float4(bb, zp, work), rank, axis)))
            return _encode_float4(bb, v)
        v = bb.emit(R.round(v))
        if zp is not None:
            v = bb.emit(R.add(v, float8.per_axis(bb, bb.emit(R.astype(zp, work)), rank, axis)))
        info = ml_dtypes.iinfo(NARROW[out_t][0])
        v = bb.emit(R.clip(v, int(info.min), int(info.max)))
        return bb.emit(R.astype(v, NARROW[out_t][2]))
    if op == "DequantizeLinear" and src_t in NARROW and not attrs.get("block_size", 0):
        scale = inputs[1]
        work = float8.dtype_of(scale)
        if work not in float8.FLOATS:
            return None
        zp = inputs[2] if len(inputs) > 2 else None
        rank = len(x.ty.shape) if x.ty.shape is not None else 0
        axis = int(attrs.get("axis", 1))
        y = _decode_float4(bb, x, work) if src_t == T.FLOAT4E2M1 else bb.emit(R.astype(x, work))
        if zp is not None:
            z = _decode_float4(bb, zp, work) if src_t == T.FLOAT4E2M1 else bb.emit(R.astype(zp, work))
            y = bb.emit(R.subtract(y, float8.per_axis(bb, z, rank, axis)))
        return bb.emit(R.multiply(y, float8.per_axis(bb, scale, rank, axis)))
    return None


def _blocked(bb: relax.BlockBuilder, op: str, inputs: list[relax.Expr | None], attrs: dict, src_t: int,
             out_t: int) -> relax.Expr:
    """Blocked QuantizeLinear/DequantizeLinear (`block_size`; TVM's converter refuses it): ONNX's formulas with
    each scale and zero point applied to its block along `axis`, the last block cut to the axis. Dequantized
    in float32 (float64 for float64 scales), then cast to the scale's type; quantized to an integer type only.
    The parameters are broadcast over a `[..., blocks, block, ...]` view, never repeated: on a constant (a
    blocked int4 weight) constant folding then keeps them block-sized, and `lepton.codegen.weights` runs the
    rest once, when the module is loaded."""
    x, scale = inputs[0], inputs[1]
    assert x is not None and scale is not None
    zp = inputs[2] if len(inputs) > 2 else None
    shape = x.ty.shape
    rank = len(shape)
    axis = int(attrs.get("axis", 1)) % rank
    block = int(attrs["block_size"])
    if not isinstance(shape[axis], int | tvm.tirx.IntImm):
        raise ValueError(f"blocked (de)quantization needs a static size along axis {axis}; the input's shape is {list(shape)}")
    size = int(shape[axis])

    def per_block(fn: Any, y: relax.Expr, v: relax.Expr) -> relax.Expr:
        """`fn(y, v)` with element `j` of `v` along `axis` applied to block `j` of `y`."""
        whole = size // block
        dims = [int(d) if isinstance(d, int | tvm.tirx.IntImm) else d for d in shape]
        parts = []
        if whole:
            head = y if whole * block == size else bb.emit(R.strided_slice(y, [axis], [0], [whole * block]))
            grouped = bb.emit(R.reshape(head, [*dims[:axis], whole, block, *dims[axis + 1:]]))
            vh = v if int(v.ty.shape[axis]) == whole else bb.emit(R.strided_slice(v, [axis], [0], [whole]))
            vh = bb.emit(R.expand_dims(vh, axis + 1))
            parts.append(bb.emit(R.reshape(bb.emit(fn(grouped, vh)), [*dims[:axis], whole * block, *dims[axis + 1:]])))
        if whole * block != size:  # the short last block
            tail = bb.emit(R.strided_slice(y, [axis], [whole * block], [size]))
            parts.append(bb.emit(fn(tail, bb.emit(R.strided_slice(v, [axis], [whole], [whole + 1])))))
        return parts[0] if len(parts) == 1 else bb.emit(R.concat(parts, axis))

    def decode(v: relax.Expr, t: int, work: str) -> relax.Expr:
        if t == T.FLOAT4E2M1:
            return _decode_float4(bb, v, work)
        if float8.dtype_of(v) in float8.FORMATS:
            return float8.decode(bb, v, work)
        return bb.emit(R.astype(v, work))

    def as_work(v: relax.Expr, work: str) -> relax.Expr:
        return v if float8.dtype_of(v) == work else bb.emit(R.astype(v, work))

    if op == "DequantizeLinear":
        out = float8.dtype_of(scale)
        work = "float64" if out == "float64" else "float32"
        y = decode(x, src_t, work)
        if zp is not None:
            y = per_block(R.subtract, y, decode(zp, src_t, work))
        y = per_block(R.multiply, y, as_work(scale, work))
        return y if out == work else bb.emit(R.astype(y, out))
    work = "float64" if float8.dtype_of(x) == "float64" else "float32"
    if out_t in NARROW:
        info, storage = ml_dtypes.iinfo(NARROW[out_t][0]), NARROW[out_t][2]
    else:
        storage = float8.dtype_of(zp) if zp is not None else (
            onnx.helper.tensor_dtype_to_np_dtype(int(attrs["output_dtype"])).name if attrs.get("output_dtype") else "uint8")
        info = np.iinfo(storage)
    v = bb.emit(R.round(per_block(R.divide, as_work(x, work), as_work(scale, work))))
    if zp is not None:
        v = per_block(R.add, v, as_work(zp, work))
    v = bb.emit(R.clip(v, int(info.min), int(info.max)))
    return bb.emit(R.astype(v, storage))
