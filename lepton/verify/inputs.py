"""Inputs to verify on: synthesized per input from what the graph does with it, or given by the user.

Synthesis (`plan` then `sample`), deterministic for a seed, drawn in graph-input order:
- floats ~ N(0, 1);
- integers that index a table (`Gather`/`GatherElements`/`GatherND` indices, also through
  Cast/Reshape/Unsqueeze/Concat/...) are uniform in [0, size of the smallest such table);
- masks — bool inputs, and integers named `*mask*` or cast to a float/bool type (attention masks
  enter arithmetic that way) — are ones with ~10% zeros, never zero at position 0 of the last
  axis (a fully masked row makes softmax NaN in both runtimes, which checks nothing);
- uint8 inputs (images) are uniform in [0, 255]; other integers are 0 or 1;
- inputs whose values become a shape, axis, count or size (`SHAPE_OPERANDS`, also through
  arithmetic and Concat) cannot be made up: sampling them raises `SynthesisError` naming the input
  and the node, unless the caller asks for a guess (`guess_shapes`, for bundles nobody checks);
- symbolic dims take `default_dim` unless the module's signature pins them.

Given samples (a dict, an .npz path, or an iterable of those) are checked against the model's
inputs — names, dtypes, ranks, static dims — with an `InputError` naming the input at fault.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, replace
from typing import Any, Literal

import numpy as np
import onnx

from lepton.errors import InputError
from lepton_ir import Graph, Node, UserError, Value
from lepton_ir.types import Shape, is_float, np_dtype

Kind = Literal["float", "index", "mask", "image", "int", "shape", "other"]
InputsLike = Mapping[str, Any] | str | os.PathLike[str] | Iterable[Mapping[str, Any] | str | os.PathLike[str]]

SHAPE_OPERANDS: dict[str, frozenset[int]] = {
    op: frozenset(ix) for op, ix in {
        "Reshape": {1}, "Expand": {1}, "ConstantOfShape": {0}, "Tile": {1}, "Slice": {1, 2, 3, 4},
        "Range": {0, 1, 2}, "TopK": {1}, "Pad": {1, 3}, "Resize": {1, 2, 3}, "Upsample": {1},
        "Unsqueeze": {1}, "Squeeze": {1}, "Split": {1}, "OneHot": {1}, "CumSum": {1}, "Trilu": {1},
        "NonMaxSuppression": {2}, "CenterCropPad": {1}, "Col2Im": {1, 2}, "DFT": {1, 2}, "STFT": {1, 3},
        "MaxUnpool": {2}, "BlackmanWindow": {0}, "HannWindow": {0}, "HammingWindow": {0}, "Loop": {0},
        **{f"Reduce{r}": {1} for r in ("Sum", "Mean", "Max", "Min", "Prod", "L1", "L2", "LogSum", "LogSumExp", "SumSquare")},
    }.items()
}
"""Operands (op type -> input indices) whose values are shapes, axes, counts or sizes."""

MASK_ZERO_RATE = 0.1
"""Fraction of zeros (False) in a synthesized mask."""
_MAX_DEPTH = 8
# Ops whose outputs carry an input's values (for shape tracing): any operand, or only operand 0.
_ANY_OPERAND = {"Cast", "CastLike", "Identity", "Concat", "Add", "Sub", "Mul", "Div", "Neg", "Abs", "Max", "Min",
                "Sum", "Ceil", "Floor", "Round", "Clip"}
_OPERAND_0 = {"Unsqueeze", "Squeeze", "Reshape", "Flatten", "Expand", "Slice", "Gather", "Transpose"}
# Ops that move an index tensor's values around without changing them (for table bounds and masks).
_MOVES = {"Cast", "Identity", "Concat", "Flatten", "Transpose"}
_GATHERS = {"Gather", "GatherElements", "GatherND"}
_NONE = object()


class SynthesisError(InputError):
    """An input Lepton cannot make up values for (it sets a shape, or has an unsupported type); give real inputs."""


@dataclass(frozen=True)
class InputSpec:
    """How to synthesize one graph input. `bound`: index inputs take values in [0, bound).
    `consumer`: for kind "shape", the node operand that makes the input shape-like."""

    name: str
    dtype: np.dtype
    shape: Shape
    kind: Kind
    bound: int | None = None
    consumer: str = ""


def plan(graph: Graph) -> tuple[InputSpec, ...]:
    """One InputSpec per graph input, in order (never raises: unsynthesizable inputs fail in `sample`)."""
    return tuple(_spec(v) for v in graph.inputs)


def synthesize(graph: Graph, seed: int = 0, default_dim: int = 1) -> dict[str, np.ndarray]:
    """One sample for `graph`'s inputs: `sample(plan(graph), seed, default_dim=default_dim)`."""
    return sample(plan(graph), seed, default_dim=default_dim)


