"""A loaded, runnable compiled module: numpy in, numpy out, inputs checked against the signature.

Invariant: TVM is called only with inputs whose names, dtypes, ranks and dims fit the signature
(symbolic dims bound consistently across inputs); every mismatch is an `InputError` naming the input.
Outputs are new numpy arrays the caller owns: no output shares memory with an input, another output,
an earlier call's output or anything the module keeps.

Per call (small models are called thousands of times a second, so this path is kept short):
- Inputs are checked against per-input specs made once at load (`_InputPlan`): an ndarray of exactly
  the input's dtype with a matching shape passes with a type test, a dtype comparison and a tuple
  comparison; anything else (Python values, wrong names, dtypes or shapes) goes through the full
  check, which converts what may be converted and raises the InputError.
- On CPU, an input reaches TVM through a staging tensor the module keeps per input (allocated by TVM,
  so 64-byte aligned as TVM's kernels require; reallocated when the input's shape changes) and fills
  with one numpy copy, which also takes non-contiguous inputs. Inputs of `ZERO_COPY_MIN_BYTES` or more
  that are C-contiguous, writeable and 64-byte aligned are handed over without a copy (DLPack).
  Sub-byte types, dtypes numpy cannot exchange by DLPack, and other devices are copied by
  `tvm.runtime.tensor` as before.
- Outputs are copied out of the VM's tensors (`np.from_dlpack(t).copy()`); they are not handed over
  without a copy because the VM may return memory it keeps or will reuse: a constant output is the
  module's own constant, a reshaped input is a view of the staging tensor the next call overwrites.
- Calls of one module are serialized by a lock (the Relax VM keeps per-call state in the VM object, and
  the staging tensors are shared); separate modules run concurrently.
- Quantized weights are stored as integers and expanded once, at load (`lepton.codegen.weights`); each
  call passes those expanded weights after the inputs.
- TVM's thread count is chosen per module from its first calls (`lepton.threads.ThreadChoice`): small
  models run on one thread, where TVM's fork/join per parallel loop costs more than it gains.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from lepton.errors import InputError
from lepton.threads import ThreadChoice, use_available_cpus, use_threads
from lepton_ir.errors import InternalError

if TYPE_CHECKING:
    from lepton.artifact import Manifest, Signature, TensorSpec

# Untyped Python values, converted to the input's dtype when numpy's same-kind casting allows.
_UNTYPED = (list, tuple, int, float, bool, complex)
# Dtypes numpy and TVM both exchange by DLPack (checked: bfloat16, float8 and complex are refused by one).
_DLPACK_DTYPES = frozenset(
    ["bool", "int8", "int16", "int32", "int64", "uint8", "uint16", "uint32", "uint64", "float16", "float32", "float64"])
#: Inputs at least this large are passed without a copy when their memory allows it (below, a copy
#: into the staging tensor costs less than finding out).
ZERO_COPY_MIN_BYTES = 1 << 16
_ALIGNMENT = 64  # what tvm.runtime.from_dlpack requires; TVM's kernels assume it
_KDL_CPU = 1


class _InputPlan:
    """One input's check and hand-over to TVM, prepared at load."""

    __slots__ = ("name", "spec", "dtype", "static", "rank", "dims", "symbolic", "fast", "cpu", "_staged", "_runtime")

    def __init__(self, spec: TensorSpec, cpu: bool) -> None:
        self.name = spec.name
        self.spec = spec
        try:
            dtype = np.dtype(spec.dtype)
        except TypeError:
            dtype = None
        self.dtype = dtype if dtype is not None and dtype.name == spec.dtype else None
        shape = spec.shape
        self.rank = None if shape is None else len(shape)
        self.static = tuple(shape) if shape is not None and all(isinstance(d, int) for d in shape) else None
        self.dims = () if shape is None else tuple((axis, d) for axis, d in enumerate(shape) if d is not None)
        self.symbolic = any(isinstance(d, str) for _, d in self.dims)
        self.cpu = cpu
        self.fast = self.dtype is not None and spec.dtype in _DLPACK_DTYPES  # else the full check and tvm.runtime.tensor
        self._staged: tuple[tuple[int, ...], Any, np.ndarray] | None = None
        import tvm  # loaded already: the module holds a VM

        self._runtime = tvm.runtime

    def fits(self, arr: np.ndarray, bound: dict[str, int]) -> bool:
        """Whether `arr` (of this input's dtype) has a shape the signature allows; binds symbols in `bound`."""
        shape = arr.shape
        if self.static is not None:
            return shape == self.static
        if self.rank is None:
            return True
        if len(shape) != self.rank:
            return False
        for axis, want in self.dims:
            got = shape[axis]
            if type(want) is int:
                if got != want:
                    return False
            elif bound.setdefault(want, got) != got:
                return False
        return True

    def tensor(self, arr: np.ndarray, device: Any) -> Any:
        """`arr` as a TVM tensor on `device` (an array that passed the check)."""
        if not (self.fast and self.cpu):
            from lepton.codegen.narrow import to_storage_array  # sub-byte types travel as bytes

            return self._runtime.tensor(to_storage_array(arr), device)
        if arr.nbytes >= ZERO_COPY_MIN_BYTES and arr.flags.c_contiguous and arr.flags.writeable \
                and arr.ctypes.data % _ALIGNMENT == 0:
            return self._runtime.from_dlpack(arr)
        staged = self._staged
        if staged is None or staged[0] != arr.shape:
            t = self._runtime.empty(arr.shape, self.spec.dtype, device)
            staged = self._staged = (arr.shape, t, np.from_dlpack(t))
        staged[2][...] = arr
        return staged[1]


