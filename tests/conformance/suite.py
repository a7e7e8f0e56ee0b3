"""The ONNX backend node suite run through `lepton.backend.LeptonBackend`: cases, one case's run, the lists.

A case passes when, for every data set of the case, the outputs Lepton computes equal ONNX's
expected outputs by ONNX's own comparison (`onnx.backend.test.runner.Runner.assert_similar_outputs`:
same count, same shapes, same dtypes, `assert_allclose` with the case's rtol/atol, 1e-3/1e-7 for
every node case in onnx 1.23). Anything else is a failure ("fail": wrong outputs) or an error
("error": Lepton or TVM refused or raised; "crash"/"timeout" when the case's process died or hung,
which only the process-isolating runner in run_suite.py can observe).

`expected_failures.toml` lists every case that does not pass, each with its reason, grouped by
category; `floor.txt` holds the recorded pass count (it only moves up).
"""

from __future__ import annotations

import contextlib
import functools
import io
import os
import time
import tomllib
import traceback
import warnings
from dataclasses import asdict, dataclass
from pathlib import Path

HERE = Path(__file__).resolve().parent
EXPECTED_FAILURES = HERE / "expected_failures.toml"
FLOOR = HERE / "floor.txt"
SUBSET = HERE / "subset.txt"

#: A run that executed fewer cases than this is broken (an empty or truncated run cannot pass).
MIN_EXECUTED = 1800


@dataclass
class CaseResult:
    name: str
    status: str  # "pass" | "fail" | "error" | "crash" | "timeout"
    reason: str = ""
    seconds: float = 0.0
    specialized: tuple[str, ...] = ()  # inputs the backend specialized on (lepton.backend, value specialization)

    @property
    def passed(self) -> bool:
        return self.status == "pass"

    def as_dict(self) -> dict[str, object]:
        d = asdict(self)
        d["specialized"] = list(self.specialized)
        return d


@functools.cache
def all_cases() -> dict[str, object]:
    """Every node case by name (`onnx.backend.test.case.test_case.TestCase`), generated in memory."""
    import numpy as np
    from onnx.backend.test.loader import load_model_tests

    with warnings.catch_warnings(), np.errstate(all="ignore"), contextlib.redirect_stdout(io.StringIO()):
        warnings.simplefilter("ignore")
        return {c.name: c for c in load_model_tests(kind="node")}


def case_names() -> list[str]:
    return sorted(all_cases())


def run_case(name: str, specialize: bool = True) -> CaseResult:
    """Compile and run one case through the backend; compare with ONNX's expected outputs."""
    import numpy as np
    from onnx.backend.test.runner import Runner, _normalize_tensor

    from lepton.backend import LeptonBackend

    case = all_cases()[name]
    t0 = time.perf_counter()
    stage = "prepare"
    try:
        with warnings.catch_warnings(), np.errstate(all="ignore"):
            warnings.simplefilter("ignore")
            rep = LeptonBackend.prepare(case.model, "CPU", specialize=specialize)
            for inputs, expected in case.data_sets:
                stage = "run"
                outputs = rep.run([_normalize_tensor(x) for x in inputs])
                stage = "compare"
                Runner.assert_similar_outputs(
                    [_normalize_tensor(x) for x in expected], outputs, rtol=case.rtol, atol=case.atol, model_dir=name
                )
    except Exception as e:  # noqa: BLE001 - every failure of a case is recorded with its reason
        return _failed(name, stage, e, t0)
    return CaseResult(name, "pass", "", time.perf_counter() - t0, tuple(rep.specialized_on))


def _failed(name: str, stage: str, e: Exception, t0: float) -> CaseResult:
    """A case that raised at `stage`: "fail" for an assertion in the output comparison, else "error"."""
    if isinstance(e, AssertionError) and stage == "compare":
        return CaseResult(name, "fail", _short(e), time.perf_counter() - t0)
    return CaseResult(name, "error", f"{stage}: {_short(e, with_type=True)}", time.perf_counter() - t0)


