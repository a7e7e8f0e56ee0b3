"""Relax for the Lepton-domain channels-last ops of `convert-layout` (`passes.layout`).

Each op becomes the TVM operator in the layout it names, so no transpose is emitted for it:
`NhwcConv` -> `relax.nn.conv2d(data_layout="NHWC", kernel_layout="HWIO")` (+ the bias over the last axis),
`NhwcMaxPool`/`NhwcAveragePool` -> `max_pool2d`/`avg_pool2d(layout="NHWC")`, `NhwcResize` -> TVM's own Resize
conversion (sizes from scales as its converter computes them) with `resize2d(layout="NHWC")`. Winograd and
the sub-pixel transposed convolutions still apply downstream (`lepton.codegen.winograd`, which takes
NHWC/HWIO convolutions).

A graph that `convert-layout` laid out carries `metadata_props["lepton.layout"]`; `mark` copies that to the
Relax module's attribute `lepton.layout`, and the CPU pipeline then skips TVM's `ConvertLayout`
(`lepton.codegen.tvm_build`): ops Lepton left in NCHW stay there.
"""

from __future__ import annotations

import tvm
from tvm import relax
from tvm.relax.frontend.onnx import onnx_frontend

from lepton_ir import Graph, Node
from lepton_ir.functions import DOMAIN

#: The Lepton-domain op types converted here (TVM's frontend reads `op_type` only: none is a standard name).
OPS = frozenset({"NhwcConv", "NhwcMaxPool", "NhwcAveragePool", "NhwcResize"})
MODULE_ATTR = "lepton.layout"
_METADATA_KEY = "lepton.layout"  # passes.layout.METADATA_KEY (the codegen does not import the pass)


class StepNote(str):
    """A codegen note that is also a pass-log record (`lepton.compiler` adds one per note): the codegen `step`
    that applied ("winograd", "prepack-weights"), its `stats`, and `where` it applied: ONNX node names (a
    convolution's Relax call carries its node's name as its span when `convert-layout` made it) or kernel names."""

    step: str
    stats: dict[str, int]
    where: list[str]

    def __new__(cls, text: str, step: str, stats: dict[str, int], where: list[str] | None = None) -> StepNote:
        note = super().__new__(cls, text)
        note.step, note.stats, note.where = step, dict(stats), list(where or [])
        return note


def node_name(call: relax.Call) -> str | None:
    """The ONNX node a Relax call was converted from, where the converter recorded it (its span)."""
    span = call.span
    return None if span is None or span.source_name is None else str(span.source_name.name) or None


def converts(node: Node) -> bool:
    """Whether `node` is a Lepton layout op this module converts."""
    return node.domain == DOMAIN and node.op_type in OPS


def convert(bb: relax.BlockBuilder, op_name: str, inputs: list, attrs: dict, params: list) -> relax.Expr | None:  # type: ignore[type-arg]
    """The Relax code of one Lepton layout op, or None when `op_name` is not one; `params` is what TVM's
    converters get as theirs (the importer's values and parameters by name)."""
    if op_name == "NhwcConv":
        # bound first: the normalizer rebuilds a call with non-leaf arguments and drops its span
        x, w = (v if isinstance(v, relax.Var | tvm.ir.expr.Constant) else bb.emit(v) for v in inputs[:2])
        conv = relax.op.nn.conv2d(
            x, w, strides=list(attrs.get("strides", (1, 1))), padding=list(attrs.get("pads", (0, 0, 0, 0))),
            dilation=list(attrs.get("dilations", (1, 1))), groups=int(attrs.get("group", 1)),
            data_layout="NHWC", kernel_layout="HWIO", out_layout="NHWC")
        name = attrs.get("tvm_custom", {}).get("name", "")  # the node's name, for the Winograd pass's record
        y = bb.emit(relax.Call(conv.op, conv.args, conv.attrs, conv.ty_args,
                               tvm.ir.Span(tvm.ir.SourceName(name), 0, 0, 0, 0) if name else None))
        if len(inputs) > 2 and inputs[2] is not None:
            y = relax.op.add(y, relax.op.reshape(inputs[2], [1, 1, 1, -1]))
        return y
    if op_name in ("NhwcMaxPool", "NhwcAveragePool"):
        pool = relax.op.nn.max_pool2d if op_name == "NhwcMaxPool" else relax.op.nn.avg_pool2d
        return pool(inputs[0], pool_size=list(attrs["kernel_shape"]), strides=list(attrs.get("strides", (1, 1))),
                    padding=list(attrs.get("pads", (0, 0, 0, 0))), dilation=list(attrs.get("dilations", (1, 1))),
                    ceil_mode=bool(attrs.get("ceil_mode", 0)),
                    count_include_pad=bool(attrs.get("count_include_pad", 0)), layout="NHWC")
    if op_name == "NhwcResize":
        return _resize(bb, inputs, attrs, params)
    return None


def _resize(bb: relax.BlockBuilder, inputs: list, attrs: dict, params: list) -> relax.Expr:  # type: ignore[type-arg]
    """TVM's Resize conversion of the NCHW view, re-laid out: its resize2d call in NHWC on the NHWC input."""
    x = inputs[0]
    view = bb.normalize(relax.op.permute_dims(x, [0, 3, 1, 2]))
    roi_scales_sizes = (list(inputs[1:]) + [None] * 3)[:3]
    call = onnx_frontend.Resize._impl_v18(bb, [view, *roi_scales_sizes], dict(attrs), params)
    if isinstance(call, relax.Call) and call.op.same_as(tvm.ir.Op.get("relax.image.resize2d")) and call.args[0].same_as(view):
        a = call.attrs
        return relax.op.image.resize2d(
            x, size=call.args[1], roi=[float(r) for r in a.roi], layout="NHWC", method=str(a.method),
            coordinate_transformation_mode=str(a.coordinate_transformation_mode),
            rounding_method=str(a.rounding_method), cubic_alpha=float(a.cubic_alpha),
            cubic_exclude=int(a.cubic_exclude), extrapolation_value=float(a.extrapolation_value))
    return relax.op.permute_dims(bb.normalize(call), [0, 2, 3, 1])


def mark(graph: Graph, mod: tvm.IRModule) -> tvm.IRModule:
    """`mod` with attribute `lepton.layout` when `convert-layout` laid `graph` out."""
    layout = graph.metadata_props.get(_METADATA_KEY)
    return mod.with_attr(MODULE_ATTR, layout) if layout else mod


def laid_out(mod: tvm.IRModule) -> str | None:
    """The layout Lepton laid the module out in, or None (TVM's layout conversion may act)."""
    value = mod.attrs.get(MODULE_ATTR) if mod.attrs is not None else None
    return None if value is None else str(value)