class _OutputPlan:
    __slots__ = ("spec", "narrow", "dlpack")

    def __init__(self, spec: TensorSpec, cpu: bool) -> None:
        from lepton.codegen.narrow import BY_NAME

        self.spec = spec
        self.narrow = spec.dtype in BY_NAME
        self.dlpack = cpu and spec.dtype in _DLPACK_DTYPES

    def array(self, value: Any) -> np.ndarray:
        """A VM result (Tensor, or an int64 array made from a ShapeTuple) as a new numpy array of the spec's dtype."""
        if isinstance(value, np.ndarray):
            arr = value
        elif self.dlpack:
            try:
                arr = np.from_dlpack(value).copy()
            except (BufferError, TypeError, ValueError, RuntimeError):  # a dtype the spec did not promise
                arr = value.numpy()
        else:
            arr = value.numpy()
        if self.narrow:
            from lepton.codegen.narrow import from_storage_array

            arr = from_storage_array(arr, self.spec.dtype)
        return arr


class CompiledModule:
    """Run with `module.run(x=...)`, `module(**inputs)` or `module.run({"name": array})`."""

    def __init__(self, vm: Any, signature: Signature, device: Any, manifest: Manifest) -> None:
        self._vm = vm  # keeps the VM (and its loaded library) alive as long as `_main` is used
        self._main = vm["main"]
        from lepton.codegen.weights import load_weights  # TVM is loaded already: `vm` is a TVM VM

        use_available_cpus()
        self._weights = load_weights(vm)  # what `main` takes after the inputs: integer weights, expanded once
        self._signature = signature
        self._device = device
        self._manifest = manifest
        cpu = device.dlpack_device_type() == _KDL_CPU
        self._plans = tuple(_InputPlan(spec, cpu) for spec in signature.inputs)
        self._out_plans = tuple(_OutputPlan(spec, cpu) for spec in signature.outputs)
        self._symbolic = any(p.symbolic for p in self._plans)
        self._lock = threading.Lock()
        import tvm  # loaded already: `vm` is a TVM VM

        self._tensor_type = tvm.runtime.Tensor
        self._threads = ThreadChoice() if cpu else ThreadChoice(cpus=1)  # on a GPU the host threads matter little

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

    def threads(self, **shapes: Sequence[int]) -> int | None:
        """The TVM thread count chosen for calls with these input shapes (by name; all of them when the
        signature has symbolic dims, none otherwise); None before the first choice, and where nothing is
        chosen: TVM_NUM_THREADS/OMP_NUM_THREADS set, a single CPU, or a module that runs on a GPU."""
        names = [p.name for p in self._plans] if self._symbolic else []
        if sorted(shapes) != sorted(names):
            raise InputError(f"threads() takes every input's shape by name ({', '.join(names)}): the signature has symbolic dims"
                             if names else "threads() takes no shapes: the signature is static")
        if not self._threads.active:
            return None
        return self._threads.decided(tuple(tuple(shapes[n]) for n in names) if self._symbolic else None)

    def run(self, feeds: Mapping[str, Any] | None = None, /, **kwargs: Any) -> dict[str, np.ndarray]:
        """Outputs by name, in signature order. Inputs by name, as a dict and/or keywords."""
        given = feeds if not kwargs and type(feeds) is dict else _merge(feeds, kwargs)
        arrays = self._fast_check(given)
        if arrays is None:
            arrays = self._check(given)
        with self._lock:
            args = [p.tensor(a, self._device) for p, a in zip(self._plans, arrays, strict=True)]
            choice = self._threads
            if choice.active:  # as the environment was when the module was loaded
                key = tuple(a.shape for a in arrays) if self._symbolic else None
                n, timed = choice.next(key)
                use_threads(n)
                if timed:
                    t0 = time.perf_counter()
                    result = self._main(*args, *self._weights)
                    choice.record(key, n, time.perf_counter() - t0)
                else:
                    result = self._main(*args, *self._weights)
            else:
                use_available_cpus()  # a no-op where the user set TVM_NUM_THREADS/OMP_NUM_THREADS
                result = self._main(*args, *self._weights)
            values = [result] if type(result) is self._tensor_type else _flatten(result)
            if len(values) != len(self._out_plans):
                raise InternalError(f"module {self.path} returned {len(values)} outputs, its signature has {len(self.outputs)}")
            return {o.spec.name: o.array(v) for o, v in zip(self._out_plans, values, strict=True)}

    __call__ = run

    def _fast_check(self, given: Mapping[str, Any]) -> list[np.ndarray] | None:
        """The inputs in signature order when each is an ndarray of exactly its dtype and a fitting shape
        (and no other name is given); None otherwise, for `_check` to convert or report."""
        if len(given) != len(self._plans):
            return None
        arrays = []
        bound: dict[str, int] = {}
        for p in self._plans:
            a = given.get(p.name)
            if type(a) is not np.ndarray or a.dtype != p.dtype or not p.fast or not p.fits(a, bound):
                return None
            arrays.append(a)
        return arrays

    def _check(self, given: Mapping[str, Any]) -> list[np.ndarray]:
        """The inputs as arrays of their exact dtypes in signature order; InputError on any mismatch."""
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
    """An array of exactly `spec.dtype`: typed arrays must match, Python values are converted."""
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


def _flatten(result: Any) -> list[Any]:
    """A VM result (a Tensor, or nested tuples/Arrays of them) as a flat list of Tensors (ShapeTuples as int64 arrays)."""
    import tvm

    if isinstance(result, tvm.runtime.Tensor):
        return [result]
    if isinstance(result, tvm.runtime.ShapeTuple):
        return [np.asarray(list(result), dtype=np.int64)]
    if isinstance(result, Sequence):  # tuple, list, tvm_ffi.Array
        return [a for item in result for a in _flatten(item)]
    raise InternalError(f"the compiled module returned an unexpected {type(result).__name__}")


def _specs(specs: tuple[TensorSpec, ...]) -> str:
    return ", ".join(map(str, specs))
