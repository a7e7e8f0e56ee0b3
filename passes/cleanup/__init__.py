"""Cleanup passes: constant and shape folding, dead-code/identity/no-op elimination, CSE, merging.

Importing this package registers every cleanup pass. `CLEANUP_PIPELINE` is the default
order; the pass manager repeats it to a fixed point.
"""

from passes.cleanup import cse, dce, fold, merge, noop, shapes
from passes.cleanup import batchnorm, reshape

CLEANUP_PIPELINE = ",".join(
    [
        "fold-constants",
        "fuse-batchnorm",
        "fold-shapes",
        "infer-shapes",
        "fold-reshape-targets",
        "eliminate-identity",
        "eliminate-noop",
        "merge-transposes",
        "merge-reshapes",
        "eliminate-common-subexpressions",
        "eliminate-dead-code",
    ]
)

__all__ = ["CLEANUP_PIPELINE", "cse", "dce", "fold", "merge", "noop", "shapes"]
