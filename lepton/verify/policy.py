"""Tolerance policies (DESIGN.md §6): when a compiled module's output counts as onnxruntime's.

Under every policy: integer and bool outputs must be exactly equal; NaN must appear exactly where
onnxruntime has NaN, and ±Inf exactly where it has the same infinity; shapes and dtypes must match.
Floating outputs are then judged either

- elementwise (`fp32`, `fp16`): `|actual - expected| <= atol + rtol * |expected|` at every position
  where both are finite; or
- by an accuracy budget (`int8`, `pruned`): cosine similarity >= `min_cosine` (worst sample), and
  top-1 agreement >= `min_top1` for classifier-shaped outputs (pooled over all samples; see
  `lepton.verify.metrics`). Quantization and pruning legitimately move single elements far, so
  elementwise closeness is counted for the report but not judged.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from lepton.verify.metrics import Metrics, measure
from lepton_ir import UserError

FP32_RTOL = 1e-4
"""fp32 on CPU: TVM and onnxruntime sum in different orders; 1e-4 relative covers that for deep models."""
FP32_ATOL = 1e-5
"""fp32: absolute slack for outputs near zero, where relative error is meaningless."""
FP16_RTOL = 1e-2
"""fp16 (and bfloat16) outputs: ~10 ulps of fp16 (eps 9.8e-4) after accumulation in fp16."""
FP16_ATOL = 1e-2
"""fp16: absolute slack near zero, the same order as the relative one."""
BUDGET_TOL = 1e-1
"""int8/pruned: the elementwise tolerance used only to count (not judge) far-moved elements."""
MIN_COSINE = 0.99
"""int8/pruned: each sample's output, flattened, must keep cosine similarity >= 0.99 with onnxruntime's."""
MIN_TOP1 = 0.99
"""int8/pruned: >= 99% of classifier rows must keep onnxruntime's top-1 class."""


@dataclass(frozen=True)
class Policy:
    """A named tolerance. `min_cosine is None` means elementwise judging with `rtol`/`atol`; otherwise
    the accuracy budget (`min_cosine`, and `min_top1` for classifier-shaped outputs) is judged."""

    name: str
    rtol: float
    atol: float
    min_cosine: float | None = None
    min_top1: float | None = None

    @property
    def elementwise(self) -> bool:
        return self.min_cosine is None

    def describe(self) -> str:
        """E.g. `fp32 (rtol 0.0001, atol 1e-05)` or `int8 (cosine >= 0.99, top-1 >= 0.99)`."""
        if self.elementwise:
            return f"{self.name} (rtol {self.rtol:g}, atol {self.atol:g})"
        top1 = f", top-1 >= {self.min_top1:g}" if self.min_top1 is not None else ""
        return f"{self.name} (cosine >= {self.min_cosine:g}{top1})"

    def judge(self, m: Metrics, exact: bool) -> tuple[str, ...]:
        """Why an output with metrics `m` fails this policy (empty: it passes). `exact`: an integer/bool output."""
        if exact:
            if m.out_of_tolerance:
                return (f"{m.out_of_tolerance} of {m.elements} elements differ (integer/bool outputs must match exactly)",)
            return ()
        failures = []
        if m.nonfinite_mismatches:
            failures.append(f"NaN/Inf placed differently from onnxruntime at {m.nonfinite_mismatches} elements")
        if self.elementwise:
            if m.out_of_tolerance:
                failures.append(f"out of tolerance at {m.out_of_tolerance} of {m.elements} elements")
            return tuple(failures)
        assert self.min_cosine is not None
        if m.cosine < self.min_cosine:
            failures.append(f"cosine similarity {m.cosine:.6f} < {self.min_cosine:g}")
        top1 = m.top1
        if self.min_top1 is not None and top1 is not None and top1 < self.min_top1:
            failures.append(f"top-1 agreement {top1:.4f} < {self.min_top1:g} ({m.top1_agree} of {m.top1_rows} rows)")
        return tuple(failures)

    def margin(self, m: Metrics, exact: bool) -> float:
        """How far an output with metrics `m` is inside this policy, as `judge` decides: for a budget policy the
        smallest achieved/required ratio of cosine and top-1 (>= 1 passes); otherwise 1.0 when it passes, 0.0 not."""
        if exact or self.elementwise or m.nonfinite_mismatches:
            return 0.0 if self.judge(m, exact) else 1.0
        assert self.min_cosine is not None
        ratio = m.cosine / self.min_cosine
        if self.min_top1 is not None and m.top1 is not None:
            ratio = min(ratio, m.top1 / self.min_top1)
        return ratio

    def to_json(self) -> dict[str, Any]:
        """The manifest's `tolerance` entry: `rtol`, `atol` (read by older Lepton), `policy`, and the budget if any."""
        data: dict[str, Any] = {"policy": self.name, "rtol": self.rtol, "atol": self.atol}
        if self.min_cosine is not None:
            data["min_cosine"] = self.min_cosine
        if self.min_top1 is not None:
            data["min_top1"] = self.min_top1
        return data

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> Policy:
        """Parse `to_json()`; an entry without `policy` (older manifests) is `fp32` with its rtol/atol."""
        budget = {k: float(data[k]) for k in ("min_cosine", "min_top1") if data.get(k) is not None}
        return cls(str(data.get("policy", "fp32")), float(data["rtol"]), float(data["atol"]), **budget)


FP32 = Policy("fp32", FP32_RTOL, FP32_ATOL)
FP16 = Policy("fp16", FP16_RTOL, FP16_ATOL)
INT8 = Policy("int8", BUDGET_TOL, BUDGET_TOL, MIN_COSINE, MIN_TOP1)
PRUNED = Policy("pruned", BUDGET_TOL, BUDGET_TOL, MIN_COSINE, MIN_TOP1)
POLICIES: dict[str, Policy] = {p.name: p for p in (FP32, FP16, INT8, PRUNED)}

_HALF = {"float16", "bfloat16"}


def choose_policy(output_dtypes: Iterable[str]) -> Policy:
    """`fp16` when any output is float16/bfloat16, else `fp32`. int8 and pruned are never guessed."""
    return FP16 if any(d in _HALF for d in output_dtypes) else FP32


def policy_metric(policy: Policy) -> Callable[[Sequence[Mapping[str, np.ndarray]], Sequence[Mapping[str, np.ndarray]]], float]:
    """`policy` as an accuracy-budget metric over samples (reference outputs, candidate outputs): the smallest
    `margin` of any output, its metrics merged over the samples as verification merges them."""

    def metric(reference: Sequence[Mapping[str, np.ndarray]], outputs: Sequence[Mapping[str, np.ndarray]]) -> float:
        worst = float("inf")
        for name in reference[0] if reference else ():
            merged: Metrics | None = None
            for k, (ref, got) in enumerate(zip(reference, outputs, strict=True)):
                m = measure(got[name], ref[name], rtol=policy.rtol, atol=policy.atol, sample=k)
                merged = m if merged is None else merged.merge(m)
            assert merged is not None
            worst = min(worst, policy.margin(merged, reference[0][name].dtype.kind in "biu"))
        return worst if worst != float("inf") else 1.0

    metric.__name__ = f"{policy.name}-policy"
    return metric


def resolve_policy(policy: Policy | str) -> Policy:
    """A Policy, or one of POLICIES by name; UserError naming the known ones otherwise."""
    if isinstance(policy, Policy):
        return policy
    if policy not in POLICIES:
        raise UserError(f"unknown verification policy {policy!r}; use one of {', '.join(POLICIES)}")
    return POLICIES[policy]
