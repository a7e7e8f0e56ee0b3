"""How many threads compiled CPU code runs on.

TVM's runtime sizes its thread pool to half the hardware threads on x86 (it assumes two-way SMT), so
on a machine without SMT a compiled module used half the cores: on the 2-core reference machine every
Lepton module ran single-threaded while onnxruntime used both cores. Lepton sizes the pool of each
thread that runs compiled code to the CPUs this process may use, unless the user set TVM_NUM_THREADS
(or OMP_NUM_THREADS), which TVM honours itself.

Small models run on one thread. Every parallel loop of a kernel is a fork/join on TVM's pool (the
calling thread wakes the workers and waits for them), a few microseconds each; a small model's kernels
do less work than that, so on the 2-core machine they ran 1.5-4.8x slower on two threads than on one
(digits CNN, Silero VAD, a conv+GRU, tiny BERT/GPT-2/ViT/DETR blocks, MobileNetV3-small at 96x96;
bench/RESULTS.md, "Per-call cost"). FLOPs are not known when an artifact loads (the manifest has no
count, and `lepton inspect` takes 30-400 ms), so which models are small is measured, per module and
input shapes, on the module's own first calls (`ThreadChoice`): after one warm-up call, the fastest of
`SIZE_CALLS` calls on all CPUs taking `SMALL_CALL_S` or more marks a big model, which keeps all CPUs and
is never tried on one thread; a smaller one is timed in `ROUNDS` alternating blocks on one thread and on
all CPUs, and all CPUs are kept only when they are at least `MARGIN` faster than one thread (medians of
the blocks' fastest calls): a parallel call waits for its slowest worker, so where other threads compete
for the cores (the calling application's, another runtime's spinning pool) it loses more than the trials
show (digits CNN 0.059 ms on one thread, 0.083 ms on two, next to onnxruntime's pool). The choice takes a few
hundred calls for the smallest models, a few dozen for 1-10 ms ones, and is measured again every
`RECHECK_S` seconds, because other work on the machine tilts it. Big models are never re-measured.
With TVM_NUM_THREADS/OMP_NUM_THREADS set, or one CPU available, nothing is chosen or configured.

Threads are not pinned to CPUs (TVM_BIND_THREADS=0 unless the user set it): with TVM's pinning, half of
the processes on the 2-core machine ran MobileNetV2 at 9.5 ms instead of 5.9 ms, switching even within a
process (the calling thread, TVM's worker 0, shared a core with a pinned worker); unpinned, 8 of 8 ran at
5.7-6.1 ms.
"""

from __future__ import annotations

import math
import os
import statistics
import threading
import time
from collections.abc import Callable, Hashable

_configured = threading.local()  # .threads: what this thread's TVM pool was last sized to
_SHARE_ALL_CPUS = -3  # TVM's ThreadGroup::kSpecifyThreadShareAllCore: n threads over the given CPUs, unpinned

#: Calls this long on all CPUs (the fastest of `SIZE_CALLS`, after one warm-up call) mark a big model: it
#: keeps all CPUs and is never tried on one thread. Smaller ones are tried both ways.
SMALL_CALL_S = 0.010
SIZE_CALLS = 3
#: Trials: `ROUNDS` rounds of a block of calls on one thread, then a block on all CPUs. A block is at
#: least `BLOCK` calls and `BLOCK_S` seconds of calls (so that a scheduler hiccup is one call among many);
#: its first call (after the pool was resized) is not counted, and its figure is the fastest of the rest:
#: other work on the machine only adds time, so the fastest call is the figure it moves least.
BLOCK = 4
BLOCK_S = 0.002
ROUNDS = 5
#: All CPUs are chosen for a small model when their calls are at least this much faster than on one thread.
MARGIN = 0.10
#: A choice made from trials is measured again after this many seconds (at its next call): conditions change
#: (other work on the machine made one thread look best for MobileNetV2, 16 vs 28 ms, on the busy 2-core
#: machine, where it takes 5 ms on two threads when quiet).
RECHECK_S = 60.0
#: Input-shape combinations a module measures separately; calls with further ones use all CPUs.
MAX_SHAPES = 8


def available_cpus() -> list[int]:
    """The CPUs this process may run on."""
    if hasattr(os, "sched_getaffinity"):
        return sorted(os.sched_getaffinity(0))
    return list(range(os.cpu_count() or 1))


def user_sets_threads() -> bool:
    """Whether the user chose TVM's thread count (TVM_NUM_THREADS or OMP_NUM_THREADS), which Lepton leaves alone."""
    return bool(os.environ.get("TVM_NUM_THREADS") or os.environ.get("OMP_NUM_THREADS"))


