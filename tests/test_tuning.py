"""Tuning: Lepton's template as a MetaSchedule space, databases applied by compile, `lepton tune`, RPC, shipped DB."""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import struct
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import onnx
import pytest
import tvm
from onnx import TensorProto, helper
from tvm import tirx
from tvm.s_tir import meta_schedule as ms
from typer.testing import CliRunner

import lepton
import targets
from lepton.cli import app
from lepton.codegen.schedules import TiledReduction
from lepton.codegen.tvm_build import cpu_prepare_passes, cpu_schedule_passes
from lepton.codegen import tuning_databases as dbs
from lepton.tuning import extract_tasks, parse_budget, parse_rpc, prune
from lepton.tuning.space import decision_paths, schedule_at, trace_path
from lepton_ir import UserError

X86 = targets.resolve("x86")
LANES = X86.vector_lanes
REGISTERS = X86.vector_registers


def _model(nodes: list[onnx.NodeProto], inputs: dict[str, list[int]], inits: dict[str, np.ndarray]) -> onnx.ModelProto:
    g = helper.make_graph(
        nodes, "m", [helper.make_tensor_value_info(k, TensorProto.FLOAT, v) for k, v in inputs.items()], [],
        [onnx.numpy_helper.from_array(v, k) for k, v in inits.items()],
    )
    model = onnx.shape_inference.infer_shapes(helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)], ir_version=8))
    model.graph.output.extend([vi for vi in model.graph.value_info if vi.name == nodes[-1].output[0]])
    return model


def _conv_matmul() -> onnx.ModelProto:
    """Conv -> Relu -> Reshape to rows -> MatMul: one conv task and one matmul task."""
    rng = np.random.default_rng(0)
    inits = {"w": rng.standard_normal((16, 8, 3, 3)).astype(np.float32) * 0.2,
             "shape": np.array([8, -1], np.int64),
             "m": rng.standard_normal((2 * 14 * 14, 48)).astype(np.float32) * 0.05}
    nodes = [helper.make_node("Conv", ["x", "w"], ["c"], pads=[1] * 4), helper.make_node("Relu", ["c"], ["r"]),
             helper.make_node("Reshape", ["r", "shape"], ["f"]), helper.make_node("MatMul", ["f", "m"], ["y"])]
    return _model(nodes, {"x": [1, 8, 14, 14]}, inits)


