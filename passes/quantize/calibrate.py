"""Calibration: the range of each activation tensor over user data, in one streaming pass.

The graph runs in onnxruntime (one session, one thread: the same data gives bit-identical
ranges on every run) with the observed tensors added as outputs. Each feed (one batch) is run,
observed and dropped, so memory is bounded by one batch plus a fixed-size histogram per tensor.

Methods:
- `minmax`: the observed minimum and maximum.
- `percentile`: the `percentile`-th and (100 - `percentile`)-th percentiles, from the histogram.
- `entropy`: the threshold on |x| whose 128-level (256 for non-negative tensors) quantized histogram
  is closest in KL divergence to the observed one (TensorRT's calibration), clipped to [min, max].

Histogram: `BINS` bins over [-R, R]; R starts at the first batch's max |x| and doubles, merging
pairs of bins, when a later batch goes beyond it, so no batch is kept and the result depends only
on the data and its order.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Literal

import numpy as np
import onnx

from lepton_ir import UserError
from passes.ort import session

Method = Literal["minmax", "percentile", "entropy"]
Feeds = Mapping[str, np.ndarray]
BINS = 2048


class CalibrationError(UserError):
    """The calibration data cannot be used: none given, empty, or it does not fit the model."""


@dataclass
class Observer:
    """Running min, max and (when `histogram`) a symmetric histogram of one tensor."""

    histogram: bool
    lo: float = np.inf
    hi: float = -np.inf
    radius: float = 0.0
    counts: np.ndarray = field(default_factory=lambda: np.zeros(BINS, np.int64))

    def add(self, x: np.ndarray) -> None:
        x = np.asarray(x, np.float32)
        finite = x[np.isfinite(x)]
        if finite.size == 0:
            return
        self.lo = min(self.lo, float(finite.min()))
        self.hi = max(self.hi, float(finite.max()))
        if not self.histogram:
            return
        top = max(-self.lo, self.hi)
        if top == 0.0:
            self.counts[BINS // 2] += finite.size  # all zeros so far: the bin at zero
            return
        if self.radius == 0.0:
            zeros = self.counts.sum()
            self.radius = top
            self.counts[:] = 0
            self.counts[BINS // 2] = zeros
        while top > self.radius:  # double the range: pairs of bins merge into the middle half
            merged = self.counts.reshape(BINS // 2, 2).sum(axis=1)
            self.counts[:] = 0
            self.counts[BINS // 4 : 3 * BINS // 4] = merged
            self.radius *= 2.0
        hist, _ = np.histogram(finite, bins=BINS, range=(-self.radius, self.radius))
        self.counts += hist

    def range(self, method: Method, percentile: float = 99.99) -> tuple[float, float]:
        """The calibrated [lo, hi] (0.0, 0.0 when nothing finite was seen)."""
        if not np.isfinite(self.lo):
            return 0.0, 0.0
        if method == "minmax" or self.radius == 0.0:
            return self.lo, self.hi
        edges = np.linspace(-self.radius, self.radius, BINS + 1)
        if method == "percentile":
            cdf = np.cumsum(self.counts) / self.counts.sum()
            p = percentile / 100.0
            lo = edges[int(np.searchsorted(cdf, 1.0 - p, side="left"))]
            hi = edges[int(np.searchsorted(cdf, p, side="left")) + 1]
            return max(self.lo, float(lo)), min(self.hi, float(hi))
        threshold = kl_threshold(self.counts, self.radius, levels=256 if self.lo >= 0 else 128)
        return max(self.lo, -threshold), min(self.hi, threshold)


def kl_threshold(counts: np.ndarray, radius: float, levels: int = 128) -> float:
    """The |x| threshold minimizing KL(P || Q), P the clipped histogram of |x|, Q it quantized to `levels`."""
    half = len(counts) // 2
    folded = counts[half:].astype(np.float64) + counts[:half][::-1]
    width = radius / half
    if folded.sum() == 0:
        return radius
    best, best_kl = half, np.inf
    for i in range(levels, half + 1):
        p = folded[:i].copy()
        p[-1] += folded[i:].sum()
        group = (np.arange(i) * levels) // i  # bin -> quantized level
        present = folded[:i] > 0
        sums = np.bincount(group, weights=folded[:i], minlength=levels)
        sizes = np.bincount(group, weights=present, minlength=levels)
        q = np.where(present, sums[group] / np.maximum(sizes[group], 1), 0.0)  # each level spread over its bins
        kl = _kl(p, q)
        if kl < best_kl:
            best, best_kl = i, kl
    return best * width


def _kl(p: np.ndarray, q: np.ndarray, eps: float = 1e-4) -> float:
    """KL(p || q) of two histograms, normalized, with `eps` of mass added to q's empty bins before q is
    renormalized (smoothing: a threshold whose clipped tail lands in an empty bin is penalized, not impossible)."""
    p = p / p.sum()
    if q.sum() == 0:
        return np.inf
    q = q / q.sum()
    empty = q == 0
    if empty.all():
        return np.inf
    q = q + eps * empty
    q = q / q.sum()
    mask = p > 0
    return float(np.sum(p[mask] * np.log(p[mask] / q[mask])))


def calibrate(
    model: onnx.ModelProto,
    tensors: Sequence[str],
    data: Iterable[Feeds],
    *,
    histogram: bool,
    progress: Callable[[str], None] | None = None,
) -> dict[str, Observer]:
    """Observe `tensors` of `model` over every feed of `data` (each one batch); CalibrationError if there are none."""
    observers = {t: Observer(histogram) for t in tensors}
    if not tensors:
        return observers
    run = session(model, list(tensors))
    inputs = [i.name for i in model.graph.input if i.name not in {x.name for x in model.graph.initializer}]
    batches = 0
    for feeds in data:
        missing = [n for n in inputs if n not in feeds]
        if missing:
            raise CalibrationError(f"calibration batch {batches} has no value for input(s) {', '.join(missing)}; "
                                   "give a dict of arrays by input name per batch")
        try:
            outs = run({n: feeds[n] for n in inputs})
        except Exception as e:  # noqa: BLE001 - onnxruntime's errors name the input at fault
            raise CalibrationError(f"calibration batch {batches} does not run in onnxruntime: {e}") from None
        for name, arr in outs.items():
            observers[name].add(arr)
        batches += 1
        if progress is not None:
            progress(f"calibrating: {batches} batch(es), {len(tensors)} tensor(s)")
    if batches == 0:
        raise CalibrationError("the calibration data is empty: give at least one batch")
    return observers
