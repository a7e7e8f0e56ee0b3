"""How many threads compiled CPU code runs on.

TVM's runtime sizes its thread pool to half the hardware threads on x86 (it assumes two-way SMT), so
on a machine without SMT a compiled module used half the cores: on the 2-core reference machine every
Lepton module ran single-threaded while onnxruntime used both cores. Lepton sizes the pool of each
thread that runs compiled code to the CPUs this process may use, unless the user set TVM_NUM_THREADS
(or OMP_NUM_THREADS), which TVM honours itself.

Threads are not pinned to CPUs (TVM_BIND_THREADS=0 unless the user set it): with TVM's pinning, half of
the processes on the 2-core machine ran MobileNetV2 at 9.5 ms instead of 5.9 ms, switching even within a
process (the calling thread, TVM's worker 0, shared a core with a pinned worker); unpinned, 8 of 8 ran at
5.7-6.1 ms.
"""

from __future__ import annotations

import os
import threading

_configured = threading.local()
_SHARE_ALL_CPUS = -3  # TVM's ThreadGroup::kSpecifyThreadShareAllCore: n threads over the given CPUs, unpinned


def available_cpus() -> list[int]:
    """The CPUs this process may run on."""
    if hasattr(os, "sched_getaffinity"):
        return sorted(os.sched_getaffinity(0))
    return list(range(os.cpu_count() or 1))


def use_available_cpus() -> None:
    """Size the calling thread's TVM thread pool to `available_cpus()` (TVM's pools are per calling
    thread; this is done once per thread, and not at all where TVM_NUM_THREADS/OMP_NUM_THREADS is set)."""
    if getattr(_configured, "done", False):
        return
    _configured.done = True
    os.environ.setdefault("TVM_BIND_THREADS", "0")  # read by TVM whenever it (re)builds a pool
    if os.environ.get("TVM_NUM_THREADS") or os.environ.get("OMP_NUM_THREADS"):
        return
    import tvm

    cpus = available_cpus()
    tvm.get_global_func("runtime.config_threadpool")(_SHARE_ALL_CPUS, len(cpus), [str(c) for c in cpus])
