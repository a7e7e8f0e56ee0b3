"""Lepton: an ONNX model compiler. `compile()` builds a verified module for a target; `optimize()` runs passes only."""

from lepton_ir import LeptonError, save
from lepton.optimize import Optimized, optimize

__all__ = ["Compiled", "LeptonError", "Optimized", "compile", "load", "load_model", "optimize", "save", "verify"]
__version__ = "0.1.0"


def __getattr__(name: str):  # TVM is imported only when compiling or loading
    if name == "compile":
        from lepton.compiler import compile

        return compile
    if name == "Compiled":
        from lepton.compiler import Compiled

        return Compiled
    if name == "load":
        from lepton.artifact import load

        return load
    if name == "verify":  # the package lepton.verify, which is callable: lepton.verify(model, compiled, ...)
        import importlib

        return importlib.import_module("lepton.verify")
    if name == "load_model":
        from lepton_ir import load as load_model

        return load_model
    raise AttributeError(f"module 'lepton' has no attribute {name!r}")
