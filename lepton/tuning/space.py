"""The tuning space: Lepton's tiled conv/matmul template, its decision grid, and the search over it.

A point of the space is a *decision path*: one index per `sample_categorical` the template
(`lepton.codegen.schedules.cpu.tiled_reduction_space`) takes, index 0 being the default rule's
choice, so the all-zero path is Lepton's untuned schedule. The grid is small (tens of points per
workload), so `GridWalk` orders it for measurement point by point, without repeats: the default
first, then always the unmeasured points nearest the best one measured so far (a greedy walk that
covers the whole grid given time). Points already in the database (an earlier session) are
skipped, which makes tuning resumable.
"""

from __future__ import annotations

import random
from collections.abc import Iterator, Sequence

from tvm import IRModule, s_tir

from lepton.codegen.schedules.cpu import DEFAULT_REGISTERS, LOOP_ORDER_NAMES, tiled_reduction_space

DecisionPath = tuple[int, ...]

_SAMPLE_CATEGORICAL = "SampleCategorical"


def schedule_at(mod: IRModule, lanes: int, path: Sequence[int], registers: int = DEFAULT_REGISTERS) -> s_tir.Schedule:
    """The template applied to `mod` at decision path `path` (ValueError if the template does not apply)."""
    sch = s_tir.Schedule(mod)
    tiled_reduction_space(sch, lanes, path, registers)
    return sch


def decision_paths(mod: IRModule, lanes: int, registers: int = DEFAULT_REGISTERS) -> Iterator[tuple[DecisionPath, s_tir.Schedule]]:
    """Every decision path of the template on `mod` with its schedule, the default path first.

    Later candidate lists may depend on earlier decisions (U's on V), so the grid is a tree walked
    depth-first: each path is yielded once; a path where the template fails is left out.
    """
    stack: list[DecisionPath] = [()]
    while stack:
        prefix = stack.pop()
        try:
            sch = schedule_at(mod, lanes, prefix, registers)
        except Exception:  # noqa: BLE001 - a decision the workload cannot take (s_tir raises several types)
            continue
        counts = [len(inst.attrs[0]) for inst in sch.trace.insts if inst.kind.name == _SAMPLE_CATEGORICAL]
        path = prefix + (0,) * (len(counts) - len(prefix))
        yield path, sch
        for depth in range(len(prefix), len(counts)):
            stack.extend(path[:depth] + (alt,) for alt in range(1, counts[depth]))


def trace_path(trace: s_tir.Trace) -> DecisionPath:
    """The decision path a schedule's (or a tuning record's) trace took."""
    return tuple(int(trace.get_decision(inst)) for inst in trace.insts if inst.kind.name == _SAMPLE_CATEGORICAL)


def trace_choices(trace: s_tir.Trace) -> tuple[int, ...]:
    """The values the decisions of a trace chose ([axis,] V, U, loop order), for reports."""
    return tuple(
        int(inst.attrs[0][int(trace.get_decision(inst))]) for inst in trace.insts if inst.kind.name == _SAMPLE_CATEGORICAL
    )


def describe_tiles(choices: Sequence[int]) -> str:
    """`trace_choices` for people: `U=8 axis2 V=32 V-outer` (4-d conv: the axis U tiles), `U=4 V=64 V-inner` (matmul)."""
    if len(choices) == 4:
        return f"U={choices[2]} axis{choices[0]} V={choices[1]} {LOOP_ORDER_NAMES.get(choices[3], '')}"
    return f"U={choices[1]} V={choices[0]} {LOOP_ORDER_NAMES.get(choices[2], '')}" if len(choices) == 3 else ""


class GridWalk:
    """The measuring order over one workload's grid: the default path first, then always the unmeasured
    paths nearest (fewest differing decisions) the best one measured so far; ties in a seeded random order.

    Invariant: `remaining` holds the paths not yet handed out, `measured` the mean seconds of every path
    measured successfully (this session or an earlier one).
    """

    def __init__(
        self, grid: list[tuple[DecisionPath, s_tir.Schedule]], measured: dict[DecisionPath, float], seed: int = 0
    ) -> None:
        self.remaining = [point for point in grid if point[0] not in measured]
        random.Random(seed).shuffle(self.remaining)
        self.measured = dict(measured)

    def best(self) -> DecisionPath | None:
        """The fastest path measured so far, if any."""
        return min(self.measured, key=self.measured.__getitem__) if self.measured else None

    def take(self, n: int) -> list[tuple[DecisionPath, s_tir.Schedule]]:
        """The next `n` points to measure (fewer when the grid runs out)."""
        best = self.best()
        self.remaining.sort(key=lambda point: _distance(point[0], best))  # stable: ties keep the seeded order
        taken, self.remaining = self.remaining[:n], self.remaining[n:]
        return taken

    def record(self, path: DecisionPath, secs: float | None) -> None:
        """A measurement of `path` (None: it failed to build or run)."""
        if secs is not None:
            self.measured[path] = secs


def _distance(path: DecisionPath, best: DecisionPath | None) -> int:
    """Order of exploration: the default path (all zeros) first, then paths that differ from the best in few decisions."""
    best = best if best is not None else (0,) * len(path)
    return sum(a != b for a, b in zip(path, best, strict=False)) + abs(len(path) - len(best))


def mean_secs(run_secs: Sequence[object] | None) -> float | None:
    """Mean of a measurement's run seconds; None for a failed build or run (MetaSchedule stores those as 1e10)."""
    if not run_secs:
        return None
    values = [float(s) for s in run_secs]
    mean = sum(values) / len(values)
    return mean if mean < 1e9 else None
