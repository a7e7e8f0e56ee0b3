"""Lowering passes: rewrite what the TVM frontend cannot take into what it can.

Importing this package registers every lowering pass.
"""

from passes.lowering import expand

__all__ = ["expand"]
