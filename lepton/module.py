"""A loaded, runnable compiled module: numpy in, numpy out, inputs checked against the signature.

Invariant: TVM is called only with inputs whose names, dtypes, ranks and dims fit the signature
(symbolic dims bound consistently across inputs); every mismatch is an `InputError` naming the input.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from lepton.errors import InputError
from lepton_ir.errors import InternalError

if TYPE_CHECKING:
    from lepton.artifact import Manifest, Signature, TensorSpec

# Untyped Python values, converted to the input's dtype when numpy's same-kind casting allows.
_UNTYPED = (list, tuple, int, float, bool, complex)


class CompiledModule:
    """Run with `module.run(x=...)`, `module(**inputs)` or `module.run({"name": array})`."""

    def __init__(self, vm: Any, signature: Signature, device: Any, manifest: Manifest) -> None:
        self._vm = vm  # keeps the VM (and its loaded library) alive as long as `_main` is used
        self._main = vm["main"]
        self._signature = signature
        self._device = device
        self._manifest = manifest

    @property
    def inputs(self) -> tuple[TensorSpec, ...]:
        return self._signature.inputs

    @property
    def outputs(self) -> tuple[TensorSpec, ...]:
        return self._signature.outputs

    @property
    def target(self) -> dict[str, Any]:
        return self._manifest.target

    @property
    def path(self) -> Path:
        return self._manifest.path

    @property
    def manifest(self) -> Manifest:
        return self._manifest

    def run(self, feeds: Mapping[str, Any] | None = None, /, **kwargs: Any) -> dict[str, np.ndarray]:
        """Outputs by name, in signature order. Inputs by name, as a dict and/or keywords."""
        given = _merge(feeds, kwargs)
        arrays = self._check(given)
        import tvm

        from lepton.codegen.narrow import from_storage_array, to_storage_array  # sub-byte types travel as bytes
        from lepton.threads import use_available_cpus

        use_available_cpus()
        result = self._main(*(tvm.runtime.tensor(to_storage_array(a), self._device) for a in arrays))
        values = _flatten(result)
        if len(values) != len(self.outputs):
            raise InternalError(f"module {self.path} returned {len(values)} outputs, its signature has {len(self.outputs)}")
        return {spec.name: from_storage_array(v, spec.dtype) for spec, v in zip(self.outputs, values, strict=True)}

    __call__ = run

    def _check(self, given: dict[str, Any]) -> list[np.ndarray]:
        """The inputs as contiguous arrays in signature order; InputError on any mismatch."""
        expected = [t.name for t in self.inputs]
        unknown = [n for n in given if n not in expected]
        if unknown:
            raise InputError(f"unknown input(s) {', '.join(map(repr, unknown))}; the module takes: {_specs(self.inputs)}")
        missing = [n for n in expected if n not in given]
        if missing:
            raise InputError(f"missing input(s) {', '.join(map(repr, missing))}; the module takes: {_specs(self.inputs)}")
        arrays = [_as_array(spec, given[spec.name]) for spec in self.inputs]
        bound: dict[str, tuple[int, str]] = {}
        for spec, arr in zip(self.inputs, arrays, strict=True):
            _check_shape(spec, arr.shape, bound)
        return arrays

    def __repr__(self) -> str:
        t = self.target
        return (f"CompiledModule({str(self.path)!r}, target={t.get('name', '?')!r} ({t.get('kind')}/{t.get('device', 'cpu')}), "
                f"inputs=[{_specs(self.inputs)}], outputs=[{_specs(self.outputs)}])")


def _merge(feeds: Mapping[str, Any] | None, kwargs: dict[str, Any]) -> dict[str, Any]:
    if feeds is not None and not isinstance(feeds, Mapping):
        raise InputError(f"run() takes inputs by name (a dict or keywords), not a {type(feeds).__name__}")
    given = dict(feeds or {})
    twice = sorted(given.keys() & kwargs.keys())
    if twice:
        raise InputError(f"input(s) {', '.join(map(repr, twice))} given both in the dict and as keywords")
    return {**given, **kwargs}


def _as_array(spec: TensorSpec, value: Any) -> np.ndarray:
    """A C-contiguous array of exactly `spec.dtype`: typed arrays must match, Python values are converted."""
    want = _numpy_dtype(spec)
    try:
        arr = np.asarray(value)
    except Exception as e:  # noqa: BLE001 - any object may be passed in
        raise InputError(f"input {spec.name!r}: cannot convert {type(value).__name__} to an array: {e}") from None
    if isinstance(value, _UNTYPED) and arr.dtype != want and np.can_cast(arr.dtype, want, casting="same_kind"):
        arr = arr.astype(want)
    if arr.dtype != want:
        raise InputError(f"input {spec.name!r}: dtype {arr.dtype}, expected {spec.dtype} (convert it with .astype(np.{spec.dtype}))")
    return arr if arr.flags.c_contiguous else np.array(arr, order="C")  # ascontiguousarray would make 0-d arrays 1-d


def _numpy_dtype(spec: TensorSpec) -> np.dtype:
    """The numpy dtype named `spec.dtype`; InputError when numpy has no such dtype (e.g. "?" = unknown)."""
    try:
        dtype = np.dtype(spec.dtype)
    except TypeError:
        dtype = None
    if dtype is None or dtype.name != spec.dtype:
        raise InputError(f"input {spec.name!r} has dtype {spec.dtype!r}, which cannot be passed from numpy")
    return dtype


def _check_shape(spec: TensorSpec, shape: tuple[int, ...], bound: dict[str, tuple[int, str]]) -> None:
    """Rank and static dims must match; a symbolic dim binds its symbol (in `bound`) to one size across inputs."""
    if spec.shape is None:
        return
    if len(shape) != len(spec.shape):
        raise InputError(f"input {spec.name!r}: rank {len(shape)} (shape {list(shape)}), expected rank {len(spec.shape)} ({spec})")
    for axis, (want, got) in enumerate(zip(spec.shape, shape, strict=True)):
        if isinstance(want, int) and want != got:
            raise InputError(f"input {spec.name!r}: dim {axis} is {got}, expected {want} (shape {list(shape)}, expected {spec})")
        if isinstance(want, str):
            size, owner = bound.setdefault(want, (got, spec.name))
            if size != got:
                raise InputError(f"input {spec.name!r}: dim {axis} ({want}) is {got}, but input {owner!r} has {want} = {size}")


def _flatten(result: Any) -> list[np.ndarray]:
    """A VM result (a Tensor, or nested tuples/Arrays of them) as a flat list of numpy arrays."""
    import tvm

    if isinstance(result, tvm.runtime.Tensor):
        return [result.numpy()]
    if isinstance(result, tvm.runtime.ShapeTuple):
        return [np.asarray(list(result), dtype=np.int64)]
    if isinstance(result, Sequence):  # tuple, list, tvm_ffi.Array
        return [a for item in result for a in _flatten(item)]
    raise InternalError(f"the compiled module returned an unexpected {type(result).__name__}")


def _specs(specs: tuple[TensorSpec, ...]) -> str:
    return ", ".join(map(str, specs))
