"""`fuse-activation`: Conv or Gemm (with its bias) followed by an activation -> one Lepton-domain fused op.

ONNX has no fused convolution or Gemm with an activation, so the fused ops are Lepton-domain ops defined as
ONNX functions (`lepton_ir.functions`: every export carries their bodies, so any intermediate graph runs in
onnxruntime and `lepton bisect` can check it): the body is the original op, then the activation.

- `lepton.FusedConv<Act>(X, W[, B])`: `Conv(X, W, B)` with the Conv's attributes (auto_pad, dilations,
  group, kernel_shape, pads, strides, unchanged), then the activation.
- `lepton.FusedGemm<Act>(A, B[, C])`: `Gemm(A, B, C)` with its attributes (alpha, beta, transA, transB),
  then the activation.

`<Act>` is one of (the activation's parameters become attributes of the fused op, its bounds inputs):

| Act | matched | parameters |
|---|---|---|
| `Relu` | `Relu(y)` | - |
| `LeakyRelu` | `LeakyRelu(y)` | `activation_alpha` |
| `HardSigmoid` | `HardSigmoid(y)` | `activation_alpha`, `activation_beta` |
| `HardSwish` | `HardSwish(y)` (opset >= 14) | - |
| `Clip` | `Clip(y, min, max)` (opset >= 11; Relu6 is `Clip(y, 0, 6)`) | inputs 4 and 5: `min`, `max` (constant scalars or omitted) |
| `Silu` | `Mul(y, Sigmoid(y))` | - |
| `Gelu` | `Gelu(y)` (opset >= 20), `com.microsoft.Gelu(y)` (what `fuse-gelu` makes below opset 20), or `y * 0.5 * (1 + Erf(y / sqrt(2)))` in the operand orders PyTorch's exporters write (float32 below opset 20) | `activation_approximate` ("none"/"tanh") |

One op type per activation: a function body cannot branch on an attribute, and `lepton_ir.functions` keys one
definition per op type (overloads would have needed IR version 10 in every export). Fusion fires only where
the producer's output is read by the activation alone (the engine refuses otherwise, naming the other reader)
and the output is a float type. Results are the original ops' exactly in onnxruntime (the body is those ops;
the Erf form's body rounds its constants to float32 as the exporters do). The codegen lowers the fused ops
(`lepton.codegen.fused_ops`).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar

import numpy as np
import onnx
from onnx import helper

from lepton_ir import Graph, Node, Value
from lepton_ir.constants import constant_value
from lepton_ir.functions import DOMAIN, register_function
from lepton_ir.rewriter import Builder, Rewriter, replace_problem
from lepton_ir.types import is_float

from passes.base import register
from passes.pattern import Op, Pattern, PatternMatch, const, op, var
from passes.rewrite import Match, RewritePass, Rule, failed, matched

A = onnx.AttributeProto
T = onnx.TensorProto

#: Producer op -> (its function inputs, its attributes and their types).
PRODUCERS: dict[str, tuple[tuple[str, ...], dict[str, int]]] = {
    "Conv": (("X", "W", "B"), {"auto_pad": A.STRING, "dilations": A.INTS, "group": A.INT, "kernel_shape": A.INTS,
                               "pads": A.INTS, "strides": A.INTS}),
    "Gemm": (("A", "B", "C"), {"alpha": A.FLOAT, "beta": A.FLOAT, "transA": A.INT, "transB": A.INT}),
}


@dataclass(frozen=True)
class Activation:
    """One fusable activation: its fused attributes (name -> type), extra inputs, and its body at an opset."""

    name: str
    params: dict[str, int] = field(default_factory=dict)
    inputs: tuple[str, ...] = ()

    def body(self, opset: int, c: str, y: str) -> list[onnx.NodeProto]:
        """Standard-ONNX nodes computing `y` from the producer's output `c` (attributes by reference)."""
        return _BODIES[self.name](opset, c, y)


def _ref(name: str, kind: int, refers_to: str | None = None) -> onnx.AttributeProto:
    a = A()
    a.name, a.ref_attr_name, a.type = name, refers_to or name, kind
    return a


