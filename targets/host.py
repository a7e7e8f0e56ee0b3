"""What this machine is: CPU architecture, features, LLVM cpu name, usable cores, GPUs.

Feature names are compared normalized (lower case, without `-`, `_`, `.`), so /proc/cpuinfo
names (`avx512_vnni`, `sse4_2`) and LLVM names (`avx512vnni`, `sse4.2`) agree. Nothing here raises.
"""

from __future__ import annotations

import functools
import os
import platform
import re
from collections.abc import Iterable
from dataclasses import dataclass

# Features worth recording in a host-completed target, in cpuinfo spelling, per kind.
VOCABULARY = {
    "x86": ("sse4_2", "avx", "avx2", "fma", "f16c", "avx512f", "avx512cd", "avx512bw", "avx512dq", "avx512vl",
            "avx512_vnni", "avx512_bf16", "avx512_fp16", "avx_vnni", "amx_tile", "amx_int8", "amx_bf16"),
    "arm": ("neon", "fp16", "dotprod", "i8mm", "bf16", "sve", "sve2"),
}
# What a target of each kind assumes when the host is of another kind.
BASELINE_FEATURES = {"x86": (), "arm": ("neon",)}
BASELINE_MCPU = {"x86": "x86-64", "arm": "generic"}
# aarch64 /proc/cpuinfo names -> the names targets use.
_ALIASES = {"asimd": "neon", "asimddp": "dotprod", "asimdhp": "fp16"}
_MACHINES = {"x86_64": "x86", "amd64": "x86", "aarch64": "arm", "arm64": "arm"}


@dataclass(frozen=True)
class HostCPU:
    """The host CPU: `kind` is "x86", "arm" or None (other); `features` are normalized names."""

    kind: str | None
    features: frozenset[str]
    mcpu: str | None
    cores: int


def normalize(feature: str) -> str:
    """The comparison form of a feature name."""
    return re.sub(r"[-_.]", "", feature.lower())


@functools.cache
def cpu() -> HostCPU:
    """Detect the host CPU once: features from /proc/cpuinfo, else from LLVM's view of the host cpu."""
    kind = _MACHINES.get(platform.machine().lower())
    mcpu = _llvm_host_cpu()
    flags = _cpuinfo_flags()
    if flags is None:
        flags = _llvm_features(mcpu) if mcpu else set()
    features = frozenset(normalize(_ALIASES.get(f, f)) for f in flags)
    return HostCPU(kind, features, mcpu, _cores())


def has_features(features: Iterable[str]) -> bool:
    """Whether the host CPU has every one of `features`."""
    return all(normalize(f) in cpu().features for f in features)


def host_features(kind: str) -> tuple[str, ...]:
    """The vocabulary features of `kind` this host has, or the kind's baseline on another kind of host."""
    if cpu().kind != kind:
        return BASELINE_FEATURES[kind]
    return tuple(f for f in VOCABULARY[kind] if has_features([f]))


def host_mcpu(kind: str) -> str:
    """LLVM's name for the host cpu, or the kind's baseline cpu on another kind of host."""
    return (cpu().mcpu if cpu().kind == kind else None) or BASELINE_MCPU[kind]


def cuda_arch() -> str | None:
    """`sm_XY` of CUDA device 0 when TVM can use it, else None."""
    try:
        import tvm

        dev = tvm.cuda(0)
        if not dev.exist:
            return None
        major, minor = str(dev.compute_version).split(".")
        return f"sm_{int(major)}{int(minor)}"
    except Exception:  # noqa: BLE001 - no usable GPU
        return None


def opencl_usable() -> bool:
    """Whether TVM's runtime can use OpenCL device 0."""
    try:
        import tvm

        return bool(tvm.opencl(0).exist)
    except Exception:  # noqa: BLE001 - no usable device
        return False


def cpu_model() -> str:
    """The CPU's name as /proc/cpuinfo gives it ("model name"), else the platform's processor string."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def _cpuinfo_flags() -> set[str] | None:
    try:
        with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as f:
            for line in f:
                key, sep, value = line.partition(":")
                if sep and key.strip() in ("flags", "Features"):
                    return set(value.split())
    except OSError:
        pass
    return None


def _llvm_host_cpu() -> str | None:
    try:
        from tvm.target import codegen

        return str(codegen.llvm_get_system_cpu()) or None
    except Exception:  # noqa: BLE001 - TVM without LLVM
        return None


def _llvm_features(mcpu: str) -> set[str]:
    try:
        import tvm
        from tvm.target import codegen

        return set(codegen.llvm_get_cpu_features(tvm.target.Target({"kind": "llvm", "mcpu": mcpu})))
    except Exception:  # noqa: BLE001 - TVM without LLVM
        return set()


def _cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return os.cpu_count() or 1
