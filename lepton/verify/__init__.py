"""The verification harness (DESIGN.md §6): does a compiled module compute what onnxruntime computes
on the original model?

    report = lepton.verify("model.onnx", compiled, inputs=validation_set)   # or samples=8 synthesized
    report.ok; print(report.summary()); console.print(report.table()); report.to_json()

Pieces: `inputs` (synthesis and given samples), `metrics` (errors per output), `policy` (when an
output passes), `report` (the per-output verdict over all samples). `lepton.verify` is this package;
calling it calls `verify` (the package and its main function share the name the issue asks for).
"""

from __future__ import annotations

import os
import sys
import types
from collections.abc import Iterable, Iterator, Mapping
from typing import TYPE_CHECKING, Any

import numpy as np
import onnx

import lepton_ir
from lepton.errors import InputError
from lepton.module import CompiledModule
from lepton.verify.inputs import InputsLike, Samples, SynthesisError, synthesize
from lepton.verify.metrics import Metrics
from lepton.verify.policy import FP16, FP32, INT8, POLICIES, PRUNED, Policy, choose_policy, resolve_policy
from lepton.verify.report import Collector, OutputCheck, VerifyReport
from lepton_ir import Graph, UnsupportedModelError, UserError

if TYPE_CHECKING:
    from lepton.compiler import Compiled

__all__ = [
    "FP16", "FP32", "INT8", "POLICIES", "PRUNED", "InputsLike", "Metrics", "OutputCheck", "Policy", "Reference",
    "Samples", "SynthesisError", "VerifyReport", "check_cases", "choose_policy", "compare", "live_cases",
    "synthesize", "verify",
]

Case = tuple[Mapping[str, np.ndarray], Mapping[str, np.ndarray]]  # (inputs, expected outputs)


def verify(
    model: str | os.PathLike[str] | bytes | onnx.ModelProto | Graph,
    compiled: Compiled | CompiledModule,
    inputs: InputsLike | None = None,
    samples: int = 1,
    seed: int = 0,
    policy: Policy | str | None = None,
) -> VerifyReport:
    """Run `compiled` and onnxruntime (on `model`, the original) on the same inputs and judge every output.

    `inputs`: None (synthesize `samples` samples, seeds `seed`...), a dict of arrays by input name, the path
    of an .npz file, or an iterable of those (every sample is run). `policy`: a Policy or a name in
    POLICIES; None takes the artifact's (chosen from the model's output dtypes when it was compiled).
    """
    module = _module(compiled)
    graph = lepton_ir.load(lepton_ir.to_onnx(model)) if isinstance(model, Graph) else lepton_ir.load(model)
    chosen = module.manifest.policy if policy is None else resolve_policy(policy)
    source = Samples(graph, inputs, samples, seed)
    shapes = {t.name: t.shape for t in module.inputs}
    return check_cases(module, live_cases(Reference(lepton_ir.to_onnx(graph)), source.all(shapes)), chosen)


def check_cases(module: CompiledModule, cases: Iterable[Case], policy: Policy) -> VerifyReport:
    """Run `module` on each case's inputs and compare with the case's expected outputs under `policy`."""
    collector = Collector(policy)
    for feeds, expected in cases:
        collector.add(module.run(feeds), expected)
    return collector.report(str(module.path), str(module.target.get("name", "?")))


def live_cases(reference: Reference, feeds: Iterable[Mapping[str, np.ndarray]], start: int = 0) -> Iterator[Case]:
    """Each sample with onnxruntime's outputs for it, computed as the sample is reached (numbered from `start`)."""
    for k, f in enumerate(feeds, start):
        yield f, reference.run(f, k)


def compare(actual: np.ndarray, expected: np.ndarray, policy: Policy = FP32, name: str = "output") -> OutputCheck:
    """One array against its expected value under `policy` (the check `verify` makes per output and sample)."""
    collector = Collector(policy)
    collector.add({name: actual}, {name: expected})
    return collector.report("", "").outputs[0]


class Reference:
    """onnxruntime on the original model: one session, made on first use and reused for every sample
    (CPU, graph optimizations off, one thread: the settings of `passes.ort.run_model`)."""

    def __init__(self, model: onnx.ModelProto) -> None:
        self._model = model
        self._session: Any = None

    def run(self, feeds: Mapping[str, np.ndarray], sample: int = 0) -> dict[str, np.ndarray]:
        """All outputs by name; UserError when onnxruntime rejects the model or the sample."""
        session = self._session or self._load()
        names = [o.name for o in session.get_outputs()]
        try:
            return dict(zip(names, session.run(names, dict(feeds)), strict=True))
        except Exception as e:  # noqa: BLE001 - onnxruntime raises its own exception types
            raise InputError(f"onnxruntime cannot run the original model on input sample {sample}: {e}") from None

    def _load(self) -> Any:
        import onnxruntime as ort

        opts = ort.SessionOptions()
        opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
        opts.intra_op_num_threads = 1
        opts.inter_op_num_threads = 1
        opts.log_severity_level = 3
        try:
            self._session = ort.InferenceSession(self._model.SerializeToString(), opts, providers=["CPUExecutionProvider"])
        except Exception as e:  # noqa: BLE001
            raise UnsupportedModelError(f"onnxruntime (the reference) cannot load the model: {e}") from None
        return self._session


def _module(compiled: Compiled | CompiledModule) -> CompiledModule:
    module = getattr(compiled, "module", compiled)
    if isinstance(module, CompiledModule):
        return module
    if module is None:
        path = getattr(compiled, "path", "?")
        raise UserError(f"the module in {path} was built for a target that does not run on this machine; "
                        f"run `lepton verify {path}` on the device")
    raise UserError(f"verify() takes a lepton.Compiled or a loaded module (lepton.load), not a {type(compiled).__name__}")


class _CallableModule(types.ModuleType):
    """`lepton.verify(...)` is `lepton.verify.verify(...)`: importing any submodule makes the package an
    attribute of `lepton`, so the package itself must be the callable."""

    __call__ = staticmethod(verify)


sys.modules[__name__].__class__ = _CallableModule
