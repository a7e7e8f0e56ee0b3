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
from tvm import relax

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
    """Replaces the integer constant data of each `relax.dequantize` by a new parameter (one per constant)."""

    def __init__(self) -> None:
        super().__init__()
        self.params: list[relax.Var] = []
        self.values: list[tvm.runtime.Tensor] = []
        self._constants: list[tvm.ir.expr.Constant] = []  # parallel to params: one parameter per constant

    def visit_call_(self, call: relax.Call) -> relax.Expr:  # noqa: D102 - PyExprMutator hook
        call = self.visit_expr_post_order(call)
        if not (isinstance(call.op, tvm.ir.Op) and call.op.name == "relax.dequantize"):
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
    transform function it made, which then takes no parameters. Run no constant folding afterwards: it
    would fold the weights to float again."""
    if not values:
        return mod
    lifted = relax.transform.LiftTransformParams()(mod)
    transform = lifted[TRANSFORM]
    tuple_param = transform.params[0]
    lifted[TRANSFORM] = transform.bind_params({tuple_param: relax.Tuple([relax.const(v) for v in values])})
    return lifted


def load_weights(vm: Any) -> tuple[Any, ...]:
    """The transformed weights a loaded module's `main` takes after its inputs (none for a module
    without a transform function); computed once, here."""
    if not vm.module.implements_function(TRANSFORM):
        return ()
    return tuple(vm[TRANSFORM]())
