"""Per-pass bisection: which pass (or the code generator) changed what the model computes?

`bisect(model, target)` runs the target's pipeline (or `passes`) with an instrument that, after
every pass run that modified the graph, runs the graph in onnxruntime on the same inputs and
compares each output with onnxruntime on the original model under the verification policy
(DESIGN.md §6). The first run out of tolerance is named, with its worst output and error.
Then the final optimized graph is built with TVM and, where the target runs here, the module is
compared with onnxruntime on that optimized graph: a mismatch there is a codegen bug, not a
pass bug.

Invariant: inputs are drawn once (or given) and every step sees exactly those inputs.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

import lepton_ir
import targets
from lepton.codegen import build, to_relax, unsupported_nodes
from lepton.codegen.lowering import with_lowering
from lepton.codegen.provenance import Provenance
from lepton.codegen.weights import load_weights
from lepton.compiler import import_model
from lepton.input_shapes import InputShapes, pin_input_shapes
from lepton.threads import use_available_cpus
from lepton.verify import Collector, Policy, Reference, VerifyReport, choose_policy, resolve_policy
from lepton.verify.inputs import InputsLike, Samples
from lepton_ir import Graph
from lepton_ir.types import dtype_name
from passes import Pass, PassContext, PassManager, PassRecord
from passes.base import parse_pipeline
from passes.ort import run_model


@dataclass(frozen=True)
class Step:
    """The graph after one pass run (or after import, `index` 0), checked against onnxruntime on the original."""

    index: int
    name: str
    iteration: int
    nodes: int
    ok: bool
    worst_output: str = ""
    max_abs_err: float = 0.0
    max_rel_err: float = 0.0
    problem: str = ""

    def to_json(self) -> dict[str, Any]:
        return dict(self.__dict__)


@dataclass
class BisectReport:
    """Every checked step, the first bad one, and the codegen check (None when the module cannot run here)."""

    target: str
    policy: str
    steps: list[Step]
    codegen: VerifyReport | None = None
    codegen_note: str = ""
    notes: list[str] = field(default_factory=list)

    @property
    def first_bad(self) -> Step | None:
        return next((s for s in self.steps if not s.ok), None)

    @property
    def ok(self) -> bool:
        return self.first_bad is None and (self.codegen is None or self.codegen.ok)

    def verdict(self) -> str:
        """One line: which pass or stage broke the outputs, or that none did."""
        bad = self.first_bad
        if bad is not None:
            where = "import/input-shape pinning" if bad.index == 0 else f"pass {bad.name!r} (run {bad.index}, iteration {bad.iteration})"
            err = bad.problem or f"max abs err {bad.max_abs_err:.3g}, max rel err {bad.max_rel_err:.3g}"
            return f"pass bug: {where} changed output {bad.worst_output!r} beyond {self.policy} tolerance ({err})"
        if self.codegen is not None and not self.codegen.ok:
            return "codegen bug: every pass kept the outputs, but TVM's module differs from the optimized graph: " + \
                self.codegen.summary().replace("\n", "; ")
        if self.codegen is None:
            return f"every pass kept the outputs within {self.policy} tolerance; codegen not checked ({self.codegen_note})"
        return f"no mismatch: every pass and the compiled module agree with onnxruntime within {self.policy} tolerance"

    def to_json(self) -> dict[str, Any]:
        return {
            "target": self.target, "policy": self.policy, "ok": self.ok, "verdict": self.verdict(),
            "first_bad": None if self.first_bad is None else self.first_bad.to_json(),
            "steps": [s.to_json() for s in self.steps],
            "codegen": None if self.codegen is None else self.codegen.to_json(),
            "codegen_note": self.codegen_note, "notes": self.notes,
        }

    def table(self) -> Any:
        from rich.table import Table

        table = Table(title=f"bisect ({self.target}, {self.policy} tolerance): graph after each changing pass vs onnxruntime",
                      title_justify="left")
        for col in ("#", "pass", "iter", "nodes", "worst output", "max abs err", "max rel err", "result"):
            table.add_column(col, justify="right" if col in ("#", "iter", "nodes", "max abs err", "max rel err") else "left")
        for s in self.steps:
            result = "[green]ok[/]" if s.ok else f"[red]FAIL[/] {s.problem}"
            table.add_row(str(s.index), s.name, str(s.iteration), str(s.nodes), s.worst_output,
                          f"{s.max_abs_err:.3g}", f"{s.max_rel_err:.3g}", result)
        return table


class _CheckEachPass:
    """Pass-manager instrument: after each modifying pass run, compare the graph's outputs with the reference."""

    def __init__(self, feeds: dict[str, np.ndarray], expected: dict[str, np.ndarray], policy: Policy,
                 progress: Callable[[str], None]) -> None:
        self.feeds, self.expected, self.policy, self.progress = feeds, expected, policy, progress
        self.steps: list[Step] = []

    def check(self, graph: Graph, name: str, iteration: int) -> None:
        index = len(self.steps)
        self.progress(f"checking the graph after {name}")
        try:
            actual = run_model(lepton_ir.to_onnx(graph), self.feeds)
        except Exception as e:  # noqa: BLE001 - a pass that breaks the graph is a finding, not a crash
            self.steps.append(Step(index, name, iteration, len(graph), False, problem=f"onnxruntime cannot run it: {str(e)[:300]}"))
            return
        self.steps.append(_step(index, name, iteration, len(graph), actual, self.expected, self.policy))

    def after_pass(self, p: Pass, graph: Graph, ctx: PassContext, record: PassRecord) -> None:
        if record.modified:
            self.check(graph, p.name, record.iteration)


