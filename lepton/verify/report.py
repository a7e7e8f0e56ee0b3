"""The verification report: one `OutputCheck` per output over all samples, judged under one policy.

Invariant: `OutputCheck.ok` is exactly "no failures"; failures are structural (missing output,
shape or dtype differs in some sample) or the policy's verdict on the metrics merged over every
sample whose shapes matched (`Policy.judge`).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from lepton.verify.metrics import Metrics, Position, measure
from lepton.verify.policy import Policy

if TYPE_CHECKING:
    import rich.table


@dataclass(frozen=True)
class OutputCheck:
    """One output: onnxruntime's dtype and (first sample's) shape, the merged metrics (None when no sample
    could be compared), and why it fails (empty when it passes)."""

    name: str
    dtype: str
    shape: tuple[int, ...]
    metrics: Metrics | None
    failures: tuple[str, ...]

    @property
    def ok(self) -> bool:
        return not self.failures

    @property
    def reason(self) -> str:
        return "; ".join(self.failures)

    @property
    def max_abs_err(self) -> float:
        return self.metrics.max_abs_err if self.metrics else float("inf")

    @property
    def max_rel_err(self) -> float:
        return self.metrics.max_rel_err if self.metrics else float("inf")

    def to_json(self) -> dict[str, Any]:
        return {"name": self.name, "dtype": self.dtype, "shape": list(self.shape), "ok": self.ok,
                "failures": list(self.failures), "metrics": None if self.metrics is None else self.metrics.to_json()}

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> OutputCheck:
        metrics = data["metrics"]
        return cls(data["name"], data["dtype"], tuple(data["shape"]),
                   None if metrics is None else Metrics.from_json(metrics), tuple(data["failures"]))


@dataclass(frozen=True)
class VerifyReport:
    """A module's outputs against onnxruntime's on `samples` samples, under `policy`."""

    path: str
    target: str
    policy: Policy
    samples: int
    outputs: tuple[OutputCheck, ...]

    @property
    def ok(self) -> bool:
        return all(o.ok for o in self.outputs)

    @property
    def failing(self) -> tuple[OutputCheck, ...]:
        return tuple(o for o in self.outputs if not o.ok)

    def to_json(self) -> dict[str, Any]:
        """JSON-ready (non-finite errors become JSON's Infinity/NaN, which Python's json reads back)."""
        return {"path": self.path, "target": self.target, "ok": self.ok, "policy": self.policy.to_json(),
                "samples": self.samples, "outputs": [o.to_json() for o in self.outputs]}

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> VerifyReport:
        """Inverse of `to_json`."""
        return cls(data["path"], data["target"], Policy.from_json(data["policy"]), int(data["samples"]),
                   tuple(OutputCheck.from_json(o) for o in data["outputs"]))

    def summary(self) -> str:
        """One line per failing output (what failed, worst error and where), or one line saying all pass."""
        if not self.outputs:
            return "nothing compared: no expected outputs (a bundle written with bundle=False holds none)"
        if self.ok:
            return (f"all {len(self.outputs)} output(s) within {self.policy.describe()} "
                    f"on {self.samples} sample(s)")
        return "\n".join(_failure_line(o, self.samples) for o in self.failing)

    def table(self) -> rich.table.Table:
        """A rich table, one row per output."""
        from rich.table import Table

        table = Table(title=f"verify {self.path} ({self.target}; {self.policy.describe()}; {self.samples} sample(s))",
                      title_justify="left")
        for col in ("output", "dtype", "shape", "max abs", "max rel", "mean abs", "cosine", "top-1", "NaN/Inf", "result"):
            table.add_column(col, justify="left" if col in ("output", "dtype", "shape", "result") else "right")
        for o in self.outputs:
            m = o.metrics
            result = "[green]ok[/green]" if o.ok else f"[red]FAIL[/red] {_where(o, self.samples)}"
            if m is None:
                table.add_row(o.name, o.dtype, str(list(o.shape)), *["-"] * 6, result)
                continue
            nonfinite = str(m.nan_expected + m.inf_expected)
            if m.nonfinite_mismatches:
                nonfinite += f" ({m.nonfinite_mismatches} misplaced)"
            top1 = "-" if m.top1 is None else f"{m.top1:.4f}"
            table.add_row(o.name, o.dtype, str(list(o.shape)), f"{m.max_abs_err:.3g}", f"{m.max_rel_err:.3g}",
                          f"{m.mean_abs_err:.3g}", f"{m.cosine:.6f}", top1, nonfinite, result)
        return table


class Collector:
    """Accumulates per-output metrics sample by sample; `report()` judges the merged metrics under `policy`."""

    def __init__(self, policy: Policy) -> None:
        self.policy = policy
        self.samples = 0
        self._meta: dict[str, tuple[str, tuple[int, ...], bool]] = {}  # name -> dtype, shape, exact
        self._metrics: dict[str, Metrics] = {}
        self._problems: dict[str, dict[str, int]] = {}  # name -> problem -> samples it occurred in

    def add(self, actual: Mapping[str, np.ndarray], expected: Mapping[str, np.ndarray]) -> None:
        """One sample: the module's outputs (`actual`) against onnxruntime's; every expected output is checked."""
        k = self.samples
        self.samples += 1
        for name, want in expected.items():
            self._meta.setdefault(name, (str(want.dtype), tuple(want.shape), want.dtype.kind in "biu"))
            problems = self._problems.setdefault(name, {})
            got = actual.get(name)
            if got is None:
                problems["missing from the module's outputs"] = problems.get("missing from the module's outputs", 0) + 1
                continue
            if got.shape != want.shape:
                msg = f"shape {list(got.shape)}, expected {list(want.shape)}"
                problems[msg] = problems.get(msg, 0) + 1
                continue
            if got.dtype != want.dtype:
                msg = f"dtype {got.dtype}, expected {want.dtype}"
                problems[msg] = problems.get(msg, 0) + 1
            m = measure(got, want, rtol=self.policy.rtol, atol=self.policy.atol, sample=k)
            self._metrics[name] = self._metrics[name].merge(m) if name in self._metrics else m

    def report(self, path: str, target: str) -> VerifyReport:
        checks = []
        for name, (dtype, shape, exact) in self._meta.items():
            metrics = self._metrics.get(name)
            failures = [p if self.samples == 1 else f"{p} (in {n} of {self.samples} samples)"
                        for p, n in self._problems[name].items()]
            if metrics is not None:
                failures += self.policy.judge(metrics, exact)
            checks.append(OutputCheck(name, dtype, shape, metrics, tuple(failures)))
        return VerifyReport(path, target, self.policy, self.samples, tuple(checks))


def _position(p: Position, samples: int) -> str:
    return (f"sample {p[0]} " if samples > 1 else "") + str(list(p[1]))


def _where(o: OutputCheck, samples: int) -> str:
    """The failure reasons, and where the first mismatch is."""
    m = o.metrics
    if m is None or not m.mismatch_positions:
        return o.reason
    return f"{o.reason}; first at {_position(m.mismatch_positions[0], samples)}"


def _failure_line(o: OutputCheck, samples: int) -> str:
    m = o.metrics
    line = f"{o.name}: {o.reason}"
    if m is not None:
        line += f"; max abs err {m.max_abs_err:.3g}, max rel err {m.max_rel_err:.3g}"
        if m.worst is not None and m.max_abs_err > 0:
            line += (f", worst at {_position(m.worst, samples)} "
                     f"(module {m.worst_actual:.7g}, onnxruntime {m.worst_expected:.7g})")
        if m.mismatch_positions:
            line += f"; first mismatches at {', '.join(_position(p, samples) for p in m.mismatch_positions)}"
    return line
