"""Artifacts: writing, hash checks before native code loads, device checks, running, verifying, caching."""

from __future__ import annotations

import json
import platform
import shutil
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

import targets
from lepton import artifact, cache
from lepton.artifact import Signature, TensorSpec, load, read_manifest, signature_from_onnx, verify_artifact, write_artifact
from lepton.errors import ArtifactError, InputError, TamperedArtifactError, WrongDeviceError
from lepton.module import _as_array

TOL = {"rtol": 1e-4, "atol": 1e-5}
X, BIAS, Y, IDX = "x", "bias/1", "y:0", "arg max"  # odd names: npz keys and kwargs cannot hold them all


def _model() -> onnx.ModelProto:
    """y = Relu(x @ W + bias), idx = ArgMax(x @ W + bias); batch N symbolic, shared by both inputs."""
    rng = np.random.default_rng(0)
    w = numpy_helper.from_array(rng.standard_normal((4, 3)).astype(np.float32), "W")
    nodes = [
        helper.make_node("MatMul", [X, "W"], ["m"]),
        helper.make_node("Add", ["m", BIAS], ["a"]),
        helper.make_node("Relu", ["a"], [Y]),
        helper.make_node("ArgMax", ["a"], [IDX], axis=1, keepdims=0),
    ]
    graph = helper.make_graph(
        nodes, "tiny",
        [helper.make_tensor_value_info(X, TensorProto.FLOAT, ["N", 4]), helper.make_tensor_value_info(BIAS, TensorProto.FLOAT, ["N", 3])],
        [helper.make_tensor_value_info(Y, TensorProto.FLOAT, ["N", 3]), helper.make_tensor_value_info(IDX, TensorProto.INT64, ["N"])],
        [w],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    return model


def _inputs(batch: int, seed: int = 1) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    return {X: rng.standard_normal((batch, 4)).astype(np.float32), BIAS: rng.standard_normal((batch, 3)).astype(np.float32)}


@dataclass(frozen=True)
class Built:
    session: ort.InferenceSession  # onnxruntime on _MODEL
    library: Path  # the compiled model.so, outside any artifact
    artifact: Path  # a pristine artifact; tests copy it before changing anything


_MODEL = _model()


def _write(out: Path, built: Built, target: Any, expected: dict[str, np.ndarray] | None = None,
           **overrides: Any) -> artifact.Manifest:
    """An artifact in `out` holding a copy of the built library, verified on `_inputs(2)`."""
    out.mkdir(parents=True, exist_ok=True)
    library = overrides.pop("library", "model.so")
    shutil.copyfile(built.library, out / library)
    inputs = _inputs(2)
    args = dict(library=library, library_format="shared-library", target=target, source_sha256="ab" * 32,
                source_name="tiny.onnx", signature=signature_from_onnx(_MODEL),
                passes=[{"name": "fold-constants", "nodes": [4, 4], "ms": 0.1}], verify_inputs=inputs,
                verify_expected=_ort(built, inputs) if expected is None else expected, tolerance=TOL, notes=["test"])
    return write_artifact(out, **{**args, **overrides})


def _ort(built: Built, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    return dict(zip([Y, IDX], built.session.run(None, inputs), strict=True))


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> Built:
    import tvm
    from tvm.relax.frontend.onnx import from_onnx

    root = tmp_path_factory.mktemp("built")
    ex = tvm.compile(from_onnx(_MODEL), target=tvm.target.Target({"kind": "llvm"}))
    ex.export_library(str(root / "model.so"))
    session = ort.InferenceSession(_MODEL.SerializeToString(), providers=["CPUExecutionProvider"])
    built = Built(session, root / "model.so", root / "artifact")
    built.artifact.mkdir()
    onnx.save(_MODEL, built.artifact / "model.opt.onnx")
    _write(built.artifact, built, targets.resolve("x86"))
    return built


@pytest.fixture
def art(built: Built, tmp_path: Path) -> Path:
    """A private copy of the pristine artifact."""
    dst = tmp_path / "art"
    shutil.copytree(built.artifact, dst)
    return dst


@pytest.fixture
def no_native_load(monkeypatch: pytest.MonkeyPatch) -> None:
    """Fail the test if anything loads a native library."""
    import tvm

    def refuse(*args: Any, **kwargs: Any) -> None:
        pytest.fail(f"native code was loaded: {args}")

    monkeypatch.setattr(tvm.runtime, "load_module", refuse)


# --- writing and the manifest ---


def test_manifest_lists_and_hashes_every_file(built: Built) -> None:
    m = read_manifest(built.artifact)
    on_disk = {p.relative_to(built.artifact).as_posix() for p in built.artifact.rglob("*") if p.is_file()}
    assert set(m.files) == on_disk - {"manifest.json"}
    assert {"model.so", "model.opt.onnx", "verify/inputs.npz", "verify/expected.npz"} <= set(m.files)
    for rel, sha in m.files.items():
        assert artifact.sha256_file(built.artifact / rel) == sha
    assert m.data["format"] == "lepton-artifact/1"
    assert m.target == targets.resolve("x86").to_dict()
    assert m.library == "model.so" and m.library_format == "shared-library"
    assert m.signature == Signature(
        (TensorSpec(X, "float32", ("N", 4)), TensorSpec(BIAS, "float32", ("N", 3))),
        (TensorSpec(Y, "float32", ("N", 3)), TensorSpec(IDX, "int64", ("N",))))
    assert set(m.tools) == {"tvm", "apache-tvm-ffi", "onnx", "onnxruntime", "numpy", "python"}
    assert m.tolerance == (1e-4, 1e-5) and m.source_sha256 == "ab" * 32
    assert m.passes == [{"name": "fold-constants", "nodes": [4, 4], "ms": 0.1}] and m.notes == ["test"]
    assert m.verify["input_names"] == [X, BIAS] and m.verify["output_names"] == [Y, IDX]
    assert m.data["created"].endswith("+00:00")


def test_signature_json_round_trip() -> None:
    sig = signature_from_onnx(_MODEL)
    sig = Signature(sig.inputs, (*sig.outputs, TensorSpec("any rank", "float32", None)))
    assert Signature.from_json(json.loads(json.dumps(sig.to_json()))) == sig
    with pytest.raises(ValueError, match="repeat"):
        Signature.from_json({"inputs": [sig.inputs[0].to_json()] * 2, "outputs": []})


def test_write_refuses_symlinks_in_the_folder(built: Built, tmp_path: Path) -> None:
    out = tmp_path / "out"
    out.mkdir()
    (out / "link.onnx").symlink_to(built.library)
    with pytest.raises(TamperedArtifactError, match="symbolic link"):
        _write(out, built, targets.resolve("x86"))
    assert not (out / "manifest.json").exists()


# --- loading and running ---


def test_load_and_run_matches_onnxruntime(art: Path, built: Built) -> None:
    module = load(art)
    for batch in (1, 3):
        inputs = _inputs(batch, seed=batch)
        got, want = module.run(inputs), _ort(built, inputs)
        assert list(got) == [Y, IDX]
        np.testing.assert_allclose(got[Y], want[Y], **TOL)
        np.testing.assert_array_equal(got[IDX], want[IDX])
        assert got[IDX].dtype == np.int64 and got[Y].shape == (batch, 3)
    assert [t.name for t in module.inputs] == [X, BIAS] and module.path == art
    assert module.target["name"] == "x86" and "x86" in repr(module)


def test_run_accepts_keywords_lists_and_non_contiguous(art: Path, built: Built) -> None:
    module = load(art)
    inputs = _inputs(2)
    wide = np.zeros((2, 8), np.float32)
    wide[:, ::2] = inputs[X]
    got = module({BIAS: inputs[BIAS].tolist()}, x=wide[:, ::2])
    np.testing.assert_allclose(got[Y], _ort(built, inputs)[Y], **TOL)


@pytest.mark.parametrize(("feeds", "message"), [
    ({X: np.zeros((2, 4), np.float32), BIAS: np.zeros((2, 3), np.float32), "z": 1}, r"unknown input\(s\) 'z'.*bias/1"),
    ({X: np.zeros((2, 4), np.float32)}, r"missing input\(s\) 'bias/1'"),
    ({X: np.zeros((2, 4), np.float64), BIAS: np.zeros((2, 3), np.float32)}, r"input 'x': dtype float64, expected float32"),
    ({X: [[1.5] * 4] * 2, BIAS: np.zeros((2, 3), np.int64)}, r"input 'bias/1': dtype int64, expected float32"),
    ({X: np.zeros((2, 4, 1), np.float32), BIAS: np.zeros((2, 3), np.float32)}, r"input 'x': rank 3"),
    ({X: np.zeros((2, 5), np.float32), BIAS: np.zeros((2, 3), np.float32)}, r"input 'x': dim 1 is 5, expected 4"),
    ({X: np.zeros((2, 4), np.float32), BIAS: np.zeros((3, 3), np.float32)}, r"input 'bias/1': dim 0 \(N\) is 3, but input 'x' has N = 2"),
    ({X: [[1.0, 2.0], [3.0]], BIAS: np.zeros((2, 3), np.float32)}, r"input 'x': cannot convert list"),
])
def test_run_rejects_bad_inputs(art: Path, feeds: dict[str, Any], message: str, monkeypatch: pytest.MonkeyPatch) -> None:
    module = load(art)
    monkeypatch.setattr(module, "_main", lambda *a: pytest.fail("TVM called with bad inputs"))
    with pytest.raises(InputError, match=message):
        module.run(feeds)


def test_run_rejects_ambiguous_or_positional_inputs(art: Path) -> None:
    module = load(art)
    with pytest.raises(InputError, match="'x' given both in the dict and as keywords"):
        module.run({X: np.zeros((2, 4), np.float32), BIAS: np.zeros((2, 3), np.float32)}, x=np.zeros((2, 4), np.float32))
    with pytest.raises(InputError, match="by name"):
        module.run([np.zeros((2, 4), np.float32)])


def test_python_values_convert_only_within_kind() -> None:
    spec = TensorSpec("i", "int64", (2,))
    assert _as_array(spec, [1, 2]).dtype == np.int64
    with pytest.raises(InputError, match="dtype float64, expected int64"):
        _as_array(spec, [1.5, 2.0])
    assert _as_array(TensorSpec("f", "float32", (2,)), [1, 2.5]).dtype == np.float32
    with pytest.raises(InputError, match="dtype '\\?'"):
        _as_array(TensorSpec("u", "?", (2,)), [True, False])  # np.dtype("?") would be bool


# --- refusing tampered or foreign artifacts, before native code loads ---


def _flip_byte(path: Path, offset: int = 100) -> None:
    data = bytearray(path.read_bytes())
    data[offset] ^= 0x01
    path.write_bytes(bytes(data))


def test_tampered_library_is_refused_before_loading(art: Path, no_native_load: None) -> None:
    _flip_byte(art / "model.so")
    with pytest.raises(TamperedArtifactError, match=r"model\.so was modified.*sha256 [0-9a-f]{16}.*manifest says [0-9a-f]{16}"):
        load(art)


def test_tampered_expected_outputs_are_refused(art: Path, no_native_load: None) -> None:
    _flip_byte(art / "verify" / "expected.npz", offset=-1)
    with pytest.raises(TamperedArtifactError, match="verify/expected.npz"):
        verify_artifact(art)


@pytest.mark.parametrize("name", ["extra.so", "kernels/libx.so.1", "objs.tar", "k.o"])
def test_unlisted_native_code_is_refused(art: Path, built: Built, no_native_load: None, name: str) -> None:
    (art / name).parent.mkdir(exist_ok=True)
    shutil.copyfile(built.library, art / name)
    with pytest.raises(TamperedArtifactError, match="native code the manifest does not list"):
        load(art)


def test_unlisted_data_file_is_tolerated(art: Path) -> None:
    (art / "README.txt").write_text("notes")
    load(art)


def test_missing_file_is_refused(art: Path, no_native_load: None) -> None:
    (art / "verify" / "inputs.npz").unlink()
    with pytest.raises(ArtifactError, match="verify/inputs.npz is listed in the manifest but missing"):
        load(art)


def test_symlinked_library_is_refused(art: Path, built: Built, no_native_load: None) -> None:
    (art / "model.so").unlink()
    (art / "model.so").symlink_to(built.library)  # same bytes, but outside the folder
    with pytest.raises(TamperedArtifactError, match="symbolic link"):
        load(art)


def _edit_manifest(art: Path, edit: Any) -> None:
    data = json.loads((art / "manifest.json").read_text())
    edit(data)
    (art / "manifest.json").write_text(json.dumps(data))


@pytest.mark.parametrize(("edit", "message"), [
    (lambda d: d["files"].update({"../outside.so": "0" * 64}), "unsafe path '../outside.so'"),
    (lambda d: d["files"].update({"/etc/passwd": "0" * 64}), "unsafe path"),
    (lambda d: d.update(library="other.so"), "'other.so' is not listed in 'files'"),
    (lambda d: d.update(format="lepton-artifact/99"), "format is 'lepton-artifact/99'"),
    (lambda d: d.pop("signature"), "'signature' must be a dict"),
    (lambda d: d["signature"]["inputs"][0].update(shape="N"), "signature: .*shape"),
    (lambda d: d["tolerance"].update(rtol=-1), "'tolerance' needs"),
    (lambda d: d["files"].update({"model.so": "XYZ"}), "sha256 hex"),
    (lambda d: d.update(library_format="zip"), "library_format"),
    (lambda d: d["verify"].update(output_names=["nope"]), "not distinct signature outputs"),
    (lambda d: d["verify"].update(input_names=["x"]), "differ from the signature's inputs"),
    (lambda d: d["verify"].update(input_names=[["x"], 1]), "string lists"),
])
def test_bad_manifest_is_refused(art: Path, no_native_load: None, edit: Any, message: str) -> None:
    _edit_manifest(art, edit)
    with pytest.raises(ArtifactError, match=message):
        load(art)


@pytest.mark.parametrize(("content", "message"), [
    (b"\x00\xffgarbage{", "not valid JSON"), (b"[1, 2]", "top level must be a JSON object"), (None, "manifest.json is missing"),
])
def test_garbage_or_missing_manifest_is_refused(art: Path, no_native_load: None, content: bytes | None, message: str) -> None:
    if content is None:
        (art / "manifest.json").unlink()
    else:
        (art / "manifest.json").write_bytes(content)
    with pytest.raises(ArtifactError, match=message):
        load(art)


def test_not_a_folder(tmp_path: Path) -> None:
    with pytest.raises(ArtifactError, match="no such directory"):
        load(tmp_path / "nope")


def test_artifact_for_another_device_is_refused(built: Built, tmp_path: Path, no_native_load: None) -> None:
    _write(tmp_path / "arm", built, targets.resolve("arm"))
    with pytest.raises(WrongDeviceError) as err:
        load(tmp_path / "arm")
    msg = str(err.value)
    assert "'arm'" in msg and "kind arm" in msg and "neon" in msg and "aarch64" in msg
    assert f"this machine is {platform.machine()}" in msg


@dataclass(frozen=True)
class _Target:
    data: dict[str, Any]

    def to_dict(self) -> dict[str, Any]:
        return self.data


def test_missing_cpu_feature_is_refused(built: Built, tmp_path: Path, no_native_load: None) -> None:
    x86 = targets.resolve("x86").to_dict()
    target = _Target({**x86, "name": "x86-future", "features": [*x86["features"], "avx1024_imaginary"]})
    _write(tmp_path / "a", built, target)
    with pytest.raises(WrongDeviceError, match=r"'x86-future'.*lacks the features avx1024_imaginary"):
        load(tmp_path / "a")


def test_cuda_artifact_without_gpu_is_refused(built: Built, tmp_path: Path, no_native_load: None) -> None:
    import tvm

    if tvm.cuda(0).exist:
        pytest.skip("this machine has a CUDA device")
    _write(tmp_path / "a", built, targets.resolve("cuda"))
    with pytest.raises(WrongDeviceError, match="kind cuda.*no CUDA device 0"):
        load(tmp_path / "a")


def test_tar_library_asks_to_link_on_the_device(built: Built, tmp_path: Path, no_native_load: None) -> None:
    _write(tmp_path / "a", built, targets.resolve("x86"), library="model.tar", library_format="tar")
    with pytest.raises(ArtifactError, match="link it into a shared library on the device"):
        load(tmp_path / "a")


# --- verification ---


def test_verify_artifact_ok(art: Path) -> None:
    report = verify_artifact(art)
    assert report.ok and [o.name for o in report.outputs] == [Y, IDX]
    assert report.outputs[0].max_abs_err <= 1e-5 and report.outputs[1].max_abs_err == 0
    data = json.loads(json.dumps(report.to_json()))
    assert data["ok"] is True and data["outputs"][1]["dtype"] == "int64"
    assert report.table().row_count == 2


def test_verify_artifact_reports_wrong_expected_outputs(built: Built, tmp_path: Path) -> None:
    want = _ort(built, _inputs(2))
    wrong = {Y: want[Y] + np.float32(1e-2), IDX: want[IDX]}
    _write(tmp_path / "a", built, targets.resolve("x86"), expected=wrong)
    report = verify_artifact(tmp_path / "a")
    assert not report.ok
    y, idx = report.outputs
    assert not y.ok and y.reason.startswith("out of tolerance at 6 of 6 elements") and y.max_abs_err == pytest.approx(1e-2, rel=1e-3)
    assert idx.ok


def test_compare_rules() -> None:
    from lepton.verify import compare
    from lepton.verify.policy import Policy

    tol, loose, rel_only = Policy("fp32", 1e-4, 1e-5), Policy("fp32", 1.0, 1.0), Policy("fp32", 1e-4, 0)
    nan = np.float32("nan")
    f = np.array([1.0, nan, np.inf], np.float32)
    assert compare(f, f.copy(), tol).ok
    assert not compare(np.array([1.0, 2.0, np.inf], np.float32), f, tol).ok  # NaN positions differ
    assert not compare(f, f[:2], tol).ok
    assert not compare(f.astype(np.float64), f, tol).ok
    assert not compare(np.array([1, 2]), np.array([1, 3]), loose).ok  # integers are exact
    close = compare(np.array([1.00001], np.float32), np.array([1.0], np.float32), rel_only)
    assert close.ok and close.max_rel_err == pytest.approx(1e-5, rel=0.1)


# --- the compile cache ---


@pytest.fixture
def cache_root(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("LEPTON_CACHE_DIR", str(tmp_path / "cache"))
    return tmp_path / "cache"


def test_cache_dir_defaults(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.delenv("LEPTON_CACHE_DIR", raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    assert cache.cache_dir() == tmp_path / "lepton" / "compiled"
    monkeypatch.delenv("XDG_CACHE_HOME")
    assert cache.cache_dir() == Path.home() / ".cache" / "lepton" / "compiled"


def test_cache_store_and_lookup(art: Path, cache_root: Path, tmp_path: Path) -> None:
    key = cache.cache_key("ab" * 32, targets.resolve("x86").key(), {"opt_level": 2})
    assert cache.lookup(key) is None
    entry = cache.store(key, art)
    assert entry.parent == cache_root and cache.lookup(key) == entry
    assert read_manifest(entry).files == read_manifest(art).files
    out = tmp_path / "user-out"
    cache.copy_artifact(entry, out)
    assert verify_artifact(out).ok
    assert [p.name for p in cache_root.iterdir()] == [key]  # no staging leftovers


def test_cache_key_follows_the_code(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A changed file of Lepton's packages (a pass, a schedule, a tuning database) changes every key."""
    pkg = tmp_path / "fakepkg"
    (pkg / "sub").mkdir(parents=True)
    (pkg / "__init__.py").write_text("")
    (pkg / "sub" / "db.json").write_text("{}")
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.setattr(cache, "_PACKAGES", ("fakepkg",))

    def key() -> str:
        cache.code_fingerprint.cache_clear()
        return cache.cache_key("ab" * 32, "t", {})

    first = key()
    assert key() == first
    (pkg / "sub" / "db.json").write_text('{"x": 1}')
    assert key() != first
    (pkg / "sub" / "db.json").write_text("{}")
    assert key() == first
    (pkg / "__pycache__").mkdir()
    (pkg / "__pycache__" / "x.pyc").write_bytes(b"junk")  # bytecode is not code
    assert key() == first
    cache.code_fingerprint.cache_clear()


def test_cache_concurrent_stores_of_one_key(art: Path, cache_root: Path) -> None:
    key = "cd" * 32
    results: list[Path] = []
    threads = [threading.Thread(target=lambda: results.append(cache.store(key, art))) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(results) == 4 and cache.lookup(key) is not None
    assert [p.name for p in cache_root.iterdir()] == [key]


def test_cache_corrupted_entry_is_a_miss_and_deleted(art: Path, cache_root: Path) -> None:
    key = "ef" * 32
    entry = cache.store(key, art)
    _flip_byte(entry / "model.so")
    assert cache.lookup(key) is None
    assert not entry.exists() and list(cache_root.iterdir()) == []
    (cache_root / key).mkdir()
    (cache_root / key / "manifest.json").write_text("{")
    assert cache.lookup(key) is None and not (cache_root / key).exists()


def test_cache_key_covers_every_part(monkeypatch: pytest.MonkeyPatch) -> None:
    base = cache.cache_key("ab" * 32, "t1", {"a": 1, "b": [1, 2]})
    assert base == cache.cache_key("ab" * 32, "t1", {"b": [1, 2], "a": 1})
    assert len({base, cache.cache_key("ac" * 32, "t1", {"a": 1, "b": [1, 2]}), cache.cache_key("ab" * 32, "t2", {"a": 1, "b": [1, 2]}),
                cache.cache_key("ab" * 32, "t1", {"a": 2, "b": [1, 2]})}) == 4
    monkeypatch.setattr(cache, "tool_versions", lambda: {**artifact.tool_versions(), "tvm": "0.99"})
    assert cache.cache_key("ab" * 32, "t1", {"a": 1, "b": [1, 2]}) != base
    monkeypatch.setattr(cache, "lepton_version", lambda: "9.9.9")
    assert cache.cache_key("ab" * 32, "t1", {"a": 1, "b": [1, 2]}) != base


def test_cache_refuses_malformed_keys(cache_root: Path) -> None:
    with pytest.raises(Exception, match="sha256 hex digest"):
        cache.lookup("../../etc")


def test_copy_artifact_refuses_non_empty_destination(art: Path, tmp_path: Path) -> None:
    dst = tmp_path / "dst"
    dst.mkdir()
    (dst / "keep.txt").write_text("mine")
    with pytest.raises(ArtifactError, match="not an empty folder"):
        cache.copy_artifact(art, dst)
    assert [p.name for p in dst.iterdir()] == ["keep.txt"]


def test_copy_artifact_checks_hashes_and_cleans_up(art: Path, tmp_path: Path) -> None:
    _flip_byte(art / "model.so")
    empty = tmp_path / "empty"
    empty.mkdir()
    for dst in (tmp_path / "absent", empty):
        with pytest.raises(TamperedArtifactError, match="model.so"):
            cache.copy_artifact(art, dst)
    assert not (tmp_path / "absent").exists() and list(empty.iterdir()) == []
