"""Input-shape overrides: parse `x:1,3,224,224` and pin a graph's symbolic input dims.

Pinning only makes dims more specific: a static dim must be given its own value, the rank
must match, and a symbol pinned on one input is pinned to the same size on every input
that carries it (ONNX symbols name equal dims). Intermediate values are re-inferred by the
pipeline that runs afterwards (`infer-shapes`, `fold-shapes`).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from lepton.errors import InputShapeError
from lepton_ir import Graph
from lepton_ir.types import format_shape

InputShapes = Mapping[str, Sequence[int]]


def parse_input_shape(text: str) -> tuple[str, list[int]]:
    """`"x:1,3,224,224"` -> `("x", [1, 3, 224, 224])`; the name is everything before the last ':'."""
    name, sep, dims = text.rpartition(":")
    if not sep or not name:
        raise InputShapeError(f"--input-shape {text!r}: expected NAME:D1,D2,... (for example x:1,3,224,224)")
    try:
        values = [int(d) for d in dims.split(",")] if dims.strip() else []
    except ValueError:
        raise InputShapeError(f"--input-shape {text!r}: dims must be integers separated by commas") from None
    return name, values


def pin_input_shapes(graph: Graph, shapes: InputShapes) -> dict[str, int]:
    """Set the shapes of `graph`'s inputs; returns the symbols pinned (symbol -> size)."""
    by_name = {v.name: v for v in graph.inputs}
    symbols: dict[str, int] = {}
    for name, dims in shapes.items():
        v = by_name.get(name)
        if v is None:
            known = ", ".join(f"{n}{format_shape(x.shape)}" for n, x in by_name.items()) or "none"
            raise InputShapeError(f"input-shape names {name!r}, which is not a model input (inputs: {known})")
        dims = [int(d) for d in dims]
        if any(d < 0 for d in dims):
            raise InputShapeError(f"input-shape for {name!r}: dims must be >= 0, got {dims}")
        if v.shape is not None and len(v.shape) != len(dims):
            raise InputShapeError(
                f"input-shape for {name!r} has rank {len(dims)}, but the input is {format_shape(v.shape)} (rank {len(v.shape)})"
            )
        for i, (old, new) in enumerate(zip(v.shape or [None] * len(dims), dims)):
            if isinstance(old, int) and old != new:
                raise InputShapeError(f"input-shape for {name!r}: dim {i} is fixed at {old} in the model, not {new}")
            if isinstance(old, str) and old:
                if symbols.setdefault(old, new) != new:
                    raise InputShapeError(
                        f"symbolic dim {old!r} is pinned to both {symbols[old]} and {new}; inputs sharing a symbol share its size"
                    )
        v.shape = tuple(dims)
    for v in graph.inputs:
        if v.shape is not None and v.name not in shapes:
            v.shape = tuple(symbols.get(d, d) if isinstance(d, str) else d for d in v.shape)
    return symbols


def symbolic_inputs(graph: Graph) -> list[str]:
    """Human-readable list of inputs whose shape is not fully static, e.g. `x[batch,3,224,224] dim 0`."""
    out = []
    for v in graph.inputs:
        if v.shape is None:
            out.append(f"{v.name} (rank unknown)")
            continue
        dyn = [i for i, d in enumerate(v.shape) if not isinstance(d, int)]
        if dyn:
            out.append(f"{v.name}{format_shape(v.shape)} dim {', '.join(map(str, dyn))}")
    return out
