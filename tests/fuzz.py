"""Differential fuzzing: random ONNX models through the whole x86 pipeline, against onnxruntime.

    .venv/bin/python tests/fuzz.py --minutes 10            # `make fuzz` (MINUTES=10)
    .venv/bin/python tests/fuzz.py --reproduce fuzz-failures/<id>

Each example is a model from `strategies.onnx_models` (Hypothesis drives the generation), handed
to the compiler in one of four `VARIANTS`: as drawn (static shapes), drawn with value_info for
every intermediate value, with every input/output dim made symbolic and pinned back through
`input_shapes=`, or made symbolic and left so. It is compiled with
`lepton.compile(model, "x86", use_cache=False)`, which verifies the module against onnxruntime on
Lepton's synthesized inputs (on the fuzzer's inputs for the symbolic variants), and the module is
then run on `strategies.random_inputs(model)` and compared with onnxruntime
(`passes.ort.run_model`) under the fp32 policy of DESIGN.md section 6 (`lepton.verify.compare`:
rtol 1e-4, atol 1e-5, integers exact, NaN/Inf at the same positions).
`check()` sorts the result into one `Outcome` category:

    ok           compiled, verified, and matched on the fuzzer's own inputs
    unsupported  a clean `UserError` (e.g. `UnsupportedOpsError` for an op the target cannot take,
                 `ConversionError` naming the node TVM's frontend refused), or the documented
                 "TVM may need them static: pin them" build error of a model with symbolic dims:
                 not a bug; counted by reason, one example of each kept under <out>/unsupported/
    mismatch     wrong results: `VerificationError`, or a mismatch on the fuzzer's own inputs (or
                 the module wrote into the caller's input arrays)
    internal     an `InternalError` subclass, a raw TVM or Python exception (compile or run)
    crash        the worker process died (segfault, abort)
    hang         no answer within `--timeout` seconds (default 60; checks normally take < 5 s)
    invalid      onnxruntime itself rejects the model or the inputs (minimizer candidates only)

mismatch, internal, crash and hang are bugs. The fuzzing loop runs checks in a worker process
(restarted after a crash or a hang, and every `RECYCLE` checks), so a TVM segfault is a finding,
not the end of the run. Every failing model is minimized (`minimize`: a greedy delta-debugging
reduction on the ONNX graph, keeping the failure's category and error class; a hang with a
30 s limit per step) and saved as
`fuzz-failures/<id>/` with `model.onnx`, `inputs.npz`, `original.onnx` (+ `original_inputs.npz`),
`outcome.json` and a `README.txt` whose last line reproduces it; `fuzz-failures/summary.json`
holds the run's figures. `<id>` is a hash of the minimized model, so one bug seen many times
lands in few folders; the summary also groups failures by category, error and the op types left
after minimization. The slowest checks' models are kept under <out>/slow/.

The minimizer cuts the graph at intermediate values and feeds each cut value with the value it
had in the original model (onnxruntime, on the failing inputs), so a reduced model computes
exactly what that part of the original computed: the reduction cannot turn a real mismatch into
an ill-conditioned one.

The worker sets `LEPTON_DEBUG=1` (as tests/conftest.py does), so the IR verifier runs after every
pass: a pass that breaks an IR invariant is an `internal` finding even when the outputs survive.
This module imports TVM only inside `check` (the worker); the parent process draws models, runs
onnxruntime for the minimizer and writes files.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import hashlib
import json
import multiprocessing
import os
import re
import shutil
import sys
import tempfile
import time
import traceback
from collections import Counter
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import onnx
from onnx import helper, numpy_helper

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from strategies import onnx_models, random_inputs  # noqa: E402

Feeds = dict[str, np.ndarray]

BUGS = ("mismatch", "internal", "crash", "hang")
CATEGORIES = ("ok", "unsupported", *BUGS, "invalid")
TARGET = "x86"
SLOWEST = 5  # the slowest checks' models are kept under <out>/slow/ (compile time is worth watching too)
RECYCLE = 300
HANG_TIMEOUT = 30.0  # seconds per check while minimizing a hang  # checks per worker process before it is replaced (bounds memory growth)
REPRO = "{python} tests/fuzz.py --reproduce {dir}"
#: What `lepton.compile` appends to a TVM build failure when the model keeps symbolic input dims.
PIN_HINT = "TVM may need them static: pin them"


# ---- the differential check ------------------------------------------------------------------


@dataclass
class Outcome:
    """What one model did. `feeds`: the inputs that show a mismatch (the witness), else None."""

    category: str
    error: str = ""
    message: str = ""
    feeds: Feeds | None = field(default=None, repr=False)
    seconds: float = 0.0

    @property
    def bug(self) -> bool:
        return self.category in BUGS

    @property
    def signature(self) -> str:
        """Category, error class and (errors only) the message's first line with names and numbers blurred."""
        if self.category in ("mismatch", "crash", "hang"):  # their messages name outputs, not causes
            return f"{self.category}:{self.error}"
        first = self.message.strip().splitlines()[0] if self.message.strip() else ""
        first = re.sub(r"'[^']*'|\"[^\"]*\"", "'…'", first)
        first = re.sub(r"\d+", "N", first)[:120]
        return f"{self.category}:{self.error}:{first}"

    def same_failure(self, other: Outcome) -> bool:
        """The minimizer's criterion: the same kind of bug (category and error class)."""
        return self.bug and self.category == other.category and self.error == other.error

    def line(self) -> str:
        lines = [ln.strip() for ln in self.message.strip().splitlines() if ln.strip()]
        first = " ".join(lines[:2]) if len(lines) > 1 and lines[0].endswith(":") else (lines[0] if lines else "")
        return f"{self.category}" + (f" [{self.error}]" if self.error else "") + (f": {first[:300]}" if first else "")

    def to_json(self) -> dict[str, Any]:
        return {"category": self.category, "error": self.error, "message": self.message[:4000],
                "seconds": round(self.seconds, 3)}


