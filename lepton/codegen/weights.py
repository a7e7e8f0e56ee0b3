"""Quantized weights stay integer in the compiled module and are expanded once, when it is loaded.

TVM's constant folding turns `dequantize(int8 constant)` into a float32 constant at compile time, so an
int8 model's library was as large as the float one (ResNet-18: 47 MB for 11.7 M weights). On CPU targets
Lepton instead makes every integer constant that feeds a `dequantize` a parameter of `main` before the
pipeline runs (`lift_quantized_weights`); what the pipeline then computes from those parameters alone
(the dequantization, layout conversion, Winograd's weight transform, prepacking) is moved by TVM's
`LiftTransformParams` into a function of its own, `main_transform_params`, and the integer values are bound
into it as constants (`bind_transform`). The library so stores one byte per int8 weight; `load_weights`
runs the transform when a module is loaded, and every call of `main` takes the inputs followed by those
weights. A module with nothing to lift has no transform function and a `main` that takes the inputs only.

Invariant: `main`'s first `num_input` parameters are the model's inputs; any after them are weights.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import tvm
from tvm import relax, te, tirx

#: The function `LiftTransformParams` makes for `main`.
TRANSFORM = "main_transform_params"
#: Smaller integer constants stay constants: folding them costs less than another parameter per call.
MIN_BYTES = 1024


def lift_quantized_weights(mod: tvm.IRModule) -> tuple[tvm.IRModule, list[tvm.runtime.Tensor]]:
    """`mod` with each integer constant of at least `MIN_BYTES` that `main` dequantizes made a parameter
    of `main` (after its inputs), and the constants' values in parameter order; `mod` itself when there
    are none (or `main` does not say how many inputs it has)."""
    main = next((f for gv, f in mod.functions_items() if gv.name_hint == "main"), None)
    if not isinstance(main, relax.Function) or main.attrs is None or "num_input" not in main.attrs:
        return mod, []
    lifter = _Lifter()
    body = lifter.visit_expr(main.body)
    if not lifter.values:
        return mod, []
    out = tvm.IRModule(dict(mod.functions_items()), attrs=mod.attrs)
    out["main"] = relax.Function([*main.params, *lifter.params], body, main.ret_ty, main.is_pure, main.attrs)
    return out, lifter.values


@relax.expr_functor.mutator
class _Lifter(relax.PyExprMutator):
    """Replaces the integer constant data of each dequantization (`_dequantizes`) by a new parameter (one per
    constant)."""

    def __init__(self) -> None:
        super().__init__()
        self.params: list[relax.Var] = []
        self.values: list[tvm.runtime.Tensor] = []
        self._constants: list[tvm.ir.expr.Constant] = []  # parallel to params: one parameter per constant

    def visit_call_(self, call: relax.Call) -> relax.Expr:  # noqa: D102 - PyExprMutator hook
        call = self.visit_expr_post_order(call)
        if not _dequantizes(call):
            return call
        data = call.args[0]
        if not isinstance(data, tvm.ir.expr.Constant) or not _narrow(data.value):
            return call
        var = next((v for c, v in zip(self._constants, self.params, strict=True) if c.same_as(data)), None)
        if var is None:
            value = data.value
            var = relax.Var(f"qweight{len(self.params)}", relax.TensorType(value.shape, value.dtype))
            self._constants.append(data)
            self.params.append(var)
            self.values.append(value)
        return relax.Call(call.op, [var, *call.args[1:]], call.attrs, call.ty_args)


def _dequantizes(call: relax.Call) -> bool:
    """Whether `call` turns integer codes (its first argument) into floats: `relax.dequantize`, or a cast of an
    8-bit integer tensor to a float type (how `lepton.codegen.narrow` begins a blocked or sub-byte
    dequantization). Wider integer constants cast to float (index and mask tables of float models) stay
    constants: lifting them would change a float model's kernels."""
    if not isinstance(call.op, tvm.ir.Op):
        return False
    if call.op.name == "relax.dequantize":
        return True
    source = call.args[0].ty
    return (call.op.name == "relax.astype" and str(call.attrs.dtype).startswith(("float", "bfloat"))
            and str(getattr(source, "dtype", "")) in ("int8", "uint8"))


def _narrow(value: tvm.runtime.Tensor) -> bool:
    dtype = str(value.dtype)
    return dtype.startswith(("int", "uint")) and int(np.prod(value.shape)) * tvm.DataType(dtype).bits // 8 >= MIN_BYTES


def weight_params(func: relax.Function) -> list[relax.Var]:
    """The parameters of `func` after its `num_input` inputs: weights, the same at every call."""
    if func.attrs is None or "num_input" not in func.attrs:
        return []
    return list(func.params[int(func.attrs["num_input"]):])