def sample(specs: Iterable[InputSpec], seed: int = 0, *, default_dim: int = 1, guess_shapes: bool = False) -> dict[str, np.ndarray]:
    """One synthesized sample. SynthesisError for shape-like inputs (unless `guess_shapes`: 0/1 or N(0, 1)
    values, valid for nothing in particular) and for unsupported dtypes."""
    rng = np.random.default_rng(seed)
    return {s.name: _draw(s, tuple(d if isinstance(d, int) else default_dim for d in (s.shape or ())), rng, guess_shapes)
            for s in specs}


def with_shapes(specs: Iterable[InputSpec], shapes: Mapping[str, Shape] | None) -> tuple[InputSpec, ...]:
    """`specs` with each input's static dims taken from `shapes` (a module's signature) where given."""
    shapes = shapes or {}
    out = []
    for s in specs:
        given = shapes.get(s.name)
        if given is not None and (s.shape is None or len(s.shape) != len(given)):
            s = replace(s, shape=tuple(given))
        elif given is not None and s.shape is not None:
            s = replace(s, shape=tuple(g if isinstance(g, int) else d for g, d in zip(given, s.shape, strict=True)))
        out.append(s)
    return tuple(out)


def check_feeds(specs: Iterable[InputSpec], feeds: Mapping[str, Any], what: str = "the inputs") -> dict[str, np.ndarray]:
    """`feeds` as arrays in spec order; InputError on a missing/unknown name, wrong dtype, rank or static dim.
    Untyped Python values (lists, numbers) are converted to the input's dtype."""
    specs = tuple(specs)
    names = [s.name for s in specs]
    unknown = [n for n in feeds if n not in names]
    missing = [n for n in names if n not in feeds]
    if unknown or missing:
        parts = ([f"unknown input(s) {', '.join(map(repr, unknown))}"] if unknown else []) + \
                ([f"missing input(s) {', '.join(map(repr, missing))}"] if missing else [])
        raise InputError(f"{what}: {'; '.join(parts)}; the model takes {', '.join(map(repr, names))}")
    arrays = {}
    for s in specs:
        value = feeds[s.name]
        arr = value if isinstance(value, np.ndarray) else _convert(s, value, what)
        if arr.dtype != s.dtype:
            raise InputError(f"{what}: input {s.name!r} is {arr.dtype}, the model takes {s.dtype} "
                             f"(convert it with .astype(np.{s.dtype.name}))")
        if s.shape is not None and (len(s.shape) != arr.ndim or any(
                isinstance(d, int) and d != n for d, n in zip(s.shape, arr.shape, strict=True))):
            want = ",".join("?" if d is None else str(d) for d in s.shape)
            raise InputError(f"{what}: input {s.name!r} has shape {list(arr.shape)}, the model takes [{want}]")
        arrays[s.name] = arr
    return arrays


def read_npz(path: str | os.PathLike[str]) -> dict[str, np.ndarray]:
    """The arrays of an .npz file by key (keys are input names); InputError when it cannot be read."""
    try:
        with np.load(path, allow_pickle=False) as data:
            if not hasattr(data, "files"):
                raise ValueError("it holds one array, not named arrays (use np.savez(path, name=array, ...))")
            return {k: data[k] for k in data.files}
    except (OSError, ValueError, EOFError) as e:
        raise InputError(f"cannot read inputs from {os.fspath(path)!r}: {e}") from None


