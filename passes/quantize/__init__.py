"""Quantization passes: `quantize` (static int8, QDQ form) with calibration and an accuracy budget."""

from passes.quantize.static import Quantize

__all__ = ["Quantize"]
