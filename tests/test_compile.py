"""`lepton.compile`: every target builds, x86 modules match onnxruntime, artifacts, cache, errors."""

from __future__ import annotations

import os
import shutil
import struct

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper

import lepton
import lepton_ir
from lepton.artifact import read_manifest
from lepton.codegen.opencl_check import opencl_unavailable
from lepton.errors import InputShapeError, UnsupportedOpsError, VerificationError, WrongDeviceError
from passes.ort import run_model
from targets import TargetError

DEMO = os.path.join(os.path.dirname(__file__), "..", "bench", "models", "digits_cnn.onnx")


def _elf_machine(path: str) -> int:
    with open(path, "rb") as f:
        head = f.read(20)
    assert head[:4] == b"\x7fELF", "not an ELF file"
    return struct.unpack_from("<H", head, 18)[0]


def _flatten_model() -> onnx.ModelProto:
    """x[batch,3,4,4] -> Relu -> PyTorch-style flatten (Shape/Gather/Unsqueeze/Concat/Reshape) -> MatMul."""
    w = np.random.default_rng(0).standard_normal((48, 5)).astype(np.float32)
    nodes = [
        helper.make_node("Relu", ["x"], ["r"]),
        helper.make_node("Shape", ["r"], ["s"]),
        helper.make_node("Gather", ["s", "zero"], ["b"], axis=0),
        helper.make_node("Unsqueeze", ["b", "axes0"], ["b1"]),
        helper.make_node("Concat", ["b1", "minus1"], ["target"], axis=0),
        helper.make_node("Reshape", ["r", "target"], ["flat"]),
        helper.make_node("MatMul", ["flat", "w"], ["y"]),
    ]
    inits = [
        helper.make_tensor("zero", TensorProto.INT64, [], [0]),
        helper.make_tensor("axes0", TensorProto.INT64, [1], [0]),
        helper.make_tensor("minus1", TensorProto.INT64, [1], [-1]),
        onnx.numpy_helper.from_array(w, "w"),
    ]
    g = helper.make_graph(
        nodes, "flatten",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 3, 4, 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", 5])],
        inits,
    )
    return helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)], ir_version=10)


@pytest.fixture(scope="module")
def demo_x86(tmp_path_factory: pytest.TempPathFactory) -> lepton.Compiled:
    out = tmp_path_factory.mktemp("demo") / "x86"
    return lepton.compile(DEMO, "x86", output_dir=out, use_cache=False)


def test_x86_module_matches_onnxruntime_on_new_inputs(demo_x86: lepton.Compiled) -> None:
    assert demo_x86.verify_report is not None and demo_x86.verify_report.ok
    x = np.random.default_rng(1).standard_normal((7, 1, 8, 8)).astype(np.float32)
    want = run_model(onnx.load(DEMO), {"image": x})["logits"]
    got = demo_x86.run(image=x)["logits"]
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-5)


def test_artifact_holds_library_model_bundle_and_pass_log(demo_x86: lepton.Compiled) -> None:
    m = read_manifest(demo_x86.path)
    assert set(m.files) >= {"model.so", "model.opt.onnx", "verify/inputs.npz", "verify/expected.npz"}
    assert _elf_machine(os.path.join(demo_x86.path, "model.so")) == 62  # EM_X86_64
    assert m.target["name"] == "x86"
    names = [r["pass"] for r in m.passes]
    assert "fold-constants" in names and "expand-functions" in names
    assert m.passes[0]["nodes_before"] == 20 and m.passes[-1]["nodes_after"] < 20
    assert [s.name for s in m.signature.inputs] == ["image"] and [s.name for s in m.signature.outputs] == ["logits"]
    optimized = onnx.load(os.path.join(demo_x86.path, "model.opt.onnx"))  # a Lepton-domain op is one node; importing
    assert len(optimized.graph.node) == m.passes[-1]["nodes_after"]  # it would inline its function body
    lepton_ir.load(os.path.join(demo_x86.path, "model.opt.onnx"))


def test_load_runs_the_artifact_again(demo_x86: lepton.Compiled) -> None:
    module = lepton.load(demo_x86.path)
    x = np.zeros((1, 1, 8, 8), np.float32)
    np.testing.assert_array_equal(module(image=x)["logits"], demo_x86.run(image=x)["logits"])