class Samples:
    """The samples a check runs on: every one given in `inputs` (a dict, an .npz path, or an iterable of
    those, read lazily), or `count` synthesized ones (seeds `seed`, `seed + 1`, ...). Each sample is checked
    against the model's inputs before it is returned.

    `first()` is the sample a verification bundle stores; `rest()` yields the others: the given samples
    `first()` did not return, or the synthesized seeds after the first (a bundle always stands for seed `seed`).
    """

    def __init__(self, graph: Graph, inputs: InputsLike | None = None, count: int = 1, seed: int = 0) -> None:
        if isinstance(count, bool) or not isinstance(count, int) or count < 1:
            raise UserError(f"the number of verification samples must be an integer >= 1, not {count!r}")
        self.specs = plan(graph)
        self.count = count
        self.seed = seed
        self.given = inputs is not None
        self._items: Iterator[Any] = iter(()) if inputs is None else _items(inputs)
        self._next_index = 0

    @property
    def shape_inputs(self) -> list[str]:
        """Names of the inputs that set shapes (synthesizing them raises SynthesisError)."""
        return [s.name for s in self.specs if s.kind == "shape"]

    def first(self, shapes: Mapping[str, Shape] | None = None, *, guess_shapes: bool = False) -> dict[str, np.ndarray]:
        """The first sample (`guess_shapes`: see `sample`). For given inputs, InputError when there are none."""
        specs = with_shapes(self.specs, shapes)
        if not self.given:
            return sample(specs, self.seed, guess_shapes=guess_shapes)
        item = next(self._items, _NONE)
        if item is _NONE:
            raise InputError("no input samples were given (the iterable is empty)")
        return self._given_sample(specs, item)

    def rest(self, shapes: Mapping[str, Shape] | None = None) -> Iterator[dict[str, np.ndarray]]:
        """The samples after the first (see the class docstring)."""
        specs = with_shapes(self.specs, shapes)
        if not self.given:
            for k in range(1, self.count):
                yield sample(specs, self.seed + k)
            return
        for item in self._items:
            yield self._given_sample(specs, item)

    def all(self, shapes: Mapping[str, Shape] | None = None) -> Iterator[dict[str, np.ndarray]]:
        """Every sample: `first()` then `rest()`."""
        yield self.first(shapes)
        yield from self.rest(shapes)

    def _given_sample(self, specs: tuple[InputSpec, ...], item: Any) -> dict[str, np.ndarray]:
        k = self._next_index
        self._next_index += 1
        if isinstance(item, str | os.PathLike):
            return check_feeds(specs, read_npz(item), f"input sample {k} ({os.fspath(item)})")
        if not isinstance(item, Mapping):
            raise InputError(f"input sample {k} is a {type(item).__name__}; give a dict of arrays by input name "
                             "or the path of an .npz file")
        return check_feeds(specs, item, f"input sample {k}")


def _items(inputs: InputsLike) -> Iterator[Any]:
    """A dict or a path is one sample; any other iterable is a sequence of samples."""
    if isinstance(inputs, Mapping | str | os.PathLike):
        return iter([inputs])
    if not isinstance(inputs, Iterable):
        raise InputError(f"inputs must be a dict of arrays, an .npz path, or an iterable of those, not {type(inputs).__name__}")
    return iter(inputs)


def _convert(spec: InputSpec, value: Any, what: str) -> np.ndarray:
    try:
        arr = np.asarray(value)
    except Exception as e:  # noqa: BLE001 - any object may be passed in
        raise InputError(f"{what}: input {spec.name!r}: cannot convert {type(value).__name__} to an array: {e}") from None
    return arr.astype(spec.dtype) if np.can_cast(arr.dtype, spec.dtype, casting="same_kind") else arr


def _draw(spec: InputSpec, shape: tuple[int, ...], rng: np.random.Generator, guess_shapes: bool) -> np.ndarray:
    dt = spec.dtype
    kind = spec.kind
    if kind == "shape":
        if not guess_shapes:
            raise SynthesisError(
                f"input {spec.name!r} sets a shape, axis or count ({spec.consumer}), so Lepton cannot make up a value "
                "for it; give real inputs: lepton.verify(..., inputs={...}) or lepton.compile(..., verify_inputs={...})")
        kind = "float" if dt.kind not in "biu" else "int"
    if kind == "other":
        raise SynthesisError(f"input {spec.name!r} has type {dt}, which Lepton cannot synthesize; give real inputs")
    if kind == "float":
        return rng.standard_normal(shape).astype(dt)
    if kind == "index":
        assert spec.bound is not None
        return rng.integers(0, spec.bound, size=shape).astype(dt)
    if kind == "mask":
        mask = rng.random(shape) >= MASK_ZERO_RATE
        if mask.ndim == 0:
            mask = np.asarray(True)
        elif shape[-1] > 0:
            mask[..., 0] = True
        return mask.astype(dt)
    if kind == "image":
        return rng.integers(0, 256, size=shape).astype(dt)
    return rng.integers(0, 2, size=shape).astype(dt)


