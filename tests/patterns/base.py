"""`Pattern`: one corpus entry (a model builder and the shapes that pin its symbolic dims)."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np
import onnx


@dataclass(frozen=True)
class Pattern:
    """A model built in code, the input shapes that pin its symbolic dims, and input ranges.

    `int_high` gives, per integer input, the exclusive upper bound of valid values (indices
    into a table); float inputs are drawn standard normal.
    """

    name: str
    build: Callable[[], onnx.ModelProto]
    shapes: Mapping[str, Sequence[int]]
    description: str = ""
    int_high: Mapping[str, int] = field(default_factory=dict)

    def inputs(self, seed: int = 0, symbols: Mapping[str, int] | None = None) -> dict[str, np.ndarray]:
        """Random inputs of the pinned shapes (dtype from the model); `symbols` sizes symbolic
        dims by name instead (e.g. {"batch": 3, "seq": 7}), the rest as pinned."""
        model = self.build()
        rng = np.random.default_rng(seed)
        out = {}
        inits = {i.name for i in model.graph.initializer}
        for vi in model.graph.input:
            if vi.name in inits:
                continue
            dt = onnx.helper.tensor_dtype_to_np_dtype(vi.type.tensor_type.elem_type)
            shape = tuple(self.shapes[vi.name])
            if symbols:
                dims = vi.type.tensor_type.shape.dim
                shape = tuple(symbols.get(d.dim_param, s) for d, s in zip(dims, shape, strict=True))
            if dt.kind == "f":
                out[vi.name] = rng.standard_normal(shape).astype(dt)
            elif dt.kind == "b":
                out[vi.name] = rng.random(shape) < 0.7
            else:
                out[vi.name] = rng.integers(0, self.int_high.get(vi.name, 2), shape).astype(dt)
        return out
