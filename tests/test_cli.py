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


def test_compile_run_verify_round_trip(tmp_path: str) -> None:
    import numpy as np

    out = os.path.join(tmp_path, "art")
    res = runner.invoke(app, ["compile", DEMO, "--target", "x86", "-o", out, "--json", "--no-cache"])
    assert res.exit_code == 0, res.output
    report = json.loads(res.stdout)
    assert report["verified"] is True and report["library"] == "model.so" and report["artifact"] == out
    assert {p["pass"] for p in report["passes"]} >= {"fold-constants", "eliminate-dead-code"}

    res = runner.invoke(app, ["verify", out])
    assert res.exit_code == 0, res.output
    assert "logits" in res.stdout

    x = np.random.default_rng(0).standard_normal((2, 1, 8, 8)).astype(np.float32)
    np.save(os.path.join(tmp_path, "x.npy"), x)
    res = runner.invoke(app, ["run", out, "--input", f"image={os.path.join(tmp_path, 'x.npy')}", "--json",
                              "--save", os.path.join(tmp_path, "y.npz")])
    assert res.exit_code == 0, res.output
    assert json.loads(res.stdout)["logits"]["shape"] == [2, 10]
    assert np.load(os.path.join(tmp_path, "y.npz"))["logits"].shape == (2, 10)

    res = runner.invoke(app, ["run", out, "--input", f"wrong={os.path.join(tmp_path, 'x.npy')}"])
    assert res.exit_code == 2 and "wrong" in res.stderr

    with open(os.path.join(out, "model.so"), "r+b") as f:  # tamper
        f.seek(100)
        byte = f.read(1)
        f.seek(100)
        f.write(bytes([byte[0] ^ 0xFF]))
    res = runner.invoke(app, ["verify", out])
    assert res.exit_code == 2 and "model.so" in res.stderr


def test_compile_user_errors_are_exit_2_and_write_nothing(tmp_path: str) -> None:
    out = os.path.join(tmp_path, "art")
    res = runner.invoke(app, ["compile", DEMO, "--target", "nosuch", "-o", out])
    assert res.exit_code == 2 and "x86" in res.stderr
    res = runner.invoke(app, ["compile", DEMO, "--target", "x86", "-o", out, "--input-shape", "image:1,1,8"])
    assert res.exit_code == 2 and "rank" in res.stderr
    res = runner.invoke(app, ["compile", DEMO, "--target", "x86", "-o", out, "--input-shape", "image=1"])
    assert res.exit_code == 2 and "NAME:D1" in res.stderr
    assert not os.path.exists(out)


def test_compile_prints_a_summary_for_people(tmp_path: str) -> None:
    res = runner.invoke(app, ["compile", DEMO, "--target", "arm", "-o", os.path.join(tmp_path, "arm")])
    assert res.exit_code == 0, res.output
    assert "compiled" in res.stdout and "arm" in res.stdout and "model." in res.stdout
    assert "lepton verify" in res.stdout  # says how to verify on the device


def test_targets_lists_and_shows(tmp_path: str) -> None:
    res = runner.invoke(app, ["targets"])
    assert res.exit_code == 0 and all(t in res.stdout for t in ("x86", "arm", "cuda", "opencl"))
    res = runner.invoke(app, ["targets", "show", "x86", "--json"])
    assert res.exit_code == 0 and json.loads(res.stdout)["kind"] == "x86"


def test_inspect_reports_ops_flops_and_unsupported(tmp_path: str) -> None:
    res = runner.invoke(app, ["inspect", DEMO, "--target", "x86", "--json"])
    assert res.exit_code == 0, res.output
    info = json.loads(res.stdout)
    assert info["flops"] > 0 and info["params"] > 0 and info["unsupported"] == []
    res = runner.invoke(app, ["inspect", DEMO])
    assert res.exit_code == 0 and "Conv" in res.stdout


def test_optimize_explains_a_rule_that_fired_and_one_that_did_not(tmp_path: str) -> None:
    import onnx
    from onnx import TensorProto as T
    from onnx import helper as oh

    g = oh.make_graph([oh.make_node("Transpose", ["x"], ["t"], perm=[1, 0]), oh.make_node("Relu", ["t"], ["y"])], "m",
                      [oh.make_tensor_value_info("x", T.FLOAT, [2, 3])], [oh.make_tensor_value_info("y", T.FLOAT, [3, 2])])
    src = os.path.join(tmp_path, "t.onnx")
    onnx.save(oh.make_model(g, opset_imports=[oh.make_opsetid("", 17)]), src)
    out = os.path.join(tmp_path, "o.onnx")
    res = runner.invoke(app, ["optimize", src, "-o", out, "--json", "--explain", "compose-transposes"])
    assert res.exit_code == 0, res.output
    (e,) = json.loads(res.stdout)["explain"]
    assert e["fired"] == 0 and e["node"] and "not produced by a Transpose" in e["reason"]
    res = runner.invoke(app, ["optimize", DEMO, "-o", out, "--explain", "no-such-rule"])
    assert res.exit_code == 2 and "no pass of the pipeline has a rule named 'no-such-rule'" in res.output
