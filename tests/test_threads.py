"""Compiled CPU code runs on every CPU the process may use (TVM's default pool takes half on x86)."""

from __future__ import annotations

import threading

import pytest

from lepton.threads import available_cpus, use_available_cpus


def _threads_in_fresh_thread(configure: bool) -> int:
    import tvm

    got: list[int] = []

    def work() -> None:
        if configure:
            use_available_cpus()
        got.append(int(tvm.get_global_func("runtime.NumThreads")()))

    t = threading.Thread(target=work)
    t.start()
    t.join()
    return got[0]


def test_pool_uses_every_available_cpu(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("TVM_NUM_THREADS", raising=False)
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    assert _threads_in_fresh_thread(configure=True) == len(available_cpus())


def test_user_setting_is_left_alone(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TVM_NUM_THREADS", "1")
    assert _threads_in_fresh_thread(configure=True) == 1
