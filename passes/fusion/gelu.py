"""`fuse-gelu` and `fuse-bias-gelu`: GELU chains as PyTorch's exporters write them -> one op.

`fuse-gelu` rules (default domain, float32), each the product `x * 0.5 * (1 + f(x))` in any of the three
ways a product of three factors associates (operand order within a Mul is free):

- `gelu-erf`: f = Erf(x / sqrt(2)) or Erf(x * (1/sqrt(2))) (`F.gelu`, Hugging Face "gelu"; TorchScript
  writes `(x * (1 + erf)) * 0.5`, dynamo `x * (0.5 * (1 + erf))`);
- `gelu-tanh`: f = Tanh(sqrt(2/pi) * (x + 0.044715 * x^3)), x^3 as Pow(x, 3) or x * x * x (GPT-2's
  "gelu_new", `F.gelu(approximate="tanh")`).

The fused op is ONNX's `Gelu` (approximate "none"/"tanh") where the model's opset has it (20), else
onnxruntime's contrib op: `com.microsoft.Gelu` (erf) / `com.microsoft.FastGelu` (tanh), which onnxruntime
runs and TVM's frontend converts (to `nn.gelu`; FastGelu to its tanh formula), so every intermediate graph
still runs in onnxruntime. Constants must be the formula's (within 1e-6, float32 rounding) and one element
that does not broadcast `x`; other float types are left alone (onnxruntime's CPU kernels of the contrib
ops are float32).

`fuse-bias-gelu` (`bias-gelu`): `Gelu(Add(x, b))` (either form, erf or tanh, standard or contrib) with `b` a
constant of one value per element of x's last axis -> `com.microsoft.BiasGelu(x, b)` (erf) or
`com.microsoft.FastGelu(x, b)` (tanh). ONNX has no op with the bias: both are contrib ops, converted by TVM
as the add and the GELU (which its fusion makes one kernel with the matmul before it).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import ClassVar

import numpy as np

from lepton_ir import Graph, Node, Value
from lepton_ir.rewriter import Builder

from passes.base import register
from passes.fusion.chains import CONTRIB, float32, is_scalar, opset, rank_of, use_contrib
from passes.pattern import Op, Pattern, PatternMatch, const, op, var
from passes.rewrite import Match, PatternRule, RewritePass, Rule, failed, matched

SQRT2 = math.sqrt(2.0)
TANH_K = math.sqrt(2.0 / math.pi)
TANH_C = 0.044715

#: Default-domain opset from which ONNX has `Gelu`.
GELU_OPSET = 20


def _products(x: Op | object, half: object, f1: Op) -> list[Op]:
    """The three associations of `x * half * f1`."""
    return [op.Mul(op.Mul(x, f1), half), op.Mul(op.Mul(x, half), f1), op.Mul(x, op.Mul(f1, half))]


def _erf_patterns() -> list[Op]:
    out = []
    for scaled in (op.Div(var("x"), const("k"), name="scale"), op.Mul(var("x"), const("k"), name="scale")):
        out += _products(var("x"), const("half"), op.Add(op.Erf(scaled), const("one")))
    return out


def _tanh_patterns() -> list[Op]:
    out = []
    for cube in (op.Pow(var("x"), const("three"), name="cube"), op.Mul(var("x"), op.Mul(var("x"), var("x")), name="cube")):
        inner = op.Mul(op.Add(var("x"), op.Mul(cube, const("c"))), const("k"))
        out += _products(var("x"), const("half"), op.Add(op.Tanh(inner), const("one")))
    return out


class _GeluRule(PatternRule):
    approximate: ClassVar[str]

    def condition(self, pm: PatternMatch, graph: Graph) -> Match:
        x = pm["x"]
        if not float32(x):
            return failed(f"{x.name!r} is not float32 (the contrib ops' CPU kernels are float32; other types are left)")
        rank = rank_of(x)
        want = {"half": 0.5, "one": 1.0}
        if self.approximate == "none":
            want["k"] = SQRT2 if pm["scale"].op_type == "Div" else 1.0 / SQRT2
        else:
            want.update(k=TANH_K, c=TANH_C)
            if pm["cube"].op_type == "Pow":
                want["three"] = 3.0
        for key, value in want.items():
            if not is_scalar(graph, pm[key], value, rank):
                return failed(f"the GELU constant {pm[key].name!r} is not the scalar {value:.7g} (or may broadcast x)")
        return matched()

    def build(self, b: Builder, pm: PatternMatch, m: Match) -> Sequence[Value]:
        x = pm["x"]
        if opset(b.graph) >= GELU_OPSET:
            return [b.op("Gelu", [x], {"approximate": self.approximate}, shape=x.shape)]
        use_contrib(b.graph)
        return [b.op("Gelu" if self.approximate == "none" else "FastGelu", [x], domain=CONTRIB, shape=x.shape)]


def _rule(approximate: str, pattern: Op, i: int) -> Rule:
    form = "erf" if approximate == "none" else "tanh"
    cls = type(f"Gelu{form.title()}{i}", (_GeluRule,), {
        "__doc__": f"GELU ({form} form, association {i}) -> Gelu / com.microsoft.{'Gelu' if form == 'erf' else 'FastGelu'}.",
        "name": f"gelu-{form}", "approximate": approximate, "pattern": Pattern(pattern)})
    return cls()


@register
@dataclass(frozen=True)
class FuseGelu(RewritePass):
    """GELU chains (erf and tanh forms) -> ONNX Gelu (opset >= 20) or com.microsoft Gelu / FastGelu."""

    name: ClassVar[str] = "fuse-gelu"
    summary: ClassVar[str] = "x*0.5*(1+erf(x/sqrt2)) and the tanh form -> Gelu (opset 20) or com.microsoft Gelu/FastGelu"
    repeat: ClassVar[bool] = False  # see passes.fusion.chains: after cleanup has settled the shapes
    rules: ClassVar[tuple[Rule, ...]] = tuple(
        [_rule("none", p, i) for i, p in enumerate(_erf_patterns())]
        + [_rule("tanh", p, i) for i, p in enumerate(_tanh_patterns())])


# ----- bias + GELU ----------------------------------------------------------------------------------------------


class _BiasGelu(PatternRule):
    name = "bias-gelu"

    def condition(self, pm: PatternMatch, graph: Graph) -> Match:
        g = pm["gelu"]
        if g.domain == "" and g.attr("approximate", b"none") not in (b"none", b"tanh", "none", "tanh"):
            return failed(f"{g.name!r} has an unknown approximate attribute")
        if g.domain == CONTRIB and g.op_type == "FastGelu" and len(g.inputs) > 1 and g.inputs[1] is not None:
            return failed(f"{g.name!r} already has a bias")
        x = pm["x"]
        shape = x.shape
        if not float32(x) or shape is None or not shape or not isinstance(shape[-1], int):
            return failed(f"{x.name!r} is not float32 with a known last dim")
        bias = pm.const("b")
        if bias.dtype != np.float32 or bias.size != shape[-1] or bias.ndim > len(shape) or \
                any(d != 1 for d in bias.shape[:-1]) or (bias.ndim and bias.shape[-1] != shape[-1]):
            return failed(f"the added constant {pm['b'].name!r} is not one float32 value per element of the last axis")
        return matched(tanh=_is_tanh(g))

    def build(self, b: Builder, pm: PatternMatch, m: Match) -> Sequence[Value]:
        x = pm["x"]
        bias = pm["b"]
        if pm.const("b").ndim != 1:
            bias = b.const(pm.const("b").reshape(-1), "bias")
        use_contrib(b.graph)
        return [b.op("FastGelu" if m["tanh"] else "BiasGelu", [x, bias], domain=CONTRIB, shape=pm["gelu"].outputs[0].shape)]


def _is_tanh(node: Node) -> bool:
    """Whether a Gelu (standard or contrib) or FastGelu node is the tanh form."""
    if node.op_type == "FastGelu":
        return True
    a = node.attr("approximate", b"none")
    return (a.decode() if isinstance(a, bytes) else a) == "tanh"


def _bias_rule(op_type: str, domain: str) -> Rule:
    pattern = Pattern(op[op_type](op.Add(var("x"), const("b")), name="gelu", domain=domain))
    cls = type(f"BiasGelu{op_type}{'Contrib' if domain else ''}", (_BiasGelu,), {
        "__doc__": f"{domain or 'onnx'}.{op_type}(x + b) -> com.microsoft BiasGelu/FastGelu(x, b).", "pattern": pattern})
    return cls()


@register
@dataclass(frozen=True)
class FuseBiasGelu(RewritePass):
    """Gelu(x + b), b one value per channel of the last axis -> com.microsoft BiasGelu / FastGelu(x, b)."""

    name: ClassVar[str] = "fuse-bias-gelu"
    summary: ClassVar[str] = "Gelu(x + bias) -> com.microsoft BiasGelu (erf) / FastGelu (tanh) with the bias"
    repeat: ClassVar[bool] = False  # see passes.fusion.chains: after cleanup has settled the shapes
    rules: ClassVar[tuple[Rule, ...]] = (_bias_rule("Gelu", ""), _bias_rule("Gelu", CONTRIB), _bias_rule("FastGelu", CONTRIB))
