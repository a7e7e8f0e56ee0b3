"""Lepton as an ONNX backend (`onnx.backend.base.Backend`), for ONNX's backend test suite.

`LeptonBackend.prepare(model)` compiles the model with `lepton.compile` for the x86 target
(this machine's CPU) with the model's own input shapes, no compile cache and no verification
(the suite compares outputs itself); `rep.run(inputs)` takes the inputs positionally, in the
order of the model's graph inputs that are not initializers (or by name, as a dict), and
returns the outputs in the model's output order.

    from lepton.backend import LeptonBackend
    rep = LeptonBackend.prepare(model)
    outputs = rep.run([x, y])

Value specialization. TVM compiles static shapes, so an input whose *values* set a shape, an
axis, a count or a size (a Reshape target, Reduce axes, TopK's k, Resize scales: the operands
`lepton.verify.inputs.SHAPE_OPERANDS` lists, also through arithmetic and Concat) must be a
compile-time constant (TVM's dynamic-shape paths for such operands are partial, and some
compute wrong shapes). When a model has such inputs, `prepare` defers: each `run` compiles the
model with those inputs replaced by the values given (`specialize=True`, the default), keeps up
to `MAX_SPECIALIZATIONS` such modules keyed by the values, and compiles again when the values
change; it is the value guard a JIT puts on shape-like arguments (torch.compile does the same
with ints). Other inputs are never specialized. `rep.specialized_on` names the inputs a run
specialized on; with `specialize=False` `prepare` compiles the model as it is.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import onnx
from onnx.backend.base import Backend, BackendRep, Device, DeviceType

import lepton_ir
from lepton.verify.inputs import plan
from lepton_ir import UserError

#: The target ONNX's device "CPU" compiles for.
CPU_TARGET = "x86"
#: Specialized modules kept per prepared model (least recently used dropped first).
MAX_SPECIALIZATIONS = 8


def _compile(model: onnx.ModelProto, target: str) -> Any:
    from lepton.compiler import compile as lepton_compile

    compiled = lepton_compile(model, target, use_cache=False, verify=False, bundle=False)
    if compiled.module is None:
        raise UserError(f"target {target!r} does not run on this machine")
    return compiled


#: Axis/size operands `lepton.verify.inputs.SHAPE_OPERANDS` does not list (read directly from a graph input).
EXTRA_SHAPE_OPERANDS: dict[str, frozenset[int]] = {"CumProd": frozenset({1}), "AffineGrid": frozenset({1})}


def shape_inputs(model: onnx.ModelProto) -> list[str]:
    """Names of the graph inputs whose values set shapes, axes, counts or sizes (see the module docstring)."""
    graph = lepton_ir.load(model)
    found = {s.name for s in plan(graph) if s.kind == "shape"}
    for v in graph.inputs:
        if any(i in EXTRA_SHAPE_OPERANDS.get(n.op_type, ()) and not n.domain for n, i in v.uses):
            found.add(v.name)
    return [v.name for v in graph.inputs if v.name in found]


def with_constants(model: onnx.ModelProto, values: Mapping[str, np.ndarray]) -> onnx.ModelProto:
    """A copy of `model` whose graph inputs named in `values` are initializers holding those values."""
    out = onnx.ModelProto()
    out.CopyFrom(model)
    keep = [i for i in out.graph.input if i.name not in values]
    del out.graph.input[:]
    out.graph.input.extend(keep)
    if out.ir_version < 4:  # before IR 4 an initializer had to be a graph input, i.e. overridable
        out.ir_version = 4
    declared = {i.name: i.type.tensor_type.elem_type for i in model.graph.input}
    for name, value in values.items():
        arr = np.asarray(value)
        want = declared.get(name, 0)
        if want and onnx.helper.np_dtype_to_tensor_dtype(arr.dtype) != want:
            raise UserError(f"input {name!r} is {arr.dtype}, the model takes {onnx.helper.tensor_dtype_to_np_dtype(want)}")
        out.graph.initializer.append(onnx.numpy_helper.from_array(arr, name))
    return out


class LeptonRep(BackendRep):
    """A compiled model: `run(inputs)` -> outputs in the model's output order."""

    def __init__(self, model: onnx.ModelProto, target: str, compiled: Any = None, specialize: Sequence[str] = ()) -> None:
        inits = {t.name for t in model.graph.initializer}
        self.model = model
        self.target = target
        self.compiled = compiled
        self.specialize = list(specialize)
        self.input_names = [i.name for i in model.graph.input if i.name not in inits]
        self.output_names = [o.name for o in model.graph.output]
        self.specialized_on: list[str] = []
        self._modules: OrderedDict[tuple[Any, ...], Any] = OrderedDict()

    def run(self, inputs: Any, **kwargs: Any) -> tuple[np.ndarray, ...]:  # noqa: ARG002 - Backend signature
        feeds = self._feeds(inputs)
        compiled = self.compiled if self.compiled is not None else self._specialized(feeds)
        module = compiled.module
        taken = {spec.name for spec in module.inputs}
        results = module.run({k: v for k, v in feeds.items() if k in taken})
        missing = [n for n in self.output_names if n not in results]
        if missing:
            raise UserError(f"the compiled module has no output(s) {missing}; it returns {list(results)}")
        return tuple(results[n] for n in self.output_names)

    def _specialized(self, feeds: dict[str, np.ndarray]) -> Any:
        absent = [n for n in self.specialize if n not in feeds]
        if absent:
            raise UserError(f"input(s) {absent} set shapes and must be given")
        values = {n: np.asarray(feeds[n]) for n in self.specialize}
        key = tuple((n, v.dtype.str, v.shape, v.tobytes()) for n, v in values.items())
        if key in self._modules:
            self._modules.move_to_end(key)
        else:
            self._modules[key] = _compile(with_constants(self.model, values), self.target)
            while len(self._modules) > MAX_SPECIALIZATIONS:
                self._modules.popitem(last=False)
        self.specialized_on = list(values)
        return self._modules[key]

    def _feeds(self, inputs: Any) -> dict[str, Any]:
        if isinstance(inputs, Mapping):
            return dict(inputs)
        if isinstance(inputs, np.ndarray) or not isinstance(inputs, Sequence):
            inputs = [inputs]
        if len(inputs) > len(self.input_names):
            raise UserError(f"{len(inputs)} inputs given, the model takes {len(self.input_names)}: {self.input_names}")
        # Trailing inputs may be left out (optional inputs); so may ones given as None.
        return {n: np.asarray(v) for n, v in zip(self.input_names, inputs, strict=False) if v is not None}