def _qualname(e: BaseException) -> str:
    t = type(e)
    mod = t.__module__
    return t.__name__ if mod in ("builtins", "__main__") else f"{mod}.{t.__name__}"


def compare_outputs(actual: Mapping[str, np.ndarray], expected: Mapping[str, np.ndarray]) -> list[str]:
    """Every way `actual` departs from `expected` under the fp32 policy (empty: they agree)."""
    from lepton.verify import FP32, compare

    problems = []
    for name, want in expected.items():
        got = actual.get(name)
        if got is None:
            problems.append(f"{name}: missing from the module's outputs")
            continue
        got = np.asarray(got)
        if got.dtype != want.dtype:
            problems.append(f"{name}: dtype {got.dtype}, expected {want.dtype}")
            continue
        check = compare(got, want, FP32, name)
        if not check.ok:
            m = check.metrics
            err = f"; max abs err {m.max_abs_err:.3g}, max rel err {m.max_rel_err:.3g}" if m is not None else ""
            problems.append(f"{name}: {check.reason}{err}")
    return problems


def check(model: onnx.ModelProto, feeds: Mapping[str, np.ndarray] | None = None,
          input_shapes: Mapping[str, list[int]] | None = None) -> Outcome:
    """Compile `model` for x86 (all passes + codegen, verified) and compare with onnxruntime.

    With `feeds` None: compile verifies on Lepton's synthesized inputs and the module is then
    compared on `random_inputs(model)`. With `feeds` given (minimization, reproduction), both the
    compile's verification and the comparison use exactly `feeds`.
    """
    import lepton
    from lepton.errors import CodegenError, VerificationError
    from lepton_ir import UserError

    t0 = time.perf_counter()

    def done(category: str, error: str = "", message: str = "", witness: Feeds | None = None) -> Outcome:
        return Outcome(category, error, message, witness, time.perf_counter() - t0)

    own = dict(feeds) if feeds is not None else random_inputs(model)
    from passes.ort import run_model

    try:
        expected = run_model(model, own)
    except Exception as e:  # noqa: BLE001 - onnxruntime's own exception types
        return done("invalid", _qualname(e), f"onnxruntime cannot run the model: {e}")
    try:
        names = {vi.name for vi in model.graph.input}
        pins = {k: list(v) for k, v in (input_shapes or {}).items() if k in names} or None
        compiled = lepton.compile(model, TARGET, use_cache=False, input_shapes=pins,
                                  verify_inputs=None if feeds is None else own)
    except VerificationError as e:
        witness = own if feeds is not None else _bundle_inputs(e)
        return done("mismatch", "VerificationError", _verification_message(e), witness)
    except UserError as e:
        return done("unsupported", _qualname(e), str(e))
    except CodegenError as e:
        if PIN_HINT in str(e):  # the documented limit: TVM could not build symbolic dims; the error says which
            return done("unsupported", "CodegenError(symbolic dims)", str(e))
        return done("internal", _qualname(e), f"{e}\n\n{_tail(e)}")
    except Exception as e:  # noqa: BLE001 - every other exception is a bug (InternalError, TVM, Python)
        return done("internal", _qualname(e), f"{e}\n\n{_tail(e)}")
    pristine = {k: np.array(v, copy=True) for k, v in own.items()}
    try:
        actual = compiled.run(own)
    except Exception as e:  # noqa: BLE001
        return done("internal", _qualname(e), f"running the compiled module: {e}\n\n{_tail(e)}")
    touched = [k for k in own if not np.array_equal(own[k], pristine[k], equal_nan=own[k].dtype.kind == "f")]
    if touched:
        return done("mismatch", "InputMutated", f"running the module changed its input arrays {touched}", pristine)
    problems = compare_outputs(actual, expected)
    if problems:
        return done("mismatch", "OutputMismatch",
                    "the module differs from onnxruntime on the fuzzer's inputs:\n" + "\n".join(problems), own)
    return done("ok")


def _tail(e: BaseException) -> str:
    return "".join(traceback.format_exception(type(e), e, e.__traceback__)[-6:])[-3000:]


def _bundle_inputs(e: Exception) -> Feeds | None:
    """The inputs compile verified on (the artifact's bundle, by input name), from the report's artifact path."""
    from lepton.artifact import read_manifest, read_verify_bundle

    path = getattr(getattr(e, "report", None), "path", None)
    if not path:
        return None
    try:
        return read_verify_bundle(read_manifest(path))[0]
    except Exception:  # noqa: BLE001 - no witness: the caller falls back to random_inputs
        return None


