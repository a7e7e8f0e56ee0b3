"""Lepton: an ONNX model compiler. `compile()` builds a verified module for a target; `optimize()` runs passes only."""

from lepton import verify  # the package lepton.verify, which is callable: lepton.verify(model, compiled, ...)
from lepton.artifact import load
from lepton.optimize import Optimized, optimize
from lepton.version import __version__
from lepton_ir import LeptonError, save
from lepton_ir import load as load_model

__all__ = ["Compiled", "LeptonError", "Optimized", "compile", "load", "load_model", "optimize", "save", "verify"]


def __getattr__(name: str):  # TVM is imported only when compiling (loading an artifact imports it when it runs)
    if name == "compile":
        from lepton.compiler import compile

        return compile
    if name == "Compiled":
        from lepton.compiler import Compiled

        return Compiled
    raise AttributeError(f"module 'lepton' has no attribute {name!r}")