class LeptonBackend(Backend):
    """ONNX backend API over `lepton.compile` (CPU only: the x86 target)."""

    @classmethod
    def prepare(cls, model: onnx.ModelProto, device: str = "CPU", **kwargs: Any) -> LeptonRep:
        """Compile `model` for `device` ("CPU"). Keywords: `target` (the Lepton target, default x86),
        `specialize` (default True: defer to run time when shape-setting inputs must be constants)."""
        if not cls.supports_device(device):
            raise UserError(f"Lepton's ONNX backend runs on CPU only, not {device!r}")
        target = kwargs.get("target", CPU_TARGET)
        names = shape_inputs(model) if kwargs.get("specialize", True) else []
        if names:
            return LeptonRep(model, target, specialize=names)
        return LeptonRep(model, target, _compile(model, target))

    @classmethod
    def run_model(cls, model: onnx.ModelProto, inputs: Any, device: str = "CPU", **kwargs: Any) -> tuple[np.ndarray, ...]:
        return cls.prepare(model, device, **kwargs).run(inputs)

    @classmethod
    def run_node(
        cls,
        node: onnx.NodeProto,
        inputs: Any,
        device: str = "CPU",
        outputs_info: Sequence[tuple[np.dtype, tuple[int, ...]]] | None = None,
        **kwargs: Any,
    ) -> tuple[np.ndarray, ...]:
        """Run one node on numpy inputs (output types from `outputs_info`, else ONNX inference)."""
        arrays = [np.asarray(a) for a in inputs]
        names = [n if n else f"__unused_{k}" for k, n in enumerate(node.input)]
        graph_inputs = [
            onnx.helper.make_tensor_value_info(n, onnx.helper.np_dtype_to_tensor_dtype(a.dtype), a.shape)
            for n, a in zip(names, arrays, strict=False) if not n.startswith("__unused_")
        ]
        if outputs_info is not None:
            outs = [
                onnx.helper.make_tensor_value_info(n, onnx.helper.np_dtype_to_tensor_dtype(np.dtype(dt)), shape)
                for n, (dt, shape) in zip(node.output, outputs_info, strict=False)
            ]
        else:
            outs = [onnx.ValueInfoProto(name=n) for n in node.output if n]
        opset = kwargs.pop("opset_version", None) or onnx.defs.onnx_opset_version()
        graph = onnx.helper.make_graph([node], "node", graph_inputs, outs)
        model = onnx.helper.make_model(graph, opset_imports=[onnx.helper.make_opsetid(node.domain or "", opset)])
        if outputs_info is None:
            model = onnx.shape_inference.infer_shapes(model, strict_mode=True)
        return cls.prepare(model, device, **kwargs).run([a for n, a in zip(names, arrays, strict=False)
                                                          if not n.startswith("__unused_")])

    @classmethod
    def supports_device(cls, device: str) -> bool:
        try:
            return Device(device).type == DeviceType.CPU
        except (AttributeError, ValueError):
            return False


prepare = LeptonBackend.prepare
run_model = LeptonBackend.run_model
run_node = LeptonBackend.run_node
supports_device = LeptonBackend.supports_device
