"""Quantization parameters: the numbers behind one QuantizeLinear/DequantizeLinear pair.

Rules (onnxruntime's QDQ conventions, so a graph Lepton quantizes means the same in onnxruntime):
- `q = saturate(round_half_even(x / scale) + zero_point)`, `x' = (q - zero_point) * scale`.
- Every range is widened to contain 0, so 0.0 is exactly representable (zero padding, ReLU zeros).
- Activations: uint8 asymmetric (`scale = (hi - lo) / 255`, zero point in [0, 255]) or int8 symmetric
  (`scale = max(|lo|, |hi|) / 127`, zero point 0).
- Weights: int8 symmetric over [-127, 127] (the -128 code is left unused, so a u8 x i8 product
  pair cannot saturate a 16-bit dot-product lane), per output channel or per tensor; or int4 symmetric
  over [-7, 7] in blocks (ONNX's `block_size`): one scale per `block` consecutive elements along the
  reduction axis, the last block of an axis not divisible by `block` shorter.
- A range of width 0 (an all-zero tensor or channel), or one so narrow that its scale would not be a
  normal float32 (|x| < ~1e-36), gets scale 1: every value quantizes to the zero point and dequantizes to 0.
Invariant: for x inside the representable range `[(qmin - zp) * scale, (qmax - zp) * scale]`, which
contains the given range up to half a step at each end, `|x' - x| <= scale / 2`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import ml_dtypes
import numpy as np

ActivationType = Literal["uint8", "int8"]
_TINY = float(np.finfo(np.float32).tiny) * 255  # below this a range's scale is not a normal float32


@dataclass(frozen=True)
class QParams:
    """Scale (float32) and zero point (uint8/int8/int4) of one tensor, per tensor, along `axis`, or, with
    `block_size`, per block of `block_size` elements along `axis` (`scale` then has the tensor's rank, its
    `axis` dimension the number of blocks)."""

    scale: np.ndarray
    zero_point: np.ndarray
    axis: int | None = None
    block_size: int = 0

    @property
    def qmin(self) -> int:
        return 0 if self.zero_point.dtype == np.uint8 else -self.qmax - 1

    @property
    def qmax(self) -> int:
        return int(ml_dtypes.iinfo(self.zero_point.dtype).max)


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


#: Clipping ratios `block_weight_params` tries per block: with 15 levels, clipping the largest weights to
#: shrink the step lowers the squared error of a block's other weights more than it costs (for a Gaussian block
#: of 128 the best ratio is about 0.8; llama.cpp's and AWQ's int4 quantizers search the same way).
CLIP_RATIOS = np.linspace(1.0, 0.5, 11, dtype=np.float32)


def block_weight_params(w: np.ndarray, axis: int, block: int, ratios: np.ndarray = CLIP_RATIOS) -> QParams:
    """Symmetric int4 parameters for `w`, one scale per `block` elements along `axis` (ONNX's blocked
    quantization: block `j` holds elements `j * block .. (j + 1) * block - 1` of the axis). Each block's scale
    is `ratio * max|w| / 7` for the ratio of `ratios` with the least squared error over the block (ratio 1:
    the block's range, nothing clipped; smaller: the largest weights saturate at +-7 steps)."""
    if block < 1:
        raise ValueError(f"block size {block} must be positive")
    x = w.astype(np.float32)
    n = w.shape[axis]
    blocks = -(-n // block)
    pad = [(0, 0)] * w.ndim
    pad[axis] = (0, blocks * block - n)
    grouped = np.moveaxis(np.pad(x, pad).reshape(*w.shape[:axis], blocks, block, *w.shape[axis + 1:]), axis + 1, -1)
    bound = np.abs(grouped).max(axis=-1) if grouped.size else np.zeros(grouped.shape[:-1], np.float32)
    best = np.full(bound.shape, np.inf, np.float32)
    scale = np.ones(bound.shape, np.float32)
    for ratio in ratios:
        trial = np.where(bound > _TINY, bound * ratio / np.float32(7.0), np.float32(1.0)).astype(np.float32)
        q = np.clip(np.rint(grouped / trial[..., None]), -7, 7)
        err = ((q * trial[..., None] - grouped) ** 2).sum(axis=-1)
        better = err < best
        best, scale = np.where(better, err, best), np.where(better, trial, scale)
    return QParams(scale.astype(np.float32), np.zeros(scale.shape, ml_dtypes.int4), axis, block)


def quantize_block_weight(w: np.ndarray, axis: int, block: int) -> tuple[np.ndarray, QParams]:
    """`w` as int4 codes in [-7, 7] (an `ml_dtypes.int4` array), blocked along `axis`, and their parameters."""
    p = block_weight_params(w, axis, block)
    return np.clip(quantize(w, p).astype(np.int8), -7, 7).astype(ml_dtypes.int4), p


def quantize(x: np.ndarray, p: QParams) -> np.ndarray:
    """QuantizeLinear: round half to even, add the zero point, saturate."""
    scale, zp = _broadcast(p, x.shape)
    q = np.rint(x.astype(np.float32) / scale) + zp.astype(np.float32)
    return np.clip(q, p.qmin, p.qmax).astype(p.zero_point.dtype)


def dequantize(q: np.ndarray, p: QParams) -> np.ndarray:
    """DequantizeLinear: `(q - zero_point) * scale` in float32."""
    scale, zp = _broadcast(p, q.shape)
    return ((q.astype(np.int32) - zp.astype(np.int32)).astype(np.float32) * scale).astype(np.float32)


def quantize_weight(w: np.ndarray, axis: int | None) -> tuple[np.ndarray, QParams]:
    """`w` as int8 codes in [-127, 127] and their parameters."""
    p = weight_params(w, axis)
    return np.clip(quantize(w, p), -127, 127).astype(np.int8), p


def _broadcast(p: QParams, shape: tuple[int, ...]) -> tuple[np.ndarray, np.ndarray]:
    ndim = len(shape)
    if p.block_size:  # each scale repeated over its block, the last block cut to the axis
        assert p.axis is not None
        scale, zp = (np.take(np.repeat(a, p.block_size, axis=p.axis), np.arange(shape[p.axis]), axis=p.axis)
                     for a in (p.scale, p.zero_point))
        return scale, zp
    if p.axis is None or p.scale.ndim == 0:
        return p.scale, p.zero_point
    shape = [1] * ndim
    shape[p.axis] = -1
    return p.scale.reshape(shape), p.zero_point.reshape(shape)
