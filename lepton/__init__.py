"""Lepton: an ONNX model compiler. `optimize()` runs the pass pipeline over a model."""

from lepton_ir import LeptonError, load, save
from lepton.optimize import Optimized, optimize

__all__ = ["LeptonError", "Optimized", "load", "optimize", "save"]
__version__ = "0.1.0"