def _short(e: BaseException, *, with_type: bool = False) -> str:
    lines = [ln.strip() for ln in str(e).strip().splitlines() if ln.strip()]
    if isinstance(e, AssertionError) and not with_type:
        # numpy's messages: the first line says what differed, "Mismatched elements"/"Max ..." say by how much
        keep = [ln for ln in lines if ln.startswith(("Not equal", "Mismatched", "Max absolute", "Max relative", "Arrays are not", "Output"))
                or "location mismatch" in ln]
        text = "; ".join(keep or lines[:2])
    else:
        text = lines[0] if lines else ""
        if not text:
            text = traceback.format_exception_only(type(e), e)[-1].strip()
        text = f"{type(e).__name__}: {text}"
    return text[:300]


# ----- the recorded lists -----------------------------------------------------------------


def expected_failures() -> dict[str, tuple[str, str]]:
    """case -> (category, reason) from expected_failures.toml."""
    with open(EXPECTED_FAILURES, "rb") as f:
        data = tomllib.load(f)
    out: dict[str, tuple[str, str]] = {}
    for category, entries in data.items():
        if not isinstance(entries, dict):
            continue
        for case, reason in entries.items():
            if case in out:
                raise ValueError(f"{case} is listed twice in {EXPECTED_FAILURES.name} ({out[case][0]} and {category})")
            out[case] = (category, str(reason))
    return out


def floor() -> int:
    """The recorded pass count (first integer in floor.txt)."""
    for line in FLOOR.read_text().splitlines():
        line = line.split("#", 1)[0].strip()
        if line:
            return int(line)
    raise ValueError(f"{FLOOR} holds no pass count")


def subset() -> list[str]:
    """The fixed, representative subset `make test` runs (subset.txt, one case a line)."""
    names = []
    for line in SUBSET.read_text().splitlines():
        line = line.split("#", 1)[0].strip()
        if line:
            names.append(line)
    return names


def default_jobs() -> int:
    return max(1, min(4, len(os.sched_getaffinity(0))))


def run_case_tvm_only(name: str) -> CaseResult:
    """The same case through TVM's ONNX frontend alone (`from_onnx` + `tvm.compile` for LLVM on
    this CPU), without Lepton's import, passes or checks: the baseline Lepton improves on."""
    import numpy as np
    import tvm
    from onnx.backend.test.runner import Runner, _normalize_tensor
    from tvm import relax
    from tvm.relax.frontend.onnx import from_onnx

    case = all_cases()[name]
    t0 = time.perf_counter()
    stage = "import"
    try:
        with warnings.catch_warnings(), np.errstate(all="ignore"), contextlib.redirect_stdout(io.StringIO()):
            warnings.simplefilter("ignore")
            mod = from_onnx(case.model, keep_params_in_input=False)
            stage = "build"
            target = tvm.target.Target({"kind": "llvm", "mcpu": "x86-64"})
            exe = tvm.compile(mod, target=target)
            vm = relax.VirtualMachine(exe, tvm.cpu())
            for inputs, expected in case.data_sets:
                stage = "run"
                args = [tvm.runtime.tensor(np.ascontiguousarray(_normalize_tensor(x)), tvm.cpu()) for x in inputs]
                out = vm["main"](*args)
                outputs = _flat(out)
                stage = "compare"
                Runner.assert_similar_outputs(
                    [_normalize_tensor(x) for x in expected], outputs, rtol=case.rtol, atol=case.atol, model_dir=name
                )
    except Exception as e:  # noqa: BLE001
        return _failed(name, stage, e, t0)
    return CaseResult(name, "pass", "", time.perf_counter() - t0)


def _flat(result: object) -> list:
    import numpy as np
    import tvm

    if isinstance(result, tvm.runtime.Tensor):
        return [result.numpy()]
    if isinstance(result, tvm.runtime.ShapeTuple):
        return [np.asarray(list(result), dtype=np.int64)]
    return [a for item in result for a in _flat(item)]
