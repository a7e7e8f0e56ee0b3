"""The accuracy budget: return the most sensitive quantized layers to float until the budget holds.

`fit` judges the quantized graph against the float graph on validation feeds, both in onnxruntime.
When the budget does not hold it ranks every site by the metric reached with that site alone left
float (per-layer sensitivity), then returns sites to float in that order, one at a time, until it
holds (Intel Neural Compressor's single-op fallback ranked by impact, then accumulated). With every
site float the graph is the float graph, so the loop always ends.

A budget is one or more `(metric, minimum)` terms; its score is the smallest `value / minimum`, so it
holds at a score of 1 or more and sites are ranked by the score they reach. Metrics (higher is better,
in [0, 1] for the built-in ones):
- `cosine`: the smallest cosine similarity of any float output of any validation feed (flattened);
- `top1`: the fraction of rows of classifier-shaped outputs (rank >= 2, last axis > 1) whose argmax agrees;
- a callable `(reference outputs, quantized outputs) -> float`, each a list (one per feed) of dicts.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import onnx

import lepton_ir
from lepton_ir import Graph, UserError
from passes.ort import session
from passes.quantize.sites import Activations, Scope, Site, Weights, apply, find_sites

Outputs = list[dict[str, np.ndarray]]
Metric = Callable[[Outputs, Outputs], float]


@dataclass(frozen=True)
class Budget:
    """Keep every `(metric, minimum)` of `terms` at or above its minimum; a metric is a name in `METRICS` or
    a callable. `score` is the smallest `value / minimum`: the budget holds when it is >= 1."""

    terms: tuple[tuple[str | Metric, float], ...]

    @classmethod
    def parse(cls, text: str) -> Budget:
        """`cos=0.99`, `cosine=0.995`, `top1=0.98`, or several joined by commas."""
        terms = []
        for part in text.split(","):
            m = re.fullmatch(r"\s*(cos|cosine|top1|top-1)\s*=\s*([0-9.eE+-]+)\s*", part)
            if not m:
                raise UserError(f"cannot read the accuracy budget {text!r}; write cos=0.99, top1=0.99 or both: cos=0.99,top1=0.98")
            value = float(m.group(2))
            if not 0.0 < value <= 1.0:
                raise UserError(f"the accuracy budget {text!r}: {part.strip()} must be in (0, 1]")
            terms.append(("cosine" if m.group(1).startswith("cos") else "top1", value))
        return cls(tuple(terms))

    def __and__(self, other: Budget) -> Budget:
        return Budget(self.terms + other.terms)

    def describe(self) -> str:
        return ", ".join(f"{_name(metric)} >= {minimum:g}" for metric, minimum in self.terms)

    def values(self, reference: Outputs, quantized: Outputs) -> list[float]:
        """Each term's metric value, in `terms` order."""
        out = []
        for metric, _ in self.terms:
            if isinstance(metric, str) and metric not in METRICS:
                raise UserError(f"unknown accuracy metric {metric!r}; use one of {', '.join(METRICS)} or a callable")
            fn = METRICS[metric] if isinstance(metric, str) else metric
            out.append(float(fn(reference, quantized)))
        return out

    def score(self, reference: Outputs, quantized: Outputs) -> float:
        return min(v / minimum for v, (_, minimum) in zip(self.values(reference, quantized), self.terms, strict=True))


def _name(metric: str | Metric) -> str:
    return metric if isinstance(metric, str) else getattr(metric, "__name__", "metric")


def cosine(reference: Outputs, quantized: Outputs) -> float:
    """The worst cosine similarity over feeds and float outputs (1.0 when both are zero)."""
    worst = 1.0
    for ref, got in zip(reference, quantized, strict=True):
        for name, e in ref.items():
            if e.dtype.kind != "f":
                continue
            a, b = got[name].astype(np.float64).ravel(), e.astype(np.float64).ravel()
            na, nb = np.linalg.norm(a), np.linalg.norm(b)
            worst = min(worst, 1.0 if na == nb == 0 else float(a @ b / (na * nb)) if na and nb else 0.0)
    return worst


def top1(reference: Outputs, quantized: Outputs) -> float:
    """Argmax agreement over the rows of classifier-shaped float outputs (1.0 when there are none)."""
    agree = rows = 0
    for ref, got in zip(reference, quantized, strict=True):
        for name, e in ref.items():
            if e.dtype.kind != "f" or e.ndim < 2 or e.shape[-1] < 2:
                continue
            agree += int((e.argmax(-1) == got[name].argmax(-1)).sum())
            rows += e.size // e.shape[-1]
    return agree / rows if rows else 1.0


METRICS: dict[str, Metric] = {"cosine": cosine, "top1": top1}


def fit(
    graph: Graph,
    sites: Sequence[Site],
    activations: Activations,
    budget: Budget,
    validation: Sequence[Mapping[str, np.ndarray]],
    exclude: Sequence[str] = (),
    scope: Scope = "static",
    progress: Callable[[str], None] | None = None,
    weights: Weights = Weights(),
) -> tuple[list[Site], dict[str, str], list[str]]:
    """The sites to quantize, the ones returned to float (name -> why), and notes on what was reached.
    `sites` are `find_sites(graph, exclude, scope=scope)`, in its order."""
    if not validation:
        raise UserError("the accuracy budget needs validation data: give validation= (a list of feed dicts)")
    say = progress or (lambda _m: None)
    reference = _outputs(lepton_ir.to_onnx(graph), validation)
    names = [s.node.name for s in sites]

    def trial(left_float: frozenset[int]) -> float:
        copy = lepton_ir.load(lepton_ir.to_onnx(graph))
        copy_sites, _ = find_sites(copy, exclude, scope=scope)
        apply(copy, [s for k, s in enumerate(copy_sites) if k not in left_float], activations, weights)
        return budget.score(reference, _outputs(lepton_ir.to_onnx(copy), validation))

    full = trial(frozenset())
    if full >= 1.0:
        return list(sites), {}, [f"accuracy budget {budget.describe()} holds with all {len(sites)} layer(s) "
                                 f"quantized (score {full:.4f}, 1 = at the budget)"]
    alone = {}
    for k in range(len(sites)):
        say(f"accuracy budget: sensitivity of layer {k + 1}/{len(sites)}")
        alone[k] = trial(frozenset({k}))
    ranked = sorted(alone, key=lambda k: (-alone[k], k))
    returned: list[int] = []
    reached = full
    for k in ranked:
        returned.append(k)
        say(f"accuracy budget: {len(returned)} layer(s) back to float")
        reached = trial(frozenset(returned))
        if reached >= 1.0:
            break
    why = {names[k]: f"returned to float by the accuracy budget (alone it raised the score from {full:.4f} to "
                     f"{alone[k]:.4f})" for k in returned}
    notes = [f"accuracy budget {budget.describe()}: score {full:.4f} with every layer quantized, {reached:.4f} with "
             f"{len(returned)} of {len(sites)} back to float (1 = at the budget)"]
    kept = [s for k, s in enumerate(sites) if k not in set(returned)]
    return kept, why, notes


def _outputs(model: onnx.ModelProto, feeds: Sequence[Mapping[str, np.ndarray]]) -> Outputs:
    outs = [o.name for o in model.graph.output]
    run = session(model, outs)
    inputs = [i.name for i in model.graph.input]
    return [run({n: f[n] for n in inputs if n in f}) for f in feeds]