def _spec(v: Value) -> InputSpec:
    try:
        dt = np_dtype(v.dtype) if v.dtype is not None else None
    except (KeyError, TypeError, ValueError):
        dt = None
    if dt is None:
        return InputSpec(v.name, np.dtype(object), v.shape, "other")
    consumer = _shape_consumer(v)
    if consumer:
        return InputSpec(v.name, dt, v.shape, "shape", consumer=consumer)
    if dt.kind == "b":
        return InputSpec(v.name, dt, v.shape, "mask")
    if dt.kind in "iu":
        bound = index_bound(v)
        if bound:
            return InputSpec(v.name, dt, v.shape, "index", bound)
        if "mask" in v.name.lower():
            return InputSpec(v.name, dt, v.shape, "mask")
        if dt == np.uint8:
            return InputSpec(v.name, dt, v.shape, "image")
        return InputSpec(v.name, dt, v.shape, "mask" if _cast_to_float_or_bool(v) else "int")
    if is_float(v.dtype):
        return InputSpec(v.name, dt, v.shape, "float")
    return InputSpec(v.name, dt, v.shape, "other")


def index_bound(v: Value) -> int | None:
    """Smallest static size of a table `v` indexes (Gather family), through ops that move values unchanged."""
    bounds = []
    for node, i in _reached(v, _moves):
        if node.op_type in _GATHERS and i == 1:
            b = _table_size(node)
            if b:
                bounds.append(b)
    return min(bounds) if bounds else None


def _table_size(node: Node) -> int | None:
    data, indices = node.inputs[0], node.inputs[1]
    if data is None or data.shape is None:
        return None
    if node.op_type == "GatherND":
        b = int(node.attr("batch_dims", 0))
        k = indices.shape[-1] if indices is not None and indices.shape and isinstance(indices.shape[-1], int) else 1
        dims = data.shape[b:b + k]
    else:
        axis = int(node.attr("axis", 0))
        if not -len(data.shape) <= axis < len(data.shape):
            return None
        dims = (data.shape[axis],)
    sizes = [d for d in dims if isinstance(d, int) and d > 0]
    return min(sizes) if sizes and len(sizes) == len(dims) else None


def _shape_consumer(v: Value) -> str:
    """`Op node 'name' (input i)` for the first shape operand `v`'s values reach, or ""."""
    for node, i in _reached(v, _carries):
        if i in SHAPE_OPERANDS.get(node.op_type, ()):
            return f"{node.op_type} node {node.name!r}, input {i}"
    return ""


def _cast_to_float_or_bool(v: Value) -> bool:
    for node, _ in _reached(v, _moves):
        if node.op_type == "Cast":
            to = int(node.attr("to", 0))
            if is_float(to) or to == onnx.TensorProto.BOOL:
                return True
    return False


def _carries(node: Node, i: int) -> bool:
    return node.op_type in _ANY_OPERAND or (node.op_type in _OPERAND_0 and i == 0)


def _moves(node: Node, i: int) -> bool:
    if node.op_type == "Cast":
        return not is_float(int(node.attr("to", 0)))
    return node.op_type in _MOVES or (node.op_type in _OPERAND_0 - {"Gather"} and i == 0)


def _reached(v: Value, follow: Callable[[Node, int], bool]) -> list[tuple[Node, int]]:
    """Every (node, input index) reading `v`, or a value computed from it through uses `follow` accepts
    (at most `_MAX_DEPTH` such steps)."""
    seen, found, frontier = {id(v)}, [], [(v, 0)]
    while frontier:
        value, depth = frontier.pop(0)
        for node, i in value.uses:
            found.append((node, i))
            if depth < _MAX_DEPTH and follow(node, i):
                for out in node.outputs:
                    if id(out) not in seen:
                        seen.add(id(out))
                        frontier.append((out, depth + 1))
    return found
