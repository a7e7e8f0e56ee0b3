"""Prove generated OpenCL C is valid by compiling it with an OpenCL implementation on this machine.

Uses pyopencl with the first platform that has a device (PoCL, Debian `pocl-opencl-icd`, on
CPU-only machines). `check_opencl` returns None when no OpenCL implementation is usable,
so the caller can say the check was skipped and why.
"""

from __future__ import annotations

from dataclasses import dataclass

from lepton.codegen.failures import tool_failure


@dataclass(frozen=True)
class OpenCLCheck:
    """The outcome of compiling the kernels: platform, number of kernels, seconds."""

    platform: str
    kernels: int
    seconds: float

    def note(self) -> str:
        return f"OpenCL kernels compiled on this machine with {self.platform}: {self.kernels} kernels in {self.seconds:.1f} s"


def opencl_unavailable() -> str | None:
    """Why no OpenCL compiler is usable here, or None when one is."""
    try:
        import pyopencl as cl
    except ImportError:
        return "pyopencl is not installed (pip install 'lepton-compiler[opencl]')"
    try:
        if not any(p.get_devices() for p in cl.get_platforms()):
            return "no OpenCL platform with a device (install PoCL: `make system-deps`)"
    except Exception as e:  # noqa: BLE001 - ICD loader errors when no platform is installed
        return f"no OpenCL platform ({type(e).__name__}: {e}); install PoCL: `make system-deps`"
    return None


def check_opencl(source: str) -> OpenCLCheck | None:
    """Compile `source` (every kernel); None if OpenCL is unavailable, CodegenError if the source is rejected."""
    if opencl_unavailable() is not None:
        return None
    import time

    import pyopencl as cl

    platform = next(p for p in cl.get_platforms() if p.get_devices())
    ctx = cl.Context(devices=platform.get_devices()[:1])
    t0 = time.perf_counter()
    try:
        program = cl.Program(ctx, source).build()
    except cl.Error as e:
        raise tool_failure(f"the generated OpenCL kernels do not compile under {platform.name}", str(e).strip()) from None
    return OpenCLCheck(f"{platform.name} ({platform.version})", len(program.all_kernels()), time.perf_counter() - t0)
