"""Every bench model compiles for every target; x86 modules match onnxruntime (slow: `make test-all`)."""

from __future__ import annotations

import os
import struct

import pytest

import lepton
from bench.models import BENCH_MODELS

TARGETS = ("x86", "arm", "cuda", "opencl")
MODELS = [name for name in BENCH_MODELS if not name.startswith("generated")]


@pytest.mark.slow
@pytest.mark.parametrize("target", TARGETS)
@pytest.mark.parametrize("name", MODELS)
def test_bench_model_compiles(name: str, target: str, tmp_path: str) -> None:
    res = lepton.compile(BENCH_MODELS[name](), target, output_dir=os.path.join(tmp_path, "out"), use_cache=False)
    lib = os.path.join(res.path, res.manifest.library)
    assert os.path.getsize(lib) > 0
    if target == "x86":
        assert res.verify_report is not None and res.verify_report.ok, res.verify_report
    if target == "arm" and res.manifest.library.endswith(".so"):
        with open(lib, "rb") as f:
            assert struct.unpack_from("<H", f.read(20), 18)[0] == 183  # EM_AARCH64
    if target == "cuda":
        assert "model.fatbin" in res.manifest.files
    if target == "opencl":
        assert "kernels/model.cl" in res.manifest.files


def test_bert_small_compiles_for_x86_and_matches_onnxruntime() -> None:
    """A transformer export (attention-mask arithmetic, Shape chains) in the quick suite."""
    res = lepton.compile(BENCH_MODELS["bert_small"](), "x86", use_cache=False)
    assert res.verify_report is not None and res.verify_report.ok, res.verify_report