def _verification_message(e: Exception) -> str:
    """The failing outputs of a VerificationError's report (its own message starts with a temporary path)."""
    report = getattr(e, "report", None)
    if report is None:
        return str(e)
    return (f"compile's verification failed under {report.policy.describe()} on {report.samples} sample(s):\n"
            f"{report.summary()}")


# ---- variants: how a drawn model is handed to the compiler --------------------------------------


@dataclass
class Example:
    """One drawn case: the model compiled, the variant, and (for the symbolic variants) the inputs and
    the pinned shapes. `feeds` None: compile synthesizes its inputs and `random_inputs` is compared."""

    model: onnx.ModelProto
    variant: str = "static"
    feeds: Feeds | None = None
    input_shapes: dict[str, list[int]] | None = None


VARIANTS: dict[str, str] = {
    "static": "the strategy's model as drawn (static shapes)",
    "value_info": "drawn with value_info for every intermediate value (onnx_models(value_info=True))",
    "pinned": "every input/output dim made symbolic, then pinned back with input_shapes=",
    "symbolic": "every input/output dim made symbolic and left so (TVM builds it with symbolic shapes, "
                "or the compile says which dims to pin: counted as unsupported)",
}
#: Drawn with these weights (Hypothesis shrinks toward the first).
VARIANT_WEIGHTS = {"static": 5, "value_info": 1, "pinned": 2, "symbolic": 2}


def symbolize(model: onnx.ModelProto) -> onnx.ModelProto:
    """A copy whose graph inputs and outputs have a fresh symbol for every dim."""
    out = onnx.ModelProto()
    out.CopyFrom(model)
    for kind, vis in (("in", out.graph.input), ("out", out.graph.output)):
        for i, vi in enumerate(vis):
            for k, d in enumerate(vi.type.tensor_type.shape.dim):
                d.dim_param = f"{kind}{i}_{k}"
    return out


def make_example(model: onnx.ModelProto, variant: str) -> Example:
    if variant in ("static", "value_info"):
        return Example(model, variant)
    feeds = random_inputs(model)
    shapes = {k: list(v.shape) for k, v in feeds.items()} if variant == "pinned" else None
    return Example(symbolize(model), variant, feeds, shapes)


def examples(max_nodes: int, opsets: tuple[int, int], variants: Iterable[str]) -> Any:
    """A Hypothesis strategy for `Example`s of the given variants."""
    from hypothesis import strategies as st

    menu = [v for v in VARIANT_WEIGHTS if v in set(variants) for _ in range(VARIANT_WEIGHTS[v])]

    @st.composite
    def draw_example(draw: Any) -> Example:
        variant = draw(st.sampled_from(menu))
        model = draw(onnx_models(max_nodes=max_nodes, opsets=opsets, value_info=variant == "value_info"))
        return make_example(model, variant)

    return draw_example()


# ---- the worker process -----------------------------------------------------------------------