def weight_derived(func: relax.Function) -> set[relax.Var]:
    """The variables of `func` whose values depend on its weight parameters (and constants) only, the
    parameters included: what `LiftTransformParams` moves into the transform function."""
    derived = set(weight_params(func))
    if not derived:
        return derived

    def free_of_inputs(e: relax.Expr) -> bool:
        free = relax.analysis.free_vars(e)
        return bool(free) and all(v in derived for v in free)

    body = func.body
    for block in getattr(body, "blocks", []):
        for binding in block.bindings:
            value = getattr(binding, "value", None)
            if value is not None and free_of_inputs(value) and not _impure(value):
                derived.add(binding.var)
    return derived


def _impure(e: relax.Expr) -> bool:
    return isinstance(e, relax.Call) and isinstance(e.op, tvm.ir.Op) and e.op.name in (
        "relax.call_pure_packed", "relax.call_packed", "relax.print", "relax.assert_op")


def bind_transform(mod: tvm.IRModule, values: list[tvm.runtime.Tensor]) -> tvm.IRModule:
    """After `lift_quantized_weights`: `LiftTransformParams` over `mod`, then `values` bound into the
    transform function it made, which then takes no parameters. A value whose every element fits in four
    bits (int4 codes, which the codegen holds in int8, or uint4 ones in uint8) is stored two to a byte and
    unpacked by a kernel of its own (`_unpack`) when the transform runs. Run no constant folding afterwards:
    it would fold the weights to float again."""
    if not values:
        return mod
    lifted = relax.transform.LiftTransformParams()(mod)
    transform = lifted[TRANSFORM]
    arrays = [v.numpy() for v in values]
    if not any(_nibbles(a) for a in arrays):
        lifted[TRANSFORM] = transform.bind_params({transform.params[0]: relax.Tuple([relax.const(v) for v in values])})
        return lifted
    rest = tvm.IRModule({gv: f for gv, f in lifted.functions_items() if gv.name_hint != TRANSFORM}, attrs=lifted.attrs)
    bb = relax.BlockBuilder(rest)
    inner = bb.add_func(transform.without_attr("global_symbol"), f"{TRANSFORM}_unpacked")
    with bb.function(TRANSFORM, [], {"global_symbol": TRANSFORM}, pure=True):
        args = []
        for v, array in zip(values, arrays, strict=True):
            if _nibbles(array):
                args.append(bb.emit_te(_unpack, relax.const(pack_nibbles(array)), array.shape, str(array.dtype),
                                       primfunc_name_hint="unpack_int4"))
            else:
                args.append(relax.const(v))
        bb.emit_func_output(bb.emit(relax.Call(inner, [bb.emit(relax.Tuple(args))])))
    return bb.get()


def stored_bytes(value: tvm.runtime.Tensor) -> int:
    """The bytes `bind_transform` stores for one lifted value (half a byte per element where it packs them)."""
    array = value.numpy()
    return (array.size + 1) // 2 if _nibbles(array) else array.size * array.dtype.itemsize


def _nibbles(array: np.ndarray) -> bool:
    """Whether `array` is int8 within [-8, 7] or uint8 within [0, 15]."""
    if array.dtype not in (np.int8, np.uint8):
        return False
    lo, hi = (-8, 7) if array.dtype == np.int8 else (0, 15)
    return bool(array.min() >= lo and array.max() <= hi)


def pack_nibbles(array: np.ndarray) -> np.ndarray:
    """`array`'s elements (4-bit values held in bytes) two to a byte, in row-major order: element `2k` in the
    low nibble of byte `k` (two's complement for int8), element `2k + 1` in the high one."""
    low = (array.reshape(-1).astype(np.int16) & 0xF).astype(np.uint8)
    if low.size % 2:
        low = np.append(low, np.uint8(0))
    return (low[0::2] | (low[1::2] << 4)).astype(np.uint8)


def _unpack(packed: te.Tensor, shape: tuple[int, ...], dtype: str) -> te.Tensor:
    """The inverse of `pack_nibbles`: the tensor of `shape` and `dtype` (int8: sign-extended from bit 3)."""
    strides = [int(np.prod(shape[k + 1:])) for k in range(len(shape))]

    def element(*index: tirx.PrimExpr) -> tirx.PrimExpr:
        flat = sum((i.astype("int64") * st for i, st in zip(index, strides, strict=True)), tirx.const(0, "int64"))
        byte = packed[tirx.floordiv(flat, 2)].astype("int32")
        nibble = tirx.bitwise_and(tirx.shift_right(byte, tirx.floormod(flat, 2).astype("int32") * 4), tirx.const(15, "int32"))
        sign = tirx.bitwise_and(nibble, tirx.const(8, "int32")) * 2  # bit 3 is the sign of an int8 value
        value = nibble - sign if dtype == "int8" else nibble
        return value.astype(dtype)

    return te.compute(shape, element, name="unpack_int4")


def load_weights(vm: Any) -> tuple[Any, ...]:
    """The transformed weights a loaded module's `main` takes after its inputs (none for a module
    without a transform function); computed once, here."""
    if not vm.module.implements_function(TRANSFORM):
        return ()
    return tuple(vm[TRANSFORM]())
