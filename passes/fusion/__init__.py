"""Fusion passes: fold and fuse operator chains into fewer, larger ops.

Importing this package registers every fusion pass. Fused ops that ONNX defines stay
standard ONNX; the others are ops onnxruntime also runs (its com.microsoft contrib ops) or
lepton-domain ops with ONNX function bodies, so every intermediate graph runs in onnxruntime.
"""

from passes.fusion import batchnorm  # noqa: F401 - registers fuse-batchnorm, decompose-batchnorm
from passes.fusion import bias  # noqa: F401 - registers fuse-bias
from passes.fusion import activation  # noqa: F401 - registers fuse-activation (and its lepton-domain functions)
from passes.fusion import attention  # noqa: F401 - registers merge-qkv, fuse-attention
from passes.fusion import gelu  # noqa: F401 - registers fuse-gelu, fuse-bias-gelu
from passes.fusion import layernorm  # noqa: F401 - registers fuse-layernorm, fuse-rmsnorm, fuse-skip-layernorm
