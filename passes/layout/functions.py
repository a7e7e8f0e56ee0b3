"""The Lepton-domain channels-last ops `convert-layout` makes, defined as ONNX functions.

Each op is its standard ONNX op between two transposes, so a graph holding them still runs in
onnxruntime (`lepton_ir.functions` adds these bodies to every export); the codegen maps them to
channels-last TVM ops instead (`lepton.codegen.layout_ops`). Activations are NHWC; the attributes
are the standard op's (explicit pads: `convert-layout` resolves `auto_pad`).

- `NhwcConv(X, W, [B])`: X [N, H, W, C], W in HWIO order [kh, kw, C/group, M] (converted from OIHW at
  compile time), B [M]; Y [N, H', W', M]. Attributes strides, pads, dilations, group.
- `NhwcMaxPool(X)`, `NhwcAveragePool(X)`: 2-d pooling of an NHWC tensor (one output, no indices).
  Attributes kernel_shape, strides, pads, dilations, ceil_mode (+ count_include_pad for averages).
- `NhwcResize(X, roi, scales, sizes)`: 2-d resize of an NHWC tensor; roi, scales and sizes stay in
  the NCHW axis order of the standard op (they are constants). The standard attributes except
  `axes`, `antialias` and `keep_aspect_ratio_policy` (such Resizes are not converted).
"""

from __future__ import annotations

import onnx
from onnx import helper

from lepton_ir.functions import DOMAIN, register_function

A = onnx.AttributeProto
TO_NCHW = (0, 3, 1, 2)
TO_NHWC = (0, 2, 3, 1)
#: HWIO [kh, kw, C/g, M] -> OIHW [M, C/g, kh, kw]
HWIO_TO_OIHW = (3, 2, 0, 1)
#: OIHW -> HWIO
OIHW_TO_HWIO = (2, 3, 1, 0)

_CONV_ATTRS = {"strides": A.INTS, "pads": A.INTS, "dilations": A.INTS, "group": A.INT}
_POOL_ATTRS = {"kernel_shape": A.INTS, "strides": A.INTS, "pads": A.INTS, "dilations": A.INTS, "ceil_mode": A.INT}
_AVG_ATTRS = {**_POOL_ATTRS, "count_include_pad": A.INT}
_RESIZE_ATTRS = {"mode": A.STRING, "coordinate_transformation_mode": A.STRING, "cubic_coeff_a": A.FLOAT,
                 "exclude_outside": A.INT, "extrapolation_value": A.FLOAT, "nearest_mode": A.STRING}

#: Lepton op -> (standard op, attribute name -> type). Pool dilations exist in ONNX from MaxPool 10 and
#: AveragePool 19; `convert-layout` never sets an attribute the model's opset lacks.
OPS: dict[str, tuple[str, dict[str, int]]] = {
    "NhwcConv": ("Conv", _CONV_ATTRS),
    "NhwcMaxPool": ("MaxPool", _POOL_ATTRS),
    "NhwcAveragePool": ("AveragePool", _AVG_ATTRS),
    "NhwcResize": ("Resize", _RESIZE_ATTRS),
}


def _refs(attrs: dict[str, int]) -> list[onnx.AttributeProto]:
    out = []
    for name, kind in attrs.items():
        a = A()
        a.name, a.ref_attr_name, a.type = name, name, kind
        out.append(a)
    return out


def _definition(op_type: str, opset: int) -> onnx.FunctionProto:
    standard, attrs = OPS[op_type]
    if op_type == "NhwcConv":
        inputs = ["X", "W", "B"]
        body = [helper.make_node("Transpose", ["X"], ["x_nchw"], perm=list(TO_NCHW)),
                helper.make_node("Transpose", ["W"], ["w_oihw"], perm=list(HWIO_TO_OIHW)),
                helper.make_node(standard, ["x_nchw", "w_oihw", "B"], ["y_nchw"])]
    elif op_type == "NhwcResize":
        inputs = ["X", "roi", "scales", "sizes"]
        body = [helper.make_node("Transpose", ["X"], ["x_nchw"], perm=list(TO_NCHW)),
                helper.make_node(standard, ["x_nchw", "roi", "scales", "sizes"], ["y_nchw"])]
    else:
        inputs = ["X"]
        body = [helper.make_node("Transpose", ["X"], ["x_nchw"], perm=list(TO_NCHW)),
                helper.make_node(standard, ["x_nchw"], ["y_nchw"])]
    body[-1].attribute.extend(_refs(attrs))
    body.append(helper.make_node("Transpose", ["y_nchw"], ["Y"], perm=list(TO_NHWC)))
    return helper.make_function(DOMAIN, op_type, inputs, ["Y"], body, [helper.make_opsetid("", opset)],
                                attributes=list(attrs))


def _register() -> None:
    for op_type in OPS:
        register_function(op_type, lambda opset, op_type=op_type: _definition(op_type, opset))


_register()