@pytest.fixture
def tuning_dirs(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[tuple[Path, Path]]:
    """(shipped, local) database folders of the x86 target, both empty and private to the test."""
    shipped = tmp_path / "shipped" / X86.tuning_key
    monkeypatch.setattr(dbs, "shipped_dir", lambda _t: shipped)
    monkeypatch.setenv("LEPTON_TUNING_DIR", str(tmp_path / "local"))
    monkeypatch.delenv("LEPTON_NO_TUNING", raising=False)
    yield shipped, dbs.local_dir(X86)


def _conv_and_matmul_tasks() -> tuple[lepton.tuning.Task, lepton.tuning.Task]:
    conv, matmul = sorted(extract_tasks(_conv_matmul(), X86), key=lambda t: "matmul" in t.name)
    return conv, matmul


def _scheduled(model: onnx.ModelProto) -> dict[str, tirx.PrimFunc]:
    """The model's kernels after compile's scheduling passes (databases, then the default rules), by name."""
    import lepton_ir
    from lepton.codegen import to_relax
    from lepton.compiler import optimize_for

    graph = lepton_ir.load(model)
    optimize_for(graph, X86)
    tt = X86.tvm_target()
    with tt:
        mod = tvm.transform.Sequential(cpu_prepare_passes(X86) + cpu_schedule_passes(X86))(to_relax(graph))
    return {gv.name_hint: f for gv, f in mod.functions_items() if isinstance(f, tirx.PrimFunc)}


def _commit(directory: Path, mod: tvm.IRModule, path: tuple[int, ...], secs: float) -> None:
    db = dbs.open_database(directory)
    sch = schedule_at(mod, LANES, path, REGISTERS)
    db.commit_tuning_record(ms.database.TuningRecord(
        sch.trace, db.commit_workload(mod), [secs], X86.tvm_target(), ms.arg_info.ArgInfo.from_prim_func(mod["main"])))


# -- the space ------------------------------------------------------------------------------------


def test_default_decisions_reproduce_the_default_schedule_and_every_point_computes_the_same() -> None:
    tasks = extract_tasks(_conv_matmul(), X86)
    assert sorted("conv2d" if "conv2d" in t.name else t.name for t in tasks) == ["conv2d", "matmul"]
    tt = X86.tvm_target()
    for task in tasks:
        default = TiledReduction(LANES, REGISTERS).apply(task.mod["main"], tt, False)
        assert default is not None
        grid = list(decision_paths(task.mod, LANES, REGISTERS))
        paths = [p for p, _ in grid]
        assert len(set(paths)) == len(paths) >= 4 and not any(paths[0])
        tvm.ir.assert_structural_equal(grid[0][1].mod["main"].body, default.mod["main"].body)
        args = [np.random.default_rng(1).standard_normal([int(d) for d in info.shape]).astype(np.float32)
                for info in ms.arg_info.ArgInfo.from_prim_func(task.mod["main"])]
        results = []
        for _, sch in grid[:: max(1, len(grid) // 6)]:
            tensors = [tvm.runtime.tensor(a.copy()) for a in args]
            tvm.compile(sch.mod, target=tt)["main"](*tensors)
            results.append(tensors[-1].numpy())
        for r in results[1:]:
            np.testing.assert_allclose(r, results[0], rtol=1e-4, atol=1e-4)


# -- databases ------------------------------------------------------------------------------------


def test_prune_keeps_the_best_successful_record_per_workload(tmp_path: Path) -> None:
    task, _ = _conv_and_matmul_tasks()
    paths = [p for p, _ in decision_paths(task.mod, LANES, REGISTERS)][:4]
    for path, secs in zip(paths, [3e-3, 1e-3, 1e10, 2e-3], strict=True):  # 1e10: MetaSchedule's failed measurement
        _commit(tmp_path, task.mod, path, secs)
    (best,) = prune(dbs.open_database(tmp_path)).get_all_tuning_records()
    assert trace_path(best.trace) == paths[1] and float(best.run_secs[0]) == 1e-3
    dbs.write(dbs.open_database(tmp_path), tmp_path / "shipped")
    (again,) = dbs.open_database(tmp_path / "shipped").get_all_tuning_records()
    assert trace_path(again.trace) == paths[1]


def test_compile_applies_shipped_then_local_records_and_default_rules_for_missing_workloads(
    tuning_dirs: tuple[Path, Path],
) -> None:
    shipped, local = tuning_dirs
    model = _conv_matmul()
    conv, matmul = _conv_and_matmul_tasks()
    last = list(decision_paths(conv.mod, LANES, REGISTERS))[-1][0]
    _commit(local, conv.mod, last, 1e-3)
    funcs = _scheduled(model)
    (conv_f,) = [f for n, f in funcs.items() if "conv" in n]
    (mm_f,) = [f for n, f in funcs.items() if "matmul" in n]
    tvm.ir.assert_structural_equal(conv_f.body, schedule_at(conv.mod, LANES, last, REGISTERS).mod["main"].body)
    tvm.ir.assert_structural_equal(mm_f.body, schedule_at(matmul.mod, LANES, (), REGISTERS).mod["main"].body)  # not in any DB
    assert "global_symbol" not in conv_f.attrs and conv_f.attrs["tirx.is_scheduled"]

    other = next(p for p, _ in decision_paths(conv.mod, LANES, REGISTERS) if p not in (last, (0,) * len(last)))
    _commit(shipped, conv.mod, other, 5e-3)  # slower than the local record, but the shipped database comes first
    (conv_f,) = [f for n, f in _scheduled(model).items() if "conv" in n]
    tvm.ir.assert_structural_equal(conv_f.body, schedule_at(conv.mod, LANES, other, REGISTERS).mod["main"].body)
    res = lepton.compile(model, X86, use_cache=False)
    assert res.verify_report is not None and res.verify_report.ok


def test_no_tuning_switch_and_fingerprint(tuning_dirs: tuple[Path, Path], monkeypatch: pytest.MonkeyPatch) -> None:
    _, local = tuning_dirs
    empty = dbs.fingerprint(X86)
    task, _ = _conv_and_matmul_tasks()
    _commit(local, task.mod, (0,) * 3, 1e-3)
    assert dbs.fingerprint(X86) != empty and len(dbs.databases_for(X86)) == 1
    monkeypatch.setenv("LEPTON_NO_TUNING", "1")
    assert dbs.databases_for(X86) == [] and dbs.fingerprint(X86) == empty
    assert dbs.databases_for(targets.resolve("cuda")) == []


def test_a_damaged_local_database_is_ignored_by_compile_and_refused_by_tune(tuning_dirs: tuple[Path, Path]) -> None:
    _, local = tuning_dirs
    task, _ = _conv_and_matmul_tasks()
    _commit(local, task.mod, (0,) * 3, 1e-3)
    text = (local / dbs.RECORDS).read_text()
    (local / dbs.RECORDS).write_text(text[: len(text) // 2])  # killed mid-write
    with pytest.warns(UserWarning, match="cannot be read"):
        assert dbs.databases_for(X86) == []
    with pytest.raises(UserError, match="delete that line"):
        dbs.open_database(local)


# -- tune, CLI --------------------------------------------------------------------------------------


def test_lepton_tune_measures_two_candidates_and_compile_applies_the_database(
    tuning_dirs: tuple[Path, Path], tmp_path: Path
) -> None:
    _, local = tuning_dirs
    model_path = tmp_path / "m.onnx"
    onnx.save(_conv_matmul(), model_path)
    res = CliRunner().invoke(app, ["tune", str(model_path), "-t", "x86", "--budget", "2m", "--trials", "2", "--json"])
    assert res.exit_code == 0, res.output
    report = json.loads(res.stdout)
    assert report["trials"] == 2 and report["database"] == str(local) and len(report["tasks"]) == 2
    measured = [t for t in report["tasks"] if t["trials"]]
    assert measured and all(t["default_secs"] and t["best_secs"] for t in measured)
    records = dbs.open_database(local).get_all_tuning_records()
    assert len(records) == 2 and all(0 < float(s) < 1 for r in records for s in r.run_secs)
    assert all(not any(trace_path(r.trace)) for r in records)  # each task's default comes first
    compiled = lepton.compile(model_path, X86, use_cache=False)
    assert compiled.verify_report is not None and compiled.verify_report.ok


def test_tune_rejects_bad_budgets_gpu_targets_and_rpc_addresses(tmp_path: Path) -> None:
    assert parse_budget("90s") == 90 and parse_budget("30m") == 1800 and parse_budget("1h30m") == 5400
    assert parse_budget("45") == 45 and parse_budget("1.5h") == 5400
    for bad in ("", "abc", "10x", "0m", "5m3"):
        with pytest.raises(UserError):
            parse_budget(bad)
    assert parse_rpc("127.0.0.1:9190:rasp4") == lepton.tuning.Remote("127.0.0.1", 9190, "rasp4")
    for bad in ("host:port:key", "host:9190", "9190:key"):
        with pytest.raises(UserError):
            parse_rpc(bad)
    model_path = tmp_path / "m.onnx"
    onnx.save(_conv_matmul(), model_path)
    for args in (["--budget", "soon"], ["-t", "cuda"], ["-t", "arm"], ["--rpc", "nowhere"]):
        res = CliRunner().invoke(app, ["tune", str(model_path), "-q", *args])
        assert res.exit_code == 2, (args, res.output)


def test_arm_candidates_are_built_here_and_linked_by_the_cross_compiler() -> None:
    from lepton.tuning import measure, tuner

    if not shutil.which(measure.CROSS_GCC):
        pytest.skip(f"{measure.CROSS_GCC} is not installed (make system-deps)")
    arm = targets.resolve("arm")
    assert tuner._exporter(arm) is measure.export_aarch64
    conv = next(t for t in extract_tasks(_conv_matmul(), arm) if "conv" in t.name)
    path = measure.export_aarch64(measure.build(schedule_at(conv.mod, arm.vector_lanes, (), arm.vector_registers).mod, arm.tvm_target(), None))
    with open(path, "rb") as f:
        assert struct.unpack_from("<H", f.read(20), 18)[0] == 183  # EM_AARCH64
    shutil.rmtree(os.path.dirname(path))


def test_progress_display_shows_budget_left_and_each_task() -> None:
    from rich.console import Console

    from lepton.cli_tune import render
    from lepton.tuning import TaskStatus, TuneReport

    report = TuneReport("m.onnx", "x86", "x86-avx512-fp32", "/db", 1800.0, trials=12, tasks=[
        TaskStatus("fused_conv2d_relu", 2, grid=22, measured=12, trials=12, default_secs=2e-3, best_secs=1e-3,
                   best_choices=(2, 14, 8, 1)),
        TaskStatus("matmul", 1, best_secs=5e-4, best_choices=(64, 4, 0), shipped=True),
    ])
    console = Console(record=True, width=120)
    console.print(render(report, elapsed=600.0))
    text = console.export_text()
    assert "10m00s of 30m00s, 20m00s left, 12 trials" in text
    assert "12/22" in text and "2.00x" in text and "U=8 axis2 V=14 V-outer" in text
    assert "shipped" in text and "U=4 V=64 V-inner" in text


# -- RPC --------------------------------------------------------------------------------------------


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _wait_for_device(port: int, key: str, seconds: float = 60.0) -> None:
    """Until the tracker on `port` lists a free server registered under `key`."""
    from tvm import rpc

    end = time.monotonic() + seconds
    while time.monotonic() < end:
        try:
            queue = rpc.connect_tracker("127.0.0.1", port).summary()["queue_info"]
            if queue.get(key, {}).get("free", 0) > 0:
                return
        except (OSError, RuntimeError):
            pass
        time.sleep(0.5)
    raise TimeoutError(f"no RPC server registered under {key!r} with the tracker on port {port}")


@pytest.mark.slow
def test_tune_over_rpc_on_loopback(tmp_path: Path) -> None:
    """A tracker and a server on this machine stand in for a board: measurements go through RPC."""
    tracker_port, server_port = _free_port(), _free_port()
    # Each runs its server in a child process: own sessions, so the cleanup ends the children too.
    tracker = subprocess.Popen([sys.executable, "-m", "tvm.exec.rpc_tracker", "--host", "127.0.0.1",
                                "--port", str(tracker_port), "--port-end", str(tracker_port + 1), "--silent"],
                               start_new_session=True)
    server = subprocess.Popen([sys.executable, "-m", "tvm.exec.rpc_server", "--host", "127.0.0.1",
                               "--port", str(server_port), "--port-end", str(server_port + 1),
                               "--tracker", f"127.0.0.1:{tracker_port}", "--key", "loopback", "--silent"],
                              start_new_session=True)
    try:
        _wait_for_device(tracker_port, "loopback")
        address = f"127.0.0.1:{tracker_port}:loopback"
        report = lepton.tuning.tune(_conv_matmul(), X86, budget_seconds=120, max_trials=3, rpc=address,
                                    database_dir=tmp_path / "db")
        assert report.trials == 3 and report.rpc == address
        records = dbs.open_database(tmp_path / "db").get_all_tuning_records()
        assert len(records) == 3 and all(0 < float(s) < 1 for r in records for s in r.run_secs)
    finally:
        for proc in (server, tracker):
            os.killpg(proc.pid, signal.SIGTERM)
            proc.wait(timeout=10)


# -- the shipped database ---------------------------------------------------------------------------


def _shipped_keys() -> list[str]:
    root = Path(targets.__file__).resolve().parent / "tuning"
    return sorted(p.name for p in root.iterdir() if dbs.exists(p)) if root.is_dir() else []


_STALE = pytest.mark.xfail(reason="known defect: the shipped x86-avx512-fp32 database predates the transformer fusions "
                            "(issue 13), so 5 of BERT's fused matmul workloads are missing and BERT compiles untuned on "
                            "AVX-512 hosts; fix by re-running `python -m bench.ship_tuning` on an AVX-512 host (~30 min)",
                            strict=False)


@pytest.mark.parametrize("name", ["resnet18", "resnet50", "mobilenet_v2", pytest.param("bert_small", marks=_STALE),
                                  pytest.param("bert_base", marks=_STALE)])
def test_shipped_database_covers_every_conv_and_matmul_workload_of_the_bench_models(name: str) -> None:
    from bench.models import BENCH_MODELS

    assert _shipped_keys(), "no shipped tuning database under targets/tuning/"
    if X86.kind != "x86" or not dbs.exists(dbs.shipped_dir(X86)):
        pytest.skip(f"this host's tuning key {X86.tuning_key!r} has no shipped database (shipped: {_shipped_keys()}); "
                    "the coverage check runs on a host of a shipped key")
    shipped = dbs.open_database(dbs.shipped_dir(X86))
    missing = [t.name for t in extract_tasks(BENCH_MODELS[name](), X86) if not shipped.has_workload(t.mod)]
    assert not missing, (f"{name}: workloads missing from {dbs.shipped_dir(X86)} (the compile path changed them; "
                         f"re-run `python -m bench.ship_tuning`): {missing}")
    manifest = json.loads((dbs.shipped_dir(X86) / dbs.MANIFEST).read_text())
    assert manifest["tuning_key"] == X86.tuning_key and name in manifest["models"]
