"""Build and export functions MetaSchedule's `LocalBuilder` runs in its worker processes.

Kept light on purpose: every worker imports this module. MetaSchedule's own `default_build`
imports `tvm.s_tir.tensor_intrin` (every tensor intrinsic of every backend, ~30 s on a loaded
2-core machine), once per worker and per build round; Lepton's template uses no tensor intrinsics.
"""

from __future__ import annotations

import os
import tempfile

import tvm

CROSS_GCC = "aarch64-linux-gnu-gcc"


def build(mod: tvm.IRModule, target: tvm.target.Target, _params: object) -> tvm.runtime.Module:
    """Compile one scheduled TIR module for `target` (MetaSchedule's `T_BUILD`)."""
    return tvm.tirx.build(mod, target=target)


def export_shared(mod: tvm.runtime.Module) -> str:
    """Link the module into a shared library with the host compiler; returns its path (MetaSchedule's `T_EXPORT`)."""
    path = os.path.join(tempfile.mkdtemp(prefix="lepton-tune-"), "kernel.so")
    mod.export_library(path)
    return path


def export_aarch64(mod: tvm.runtime.Module) -> str:
    """Link the module into an aarch64 shared library with the cross compiler, for a device measured over RPC."""
    from tvm.support import cc

    path = os.path.join(tempfile.mkdtemp(prefix="lepton-tune-"), "kernel.so")
    mod.export_library(path, fcompile=cc.cross_compiler(CROSS_GCC))
    return path