def test_arm_builds_an_aarch64_library(tmp_path: str) -> None:
    if shutil.which("aarch64-linux-gnu-gcc") is None:
        pytest.skip("aarch64-linux-gnu-gcc missing (make system-deps); the .tar path is tested separately")
    res = lepton.compile(DEMO, "arm", output_dir=os.path.join(tmp_path, "arm"), use_cache=False)
    assert res.module is None and res.verify_report is None
    assert _elf_machine(os.path.join(res.path, "model.so")) == 183  # EM_AARCH64
    with pytest.raises(WrongDeviceError, match="arm"):
        lepton.load(res.path)
    with pytest.raises(lepton_ir.UserError, match="does not run on this machine"):
        res.run(image=np.zeros((1, 1, 8, 8), np.float32))


def test_arm_without_cross_linker_ships_objects_in_a_tar(tmp_path: str, monkeypatch: pytest.MonkeyPatch) -> None:
    import lepton.codegen.tvm_build as build

    monkeypatch.setattr(build.shutil, "which", lambda name: None)
    res = lepton.compile(DEMO, "arm", output_dir=os.path.join(tmp_path, "arm"), use_cache=False)
    assert res.manifest.library == "model.tar"
    assert any("aarch64-linux-gnu-gcc" in n for n in res.manifest.notes)
    import tarfile

    with tarfile.open(os.path.join(res.path, "model.tar")) as tar:
        objs = [m for m in tar.getmembers() if m.name.endswith(".o")]
        assert objs
        assert _elf_machine_bytes(tar.extractfile(objs[0]).read()) == 183


def _elf_machine_bytes(data: bytes) -> int:
    assert data[:4] == b"\x7fELF"
    return struct.unpack_from("<H", data, 18)[0]


def test_cuda_artifact_holds_compiled_kernels(tmp_path: str) -> None:
    if shutil.which("nvcc") is None:
        pytest.skip("nvcc (CUDA toolkit) is not on PATH")
    res = lepton.compile(DEMO, "cuda{arch=sm_86}", output_dir=os.path.join(tmp_path, "cuda"), use_cache=False)
    with open(os.path.join(res.path, "model.fatbin"), "rb") as f:
        fatbin = f.read()
    assert fatbin[:4] == bytes.fromhex("50ed55ba")  # fatbin magic
    assert b"sm_86" in fatbin or b"\x7fELF" in fatbin
    with open(os.path.join(res.path, "model.cu")) as f:
        assert "__global__" in f.read()
    assert res.manifest.target["tvm"]["arch"] == "sm_86"


def test_opencl_artifact_has_kernel_source_checked_by_pocl(tmp_path: str) -> None:
    res = lepton.compile(DEMO, "opencl", output_dir=os.path.join(tmp_path, "ocl"), use_cache=False)
    with open(os.path.join(res.path, "kernels", "model.cl")) as f:
        source = f.read()
    assert source.count("__kernel void") >= 3
    why = opencl_unavailable()
    if why:
        assert any("not compiled here" in n for n in res.manifest.notes)
        pytest.skip(f"kernel source written; PoCL check skipped: {why}")
    assert any("compiled on this machine" in n for n in res.manifest.notes), res.manifest.notes


def test_unsupported_ops_are_all_reported_before_tvm_runs(tmp_path: str) -> None:
    nodes = [
        helper.make_node("Det", ["x"], ["d"], name="det_node"),
        helper.make_node("Relu", ["x"], ["r"], name="relu"),
        helper.make_node("FusedMatMul", ["r", "r"], ["c"], name="custom_node", domain="com.microsoft"),
    ]
    g = helper.make_graph(
        nodes, "bad",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [3, 3])],
        [helper.make_tensor_value_info("d", TensorProto.FLOAT, []), helper.make_tensor_value_info("c", TensorProto.FLOAT, [3, 3])],
    )
    model = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17), helper.make_opsetid("com.microsoft", 1)], ir_version=10)
    out = os.path.join(tmp_path, "out")
    with pytest.raises(UnsupportedOpsError) as e:
        lepton.compile(model.SerializeToString(), "x86", output_dir=out, use_cache=False)
    assert {n.node for n in e.value.nodes} == {"det_node", "custom_node"}
    assert "det_node" in str(e.value) and "custom_node" in str(e.value) and "'x86'" in str(e.value)
    assert not os.path.exists(out)


