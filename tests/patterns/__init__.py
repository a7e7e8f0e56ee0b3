"""A small corpus of real-model patterns raw TVM 0.27 `from_onnx` trips over.

Everything is built in code at test time (no binary files): PyTorch exports where torch is
installed (`torch_models`), and `onnx.helper` models of single LSTM/GRU/RNN nodes covering
their attributes (`recurrent`). Each corpus entry is a `Pattern`: a builder returning the
ONNX model, and the input shapes to pin it with.
"""

from patterns.base import Pattern

__all__ = ["Pattern"]