def _node(op_type: str, inputs: list[str], outputs: list[str], refs: Sequence[onnx.AttributeProto] = (),
          **attrs: Any) -> onnx.NodeProto:
    n = helper.make_node(op_type, inputs, outputs, **attrs)
    n.attribute.extend(refs)
    return n


def _scalar(name: str, value: float) -> onnx.NodeProto:
    return helper.make_node("Constant", [], [name], value=helper.make_tensor(name, T.FLOAT, [], [value]))


def _gelu_body(opset: int, c: str, y: str) -> list[onnx.NodeProto]:
    if opset >= 20:
        return [_node("Gelu", [c], [y], [_ref("approximate", A.STRING, "activation_approximate")])]
    return [_scalar("sqrt2", math.sqrt(2.0)), _node("Div", [c, "sqrt2"], ["scaled"]), _node("Erf", ["scaled"], ["erf"]),
            _scalar("one", 1.0), _node("Add", ["erf", "one"], ["erf1"]), _node("Mul", [c, "erf1"], ["prod"]),
            _scalar("half", 0.5), _node("Mul", ["prod", "half"], [y])]


def _hardswish_body(opset: int, c: str, y: str) -> list[onnx.NodeProto]:
    if opset >= 14:
        return [_node("HardSwish", [c], [y])]
    return [_node("HardSigmoid", [c], ["hs"], alpha=1.0 / 6.0, beta=0.5), _node("Mul", [c, "hs"], [y])]  # ONNX's definition


_BODIES: dict[str, Callable[[int, str, str], list[onnx.NodeProto]]] = {
    "Relu": lambda opset, c, y: [_node("Relu", [c], [y])],
    "LeakyRelu": lambda opset, c, y: [_node("LeakyRelu", [c], [y], [_ref("alpha", A.FLOAT, "activation_alpha")])],
    "HardSigmoid": lambda opset, c, y: [_node("HardSigmoid", [c], [y], [_ref("alpha", A.FLOAT, "activation_alpha"),
                                                                       _ref("beta", A.FLOAT, "activation_beta")])],
    "HardSwish": _hardswish_body,
    "Clip": lambda opset, c, y: [_node("Clip", [c, "min", "max"], [y])],
    "Silu": lambda opset, c, y: [_node("Sigmoid", [c], ["sigmoid"]), _node("Mul", [c, "sigmoid"], [y])],
    "Gelu": _gelu_body,
}

ACTIVATIONS: dict[str, Activation] = {
    "Relu": Activation("Relu"),
    "LeakyRelu": Activation("LeakyRelu", {"activation_alpha": A.FLOAT}),
    "HardSigmoid": Activation("HardSigmoid", {"activation_alpha": A.FLOAT, "activation_beta": A.FLOAT}),
    "HardSwish": Activation("HardSwish"),
    "Clip": Activation("Clip", inputs=("min", "max")),
    "Silu": Activation("Silu"),
    "Gelu": Activation("Gelu", {"activation_approximate": A.STRING}),
}


def fused_op_type(producer: str, activation: str) -> str:
    return f"Fused{producer}{activation}"


#: Lepton op type -> (producer op, activation), for the codegen and the tests.
FUSED_OPS: dict[str, tuple[str, Activation]] = {
    fused_op_type(p, a.name): (p, a) for p in PRODUCERS for a in ACTIVATIONS.values()
}


def definition(op_type: str, opset: int) -> onnx.FunctionProto:
    """The ONNX function of the fused op `op_type` at default-domain `opset`: the producer, then the activation."""
    producer, act = FUSED_OPS[op_type]
    inputs, attrs = PRODUCERS[producer]
    prod = _node(producer, list(inputs), ["produced"], [_ref(k, t) for k, t in attrs.items()])
    body = [prod, *act.body(opset, "produced", "Y")]
    return helper.make_function(DOMAIN, op_type, [*inputs, *act.inputs], ["Y"], body, [helper.make_opsetid("", opset)],
                                attributes=[*attrs, *act.params])


for _op_type in FUSED_OPS:
    register_function(_op_type, lambda opset, op_type=_op_type: definition(op_type, opset))


