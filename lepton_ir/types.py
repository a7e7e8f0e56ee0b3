"""Element types and shapes.

A dtype is an ONNX `TensorProto.DataType` integer. A shape is a tuple whose entries are an
`int` (static), a `str` (a named symbolic dim, ONNX `dim_param`) or `None` (unknown); the
shape itself is `None` when even the rank is unknown.
"""

from __future__ import annotations

from typing import TypeAlias

import numpy as np
import onnx
from onnx import helper

Dim: TypeAlias = int | str | None
Shape: TypeAlias = tuple[Dim, ...] | None

_SUB_BYTE = {"INT4", "UINT4", "FLOAT4E2M1", "INT2", "UINT2"}


def dtype_name(dtype: int | None) -> str:
    """Short lower-case name, e.g. `float32`, `int64`, `?` for unknown."""
    if dtype is None or dtype == onnx.TensorProto.UNDEFINED:
        return "?"
    try:
        return np.dtype(helper.tensor_dtype_to_np_dtype(dtype)).name
    except (KeyError, TypeError, ValueError):
        return onnx.TensorProto.DataType.Name(dtype).lower()


def dtype_bits(dtype: int) -> int:
    """Bits per element (4 for int4/uint4/float4, 8 * itemsize otherwise)."""
    name = onnx.TensorProto.DataType.Name(dtype)
    if name in _SUB_BYTE:
        return 2 if name.endswith("INT2") else 4
    if name.startswith("FLOAT6"):
        return 6  # packed 6-bit stream in raw_data
    if name == "STRING":
        return 0
    return np.dtype(helper.tensor_dtype_to_np_dtype(dtype)).itemsize * 8


def np_dtype(dtype: int) -> np.dtype:
    """The numpy dtype onnxruntime uses for this ONNX dtype."""
    return np.dtype(helper.tensor_dtype_to_np_dtype(dtype))


def np_to_onnx_dtype(dtype: np.dtype) -> int:
    """The ONNX dtype of a numpy dtype."""
    return int(helper.np_dtype_to_tensor_dtype(np.dtype(dtype)))


def is_float(dtype: int | None) -> bool:
    return dtype in _FLOATS


_FLOATS = {
    onnx.TensorProto.FLOAT,
    onnx.TensorProto.DOUBLE,
    onnx.TensorProto.FLOAT16,
    onnx.TensorProto.BFLOAT16,
}


def format_shape(shape: Shape) -> str:
    """`[1,3,?,batch]`, or `[...]` for unknown rank."""
    if shape is None:
        return "[...]"
    return "[" + ",".join("?" if d is None else str(d) for d in shape) + "]"


def is_static(shape: Shape) -> bool:
    """True when the rank and every dim are known integers."""
    return shape is not None and all(isinstance(d, int) for d in shape)
