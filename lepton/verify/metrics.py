"""Error metrics of one output (module vs onnxruntime), per sample and merged over samples.

Definitions (all in float64):
- absolute error `|a - e|`, over positions where both are finite;
- relative error `|a - e| / max(|e|, REL_ERR_FLOOR)`: near-zero expected values are measured
  against the floor, so an fp32 rounding difference at e = 1e-9 does not read as a 100% error;
- cosine similarity of the flattened finite positions: 1.0 when both are all zero, 0.0 when
  exactly one is; merged over samples as the worst (minimum);
- top-1 agreement, for classifier-shaped outputs only (`classifier_shaped`): the fraction of rows
  (all leading positions, classes on the last axis) where the module's arg-max is a class
  onnxruntime also scores highest (ties in onnxruntime's row count as agreement); pooled over
  samples (agreeing rows / rows), so a dataset of batch-1 samples gets a meaningful rate;
- an element is out of tolerance when both values are finite and `|a - e| > atol + rtol * |e|`
  (for exact, i.e. integer/bool, outputs: when `a != e`); a non-finite mismatch is a position
  where the two are not both NaN and not the same infinity.

Positions are `(sample, index)` pairs, with `index` a tuple into the output's shape.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

REL_ERR_FLOOR = 1e-3
"""|expected| below this counts as this in the relative error (see the module docstring)."""
MAX_POSITIONS = 5
"""How many mismatch positions a Metrics keeps (the first ones, in sample then C order)."""

Position = tuple[int, tuple[int, ...]]


def classifier_shaped(shape: tuple[int, ...], dtype: np.dtype) -> bool:
    """Floating `[N, C]` or `[N, T, C]` with C > 1: rows of class scores (logits, probabilities).

    Rank-4+ outputs (feature maps) and rank-1 outputs are not: their last axis is rarely classes.
    """
    return dtype.kind not in "biu" and len(shape) in (2, 3) and shape[-1] > 1


@dataclass(frozen=True)
class Metrics:
    """One output's errors over `samples` samples; `merge` combines two disjoint sets of samples."""

    samples: int
    elements: int
    out_of_tolerance: int
    nonfinite_mismatches: int
    max_abs_err: float
    max_rel_err: float
    abs_err_sum: float
    cosine: float
    top1_rows: int
    top1_agree: int
    nan_expected: int
    nan_actual: int
    inf_expected: int
    inf_actual: int
    mismatch_positions: tuple[Position, ...]
    worst: Position | None  # where |a - e| is largest (None when no position has both values finite)
    worst_actual: float
    worst_expected: float

    @property
    def mean_abs_err(self) -> float:
        """Mean absolute error over every compared element of every sample (non-finite ones count 0)."""
        return self.abs_err_sum / self.elements if self.elements else 0.0

    @property
    def top1(self) -> float | None:
        """Top-1 agreement, or None when the output is not classifier-shaped."""
        return self.top1_agree / self.top1_rows if self.top1_rows else None

    def merge(self, other: Metrics) -> Metrics:
        """Both sets of samples: sums add, maxima and the worst position take the larger, cosine the smaller."""
        worst = other if other.max_abs_err > self.max_abs_err else self
        return Metrics(
            samples=self.samples + other.samples,
            elements=self.elements + other.elements,
            out_of_tolerance=self.out_of_tolerance + other.out_of_tolerance,
            nonfinite_mismatches=self.nonfinite_mismatches + other.nonfinite_mismatches,
            max_abs_err=max(self.max_abs_err, other.max_abs_err),
            max_rel_err=max(self.max_rel_err, other.max_rel_err),
            abs_err_sum=self.abs_err_sum + other.abs_err_sum,
            cosine=min(self.cosine, other.cosine),
            top1_rows=self.top1_rows + other.top1_rows,
            top1_agree=self.top1_agree + other.top1_agree,
            nan_expected=self.nan_expected + other.nan_expected,
            nan_actual=self.nan_actual + other.nan_actual,
            inf_expected=self.inf_expected + other.inf_expected,
            inf_actual=self.inf_actual + other.inf_actual,
            mismatch_positions=(self.mismatch_positions + other.mismatch_positions)[:MAX_POSITIONS],
            worst=worst.worst,
            worst_actual=worst.worst_actual,
            worst_expected=worst.worst_expected,
        )

    def to_json(self) -> dict[str, Any]:
        """JSON-ready; `mean_abs_err` and `top1` are included for readers and ignored by `from_json`."""
        return {
            "samples": self.samples, "elements": self.elements, "out_of_tolerance": self.out_of_tolerance,
            "nonfinite_mismatches": self.nonfinite_mismatches, "max_abs_err": self.max_abs_err,
            "max_rel_err": self.max_rel_err, "mean_abs_err": self.mean_abs_err, "abs_err_sum": self.abs_err_sum,
            "cosine": self.cosine, "top1": self.top1, "top1_rows": self.top1_rows, "top1_agree": self.top1_agree,
            "nan_expected": self.nan_expected, "nan_actual": self.nan_actual,
            "inf_expected": self.inf_expected, "inf_actual": self.inf_actual,
            "mismatch_positions": [_position_json(p) for p in self.mismatch_positions],
            "worst": None if self.worst is None else _position_json(self.worst),
            "worst_actual": self.worst_actual, "worst_expected": self.worst_expected,
        }

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Metrics:
        """Inverse of `to_json`."""
        derived = {"mean_abs_err", "top1", "mismatch_positions", "worst"}
        fields = {k: v for k, v in data.items() if k not in derived}
        worst = data["worst"]
        return cls(**fields, mismatch_positions=tuple(_position(p) for p in data["mismatch_positions"]),
                   worst=None if worst is None else _position(worst))


