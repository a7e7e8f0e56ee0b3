"""Target descriptions: shipped TOML files (x86, arm, cuda, opencl and variants) or the user's own.

`resolve("x86-avx512")`, `resolve("cuda{arch=sm_90}")`, `resolve("auto")` or `resolve("my.toml")`
gives a frozen `Target`; every problem with a name, file or option is a `TargetError`.
"""

from targets.errors import TargetError
from targets.loader import known, resolve
from targets.model import FrozenMap, Target

__all__ = ["FrozenMap", "Target", "TargetError", "known", "resolve"]
