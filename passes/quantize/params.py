"""Quantization parameters: the numbers behind one QuantizeLinear/DequantizeLinear pair.

Rules (onnxruntime's QDQ conventions, so a graph Lepton quantizes means the same in onnxruntime):
- `q = saturate(round_half_even(x / scale) + zero_point)`, `x' = (q - zero_point) * scale`.
- Every range is widened to contain 0, so 0.0 is exactly representable (zero padding, ReLU zeros).
- Activations: uint8 asymmetric (`scale = (hi - lo) / 255`, zero point in [0, 255]) or int8 symmetric
  (`scale = max(|lo|, |hi|) / 127`, zero point 0).
- Weights: int8 symmetric over [-127, 127] (the -128 code is left unused, so a u8 x i8 product
  pair cannot saturate a 16-bit dot-product lane), per output channel or per tensor.
- A range of width 0 (an all-zero tensor or channel), or one so narrow that its scale would not be a
  normal float32 (|x| < ~1e-36), gets scale 1: every value quantizes to the zero point and dequantizes to 0.
Invariant: for x inside the representable range `[(qmin - zp) * scale, (qmax - zp) * scale]`, which
contains the given range up to half a step at each end, `|x' - x| <= scale / 2`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import numpy as np

ActivationType = Literal["uint8", "int8"]
_TINY = float(np.finfo(np.float32).tiny) * 255  # below this a range's scale is not a normal float32


@dataclass(frozen=True)
class QParams:
    """Scale (float32) and zero point (uint8/int8) of one tensor, per tensor or along `axis`."""

    scale: np.ndarray
    zero_point: np.ndarray
    axis: int | None = None

    @property
    def qmin(self) -> int:
        return int(np.iinfo(self.zero_point.dtype).min) if self.zero_point.dtype == np.uint8 else -128

    @property
    def qmax(self) -> int:
        return int(np.iinfo(self.zero_point.dtype).max)


def activation_params(lo: float, hi: float, kind: ActivationType = "uint8") -> QParams:
    """Per-tensor parameters for an activation observed in [lo, hi]."""
    lo, hi = min(float(lo), 0.0), max(float(hi), 0.0)
    if kind == "int8":
        bound = max(-lo, hi)
        scale = bound / 127.0 if bound > _TINY else 1.0
        return QParams(np.array(scale, np.float32), np.array(0, np.int8))
    scale = (hi - lo) / 255.0 if hi - lo > _TINY else 1.0
    scale32 = np.float32(scale)
    zp = int(np.clip(np.rint(-lo / float(scale32)), 0, 255))
    return QParams(np.array(scale32, np.float32), np.array(zp, np.uint8))


def weight_params(w: np.ndarray, axis: int | None) -> QParams:
    """Symmetric int8 parameters covering `w`, per slice along `axis` (None: one for the whole tensor)."""
    a = np.abs(w.astype(np.float32))
    if axis is None:
        bound = np.array(a.max() if a.size else 0.0, np.float32)
    else:
        others = tuple(i for i in range(w.ndim) if i != axis)
        bound = a.max(axis=others) if a.size else np.zeros(w.shape[axis], np.float32)
    scale = np.where(bound > _TINY, bound / np.float32(127.0), np.float32(1.0)).astype(np.float32)
    # the float32 division can leave max|w| / scale a hair above 127: nudge such scales up one ulp
    over = bound / scale > 127.0
    scale = np.where(over, np.nextafter(scale, np.float32(np.inf)), scale).astype(np.float32)
    return QParams(scale, np.zeros(scale.shape, np.int8), axis)


def quantize(x: np.ndarray, p: QParams) -> np.ndarray:
    """QuantizeLinear: round half to even, add the zero point, saturate."""
    scale, zp = _broadcast(p, x.ndim)
    q = np.rint(x.astype(np.float32) / scale) + zp.astype(np.float32)
    return np.clip(q, p.qmin, p.qmax).astype(p.zero_point.dtype)


def dequantize(q: np.ndarray, p: QParams) -> np.ndarray:
    """DequantizeLinear: `(q - zero_point) * scale` in float32."""
    scale, zp = _broadcast(p, q.ndim)
    return ((q.astype(np.int32) - zp.astype(np.int32)).astype(np.float32) * scale).astype(np.float32)


def quantize_weight(w: np.ndarray, axis: int | None) -> tuple[np.ndarray, QParams]:
    """`w` as int8 codes in [-127, 127] and their parameters."""
    p = weight_params(w, axis)
    return np.clip(quantize(w, p), -127, 127).astype(np.int8), p


def _broadcast(p: QParams, ndim: int) -> tuple[np.ndarray, np.ndarray]:
    if p.axis is None or p.scale.ndim == 0:
        return p.scale, p.zero_point
    shape = [1] * ndim
    shape[p.axis] = -1
    return p.scale.reshape(shape), p.zero_point.reshape(shape)