def measure(actual: np.ndarray, expected: np.ndarray, *, rtol: float, atol: float, sample: int = 0) -> Metrics:
    """Metrics of one sample of one output. Shapes must be equal; integer/bool `expected` is compared exactly."""
    if actual.shape != expected.shape:
        raise ValueError(f"measure: shapes {actual.shape} and {expected.shape} differ")
    exact = expected.dtype.kind in "biu"
    a, e = actual.astype(np.float64), expected.astype(np.float64)
    a_nan, e_nan = np.isnan(a), np.isnan(e)
    finite = np.isfinite(a) & np.isfinite(e)
    with np.errstate(all="ignore"):
        diff = np.where(finite, np.abs(a - e), 0.0)
        rel = diff / np.maximum(np.abs(np.where(finite, e, 0.0)), REL_ERR_FLOOR)
        if exact:
            out_of_tol = actual != expected
            nonfinite_bad = np.zeros(a.shape, bool)
        else:
            out_of_tol = finite & (diff > atol + rtol * np.abs(e))
            nonfinite_bad = ~finite & ~((a_nan & e_nan) | (a == e))
    bad = np.flatnonzero(out_of_tol | nonfinite_bad)[:MAX_POSITIONS]
    worst = None
    if finite.any():
        flat = int(np.argmax(diff))
        worst = (sample, tuple(int(i) for i in np.unravel_index(flat, a.shape)))
    rows, agree = _top1(a, e) if classifier_shaped(expected.shape, expected.dtype) else (0, 0)
    return Metrics(
        samples=1,
        elements=int(a.size),
        out_of_tolerance=int(np.count_nonzero(out_of_tol)),
        nonfinite_mismatches=int(np.count_nonzero(nonfinite_bad)),
        max_abs_err=float(diff.max(initial=0.0)),
        max_rel_err=float(rel.max(initial=0.0)),
        abs_err_sum=float(diff.sum()),
        cosine=_cosine(a[finite], e[finite]),
        top1_rows=rows,
        top1_agree=agree,
        nan_expected=int(np.count_nonzero(e_nan)),
        nan_actual=int(np.count_nonzero(a_nan)),
        inf_expected=int(np.count_nonzero(np.isinf(e))),
        inf_actual=int(np.count_nonzero(np.isinf(a))),
        mismatch_positions=tuple((sample, tuple(int(i) for i in np.unravel_index(f, a.shape))) for f in bad),
        worst=worst,
        worst_actual=float(a[worst[1]]) if worst else 0.0,
        worst_expected=float(e[worst[1]]) if worst else 0.0,
    )


def _cosine(a: np.ndarray, e: np.ndarray) -> float:
    """Cosine similarity in [-1, 1]; scaled first so that huge values do not overflow the norms."""
    scale = max(float(np.abs(a).max(initial=0.0)), float(np.abs(e).max(initial=0.0)))
    if scale == 0.0:
        return 1.0
    a, e = a / scale, e / scale
    na, ne = float(np.linalg.norm(a)), float(np.linalg.norm(e))
    if na == 0.0 or ne == 0.0:
        return 0.0
    return float(np.clip(np.dot(a, e) / (na * ne), -1.0, 1.0))


def _top1(a: np.ndarray, e: np.ndarray) -> tuple[int, int]:
    """(rows, rows where the module's arg-max is one of onnxruntime's maxima); classes on the last axis."""
    classes = e.shape[-1]
    a2, e2 = a.reshape(-1, classes), e.reshape(-1, classes)
    if not len(e2):
        return 0, 0
    picked = e2[np.arange(len(e2)), np.argmax(a2, axis=1)]
    return len(e2), int(np.count_nonzero(picked == e2.max(axis=1)))


def _position_json(p: Position) -> dict[str, Any]:
    return {"sample": p[0], "index": list(p[1])}


def _position(data: dict[str, Any]) -> Position:
    return int(data["sample"]), tuple(int(i) for i in data["index"])
