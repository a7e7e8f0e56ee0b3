"""`quantize`: static int8 quantization in QDQ form, calibrated on user data, dynamic int8, or weight-only int8/int4.

The pass finds the sites (`passes.quantize.sites`), calibrates the activations they read
(`passes.quantize.calibrate`), fits the accuracy budget when one is given (`passes.quantize.budget`),
and rewrites the sites into QDQ form. Everything left float is listed in the pass's notes with why.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import ClassVar, Literal, get_args

import lepton_ir
from lepton_ir import Graph, UserError

from passes.base import Pass, PassContext, PassResult, register
from passes.quantize.budget import Budget, fit
from passes.quantize.calibrate import CalibrationError, Method, calibrate
from passes.quantize.params import ActivationType
from passes.quantize.sites import ALREADY, Activations, Scope, Weights, activation_names, apply, find_sites


#: weight-int4's block. Measured (bench.quantize): 64 keeps the weights at 0.14x of float32 and cosine to fp32 within
#: 0.001 of block 32 (0.16x); onnxruntime's MatMulNBits quantizer defaults to 128 (0.135x, a little less accurate).
DEFAULT_BLOCK = 64
Mode = Literal["int8", "dynamic", "weight-int8", "weight-int4"]
#: The quantization modes (`compile(quantize=)` takes the same).
MODES: tuple[str, ...] = get_args(Mode)
#: Opset and IR version of int4 and blocked DequantizeLinear.
INT4_OPSET, INT4_IR = 21, 10


@register
@dataclass(frozen=True)
class Quantize(Pass):
    """Static int8 QDQ quantization of Conv/ConvTranspose/Gemm/MatMul (fused ones included), or with
    `mode=dynamic` dynamic int8 of Gemm/MatMul with constant weights (activations quantized per call), or with
    `mode=weight-int8` their constant weights only (activations stay float: a model a quarter the size), or with
    `mode=weight-int4` those weights as int4 in blocks of `block_size` along the reduction axis (opset 21: int4 and
    blocked DequantizeLinear; an eighth of the size plus a float32 scale per block).

    Data in `ctx.data`: `calibration` (an iterable of feed dicts, one batch each; needed in int8 mode when there is
    something to quantize), `accuracy_budget` (a `Budget` or its text, e.g. `cos=0.99`) with `validation`
    (a sequence of feed dicts to judge it on), and `progress` (a callable taking a message)."""

    name: ClassVar[str] = "quantize"
    summary: ClassVar[str] = ("int8 quantization (QDQ): static (calibrated) of Conv/Gemm/MatMul, dynamic of Gemm/MatMul, "
                              "or of their weights only (int8, or int4 in blocks)")
    repeat: ClassVar[bool] = False

    mode: Mode = "int8"
    activations: ActivationType = "uint8"
    method: Method = "minmax"
    percentile: float = 99.99
    exclude: tuple[str, ...] = ()
    block_size: int = DEFAULT_BLOCK

    def run(self, graph: Graph, ctx: PassContext) -> PassResult:
        opset = graph.opset_imports.get("", 1)
        if opset < 10 or (self.mode == "dynamic" and opset < 11):
            raise UserError(f"quantize{{mode={self.mode}}} needs opset >= {11 if self.mode == 'dynamic' else 10} "
                            f"(QuantizeLinear, DynamicQuantizeLinear); the model is at opset {opset}: convert it with "
                            "onnx.version_converter first")
        if self.mode == "weight-int4" and opset < INT4_OPSET:
            raise UserError(f"quantize{{mode=weight-int4}} needs opset >= {INT4_OPSET} (int4, blocked DequantizeLinear); the "
                            f"model is at opset {opset}: lepton.compile(quantize=\"weight-int4\") converts it, or convert it "
                            "with onnx.version_converter first")
        if not 50.0 < self.percentile <= 100.0:
            raise UserError(f"quantize: percentile={self.percentile:g} must be in (50, 100]")
        if self.block_size < 2:
            raise UserError(f"quantize: block_size={self.block_size} must be at least 2 (32, 64 or 128 are usual)")
        scope: Scope = {"int8": "static", "dynamic": "dynamic", "weight-int8": "weights", "weight-int4": "weights"}[self.mode]
        weights = Weights(4, self.block_size) if self.mode == "weight-int4" else Weights()
        sites, skipped = find_sites(graph, self.exclude, scope=scope)
        already = [name for name, why in skipped.items() if why == ALREADY]
        for name in already:
            del skipped[name]
        counts = {"already_quantized": len(already)} if already else {}
        if not sites:
            return PassResult(False, {"sites": 0, "left_float": len(skipped), **counts}, notes=_notes(skipped, already))
        progress = ctx.data.get("progress")
        if scope == "weights":
            activations = Activations({})  # no site reads an activation
        elif scope == "dynamic":
            activations = Activations(None)
        else:
            data = ctx.data.get("calibration")
            if data is None:
                raise CalibrationError("quantize{mode=int8} needs calibration data: lepton.compile(..., calibration=...) "
                                       "or `lepton compile --calibration data.npz` (a dict of arrays by input name per "
                                       "batch); quantize{mode=dynamic} needs none")
            observers = calibrate(lepton_ir.to_onnx(graph), activation_names(sites), data,
                                  histogram=self.method != "minmax", progress=progress)
            activations = Activations({n: o.range(self.method, self.percentile) for n, o in observers.items()},
                                      self.activations)
        notes: Sequence[str] = ()
        budget = ctx.data.get("accuracy_budget")
        if budget is not None:
            budget = Budget.parse(budget) if isinstance(budget, str) else budget
            sites, returned, notes = fit(graph, sites, activations, budget, ctx.data.get("validation") or (),
                                         self.exclude, scope, progress, weights)
            skipped.update(returned)
        stats = apply(graph, sites, activations, weights)
        if weights.bits == 4 and stats["sites"]:
            graph.ir_version = max(graph.ir_version, INT4_IR)
        stats["left_float"] = len(skipped)
        stats.update(counts)
        return PassResult(stats["sites"] > 0, stats, notes=(*notes, *_notes(skipped, already)))


def _notes(skipped: dict[str, str], already: list[str]) -> tuple[str, ...]:
    before = (f"{len(already)} node(s) were quantized before (they read a DequantizeLinear) and are left as they are",)
    return tuple(f"{name} stays float: {why}" for name, why in skipped.items()) + (before if already else ())
