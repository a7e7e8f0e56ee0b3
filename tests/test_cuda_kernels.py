"""Prebuilt CUDA kernels are what TVM gets when it asks to compile an artifact's CUDA source."""

from __future__ import annotations

import tvm_ffi

from lepton.cuda_kernels import prebuilt_for, register_prebuilt


def test_the_registered_callback_returns_the_prebuilt_binary_for_that_source() -> None:
    register_prebuilt("__global__ void k() {}", b"FATBIN")
    callback = tvm_ffi.get_global_func("tvm_callback_cuda_compile")
    assert bytes(callback("__global__ void k() {}", None)) == b"FATBIN"
    assert prebuilt_for("__global__ void other() {}") is None
