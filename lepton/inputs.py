"""Synthesize model inputs for verification, per dtype.

Floats ~ N(0, 1); integer inputs that index a table (`Gather` indices, possibly through
Cast/Unsqueeze/Reshape/Squeeze/Flatten) stay inside the smallest such table; other integer
inputs take 0/1 (masks, flags); bools are random. Symbolic dims take `default_dim`.
Deterministic for a given seed.
"""

from __future__ import annotations

import numpy as np

from lepton_ir import Graph, Value
from lepton_ir.types import np_dtype

_PASS_THROUGH = {"Cast", "Unsqueeze", "Squeeze", "Reshape", "Flatten", "Identity"}


def synthesize(graph: Graph, seed: int = 0, default_dim: int = 1) -> dict[str, np.ndarray]:
    """One input per graph input of `graph`."""
    rng = np.random.default_rng(seed)
    feeds: dict[str, np.ndarray] = {}
    for v in graph.inputs:
        if v.dtype is None:
            raise ValueError(f"input {v.name!r} has no element type")
        shape = tuple(d if isinstance(d, int) else default_dim for d in (v.shape or ()))
        dt = np_dtype(v.dtype)
        if dt.kind == "f":
            feeds[v.name] = rng.standard_normal(shape).astype(dt)
        elif dt.kind == "b":
            feeds[v.name] = rng.random(shape) < 0.5
        elif dt.kind in "iu":
            bound = index_bound(v)
            feeds[v.name] = rng.integers(0, bound if bound else 2, size=shape).astype(dt)
        else:
            raise ValueError(f"cannot synthesize input {v.name!r} of type {dt}")
    return feeds


def index_bound(v: Value, depth: int = 4) -> int | None:
    """Smallest static size of a table `v` indexes through Gather/GatherElements, if any."""
    bounds = []
    for node, i in v.uses:
        if node.op_type in ("Gather", "GatherElements", "GatherND") and i == 1:
            data = node.inputs[0]
            axis = int(node.attr("axis", 0)) if node.op_type != "GatherND" else 0
            if data is not None and data.shape is not None and -len(data.shape) <= axis < len(data.shape):
                d = data.shape[axis]
                if isinstance(d, int) and d > 0:
                    bounds.append(d)
        elif node.op_type in _PASS_THROUGH and i == 0 and depth > 0:
            b = index_bound(node.outputs[0], depth - 1)
            if b:
                bounds.append(b)
    return min(bounds) if bounds else None
