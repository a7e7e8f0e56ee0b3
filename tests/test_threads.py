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


def test_workers_are_not_pinned_unless_the_user_asks(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("TVM_BIND_THREADS", raising=False)
    _threads_in_fresh_thread(configure=True)
    import os

    assert os.environ["TVM_BIND_THREADS"] == "0"
    monkeypatch.setenv("TVM_BIND_THREADS", "1")
    _threads_in_fresh_thread(configure=True)
    assert os.environ["TVM_BIND_THREADS"] == "1"
