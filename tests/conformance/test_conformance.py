"""ONNX backend node-suite conformance (see suite.py for what a pass is).

- `make test`: the fixed subset in subset.txt (cases across op families, plus expected
  failures of each kind). A subset case outside expected_failures.toml must pass; a listed one
  must still fail (strict: a case that starts passing must leave the list).
- `make test-all` (slow): the whole suite in worker processes; the pass count must reach the
  floor (floor.txt), enough cases must have run, and the failures must be exactly the listed ones.
"""

from __future__ import annotations

import collections

import pytest

from . import suite

EXPECTED = suite.expected_failures()
CATEGORIES = {
    "unsupported_by_tvm", "tvm_wrong_result", "tvm_build_failure", "dtype", "training_only", "random", "sequence_optional",
    "string", "data_dependent_shape", "lepton_importer", "lepton_codegen", "lepton_backend", "numerics",
}


@pytest.mark.parametrize("name", suite.subset())
def test_subset_case(name: str) -> None:
    result = suite.run_case(name)
    if name in EXPECTED:
        category, reason = EXPECTED[name]
        assert not result.passed, (f"{name} passes now: remove it from expected_failures.toml "
                                    f"([{category}] {reason}) and raise the floor")
    else:
        assert result.passed, f"{name}: {result.status}: {result.reason}"


def test_subset_is_representative() -> None:
    names = suite.subset()
    cases = suite.all_cases()
    assert len(names) == len(set(names)), "subset.txt lists a case twice"
    unknown = [n for n in names if n not in cases]
    assert not unknown, f"subset.txt names cases the suite does not have: {unknown}"
    ops = {cases[n].model.graph.node[0].op_type for n in names}
    assert len(names) >= 100 and len(ops) >= 80, (len(names), len(ops))
    listed = collections.Counter(EXPECTED[n][0] for n in names if n in EXPECTED)
    assert len(listed) >= 5, f"the subset should hold expected failures of several kinds, has {dict(listed)}"


def test_expected_failures_file() -> None:
    cases = suite.all_cases()
    unknown = sorted(n for n in EXPECTED if n not in cases)
    assert not unknown, f"expected_failures.toml lists cases the suite does not have: {unknown[:20]}"
    bad = sorted({c for c, _ in EXPECTED.values()} - CATEGORIES)
    assert not bad, f"unknown categories {bad}; use one of {sorted(CATEGORIES)}"
    empty = [n for n, (_, reason) in EXPECTED.items() if len(reason.strip()) < 8]
    assert not empty, f"entries without a reason: {empty}"


def test_floor_is_consistent_with_the_list() -> None:
    """Every case not listed passes, so the floor cannot exceed that count; listing more failures
    than the floor allows means the floor was lowered, which it never is."""
    total = len(suite.all_cases())
    floor = suite.floor()
    assert floor <= total - len(EXPECTED), (
        f"the floor ({floor}) is above the {total - len(EXPECTED)} cases outside expected_failures.toml")
    assert suite.MIN_EXECUTED <= total


@pytest.mark.slow
def test_full_suite() -> None:
    from .run_suite import judge, run_cases

    names = suite.case_names()
    results = run_cases(names, suite.default_jobs(), timeout=300.0, progress=False)
    passed = sum(r.passed for r in results)
    verdict = judge(results, EXPECTED)
    assert len(results) >= suite.MIN_EXECUTED, f"only {len(results)} cases ran"
    assert passed >= suite.floor(), f"{passed} cases passed, below the floor of {suite.floor()}"
    reasons = {r.name: f"{r.status}: {r.reason}" for r in results if not r.passed}
    assert not verdict["unexpected_failures"], {n: reasons[n] for n in verdict["unexpected_failures"][:30]}
    assert not verdict["unexpected_passes"], f"listed as failing but pass: {verdict['unexpected_passes']}"
