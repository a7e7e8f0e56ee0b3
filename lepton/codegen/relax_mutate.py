"""Run a Relax expression mutator (`relax.PyExprMutator`) over a whole module."""

from __future__ import annotations

import tvm
from tvm import relax


def mutate_functions(mod: tvm.IRModule, mutator: relax.PyExprMutator) -> tvm.IRModule:
    """`mod` with every Relax function replaced by `mutator`'s rewrite of it; other functions are unchanged.
    `mutator` must have been made for `mod` (its builder starts from it)."""
    for gv, func in mod.functions_items():
        if isinstance(func, relax.Function):
            mutator.builder_.update_func(gv, mutator.visit_expr(func))
    return mutator.builder_.get()
