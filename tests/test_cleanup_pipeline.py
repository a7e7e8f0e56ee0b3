"""Every registered cleanup pass, and the whole default pipeline, on random graphs.

Per pass: outputs preserved (DESIGN.md §6), `modified` exact, idempotent. The pipeline:
outputs preserved, converges, and a second run changes nothing.
"""

from __future__ import annotations

import pytest
from hypothesis import HealthCheck, given, settings
from passutil import assert_outputs_close, assert_pass_preserves, serialized
from strategies import onnx_models, random_inputs

import lepton_ir
from passes import REGISTRY, PassManager
from passes.cleanup import CLEANUP_PIPELINE
from passes.ort import run_model

CLEANUP_PASSES = CLEANUP_PIPELINE.split(",")
SETTINGS = settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def test_pipeline_names_registered_kebab_case_passes() -> None:
    assert len(set(CLEANUP_PASSES)) == len(CLEANUP_PASSES)
    for name in CLEANUP_PASSES:
        assert name in REGISTRY, name
        assert REGISTRY[name].summary, f"{name} has no summary"


@pytest.mark.parametrize("name", CLEANUP_PASSES)
@SETTINGS
@given(model=onnx_models())
def test_each_pass_preserves_outputs_and_is_idempotent(name: str, model: object) -> None:
    assert_pass_preserves(model, REGISTRY[name](), random_inputs(model))  # type: ignore[arg-type]


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(model=onnx_models(max_nodes=20))
def test_pipeline_preserves_outputs_and_reaches_a_fixed_point(model: object) -> None:
    inputs = random_inputs(model)  # type: ignore[arg-type]
    expected = run_model(model, inputs)  # type: ignore[arg-type]
    graph = lepton_ir.load(model)  # type: ignore[arg-type]
    result = PassManager(CLEANUP_PIPELINE, verify_ir=True).run(graph)
    assert result.converged
    assert len(graph) <= len(model.graph.node)  # type: ignore[attr-defined]
    assert_outputs_close(expected, run_model(lepton_ir.to_onnx(graph), inputs))
    before = serialized(graph)
    again = PassManager(CLEANUP_PIPELINE).run(graph)
    assert not again.modified and serialized(graph) == before