def _step(index: int, name: str, iteration: int, nodes: int, actual: dict[str, np.ndarray],
          expected: dict[str, np.ndarray], policy: Policy) -> Step:
    collector = Collector(policy)
    collector.add(actual, expected)
    report = collector.report("", "")
    worst = max(report.outputs, key=lambda o: (not o.ok, o.max_rel_err if o.max_rel_err == o.max_rel_err else 0.0))
    return Step(index, name, iteration, nodes, report.ok, worst.name, worst.max_abs_err, worst.max_rel_err,
                "" if report.ok else worst.reason)


def bisect(
    model: Any,
    target: str | os.PathLike[str] | targets.Target = "auto",
    *,
    input_shapes: InputShapes | None = None,
    passes: str | Sequence[Pass] | None = None,
    inputs: InputsLike | None = None,
    seed: int = 0,
    policy: Policy | str | None = None,
    progress: Callable[[str], None] | None = None,
    example_inputs: Sequence[Any] | None = None,
) -> BisectReport:
    """Find the first pass that changes the model's outputs beyond tolerance, else check the codegen."""
    say = progress or (lambda _m: None)
    tgt = targets.resolve(target)
    graph = import_model(model, example_inputs)
    reference = Reference(lepton_ir.to_onnx(graph))
    if input_shapes:
        pin_input_shapes(graph, input_shapes)
    feeds = Samples(graph, inputs, 1, seed).first({v.name: v.shape for v in graph.inputs})
    expected = reference.run(feeds)
    chosen = resolve_policy(policy) if policy is not None else choose_policy(dtype_name(v.dtype) for v in graph.outputs)

    checker = _CheckEachPass(feeds, expected, chosen, say)
    checker.check(graph, "import", 0)
    pipeline = parse_pipeline(passes if passes is not None else tgt.pipeline) if isinstance(passes, str | None) else list(passes)
    if checker.steps[0].ok:
        PassManager(with_lowering(pipeline), instruments=[checker]).run(graph)
    report = BisectReport(tgt.name, chosen.name, checker.steps)
    if report.first_bad is not None:
        return report
    report.codegen, report.codegen_note = _check_codegen(graph, tgt, feeds, chosen, say)
    return report


def _check_codegen(graph: Graph, tgt: targets.Target, feeds: dict[str, np.ndarray], policy: Policy,
                   say: Callable[[str], None]) -> tuple[VerifyReport | None, str]:
    """Build the optimized graph and compare the module with onnxruntime on that same graph."""
    missing = unsupported_nodes(graph)
    if missing:
        return None, f"{len(missing)} node(s) the target cannot compile, e.g. {missing[0]}"
    if not tgt.runs_here():
        return None, f"{tgt.name} modules do not run on this machine"
    say("building the optimized graph with TVM")
    provenance = Provenance()
    executable = build(to_relax(graph, provenance), tgt, provenance=provenance)
    say("running the module")
    actual = _run_executable(executable, graph, feeds, tgt)
    optimized = run_model(lepton_ir.to_onnx(graph), feeds)
    collector = Collector(policy)
    collector.add(actual, optimized)
    return collector.report("", tgt.name), ""


def _run_executable(executable: Any, graph: Graph, feeds: dict[str, np.ndarray], tgt: targets.Target) -> dict[str, np.ndarray]:
    import tvm
    from tvm import relax

    dev = tvm.device(tgt.device, 0)
    vm = relax.VirtualMachine(executable, dev)
    use_available_cpus()
    out = vm["main"](*[tvm.runtime.tensor(feeds[v.name], dev) for v in graph.inputs], *load_weights(vm))
    flat: list[Any] = []
    stack = [out]
    while stack:
        item = stack.pop(0)
        if isinstance(item, tvm.runtime.Tensor):
            flat.append(item.numpy())
        else:
            stack[:0] = list(item)
    return {v.name: a for v, a in zip(graph.outputs, flat, strict=True)}
