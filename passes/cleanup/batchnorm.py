"""Moved: BatchNormalization folding lives in `passes.fusion.batchnorm` (pass `fuse-batchnorm`, same name).

This alias module keeps `from passes.cleanup import batchnorm` and `passes.cleanup.batchnorm.FuseBatchNorm` working.
"""

from passes.fusion.batchnorm import FuseBatchNorm

__all__ = ["FuseBatchNorm"]