def test_symbolic_batch_stays_symbolic_or_can_be_pinned(tmp_path: str) -> None:
    model = _flatten_model()
    x3 = np.random.default_rng(2).standard_normal((3, 3, 4, 4)).astype(np.float32)
    want = run_model(model, {"x": x3})["y"]
    dynamic = lepton.compile(model, "x86", use_cache=False)
    np.testing.assert_allclose(dynamic.run(x=x3)["y"], want, rtol=1e-4, atol=1e-5)
    pinned = lepton.compile(model, "x86", input_shapes={"x": [3, 3, 4, 4]}, use_cache=False)
    np.testing.assert_allclose(pinned.run(x=x3)["y"], want, rtol=1e-4, atol=1e-5)
    assert [s.shape for s in pinned.manifest.signature.inputs] == [(3, 3, 4, 4)]
    with pytest.raises(lepton_ir.UserError, match="'x'"):
        pinned.run(x=np.zeros((2, 3, 4, 4), np.float32))


@pytest.mark.parametrize(
    ("shapes", "match"),
    [({"nope": [1, 3, 4, 4]}, "not a model input"), ({"x": [1, 3, 4]}, "rank"), ({"x": [1, 3, 5, 4]}, "fixed at 4")],
)
def test_bad_input_shapes_are_user_errors(shapes: dict[str, list[int]], match: str) -> None:
    with pytest.raises(InputShapeError, match=match):
        lepton.compile(_flatten_model(), "x86", input_shapes=shapes, use_cache=False)


def test_unknown_target_lists_the_known_ones() -> None:
    with pytest.raises(TargetError, match="x86-avx512"):
        lepton.compile(DEMO, "x87")


def test_cache_hit_returns_the_same_artifact_without_building(tmp_path: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LEPTON_CACHE_DIR", os.path.join(tmp_path, "cache"))
    first = lepton.compile(DEMO, "x86", output_dir=os.path.join(tmp_path, "a"))
    assert not first.cached

    import lepton.compiler as compile_mod

    def no_build(*_a: object, **_k: object) -> None:
        raise AssertionError("a cache hit must not build")

    monkeypatch.setattr(compile_mod, "build", no_build)
    second = lepton.compile(DEMO, "x86", output_dir=os.path.join(tmp_path, "b"))
    assert second.cached and second.verify_report is not None and second.verify_report.ok
    assert read_manifest(second.path).files == read_manifest(first.path).files
    with pytest.raises(AssertionError, match="must not build"):
        lepton.compile(DEMO, "x86", output_dir=os.path.join(tmp_path, "c"), use_cache=False)
    with pytest.raises(AssertionError, match="must not build"):  # other options: another key
        lepton.compile(DEMO, "x86", input_shapes={"image": [2, 1, 8, 8]})


def test_front_doors_bytes_proto_and_graph_give_the_same_module(demo_x86: lepton.Compiled) -> None:
    model = onnx.load(DEMO)
    graph = lepton_ir.load(model)
    before = lepton_ir.format_graph(graph)
    for source in (model.SerializeToString(), model, graph):
        res = lepton.compile(source, "x86", use_cache=False)
        assert res.manifest.source_sha256 == demo_x86.manifest.source_sha256
    assert lepton_ir.format_graph(graph) == before  # the caller's graph is not changed


def test_out_of_tolerance_module_raises_verification_error(tmp_path: str, monkeypatch: pytest.MonkeyPatch) -> None:
    import lepton.compiler as compile_mod

    real = compile_mod.Reference.run
    monkeypatch.setattr(compile_mod.Reference, "run",
                        lambda self, feeds, sample=0: {k: v + 1e-2 for k, v in real(self, feeds, sample).items()})
    with pytest.raises(VerificationError) as e:
        lepton.compile(DEMO, "x86", output_dir=os.path.join(tmp_path, "v"), use_cache=False)
    assert e.value.exit_code == 1 and "logits" in str(e.value)
