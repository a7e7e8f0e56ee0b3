"""Hand TVM the CUDA kernels Lepton compiled ahead of time, instead of compiling at load time.

TVM 0.27 serializes CUDA modules as source and compiles them when the library is loaded,
through the global callback `tvm_callback_cuda_compile(code, target)`. Lepton's CUDA
artifacts carry `model.fatbin` (nvcc, cubin + PTX for the target's arch) built from
`model.cu`; `register_prebuilt(cu, fatbin)` installs a callback that returns that fatbin
for exactly that source (compared by sha256) and compiles anything else with nvcc.
"""

from __future__ import annotations

import hashlib

_PREBUILT: dict[str, bytes] = {}


def register_prebuilt(source: str, fatbin: bytes) -> None:
    """Serve `fatbin` whenever TVM asks to compile `source`."""
    _PREBUILT[hashlib.sha256(source.encode()).hexdigest()] = fatbin
    _install()


def prebuilt_for(source: str) -> bytes | None:
    """The registered binary for this exact source, if any."""
    return _PREBUILT.get(hashlib.sha256(source.encode()).hexdigest())


def _compile(code: str, target: object = None) -> bytes:
    binary = prebuilt_for(code)
    if binary is not None:
        return binary
    from tvm.support import nvcc

    return nvcc.compile_cuda(code, target_format="fatbin", compiler="nvcc")


def _install() -> None:
    import tvm_ffi

    tvm_ffi.register_global_func("tvm_callback_cuda_compile", _compile, override=True)