# ----- rules -------------------------------------------------------------------------------

SQRT2 = math.sqrt(2.0)


def _producer(kind: str) -> Op:
    return op[kind](var("x"), var("w"), ..., name="prod")


def _activation_patterns(kind: str) -> dict[tuple[str, str], list[Op]]:
    """(rule suffix, activation name) -> the patterns (rooted at the activation, all of one domain) over a `kind`
    producer named "prod"."""
    p = lambda: _producer(kind)  # noqa: E731 - a fresh pattern node per use; the name binds them to one node
    gelu: list[Op] = []
    for scaled in (op.Div(p(), const("k"), name="scale"), op.Mul(p(), const("k"), name="scale")):
        erf1 = op.Add(op.Erf(scaled), const("one"))
        gelu += [op.Mul(op.Mul(p(), erf1), const("half")), op.Mul(op.Mul(p(), const("half")), erf1),
                 op.Mul(p(), op.Mul(erf1, const("half")))]
    named = {
        "Relu": [op.Relu(p(), name="act")],
        "LeakyRelu": [op.LeakyRelu(p(), name="act")],
        "HardSigmoid": [op.HardSigmoid(p(), name="act")],
        "HardSwish": [op.HardSwish(p(), name="act")],
        "Clip": [op.Clip(p(), ..., name="act")],
        "Silu": [op.Mul(p(), op.Sigmoid(p()))],
        "Gelu": [op.Gelu(p(), name="act"), *gelu],
    }
    out = {(name.lower(), name): patterns for name, patterns in named.items()}
    # fuse-gelu (passes/fusion/gelu.py) writes the Erf form as onnxruntime's contrib Gelu below opset 20
    out[("gelu-contrib", "Gelu")] = [op.Gelu(p(), name="act", domain="com.microsoft")]
    return out


def _near(a: np.ndarray, value: float) -> bool:
    return bool(a.size == 1 and abs(float(a.reshape(-1)[0]) - value) <= 1e-6 * abs(value))


