"""The `lepton` CLI: exit codes, JSON output, files written only where asked."""

from __future__ import annotations

import json
import os

from typer.testing import CliRunner

from lepton.cli import app

DEMO = os.path.join(os.path.dirname(__file__), "..", "bench", "models", "digits_cnn.onnx")
runner = CliRunner()


def test_optimize_writes_the_model_and_a_json_report(tmp_path: str) -> None:
    out = os.path.join(tmp_path, "sub", "m.onnx")
    res = runner.invoke(app, ["optimize", DEMO, "-o", out, "--json"])
    assert res.exit_code == 0, res.output
    report = json.loads(res.stdout)
    assert report["files"] == [out] and os.path.isfile(out)
    assert report["nodes_after"] < report["nodes_before"]
    assert {row["pass"] for row in report["passes"]} >= {"eliminate-dead-code", "fold-constants"}


def test_optimize_prints_a_pass_table(tmp_path: str) -> None:
    res = runner.invoke(app, ["optimize", DEMO, "-o", os.path.join(tmp_path, "m.onnx")])
    assert res.exit_code == 0, res.output
    assert "eliminate-dead-code" in res.stdout and "nodes" in res.stdout


def test_bad_model_is_exit_2_and_writes_nothing(tmp_path: str) -> None:
    bad = os.path.join(tmp_path, "bad.onnx")
    with open(bad, "wb") as f:
        f.write(b"\x08\x07garbage that is not a model")
    out = os.path.join(tmp_path, "out", "m.onnx")
    res = runner.invoke(app, ["optimize", bad, "-o", out])
    assert res.exit_code == 2
    assert "bad.onnx" in res.stderr
    assert sorted(os.listdir(tmp_path)) == ["bad.onnx"]


def test_unknown_pass_is_exit_2(tmp_path: str) -> None:
    res = runner.invoke(app, ["optimize", DEMO, "-o", os.path.join(tmp_path, "m.onnx"), "--passes", "fold-everything"])
    assert res.exit_code == 2
    assert "unknown pass 'fold-everything'" in res.stderr
    assert os.listdir(tmp_path) == []


def test_passes_lists_the_pipeline() -> None:
    res = runner.invoke(app, ["passes"])
    assert res.exit_code == 0
    assert "eliminate-common-subexpressions" in res.stdout and "default cleanup pipeline" in res.stdout