def _serve(conn: Any, tmp: str, log: str | None) -> None:
    """Worker loop: receive (model bytes, feeds), answer with an Outcome. Compile scratch goes to `tmp`."""
    if log:
        fd = os.open(log, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
        os.dup2(fd, 2)
        os.dup2(fd, 1)
    os.makedirs(tmp, exist_ok=True)
    tempfile.tempdir = tmp
    os.environ.setdefault("LEPTON_DEBUG", "1")  # the IR verifier after import and after every pass, as in tests
    import lepton.compiler  # noqa: F401 - imports TVM now, so that no check pays for it

    conn.send("ready")
    while True:
        try:
            msg = conn.recv()
        except EOFError:
            return
        if msg is None:
            return
        data, feeds, shapes = msg
        try:
            out = check(onnx.load_from_string(data), feeds, shapes)
        except Exception as e:  # noqa: BLE001 - check() itself broke: report it, keep serving
            out = Outcome("internal", _qualname(e), f"fuzz harness: {e}\n\n{_tail(e)}")
        conn.send(out)
        for name in os.listdir(tmp):  # uncached builds would otherwise live until the process exits
            shutil.rmtree(os.path.join(tmp, name), ignore_errors=True)


class Runner:
    """Runs `check` in a worker process; a dead worker is a crash, a silent one a hang."""

    def __init__(self, timeout: float = 120.0, log: str | None = None, *, warmup: float = 60.0,
                 serve: Callable[..., None] | None = None) -> None:
        self.timeout = timeout
        self.warmup = warmup  # seconds a fresh worker may take to start (it imports TVM)
        self.log = log
        self._serve = serve or _serve  # a module-level function (the worker is spawned): tests pass their own
        self._ctx = multiprocessing.get_context("spawn")
        self._proc: Any = None
        self._conn: Any = None
        self._served = 0
        self.checks = 0  # over all workers
        self.restarts = -1  # workers started after the first
        self._tmp = tempfile.mkdtemp(prefix="lepton-fuzz-")

    def _start(self) -> None:
        parent, child = self._ctx.Pipe()
        self._proc = self._ctx.Process(target=self._serve, args=(child, self._tmp, self.log), daemon=True)
        self._proc.start()
        child.close()
        self._conn = parent
        self._served = 0
        self.restarts += 1
        try:  # the worker says "ready" once it has imported TVM
            ready = parent.poll(self.warmup) and parent.recv() == "ready"
        except (EOFError, OSError):
            ready = False
        if not ready:
            code = self._proc.exitcode
            self._stop(kill=True)
            raise RuntimeError(f"the fuzzing worker did not start within {self.warmup:.0f} s (exit code {code}); "
                               f"see {self.log or 'its stderr'}")

    def _stop(self, kill: bool = False) -> None:
        if self._proc is None:
            return
        with contextlib.suppress(Exception):
            if not kill:
                self._conn.send(None)
                self._proc.join(5)
        if self._proc.is_alive():
            self._proc.kill()
            self._proc.join(5)
        with contextlib.suppress(Exception):
            self._conn.close()
        self._proc = self._conn = None

    def check(self, model: onnx.ModelProto, feeds: Mapping[str, np.ndarray] | None = None,
              input_shapes: Mapping[str, list[int]] | None = None) -> Outcome:
        if self._proc is None or not self._proc.is_alive() or self._served >= RECYCLE:
            self._stop()
            self._start()
        self._served += 1
        self.checks += 1
        t0 = time.perf_counter()
        witness = dict(feeds) if feeds is not None else random_inputs(model)
        self._conn.send((model.SerializeToString(), None if feeds is None else dict(feeds),
                         None if input_shapes is None else dict(input_shapes)))
        budget = self.timeout
        try:
            ready = self._conn.poll(budget)
            if ready:
                return self._conn.recv()
        except (EOFError, OSError):
            ready = True
        if not ready:
            self._stop(kill=True)
            return Outcome("hang", "Timeout", f"no answer within {budget:.0f} s", witness, time.perf_counter() - t0)
        self._proc.join(5)
        code = self._proc.exitcode
        self._stop(kill=True)
        what = f"signal {-code}" if code is not None and code < 0 else f"exit code {code}"
        return Outcome("crash", f"WorkerDied({what})", f"the worker process died ({what})", witness,
                       time.perf_counter() - t0)

    def close(self) -> None:
        self._stop()
        shutil.rmtree(self._tmp, ignore_errors=True)

    def __enter__(self) -> Runner:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


# ---- the minimizer ----------------------------------------------------------------------------


def intermediate_values(model: onnx.ModelProto, feeds: Mapping[str, np.ndarray]) -> Feeds:
    """Every value the model computes (node outputs, graph inputs, initializers), by name, from onnxruntime."""
    from passes.ort import run_model

    values: Feeds = dict(feeds)
    for t in model.graph.initializer:
        values[t.name] = numpy_helper.to_array(t)
    probe = onnx.ModelProto()
    probe.CopyFrom(model)
    inferred = onnx.shape_inference.infer_shapes(probe)
    types = {vi.name: vi.type.tensor_type.elem_type for vi in
             [*inferred.graph.value_info, *inferred.graph.output, *inferred.graph.input]}
    have = {o.name for o in probe.graph.output}
    for node in probe.graph.node:
        for o in node.output:
            if o and o not in have and o in types:
                probe.graph.output.append(helper.make_tensor_value_info(o, types[o], None))
                have.add(o)
    with contextlib.suppress(Exception):  # best effort: without them, no cut is possible
        values.update(run_model(probe, feeds))
    return values


@dataclass
class _Cand:
    """A reduced model: which original nodes stay, which values are outputs, and how cut values enter
    (as graph inputs fed with their original values, or as initializers holding them)."""

    keep: frozenset[int]
    outputs: tuple[str, ...]
    frozen: frozenset[str] = frozenset()  # cut values that become initializers instead of inputs


class Minimizer:
    """Greedy delta debugging on the ONNX graph (see the module docstring)."""

    def __init__(self, model: onnx.ModelProto, feeds: Mapping[str, np.ndarray],
                 still_fails: Callable[[onnx.ModelProto, Feeds], bool], *, budget_s: float = 90.0,
                 max_checks: int = 250) -> None:
        self.model = model
        self.feeds = dict(feeds)
        self.still_fails = still_fails
        self.deadline = time.monotonic() + budget_s
        self.max_checks = max_checks
        self.checks = 0
        g = model.graph
        self.nodes = list(g.node)
        self.inits = {t.name: t for t in g.initializer}
        self.graph_inputs = {vi.name: vi for vi in g.input if vi.name not in self.inits}
        self.values = intermediate_values(model, feeds)
        self.producer = {o: i for i, n in enumerate(self.nodes) for o in n.output if o}

    # -- building a candidate
    def build(self, c: _Cand) -> tuple[onnx.ModelProto, Feeds] | None:
        keep = self._live(c)
        if not c.outputs or any(o not in self.values for o in c.outputs):
            return None
        nodes = [self.nodes[i] for i in sorted(keep)]
        produced = {o for n in nodes for o in n.output if o}
        needed: list[str] = []
        for n in nodes:
            for name in n.input:
                if name and name not in produced and name not in needed:
                    needed.append(name)
        inputs, inits, feeds = [], [], {}
        for name in needed:
            if name in self.inits:
                inits.append(self.inits[name])
            elif name in self.graph_inputs:
                inputs.append(self.graph_inputs[name])
                feeds[name] = self.feeds[name]
            elif name in self.values:
                arr = np.asarray(self.values[name])
                if name in c.frozen:
                    inits.append(numpy_helper.from_array(arr, name))
                else:
                    inputs.append(helper.make_tensor_value_info(name, helper.np_dtype_to_tensor_dtype(arr.dtype),
                                                                list(arr.shape)))
                    feeds[name] = arr
            else:
                return None
        if not inputs:
            return None  # everything constant: a different problem (folding), not a reduction
        outs = []
        for name in c.outputs:
            if name not in produced:
                return None
            arr = np.asarray(self.values[name])
            outs.append(helper.make_tensor_value_info(name, helper.np_dtype_to_tensor_dtype(arr.dtype),
                                                      list(arr.shape)))
        graph = helper.make_graph(nodes, self.model.graph.name or "fuzz", inputs, outs, initializer=inits)
        m = helper.make_model(graph, opset_imports=list(self.model.opset_import), ir_version=self.model.ir_version,
                              producer_name="lepton-fuzz-minimizer")
        return m, feeds

    def _live(self, c: _Cand) -> set[int]:
        """Kept nodes that some output depends on (through kept nodes)."""
        live: set[int] = set()
        stack = [self.producer[o] for o in c.outputs if o in self.producer and self.producer[o] in c.keep]
        while stack:
            i = stack.pop()
            if i in live:
                continue
            live.add(i)
            for name in self.nodes[i].input:
                j = self.producer.get(name)
                if j is not None and j in c.keep and j not in live:
                    stack.append(j)
        return live

    def _try(self, c: _Cand) -> bool:
        if self.checks >= self.max_checks or time.monotonic() > self.deadline:
            return False
        built = self.build(c)
        if built is None:
            return False
        self.checks += 1
        try:
            onnx.checker.check_model(built[0], full_check=True)
        except Exception:  # noqa: BLE001 - an invalid reduction, not a candidate
            return False
        return self.still_fails(*built)

    def _outputs_of(self, i: int) -> tuple[str, ...]:
        return tuple(o for o in self.nodes[i].output if o and o in self.values)

    def run(self) -> tuple[onnx.ModelProto, Feeds]:
        cur = _Cand(frozenset(range(len(self.nodes))), tuple(o.name for o in self.model.graph.output))
        cur = dataclasses.replace(cur, keep=frozenset(self._live(cur)))
        progress = True
        while progress and self.checks < self.max_checks and time.monotonic() < self.deadline:
            progress = False
            # 1. one output at a time
            if len(cur.outputs) > 1:
                for o in cur.outputs:
                    c = _Cand(cur.keep, (o,), cur.frozen)
                    if self._try(c):
                        cur = dataclasses.replace(c, keep=frozenset(self._live(c)))
                        progress = True
                        break
            # 2. the smallest prefix that fails: a node's own outputs become the graph's outputs
            for i in sorted(cur.keep):
                if self.nodes[i].op_type == "Constant":
                    continue
                outs = self._outputs_of(i)
                if not outs or set(outs) == set(cur.outputs):
                    continue
                c = _Cand(cur.keep, outs, cur.frozen)
                if len(self._live(c)) < len(cur.keep) and self._try(c):
                    cur = dataclasses.replace(c, keep=frozenset(self._live(c)))
                    progress = True
                    break
            # 3. cut nodes (upstream first): consumers read the node's original outputs instead
            for i in sorted(cur.keep):
                if i not in cur.keep or self.nodes[i].op_type == "Constant":
                    continue
                if set(self._outputs_of(i)) & set(cur.outputs):
                    continue
                outs = self._outputs_of(i)
                ints = {o for o in outs if np.asarray(self.values[o]).dtype.kind in "biu"}
                for frozen in ([ints, set(outs)] if ints != set(outs) else [set(outs)]) if ints else [set()]:
                    c = _Cand(cur.keep - {i}, cur.outputs, cur.frozen | frozen)
                    if self._try(c):
                        cur = dataclasses.replace(c, keep=frozenset(self._live(c)))
                        progress = True
                        break
        built = self.build(cur)
        assert built is not None
        return built


def minimize(model: onnx.ModelProto, feeds: Mapping[str, np.ndarray], target: Outcome,
             checker: Callable[[onnx.ModelProto, Feeds], Outcome], **kw: Any) -> tuple[onnx.ModelProto, Feeds, int]:
    """The smallest model found (and its feeds) that still fails like `target`; also the checks spent."""
    mz = Minimizer(model, feeds, lambda m, f: checker(m, f).same_failure(target), **kw)
    small, small_feeds = mz.run()
    return small, small_feeds, mz.checks


def bug_group(outcome: Outcome, small: onnx.ModelProto) -> str:
    """A likely-one-bug key for a minimized failure: category, error class and the op types left."""
    return f"{outcome.category}:{outcome.error}:{'+'.join(sorted({n.op_type for n in small.graph.node}))}"


def _groups(failures: Iterable[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    groups: dict[str, dict[str, Any]] = {}
    for f in failures:
        g = groups.setdefault(f["group"] or f"{f['category']}:{f['error']}:(not minimized)", {"hits": 0, "dirs": []})
        g["hits"] += f["hits"]
        g["dirs"].append(f["dir"])
    return groups


# ---- saving and reproducing -----------------------------------------------------------------


def model_id(model: onnx.ModelProto) -> str:
    return hashlib.sha256(model.SerializeToString(deterministic=True)).hexdigest()[:12]


def describe(model: onnx.ModelProto) -> str:
    ops = Counter(n.op_type for n in model.graph.node)
    return f"{len(model.graph.node)} nodes ({', '.join(f'{k}×{v}' if v > 1 else k for k, v in sorted(ops.items()))})"


def save_failure(out_dir: str, original: onnx.ModelProto, original_feeds: Feeds | None, small: onnx.ModelProto,
                 small_feeds: Feeds, outcome: Outcome, *, minimized: bool, note: str = "", variant: str = "static",
                 input_shapes: Mapping[str, list[int]] | None = None, python: str | None = None) -> str:
    """Write one failure's folder (see the module docstring); returns its path."""
    d = os.path.join(out_dir, model_id(small))
    os.makedirs(d, exist_ok=True)
    onnx.save(small, os.path.join(d, "model.onnx"))
    np.savez(os.path.join(d, "inputs.npz"), **small_feeds)
    onnx.save(original, os.path.join(d, "original.onnx"))
    if original_feeds is not None:
        np.savez(os.path.join(d, "original_inputs.npz"), **original_feeds)
    opset = next((o.version for o in small.opset_import if o.domain in ("", "ai.onnx")), None)
    names = {vi.name for vi in small.graph.input}
    pins = {k: list(v) for k, v in (input_shapes or {}).items() if k in names} or None
    info = {**outcome.to_json(), "signature": outcome.signature, "minimized": minimized, "note": note,
            "variant": variant, "input_shapes": pins, "model": describe(small), "original": describe(original),
            "opset": opset}
    with open(os.path.join(d, "outcome.json"), "w") as f:
        json.dump(info, f, indent=2)
    py = python or _python()
    nodes = "\n".join("  " + helper.printable_node(n)[:300] for n in small.graph.node)
    with open(os.path.join(d, "README.txt"), "w") as f:
        f.write(
            f"Lepton differential-fuzzing failure: {outcome.line()}\n\n"
            f"model.onnx: {describe(small)}, opset {opset}"
            f"{'' if minimized else ' (NOT minimized' + (': ' + note if note else '') + ')'}\n"
            f"variant: {variant} ({VARIANTS.get(variant, '?')})"
            f"{'; compiled with input_shapes=' + json.dumps(pins) if pins else ''}\n"
            f"original.onnx: {describe(original)}\n\nnodes:\n{nodes}\n\n"
            f"message:\n{outcome.message.strip()[:3000]}\n\n"
            f"reproduce (from the repository root):\n{REPRO.format(python=py, dir=d)}\n"
        )
    return d


def _python() -> str:
    exe = sys.executable
    rel = os.path.relpath(exe) if exe.startswith(os.getcwd() + os.sep) else exe
    return rel


def load_failure(d: str) -> tuple[onnx.ModelProto, Feeds, dict[str, list[int]] | None]:
    """A saved failure's model, inputs and pinned input shapes (None: none pinned)."""
    model = onnx.load(os.path.join(d, "model.onnx"))
    with np.load(os.path.join(d, "inputs.npz")) as z:
        feeds = {k: z[k] for k in z.files}
    shapes = None
    with contextlib.suppress(OSError, ValueError):
        with open(os.path.join(d, "outcome.json")) as f:
            shapes = json.load(f).get("input_shapes")
    return model, feeds, shapes


def reproduce(d: str, timeout: float = 60.0) -> Outcome:
    """Run the check on a saved failure and print what happens: in this process (tracebacks, debuggers),
    or in a worker with `timeout` when the failure was a crash or a hang."""
    model, feeds, shapes = load_failure(d)
    category = ""
    with contextlib.suppress(OSError, ValueError):
        with open(os.path.join(d, "outcome.json")) as f:
            category = json.load(f).get("category", "")
    print(f"{d}: {describe(model)}" + (f", input_shapes={shapes}" if shapes else ""), flush=True)
    if category in ("crash", "hang"):
        with Runner(timeout=timeout) as runner:
            out = runner.check(model, feeds, shapes)
    else:
        out = check(model, feeds, shapes)
    print(out.line())
    if out.message and out.category != "ok":
        print(out.message.strip()[:4000])
    return out


# ---- the fuzzing loop ---------------------------------------------------------------------------


class _TimeUp(BaseException):
    """Raised inside the Hypothesis test to stop the run when the time is up (not a failure)."""


@dataclass
class Stats:
    examples: int = 0
    categories: Counter = field(default_factory=Counter)
    by_variant: dict[str, Counter] = field(default_factory=dict)
    unsupported: Counter = field(default_factory=Counter)
    signatures: Counter = field(default_factory=Counter)
    failures: dict[str, dict[str, Any]] = field(default_factory=dict)
    check_seconds: float = 0.0
    minimize_seconds: float = 0.0
    slowest: list[dict[str, Any]] = field(default_factory=list)  # the SLOWEST slowest checks


def fuzz(*, minutes: float, out_dir: str, seed: int | None = None, max_nodes: int = 30,
         opsets: tuple[int, int] = (13, 23), variants: Iterable[str] = tuple(VARIANTS), timeout: float = 60.0,
         max_examples: int | None = None, do_minimize: bool = True, max_minimize_per_signature: int = 20,
         quiet: bool = False) -> dict[str, Any]:
    """Draw examples until `minutes` pass (or `max_examples` ran); save failures; return the summary."""
    from hypothesis import HealthCheck, Phase, given, settings
    from hypothesis import seed as hseed
    from hypothesis.reporting import with_reporter

    variants = tuple(variants)
    unknown = set(variants) - set(VARIANTS)
    if unknown or not variants:
        raise ValueError(f"unknown variants {sorted(unknown)}; choose from {', '.join(VARIANTS)}")
    os.makedirs(out_dir, exist_ok=True)
    stats = Stats()
    t_start = time.monotonic()
    end = t_start + minutes * 60
    seed = seed if seed is not None else int.from_bytes(os.urandom(4), "little")
    say = (lambda *_a: None) if quiet else (lambda *a: print(*a, flush=True))
    runner = Runner(timeout=timeout, log=os.path.join(out_dir, "worker.log"))
    hang_runners: list[Runner] = []
    last_report = [time.monotonic()]

    def hang_runner() -> Runner:
        if not hang_runners:
            hang_runners.append(Runner(timeout=min(timeout, HANG_TIMEOUT), log=os.path.join(out_dir, "worker.log")))
        return hang_runners[0]

    def handle(ex: Example) -> None:
        if time.monotonic() > end or (max_examples is not None and stats.examples >= max_examples):
            raise _TimeUp
        stats.examples += 1
        out = runner.check(ex.model, ex.feeds, ex.input_shapes)
        stats.check_seconds += out.seconds
        stats.categories[out.category] += 1
        stats.by_variant.setdefault(ex.variant, Counter())[out.category] += 1
        if len(stats.slowest) < SLOWEST or out.seconds > stats.slowest[-1]["seconds"]:
            path = os.path.join(out_dir, "slow", f"{model_id(ex.model)}.onnx")
            os.makedirs(os.path.dirname(path), exist_ok=True)
            onnx.save(ex.model, path)
            stats.slowest = [e for e in stats.slowest if e["path"] != path or e["seconds"] >= out.seconds]
            if not any(e["path"] == path for e in stats.slowest):
                stats.slowest.append({"seconds": round(out.seconds, 2), "category": out.category, "variant": ex.variant,
                                      "model": describe(ex.model), "path": path})
            stats.slowest.sort(key=lambda e: -e["seconds"])
            kept = {e["path"] for e in stats.slowest[:SLOWEST]}
            for gone in stats.slowest[SLOWEST:]:
                if gone["path"] not in kept:
                    with contextlib.suppress(OSError):
                        os.remove(gone["path"])
            del stats.slowest[SLOWEST:]
        if out.category == "unsupported":
            stats.unsupported[out.signature] += 1
            if stats.unsupported[out.signature] == 1:  # one example of each reason, to judge it
                keep_unsupported(ex, out)
        if out.bug:
            stats.signatures[out.signature] += 1
            record(ex, out)
        if time.monotonic() - last_report[0] > 30:
            last_report[0] = time.monotonic()
            say(f"[{time.monotonic() - t_start:6.0f}s] {stats.examples} examples: "
                + ", ".join(f"{k} {v}" for k, v in sorted(stats.categories.items())))

    def record(ex: Example, out: Outcome) -> None:
        model, shapes = ex.model, ex.input_shapes
        feeds = out.feeds if out.feeds is not None else (ex.feeds or random_inputs(model))
        minimized, note = False, ""
        small, small_feeds = model, feeds
        if not do_minimize:
            note = "minimization off (--no-minimize)"
        elif stats.signatures[out.signature] > max_minimize_per_signature:
            note = f"this failure signature was minimized {max_minimize_per_signature} times already"
        else:
            t0 = time.monotonic()
            # A hang is minimized with a shorter timeout (a compile that takes HANG_TIMEOUT s, against well
            # under one second normally, still hangs) and a bigger budget: each step that still hangs costs it.
            hang = out.category == "hang"
            mrunner = hang_runner() if hang else runner
            limits = {"budget_s": 600.0, "max_checks": 40} if hang else {}
            confirm = mrunner.check(model, feeds, shapes)  # the minimizer's premise: it fails on these inputs
            if confirm.same_failure(out):
                try:
                    small, small_feeds, checks = minimize(
                        model, feeds, out, lambda m, f: mrunner.check(m, f, shapes), **limits)
                    minimized, note = True, f"minimized in {checks} checks"
                except Exception as e:  # noqa: BLE001 - keep fuzzing; save the original
                    note = f"the minimizer failed: {_qualname(e)}: {e}"
            else:
                note = f"did not fail the same way when re-checked on its inputs ({confirm.line()[:200]})"
            stats.minimize_seconds += time.monotonic() - t0
        final = out
        if minimized:
            final = (hang_runner() if out.category == "hang" else runner).check(small, small_feeds, shapes)
            if not final.same_failure(out):  # never save a reduced model that does not fail
                small, small_feeds, final, minimized = model, feeds, out, False
                note = "the minimized model stopped failing when re-checked; saved the original"
        d = save_failure(out_dir, model, feeds, small, small_feeds, final, minimized=minimized, note=note,
                         variant=ex.variant, input_shapes=shapes)
        entry = stats.failures.setdefault(d, {
            "dir": d, "category": final.category, "error": final.error, "first_line": final.line()[:300],
            "variant": ex.variant, "model": describe(small), "original": describe(model), "minimized": minimized,
            "signature": out.signature, "group": bug_group(final, small) if minimized else "", "hits": 0})
        entry["hits"] += 1
        say(f"  FAILURE ({ex.variant}) {out.line()[:160]}\n    -> {d} ({describe(small)}; from {describe(model)}; "
            f"{note})")

    def keep_unsupported(ex: Example, out: Outcome) -> None:
        d = os.path.join(out_dir, "unsupported", hashlib.sha256(out.signature.encode()).hexdigest()[:12])
        os.makedirs(d, exist_ok=True)
        onnx.save(ex.model, os.path.join(d, "model.onnx"))
        np.savez(os.path.join(d, "inputs.npz"), **(ex.feeds if ex.feeds is not None else random_inputs(ex.model)))
        with open(os.path.join(d, "outcome.json"), "w") as f:
            json.dump({**out.to_json(), "signature": out.signature, "variant": ex.variant,
                       "input_shapes": ex.input_shapes, "model": describe(ex.model)}, f, indent=2)

    @hseed(seed)
    @settings(max_examples=10**9, deadline=None, database=None, phases=[Phase.generate],
              suppress_health_check=list(HealthCheck))
    @given(ex=examples(max_nodes, opsets, variants))
    def run(ex: Example) -> None:
        handle(ex)

    say(f"fuzzing for {minutes:g} min (seed {seed}, max_nodes {max_nodes}, opsets {opsets[0]}..{opsets[1]}, "
        f"variants {','.join(variants)}); failures go to {out_dir}/")
    try:
        with with_reporter(lambda *_a: None):
            run()
    except _TimeUp:
        pass
    finally:
        runner.close()
        for r in hang_runners:
            r.close()
    elapsed = time.monotonic() - t_start
    summary = {
        "seed": seed, "minutes": minutes, "seconds": round(elapsed, 1), "max_nodes": max_nodes,
        "opsets": list(opsets), "variants": list(variants), "examples": stats.examples,
        "categories": dict(stats.categories), "by_variant": {k: dict(v) for k, v in stats.by_variant.items()},
        "bugs": sum(stats.categories[c] for c in BUGS),
        "unsupported_reasons": dict(stats.unsupported.most_common()),
        "bug_signatures": dict(stats.signatures.most_common()),
        "failures": list(stats.failures.values()),
        "groups": _groups(stats.failures.values()),
        "check_seconds": round(stats.check_seconds, 1), "minimize_seconds": round(stats.minimize_seconds, 1),
        "slowest_checks": stats.slowest,
        "reproduce": REPRO.format(python=_python(), dir=os.path.join(out_dir, "<id>")),
    }
    with open(os.path.join(out_dir, "summary.json"), "w") as f:
        json.dump(summary, f, indent=2)
    say(f"done: {stats.examples} examples in {elapsed:.0f} s: "
        + ", ".join(f"{k} {v}" for k, v in sorted(stats.categories.items()))
        + f"; {len(stats.failures)} failure folder(s); summary in {out_dir}/summary.json")
    for e in stats.failures.values():
        say(f"  {e['dir']}: {e['first_line'][:150]} ({e['model']}, seen {e['hits']}x)")
    return summary


def _opsets(text: str) -> tuple[int, int]:
    lo, _, hi = text.partition("-")
    return int(lo), int(hi or lo)


def main(argv: Iterable[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="tests/fuzz.py", description=__doc__.split("\n\n")[0])
    p.add_argument("--minutes", type=float, default=10.0, help="how long to fuzz (default 10)")
    p.add_argument("--seed", type=int, default=None, help="Hypothesis seed (default: random, printed)")
    p.add_argument("--max-nodes", type=int, default=30, help="soft node budget per model (default 30)")
    p.add_argument("--opsets", type=_opsets, default=(13, 23), help="opset range LO-HI (default 13-23)")
    p.add_argument("--variants", default=",".join(VARIANTS),
                   help=f"comma-separated subset of {','.join(VARIANTS)} (default: all)")
    p.add_argument("--timeout", type=float, default=60.0,
                   help="seconds per check before it is a hang (default 60; a check normally takes well under 5)")
    p.add_argument("--max-examples", type=int, default=None, help="stop after this many examples")
    p.add_argument("--out", default="fuzz-failures", help="where failures go (default fuzz-failures/)")
    p.add_argument("--no-minimize", action="store_true", help="save failing models as drawn")
    p.add_argument("--max-minimize", type=int, default=20,
                   help="minimize at most this many failures per signature (default 20; later ones are saved as drawn)")
    p.add_argument("--reproduce", metavar="DIR", help="re-run a saved failure; exit 1 while it still fails")
    a = p.parse_args(None if argv is None else list(argv))
    if a.reproduce:
        return 1 if reproduce(a.reproduce, a.timeout).bug else 0
    try:
        variants = [v.strip() for v in a.variants.split(",") if v.strip()]
        summary = fuzz(minutes=a.minutes, out_dir=a.out, seed=a.seed, max_nodes=a.max_nodes, opsets=a.opsets,
                       variants=variants, timeout=a.timeout, max_examples=a.max_examples,
                       do_minimize=not a.no_minimize, max_minimize_per_signature=a.max_minimize)
    except ValueError as e:
        p.error(str(e))
    return 1 if summary["bugs"] else 0


if __name__ == "__main__":
    raise SystemExit(main())