class FuseActivationRule(Rule):
    """`<Act>(<Producer>(...))` -> `lepton.Fused<Producer><Act>(...)`, for any of the activation's `patterns`
    (GELU has several spellings); a miss reports the deepest partial match over them. Made by `_rule`."""

    producer: ClassVar[str]
    activation: ClassVar[Activation]
    patterns: ClassVar[tuple[Pattern, ...]]

    def check(self, node: Node, graph: Graph) -> Match:
        best = failed(f"{node.op_type} {node.name!r} starts no {self.name} pattern", -1)
        for pattern in self.patterns:
            if node.op_type not in pattern.anchor_ops:
                continue
            pm = pattern.match(node, graph)
            if not isinstance(pm, PatternMatch):
                miss = failed(pm.reason, pm.depth)
            elif not (m := self.condition(pm, graph)):
                miss = failed(m.reason, len(pm.nodes))
            elif (problem := replace_problem(pm.nodes, {(o := pm.roots[0].outputs[0]): o}, ignore_targets=True)) is not None:
                miss = failed(problem, len(pm.nodes))
            else:
                return Match(True, "", {**m.bindings, "pattern": pm})
            if miss.depth > best.depth:
                best = miss
        return best

    def rewrite(self, rw: Rewriter, node: Node, m: Match) -> None:
        pm: PatternMatch = m["pattern"]
        assert node.graph is not None
        b = Builder(node.graph, node.name or node.op_type.lower())
        [new] = self.build(b, pm, m)
        rw.replace(pm.nodes, b.nodes, {pm.roots[0].outputs[0]: new})

    def condition(self, pm: PatternMatch, graph: Graph) -> Match:
        y = pm["prod"].outputs[0]
        if not is_float(y.dtype):
            return failed(f"{y.name!r} is not a float tensor (or its type is unknown)")
        opset = graph.root().opset_imports.get("", graph.root().opset_imports.get("ai.onnx", 1))
        rank = None if y.shape is None else len(y.shape)
        name = self.activation.name
        attrs: dict[str, Any] = {}
        extra: list[Value | None] = []
        act = pm.named.get("act")
        if name == "Clip":
            assert act is not None
            if opset < 11:
                return failed("Clip below opset 11 holds its bounds in attributes; not fused")
            extra = [act.inputs[i] if len(act.inputs) > i else None for i in (1, 2)]
            for v in extra:
                bound = None if v is None else constant_value(graph, v)
                if v is not None and (bound is None or bound.size != 1):
                    return failed(f"the Clip bound {v.name!r} is not a constant scalar")
        elif name == "LeakyRelu":
            assert act is not None
            attrs["activation_alpha"] = float(act.attr("alpha", 0.01))
        elif name == "HardSigmoid":
            assert act is not None
            attrs["activation_alpha"] = float(act.attr("alpha", 0.2))
            attrs["activation_beta"] = float(act.attr("beta", 0.5))
        elif name == "Gelu":
            if act is not None and act.domain:  # com.microsoft.Gelu: the Erf form, float32
                if opset < 20 and y.dtype != T.FLOAT:
                    return failed("com.microsoft.Gelu is float32")
                attrs["activation_approximate"] = b"none"
            elif act is not None:
                attrs["activation_approximate"] = act.attr("approximate", b"none")
            else:  # the Erf form
                k = pm.const("k")
                want = SQRT2 if pm["scale"].op_type == "Div" else 1.0 / SQRT2
                consts = {"k": (k, want), "one": (pm.const("one"), 1.0), "half": (pm.const("half"), 0.5)}
                for key, (arr, value) in consts.items():
                    if not _near(arr, value) or (rank is not None and arr.ndim > rank):
                        return failed(f"the GELU constant {pm[key].name!r} is not the scalar {value:.7g}")
                if opset < 20 and y.dtype != T.FLOAT:
                    return failed("GELU written with Erf is fused for float32 only below opset 20 "
                                  "(the fused op's body has float32 constants)")
                attrs["activation_approximate"] = b"none"
        return matched(attrs=attrs, extra=extra)

    def build(self, b: Builder, pm: PatternMatch, m: Match) -> Sequence[Value]:
        prod = pm["prod"]
        inputs: list[Value | None] = list(prod.inputs) + [None] * (3 - len(prod.inputs))
        inputs += m["extra"]
        while inputs and inputs[-1] is None:
            inputs.pop()
        attrs = {**dict(prod.attributes), **m["attrs"]}
        b.graph.root().opset_imports.setdefault(DOMAIN, 1)
        return [b.op(fused_op_type(self.producer, self.activation.name), inputs, attrs, domain=DOMAIN)]


def _rule(producer: str, suffix: str, activation: Activation, patterns: list[Op]) -> FuseActivationRule:
    cls = type(f"Fuse{producer}{suffix.title().replace('-', '')}", (FuseActivationRule,), {
        "__doc__": f"`{activation.name}({producer}(...))` -> `lepton.{fused_op_type(producer, activation.name)}`.",
        "name": f"{producer.lower()}-{suffix}",
        "op_types": tuple(dict.fromkeys(t for p in patterns for t in p.op_types)),
        "domain": patterns[0].domain,
        "producer": producer,
        "activation": activation,
        "patterns": tuple(Pattern(p) for p in patterns),
    })
    return cls()


def _rules() -> tuple[Rule, ...]:
    return tuple(_rule(producer, suffix, ACTIVATIONS[name], patterns)
                 for producer in PRODUCERS for (suffix, name), patterns in _activation_patterns(producer).items())


@register
@dataclass(frozen=True)
class FuseActivation(RewritePass):
    """Conv/Gemm + activation -> one Lepton-domain fused op (an ONNX function: the original ops)."""

    name: ClassVar[str] = "fuse-activation"
    summary: ClassVar[str] = ("Conv/Gemm (with bias) + Relu, Clip/Relu6, LeakyRelu, HardSigmoid, HardSwish, SiLU or GELU "
                              "-> lepton.FusedConv<Act>/FusedGemm<Act>, ONNX functions of the original ops")
    rules: ClassVar[tuple[Rule, ...]] = _rules()
