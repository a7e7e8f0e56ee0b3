"""Constant tensors: initializers and attribute tensors, loaded lazily.

A `Tensor` is immutable. It is backed by one of: an ONNX `TensorProto` held in memory, an
external-data region of a file already checked by the importer, or a numpy array made by a
pass. The original proto is kept so that export is bit-exact, whatever the dtype.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import numpy as np
import onnx
from onnx import numpy_helper

from lepton_ir.errors import UnsafeExternalDataError
from lepton_ir.types import Shape, dtype_bits, dtype_name, np_to_onnx_dtype


@dataclass(frozen=True, slots=True)
class ExternalRegion:
    """A checked byte range of a file: `path` is absolute, the range lies inside the file."""

    path: str
    offset: int
    length: int


class Tensor:
    """An immutable constant. `numpy()` materializes (and caches) the array."""

    __slots__ = ("name", "dtype", "shape", "_proto", "_array", "_external")

    def __init__(
        self,
        dtype: int,
        shape: tuple[int, ...],
        *,
        name: str = "",
        proto: onnx.TensorProto | None = None,
        array: np.ndarray | None = None,
        external: ExternalRegion | None = None,
    ) -> None:
        self.name = name
        self.dtype = dtype
        self.shape = tuple(int(d) for d in shape)
        self._proto = proto
        self._array = array
        self._external = external

    @classmethod
    def from_numpy(cls, array: np.ndarray, name: str = "") -> Tensor:
        """Wrap a numpy array (copied, made read-only)."""
        arr = np.array(array, copy=True)
        arr.flags.writeable = False
        return cls(np_to_onnx_dtype(arr.dtype), arr.shape, name=name, array=arr)

    @classmethod
    def from_proto(cls, proto: onnx.TensorProto, external: ExternalRegion | None = None) -> Tensor:
        """Wrap a proto. With `external`, the proto's data lives in that (checked) file region."""
        return cls(proto.data_type, tuple(proto.dims), name=proto.name, proto=proto, external=external)

    @property
    def size(self) -> int:
        return int(np.prod(self.shape, dtype=np.int64))

    @property
    def nbytes(self) -> int:
        """Bytes of the packed data (sub-byte dtypes rounded up)."""
        return (self.size * dtype_bits(self.dtype) + 7) // 8

    def numpy(self) -> np.ndarray:
        """The value as a read-only numpy array (int4/float8 etc. as ml_dtypes arrays)."""
        if self._array is None:
            arr = numpy_helper.to_array(self._load_proto())
            arr.flags.writeable = False
            self._array = arr
        return self._array

    def to_proto(self, name: str) -> onnx.TensorProto:
        """A TensorProto named `name` with the data inline (bit-exact for imported tensors)."""
        if self._proto is not None:
            src = self._load_proto()
            if src.name == name:
                return src
            out = onnx.TensorProto()
            out.CopyFrom(src)
            out.name = name
            return out
        return numpy_helper.from_array(np.asarray(self._array), name=name)

    def raw_bytes(self) -> bytes:
        """The little-endian raw data, as ONNX's `raw_data` would hold it."""
        if self._external is not None:
            return read_region(self._external)
        proto = self.to_proto(self.name)
        if proto.HasField("raw_data"):
            return proto.raw_data
        # Re-encode typed-field storage through numpy (exact for every numeric dtype).
        return numpy_helper.from_array(self.numpy(), name="").raw_data

    def _load_proto(self) -> onnx.TensorProto:
        assert self._proto is not None
        if self._external is None:
            if self._proto.data_location == onnx.TensorProto.EXTERNAL:
                raise UnsafeExternalDataError(
                    f"tensor {self.name!r} keeps its data in an external file that was never checked; "
                    "load the model with lepton_ir.load(path)"
                )
            return self._proto
        proto = onnx.TensorProto()
        proto.CopyFrom(self._proto)
        del proto.external_data[:]
        proto.data_location = onnx.TensorProto.DEFAULT
        proto.raw_data = read_region(self._external)
        return proto

    def __repr__(self) -> str:
        return f"Tensor({self.name!r}, {dtype_name(self.dtype)}{list(self.shape)})"


def read_region(region: ExternalRegion) -> bytes:
    """The bytes of a checked external-data region; an error if the file has shrunk since the check."""
    with open(region.path, "rb") as f:
        f.seek(region.offset)
        data = f.read(region.length)
    if len(data) != region.length:
        raise UnsafeExternalDataError(
            f"external data file {os.path.basename(region.path)!r} changed since the model was loaded: "
            f"expected {region.length} bytes at offset {region.offset}"
        )
    return data


__all__ = ["ExternalRegion", "Shape", "Tensor", "read_region"]
