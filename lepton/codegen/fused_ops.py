"""Relax for the Lepton-domain fused ops of `fuse-activation` (`passes.fusion.activation`).

`lepton.FusedConv<Act>` and `lepton.FusedGemm<Act>` are lowered one of two ways (`LOWERING`):

- `"relax"`: TVM's own conversion of the Conv/Gemm (Lepton's converters where it has them), then the
  activation as the Relax op TVM has for it: `nn.relu`, `nn.leakyrelu`, `nn.silu`, `nn.gelu`/`nn.gelu_tanh`;
  HardSigmoid, HardSwish and Clip through the frontend's converters (Clip is Lepton's `maximum`/`minimum`).
- `"expand"`: the model's function bodies are inlined before conversion (`onnx.inliner`, the bodies
  onnxruntime ran), and TVM converts the Conv/Gemm and the activation as separate ONNX nodes.

Either way TVM's FuseOps makes the convolution or matmul and its epilogue (bias, activation) one kernel, which
Lepton's CPU schedule applies on write-back. The two differ only where the Relax op is not the body's ops
(SiLU: `nn.silu` vs `sigmoid` * x; GELU below opset 20: `nn.gelu` vs the Erf ops).

Measured on x86 (2 cores, 2026-12-03, `lepton.compile(model, "x86")`, the target pipeline making the fused ops):
the two give structurally equal Relax modules for ResNet-18 with BatchNorm kept (9 FusedConvRelu), MobileNetV2
(35 FusedConvClip) and MobileNetV3-small, and for EfficientNet-B0 (49 FusedConvSilu) the same 63 scheduled
kernels (PrimFuncs equal by structural hash after Lepton's CPU schedules; only their names differ). Timed in
alternating blocks (9-15 blocks of 20 calls, load average 3-5 from other work), expand / relax was 0.93
(ResNet-18), 0.92 (MobileNetV2) and 0.87 (EfficientNet-B0): the spread of identical code on a busy machine,
not a difference. `"relax"` is the default because its Relax code stays attributed to the fused node (errors
and provenance name it); the inliner leaves the body's nodes unnamed.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Literal

import onnx
import onnx.inliner
from tvm import relax

from lepton_ir import Node
from lepton_ir.functions import DOMAIN
from passes.fusion.activation import FUSED_OPS, PRODUCERS

#: The Lepton-domain op types lowered here (TVM's frontend reads `op_type` only: none is a standard name).
OPS = frozenset(FUSED_OPS)

#: How the fused ops are lowered (see the module docstring).
LOWERING: Literal["relax", "expand"] = "relax"

#: `standard(op_type, inputs, attrs)`: the frontend's conversion of a standard ONNX op.
Standard = Callable[[str, list, dict], relax.Expr]  # type: ignore[type-arg]


def converts(node: Node) -> bool:
    """Whether `node` is a fused op this module lowers."""
    return node.domain == DOMAIN and node.op_type in OPS


def prepare(model: onnx.ModelProto) -> onnx.ModelProto:
    """`model` for TVM's frontend: with `LOWERING == "expand"`, the fused ops' bodies inlined; else unchanged."""
    if LOWERING != "expand" or not any(f.domain == DOMAIN and f.name in OPS for f in model.functions):
        return model
    return onnx.inliner.inline_selected_functions(model, [(DOMAIN, op) for op in sorted(OPS)])


def convert(bb: relax.BlockBuilder, op_name: str, inputs: list, attrs: dict, standard: Standard) -> relax.Expr:  # type: ignore[type-arg]
    """The Relax code of one fused op: the producer's conversion, then the activation."""
    producer, act = FUSED_OPS[op_name]
    own = PRODUCERS[producer][1]
    ins = [inputs[i] if i < len(inputs) else None for i in range(3 + len(act.inputs))]
    y = bb.normalize(standard(producer, ins[:3], {k: v for k, v in attrs.items() if k in own}))
    name = act.name
    if name == "Relu":
        return relax.op.nn.relu(y)
    if name == "LeakyRelu":
        return relax.op.nn.leakyrelu(y, float(attrs.get("activation_alpha", 0.01)))
    if name == "HardSigmoid":
        return standard("HardSigmoid", [y], {"alpha": float(attrs.get("activation_alpha", 0.2)),
                                             "beta": float(attrs.get("activation_beta", 0.5))})
    if name == "HardSwish":
        return standard("HardSwish", [y], {})
    if name == "Clip":
        return standard("Clip", [y, ins[3], ins[4]], {})
    if name == "Silu":
        return relax.op.nn.silu(y)
    if name == "Gelu":
        approximate = _text(attrs.get("activation_approximate", b"none"))
        return relax.op.nn.gelu_tanh(y) if approximate == "tanh" else relax.op.nn.gelu(y)
    raise NotImplementedError(f"no Relax lowering for the activation of {op_name}")


def _text(v: Any) -> str:
    return v.decode() if isinstance(v, bytes) else str(v)