def use_threads(n: int) -> None:
    """Size the calling thread's TVM thread pool to `n` threads over `available_cpus()`, unpinned.

    TVM's pools are per calling thread; this reconfigures only when the thread's pool is not already
    `n` (a few microseconds when it does), and never where TVM_NUM_THREADS/OMP_NUM_THREADS is set.
    """
    if getattr(_configured, "threads", None) == n:
        return
    _configured.threads = n
    os.environ.setdefault("TVM_BIND_THREADS", "0")  # read by TVM whenever it (re)builds a pool
    if user_sets_threads():
        return
    import tvm

    cpus = available_cpus()
    tvm.get_global_func("runtime.config_threadpool")(_SHARE_ALL_CPUS, n, [str(c) for c in cpus])


def use_available_cpus() -> None:
    """Size the calling thread's TVM thread pool to `available_cpus()` (see `use_threads`)."""
    use_threads(len(available_cpus()))


def prefer_one_thread(one: list[float], all_cpus: list[float]) -> bool:
    """Whether to run on one thread: unless blocks of calls on all CPUs beat those on one thread by `MARGIN`
    (medians of the block figures)."""
    return not statistics.median(all_cpus) <= (1 - MARGIN) * statistics.median(one)


class _Shape:
    """Measurements of one input-shape combination."""

    __slots__ = ("stage", "sizes", "block", "spent", "one", "all", "threads", "recheck_at")

    def __init__(self) -> None:
        self.stage = 0  # 0: no call yet, 1: warmed up (sizing calls), 2: trial blocks, 3: decided
        self.sizes: list[float] = []
        self.block: list[float] = []  # the current trial block's call times
        self.spent = 0.0
        self.one: list[float] = []  # block figures
        self.all: list[float] = []
        self.threads: int | None = None  # the last choice
        self.recheck_at = math.inf


class ThreadChoice:
    """Per module: how many threads its calls run on, by input-shape combination (`key`).

    Protocol, per call: `n, timed = choice.next(key)`; run the call on `n` threads (`use_threads`);
    when `timed`, pass its wall time to `choice.record(key, n, seconds)`. Not thread-safe: the module
    serializes its calls. See the module docstring for the rule; `clock` is for tests.
    """

    def __init__(self, cpus: int | None = None, clock: Callable[[], float] = time.monotonic) -> None:
        self.cpus = len(available_cpus()) if cpus is None else cpus
        #: False where there is nothing to choose: one CPU, or the user set the thread count (read here, once).
        self.active = self.cpus > 1 and not user_sets_threads()
        self._clock = clock
        self._shapes: dict[Hashable, _Shape] = {}

    def decided(self, key: Hashable) -> int | None:
        """The thread count chosen for `key` (the last choice while it is re-measured), or None before the
        first choice."""
        s = self._shapes.get(key)
        return None if s is None else s.threads

    def next(self, key: Hashable) -> tuple[int, bool]:
        """(threads for this call, whether to time it)."""
        s = self._shapes.get(key)
        if s is None:
            if len(self._shapes) >= MAX_SHAPES:
                return self.cpus, False
            s = self._shapes[key] = _Shape()
        if s.stage == 3:
            if self._clock() < s.recheck_at:
                return s.threads, False  # type: ignore[return-value]  # decided: an int
            s.stage, s.one, s.all, s.block, s.spent = 2, [], [], [], 0.0
        if s.stage == 0:  # warm-up, untimed
            s.stage = 1
            return self.cpus, False
        if s.stage == 1:  # the calls that size the model
            return self.cpus, True
        return (1 if len(s.one) == len(s.all) else self.cpus), True

    def record(self, key: Hashable, threads: int, seconds: float) -> None:
        """The wall time of a call `next(key)` asked to time (the VM call alone)."""
        s = self._shapes[key]
        if s.stage == 1:
            s.sizes.append(seconds)
            if len(s.sizes) == SIZE_CALLS:
                if min(s.sizes) >= SMALL_CALL_S:
                    s.stage, s.threads = 3, self.cpus  # big: never re-measured
                else:
                    s.stage = 2
            return
        if s.stage != 2:
            return
        s.block.append(seconds)
        s.spent += seconds
        if len(s.block) <= BLOCK or s.spent < BLOCK_S:
            return
        (s.one if threads == 1 else s.all).append(min(s.block[1:]))
        s.block, s.spent = [], 0.0
        if len(s.all) == ROUNDS:
            s.stage, s.threads = 3, 1 if prefer_one_thread(s.one, s.all) else self.cpus
            s.recheck_at = self._clock() + RECHECK_S
