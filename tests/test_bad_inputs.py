"""Bad input at import (DESIGN.md §8): the exact LeptonError subclass, a message naming the part at
fault, and nothing written anywhere (model folder and working directory unchanged)."""

from __future__ import annotations

import os
import time
import tracemalloc
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import onnx
import onnx.helper as oh
import onnx.numpy_helper as onh
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from onnx import TensorProto as T

import lepton_ir
from lepton_ir import (
    InvalidModelError,
    LeptonError,
    ModelLoadError,
    UnsafeExternalDataError,
    UnsupportedModelError,
)
from passes.ort import run_model

F = T.FLOAT


# ----- helpers ------------------------------------------------------------------------------


def vi(name: str, shape: Sequence[int | str] | None, dtype: int = F) -> onnx.ValueInfoProto:
    return oh.make_tensor_value_info(name, dtype, shape)


def mk_model(nodes: Sequence[onnx.NodeProto], inputs: list, outputs: list, inits: Sequence[onnx.TensorProto] = (),
             opsets: Sequence[tuple[str, int]] = (("", 17),), ir_version: int = 8) -> onnx.ModelProto:
    g = oh.make_graph(list(nodes), "g", inputs, outputs, initializer=list(inits))
    return oh.make_model(g, opset_imports=[oh.make_opsetid(d, v) for d, v in opsets], ir_version=ir_version)


def small_model() -> onnx.ModelProto:
    """A small valid conv model (weights inline) used as the base for corruption."""
    rng = np.random.default_rng(0)
    inits = [onh.from_array(rng.standard_normal([4, 2, 3, 3]).astype(np.float32), "conv_w"),
             onh.from_array(rng.standard_normal([4]).astype(np.float32), "conv_b"),
             onh.from_array(np.array([1, -1], np.int64), "shape")]
    nodes = [oh.make_node("Conv", ["x", "conv_w", "conv_b"], ["c"], name="conv", pads=[1, 1, 1, 1]),
             oh.make_node("Relu", ["c"], ["r"], name="relu"),
             oh.make_node("Reshape", ["r", "shape"], ["y"], name="reshape")]
    return mk_model(nodes, [vi("x", [1, 2, 4, 4])], [vi("y", [1, 64])], inits)


SMALL = small_model().SerializeToString()


def snapshot(folder: str) -> dict[str, tuple[int, int, int]]:
    """Every entry under `folder` (files, folders, links) with size, mtime and mode."""
    out = {}
    for root, dirs, files in os.walk(folder):
        for name in dirs + files:
            p = os.path.join(root, name)
            st_ = os.lstat(p)
            out[os.path.relpath(p, folder)] = (st_.st_size, st_.st_mtime_ns, st_.st_mode)
    return out


@dataclass
class Env:
    """A model folder and an (empty) working directory, both watched for writes."""

    root: str
    models: str
    cwd: str

    def write(self, name: str, data: bytes | onnx.ModelProto) -> str:
        path = os.path.join(self.models, name)
        with open(path, "wb") as f:
            f.write(data if isinstance(data, bytes) else data.SerializeToString())
        return path

    def expect(self, source: object, error: type[LeptonError] | tuple[type[LeptonError], ...], *fragments: str) -> LeptonError:
        """`lepton_ir.load(source)` raises exactly `error` (or one of them), naming every fragment, writing nothing."""
        before = (snapshot(self.root), sorted(os.listdir(self.cwd)), os.getcwd())
        with pytest.raises(LeptonError) as info:
            lepton_ir.load(source)  # type: ignore[arg-type]
        allowed = error if isinstance(error, tuple) else (error,)
        assert type(info.value) in allowed, f"{type(info.value).__name__} ({info.value}) is not {error}"
        msg = str(info.value)
        for frag in fragments:
            assert frag in msg, f"{frag!r} not in message: {msg}"
        assert (snapshot(self.root), sorted(os.listdir(self.cwd)), os.getcwd()) == before, "something was written"
        return info.value


@pytest.fixture
def env(tmp_path: str, monkeypatch: pytest.MonkeyPatch) -> Env:
    root = str(tmp_path)
    models, cwd = os.path.join(root, "models"), os.path.join(root, "cwd")
    os.mkdir(models)
    os.mkdir(cwd)
    monkeypatch.chdir(cwd)
    return Env(root, models, cwd)


# ----- unreadable files ---------------------------------------------------------------------


def test_empty_file_and_empty_bytes(env: Env) -> None:
    path = env.write("empty.onnx", b"")
    env.expect(path, ModelLoadError, "empty.onnx", "empty")
    env.expect(b"", ModelLoadError, "empty")


def test_missing_path_and_directory(env: Env) -> None:
    missing = os.path.join(env.models, "nope.onnx")
    env.expect(missing, ModelLoadError, "nope.onnx", "does not exist")
    env.expect(env.models, ModelLoadError, "models", "not a file")


def test_unloadable_source_type(env: Env) -> None:
    env.expect(12345, ModelLoadError, "int")


@pytest.mark.parametrize("cut", sorted({1, 2, 3, 5, 8, 13, 21, 50, 100, 200, len(SMALL) // 3, len(SMALL) // 2,
                                        len(SMALL) - 200, len(SMALL) - 50, len(SMALL) - 10, len(SMALL) - 2,
                                        len(SMALL) - 1}))
def test_truncated_model_file(env: Env, cut: int) -> None:
    path = env.write("cut.onnx", SMALL[:cut])
    err = env.expect(path, (ModelLoadError, InvalidModelError, UnsupportedModelError))
    if isinstance(err, ModelLoadError):
        assert "cut.onnx" in str(err)


def test_every_truncation_gives_a_lepton_error(env: Env) -> None:
    before = snapshot(env.root)
    for cut in range(0, len(SMALL), 3):
        try:
            lepton_ir.load(SMALL[:cut])
        except LeptonError:
            continue
        raise AssertionError(f"a model cut at {cut} of {len(SMALL)} bytes loaded")
    assert snapshot(env.root) == before and os.listdir(env.cwd) == []


def test_invalid_utf8_in_a_name(env: Env) -> None:
    data = SMALL.replace(b"relu", b"\xe3elu")  # same length: still a well-formed protobuf
    assert data != SMALL
    env.expect(env.write("m.onnx", data), InvalidModelError, "graph.node[1]", "UTF-8")
    m = small_model()
    m.doc_string = "doc"
    data = m.SerializeToString().replace(b"doc", b"\xffoc")
    env.expect(data, InvalidModelError, "model.doc_string", "UTF-8")


@pytest.mark.parametrize("seed", range(8))
def test_garbage_bytes(env: Env, seed: int) -> None:
    rng = np.random.default_rng(seed)
    data = rng.integers(0, 256, size=int(rng.integers(1, 5000)), dtype=np.uint8).tobytes()
    path = env.write("garbage.onnx", data)
    env.expect(path, ModelLoadError, "garbage.onnx")
    with pytest.raises(ModelLoadError):
        lepton_ir.load(data)


def test_text_file_is_not_a_model(env: Env) -> None:
    path = env.write("readme.onnx", b"This is not a model, just text.\n" * 10)
    env.expect(path, ModelLoadError, "readme.onnx")


# ----- external data ------------------------------------------------------------------------


def external_model(location: str, offset: int = 0, length: int | None = 64, dims: Sequence[int] = (16,)) -> onnx.ModelProto:
    w = T(name="weights", data_type=F, dims=list(dims))
    w.data_location = T.EXTERNAL
    entries = [("location", location), ("offset", str(offset))] + ([("length", str(length))] if length is not None else [])
    for k, v in entries:
        w.external_data.add(key=k, value=v)
    node = oh.make_node("Add", ["x", "weights"], ["y"], name="add")
    return mk_model([node], [vi("x", [16])], [vi("y", [16])], [w])


def write_bin(path: str, nbytes: int = 64) -> str:
    with open(path, "wb") as f:
        f.write(np.arange(nbytes // 4, dtype=np.float32).tobytes())
    return path


def test_external_data_sanity_check_the_valid_case_loads(env: Env) -> None:
    write_bin(os.path.join(env.models, "w.bin"))
    path = env.write("model.onnx", external_model("w.bin"))
    graph = lepton_ir.load(path)
    assert np.array_equal(graph.initializers["weights"].const_value.numpy(), np.arange(16, dtype=np.float32))


def test_model_folder_reached_through_a_symlink_is_fine(env: Env) -> None:
    write_bin(os.path.join(env.models, "w.bin"))
    env.write("model.onnx", external_model("w.bin"))
    linked = os.path.join(env.root, "linked")
    os.symlink(env.models, linked)
    graph = lepton_ir.load(os.path.join(linked, "model.onnx"))
    assert graph.initializers["weights"].const_value.numpy()[3] == 3.0


def test_external_proto_tensor_without_a_checked_file_is_never_read(env: Env) -> None:
    write_bin(os.path.join(env.cwd, "w.bin"))  # onnx would resolve it against the working directory
    t = lepton_ir.Tensor.from_proto(external_model("w.bin").graph.initializer[0])
    with pytest.raises(UnsafeExternalDataError, match="'weights'"):
        t.numpy()


def test_external_data_with_dotdot(env: Env) -> None:
    write_bin(os.path.join(env.root, "w.bin"))  # the file exists, outside the model folder
    path = env.write("model.onnx", external_model("../w.bin"))
    env.expect(path, UnsafeExternalDataError, "'weights'", "../w.bin", "..")
    path = env.write("model2.onnx", external_model("sub/../../w.bin"))
    env.expect(path, UnsafeExternalDataError, "'weights'", "sub/../../w.bin")
    path = env.write("model3.onnx", external_model("..\\w.bin"))
    env.expect(path, UnsafeExternalDataError, "'weights'", "..")


def test_external_data_with_absolute_path(env: Env) -> None:
    target = write_bin(os.path.join(env.root, "abs.bin"))
    path = env.write("model.onnx", external_model(target))
    env.expect(path, UnsafeExternalDataError, "'weights'", target, "absolute")


def test_external_data_through_a_file_symlink(env: Env) -> None:
    target = write_bin(os.path.join(env.root, "outside.bin"))
    os.symlink(target, os.path.join(env.models, "w.bin"))
    path = env.write("model.onnx", external_model("w.bin"))
    env.expect(path, UnsafeExternalDataError, "'weights'", "w.bin", "symbolic link")


def test_external_data_through_a_symlink_inside_the_folder(env: Env) -> None:
    write_bin(os.path.join(env.models, "real.bin"))
    os.symlink("real.bin", os.path.join(env.models, "w.bin"))  # even pointing inside: refused
    path = env.write("model.onnx", external_model("w.bin"))
    env.expect(path, UnsafeExternalDataError, "'weights'", "symbolic link")


def test_external_data_through_a_directory_symlink(env: Env) -> None:
    outside = os.path.join(env.root, "outside_dir")
    os.mkdir(outside)
    write_bin(os.path.join(outside, "w.bin"))
    os.symlink(outside, os.path.join(env.models, "sub"))
    path = env.write("model.onnx", external_model("sub/w.bin"))
    env.expect(path, UnsafeExternalDataError, "'weights'", "sub/w.bin", "symbolic link", "'sub'")


def test_external_data_through_a_hard_link(env: Env) -> None:
    target = write_bin(os.path.join(env.root, "outside.bin"))
    os.link(target, os.path.join(env.models, "w.bin"))
    path = env.write("model.onnx", external_model("w.bin"))
    env.expect(path, UnsafeExternalDataError, "'weights'", "w.bin", "hard link")


def test_external_data_file_missing(env: Env) -> None:
    path = env.write("model.onnx", external_model("missing.bin"))
    env.expect(path, UnsafeExternalDataError, "'weights'", "missing.bin", "missing")


def test_external_data_is_a_directory(env: Env) -> None:
    os.mkdir(os.path.join(env.models, "w.bin"))
    path = env.write("model.onnx", external_model("w.bin"))
    env.expect(path, UnsafeExternalDataError, "'weights'", "w.bin", "not a regular file")


def test_external_data_offset_past_end(env: Env) -> None:
    write_bin(os.path.join(env.models, "w.bin"), 64)
    path = env.write("model.onnx", external_model("w.bin", offset=1000, length=64))
    env.expect(path, UnsafeExternalDataError, "'weights'", "w.bin", "offset=1000", "past the end")
    path = env.write("model2.onnx", external_model("w.bin", offset=1000, length=None))
    env.expect(path, UnsafeExternalDataError, "'weights'", "w.bin")


def test_external_data_length_past_end(env: Env) -> None:
    write_bin(os.path.join(env.models, "w.bin"), 64)
    path = env.write("model.onnx", external_model("w.bin", offset=32, length=64))
    env.expect(path, UnsafeExternalDataError, "'weights'", "w.bin", "length=64", "past the end")


def test_external_data_length_not_matching_dtype_and_shape(env: Env) -> None:
    write_bin(os.path.join(env.models, "w.bin"), 128)
    path = env.write("model.onnx", external_model("w.bin", length=128))
    env.expect(path, UnsafeExternalDataError, "'weights'", "128 bytes", "[16]", "64")
    path = env.write("model2.onnx", external_model("w.bin", length=None))  # whole file: 128 bytes, not 64
    env.expect(path, UnsafeExternalDataError, "'weights'", "128 bytes")


def test_external_data_bad_offset_text(env: Env) -> None:
    write_bin(os.path.join(env.models, "w.bin"), 64)
    m = external_model("w.bin")
    m.graph.initializer[0].external_data[1].value = "zero"
    path = env.write("model.onnx", m)
    env.expect(path, UnsafeExternalDataError, "'weights'", "not integers")


def test_external_data_when_loading_from_bytes_or_proto(env: Env) -> None:
    write_bin(os.path.join(env.cwd, "w.bin"))  # would be found relative to the working directory
    m = external_model("w.bin")
    env.expect(m.SerializeToString(), UnsafeExternalDataError, "'weights'", "w.bin", "not given as a path")
    env.expect(m, UnsafeExternalDataError, "'weights'", "w.bin")


def test_external_data_file_truncated_after_load(env: Env) -> None:
    bin_path = write_bin(os.path.join(env.models, "w.bin"), 64)
    graph = lepton_ir.load(env.write("model.onnx", external_model("w.bin")))
    with open(bin_path, "r+b") as f:
        f.truncate(10)
    with pytest.raises(UnsafeExternalDataError, match="w.bin"):
        graph.initializers["weights"].const_value.numpy()


# ----- versions, opsets, domains --------------------------------------------------------------


def relu_model(**kw: object) -> onnx.ModelProto:
    return mk_model([oh.make_node("Relu", ["x"], ["y"], name="relu")], [vi("x", [2])], [vi("y", [2])], **kw)


def test_unknown_ir_version(env: Env) -> None:
    env.expect(env.write("m.onnx", relu_model(ir_version=99)), UnsupportedModelError, "IR version 99")
    env.expect(relu_model(ir_version=2).SerializeToString(), UnsupportedModelError, "IR version 2")


def test_opset_newer_than_supported(env: Env) -> None:
    env.expect(env.write("m.onnx", relu_model(opsets=[("", 99)])), UnsupportedModelError, "opset 99", "ai.onnx")
    env.expect(relu_model(opsets=[("", 17), ("ai.onnx.ml", 99)]), UnsupportedModelError, "opset 99", "ai.onnx.ml")


def test_unknown_domain(env: Env) -> None:
    nodes = [oh.make_node("Relu", ["x"], ["r"], name="relu"), oh.make_node("Thing", ["r"], ["y"], name="t", domain="com.evil")]
    used = mk_model(nodes, [vi("x", [2])], [vi("y", [2])], opsets=[("", 17), ("com.evil", 1)])
    env.expect(used, UnsupportedModelError, "'com.evil'")


def test_an_unknown_domain_no_node_uses_is_dropped() -> None:
    # onnxruntime's quantization tools import ai.onnx.training into every model they write, unused
    g = lepton_ir.load(relu_model(opsets=[("", 17), ("ai.onnx.training", 1)]))
    assert g.opset_imports == {"": 17}


def test_node_in_a_domain_the_model_does_not_import(env: Env) -> None:
    nodes = [oh.make_node("Relu", ["x"], ["r"], name="relu"),
             oh.make_node("FusedThing", ["r"], ["y"], name="mystery_node", domain="com.microsoft")]
    m = mk_model(nodes, [vi("x", [2])], [vi("y", [2])])
    env.expect(m, UnsupportedModelError, "mystery_node", "com.microsoft", "FusedThing")
    no_default = mk_model([oh.make_node("Relu", ["x"], ["y"], name="relu")], [vi("x", [2])], [vi("y", [2])],
                          opsets=[("ai.onnx.ml", 3)])
    env.expect(no_default, UnsupportedModelError, "relu", "Relu")


# ----- structure ----------------------------------------------------------------------------


def test_undefined_node_input(env: Env) -> None:
    nodes = [oh.make_node("Relu", ["x"], ["r"], name="relu"),
             oh.make_node("Add", ["r", "ghost"], ["y"], name="adder")]
    env.expect(mk_model(nodes, [vi("x", [2])], [vi("y", [2])]), InvalidModelError, "'adder'", "'ghost'", "input 1")


def test_cycle_names_the_nodes(env: Env) -> None:
    nodes = [oh.make_node("Add", ["x", "b"], ["a"], name="node_a"),
             oh.make_node("Relu", ["a"], ["b"], name="node_b"),
             oh.make_node("Neg", ["a"], ["y"], name="node_out")]
    err = env.expect(mk_model(nodes, [vi("x", [2])], [vi("y", [2])]), InvalidModelError, "cycle", "node_a", "node_b")
    assert "node_out" not in str(err)


def test_self_loop(env: Env) -> None:
    nodes = [oh.make_node("Add", ["x", "y"], ["y"], name="loop_node")]
    env.expect(mk_model(nodes, [vi("x", [2])], [vi("y", [2])]), InvalidModelError, "loop_node")


def test_duplicate_node_output_names(env: Env) -> None:
    nodes = [oh.make_node("Relu", ["x"], ["y"], name="first"),
             oh.make_node("Neg", ["x"], ["y"], name="second")]
    env.expect(mk_model(nodes, [vi("x", [2])], [vi("y", [2])]), InvalidModelError, "'y'", "second", "first")


def test_node_output_shadowing_an_input_or_initializer(env: Env) -> None:
    nodes = [oh.make_node("Relu", ["x"], ["w"], name="clobber")]
    m = mk_model(nodes, [vi("x", [2])], [vi("w", [2])], [onh.from_array(np.ones(2, np.float32), "w")])
    env.expect(m, InvalidModelError, "'w'", "clobber", "initializer")
    nodes = [oh.make_node("Relu", ["x"], ["x"], name="clobber_input")]
    env.expect(mk_model(nodes, [vi("x", [2])], [vi("x", [2])]), InvalidModelError, "'x'", "clobber_input")


def test_duplicate_graph_output_names(env: Env) -> None:
    nodes = [oh.make_node("Relu", ["x"], ["y"], name="relu")]
    env.expect(mk_model(nodes, [vi("x", [2])], [vi("y", [2]), vi("y", [2])]), InvalidModelError, "'y'", "twice")


def test_duplicate_graph_input_names(env: Env) -> None:
    nodes = [oh.make_node("Relu", ["x"], ["y"], name="relu")]
    env.expect(mk_model(nodes, [vi("x", [2]), vi("x", [2])], [vi("y", [2])]), InvalidModelError, "'x'", "twice")


def test_duplicate_initializer(env: Env) -> None:
    w = onh.from_array(np.ones(2, np.float32), "w")
    nodes = [oh.make_node("Add", ["x", "w"], ["y"], name="add")]
    env.expect(mk_model(nodes, [vi("x", [2])], [vi("y", [2])], [w, w]), InvalidModelError, "initializer 'w'", "twice")


def test_missing_initializer(env: Env) -> None:
    nodes = [oh.make_node("Conv", ["x", "conv_weight"], ["y"], name="conv1")]
    m = mk_model(nodes, [vi("x", [1, 1, 3, 3])], [vi("y", [1, 1, 3, 3])])
    env.expect(m, InvalidModelError, "'conv1'", "'conv_weight'", "missing initializer")


def test_graph_output_nothing_produces(env: Env) -> None:
    nodes = [oh.make_node("Relu", ["x"], ["y"], name="relu")]
    env.expect(mk_model(nodes, [vi("x", [2])], [vi("y", [2]), vi("orphan", [2])]), InvalidModelError, "'orphan'")


def test_subgraph_reading_an_undefined_value(env: Env) -> None:
    then_g = oh.make_graph([oh.make_node("Add", ["x", "nowhere"], ["t"], name="inner_add")], "then", [], [vi("t", [2])])
    else_g = oh.make_graph([oh.make_node("Neg", ["x"], ["e"], name="inner_neg")], "else", [], [vi("e", [2])])
    nodes = [oh.make_node("If", ["c"], ["y"], name="branch", then_branch=then_g, else_branch=else_g)]
    m = mk_model(nodes, [vi("x", [2]), vi("c", [], T.BOOL)], [vi("y", [2])])
    env.expect(m, InvalidModelError, "'nowhere'", "inner_add")


# ----- types --------------------------------------------------------------------------------


@pytest.mark.parametrize("kind", ["sequence", "map", "optional"])
def test_non_tensor_graph_input(env: Env, kind: str) -> None:
    if kind == "sequence":
        tp = oh.make_sequence_type_proto(oh.make_tensor_type_proto(F, [2]))
        node = oh.make_node("SequenceAt", ["seq_in", "idx"], ["y"], name="at")
        inputs = [oh.make_value_info("seq_in", tp), vi("idx", [], T.INT64)]
    elif kind == "map":
        tp = oh.make_map_type_proto(T.INT64, oh.make_tensor_type_proto(F, []))
        node = oh.make_node("Identity", ["seq_in"], ["y"], name="id")
        inputs = [oh.make_value_info("seq_in", tp)]
    else:
        tp = oh.make_optional_type_proto(oh.make_tensor_type_proto(F, [2]))
        node = oh.make_node("OptionalGetElement", ["seq_in"], ["y"], name="get")
        inputs = [oh.make_value_info("seq_in", tp)]
    m = mk_model([node], inputs, [vi("y", [2])], opsets=[("", 18)])
    env.expect(m, UnsupportedModelError, "'seq_in'", kind)


def test_sequence_graph_output(env: Env) -> None:
    node = oh.make_node("SequenceConstruct", ["x", "x"], ["s"], name="construct")
    tp = oh.make_sequence_type_proto(oh.make_tensor_type_proto(F, [2]))
    m = mk_model([node], [vi("x", [2])], [oh.make_value_info("s", tp)])
    env.expect(m, UnsupportedModelError, "'s'", "sequence")


def test_string_tensor_input(env: Env) -> None:
    node = oh.make_node("Identity", ["text"], ["y"], name="id")
    m = mk_model([node], [vi("text", [2], T.STRING)], [vi("y", [2], T.STRING)])
    env.expect(m, UnsupportedModelError, "'text'", "string")


def test_sparse_initializer_is_unsupported_not_missing(env: Env) -> None:
    sparse = oh.make_sparse_tensor(onh.from_array(np.float32([1.0]), "sparse_w"), onh.from_array(np.int64([2]), ""), [4])
    g = oh.make_graph([oh.make_node("Add", ["x", "sparse_w"], ["y"], name="add")], "g", [vi("x", [4])], [vi("y", [4])],
                      sparse_initializer=[sparse])
    m = oh.make_model(g, opset_imports=[oh.make_opsetid("", 17)], ir_version=8)
    onnx.checker.check_model(m)  # valid ONNX
    env.expect(m, UnsupportedModelError, "'sparse_w'", "sparse")


def test_undefined_dtype_in_initializer(env: Env) -> None:
    w = T(name="w_undef", data_type=T.UNDEFINED, dims=[2])
    nodes = [oh.make_node("Add", ["x", "w_undef"], ["y"], name="add")]
    env.expect(mk_model(nodes, [vi("x", [2])], [vi("y", [2])], [w]), InvalidModelError, "'w_undef'", "data type")


def test_raw_data_length_not_matching_dims(env: Env) -> None:
    for nbytes in (0, 4, 12, 4000):
        w = T(name="bad_weight", data_type=F, dims=[2, 2])
        w.raw_data = b"\0" * nbytes
        nodes = [oh.make_node("Add", ["x", "bad_weight"], ["y"], name="add")]
        env.expect(mk_model(nodes, [vi("x", [2, 2])], [vi("y", [2, 2])], [w]), InvalidModelError,
                   "'bad_weight'", "[2, 2]", f"{nbytes} bytes")


def test_typed_data_count_not_matching_dims(env: Env) -> None:
    for count in (2000, 8000):  # half and double: big enough to skip onnx's own checker
        w = oh.make_tensor("bad_weight", F, [4000], np.ones(4000, np.float32))
        del w.float_data[:]
        w.float_data.extend(np.ones(count, np.float32))
        nodes = [oh.make_node("Add", ["x", "bad_weight"], ["y"], name="add")]
        env.expect(mk_model(nodes, [vi("x", [4000])], [vi("y", [4000])], [w]), InvalidModelError,
                   "'bad_weight'", f"holds {count} values")


def test_negative_dim_in_initializer(env: Env) -> None:
    w = T(name="neg_w", data_type=F, dims=[-2])
    nodes = [oh.make_node("Add", ["x", "neg_w"], ["y"], name="add")]
    env.expect(mk_model(nodes, [vi("x", [2])], [vi("y", [2])], [w]), InvalidModelError, "'neg_w'", "negative")


@pytest.mark.parametrize("dims", [[1 << 40, 1 << 40], [1 << 32, 1 << 32], [1 << 62, 4], [1 << 20] * 5])
@pytest.mark.parametrize("storage", ["raw", "raw_big", "typed"])
def test_huge_declared_shape_errors_fast_without_allocating(env: Env, dims: list[int], storage: str) -> None:
    w = T(name="huge_w", data_type=F, dims=dims)
    if storage == "raw":
        w.raw_data = b"\0" * 8
    elif storage == "raw_big":
        w.raw_data = b"" if dims == [1 << 32, 1 << 32] else b"\0" * 8192  # 2**64 elements wraps to 0 in int64
    else:
        w.float_data.extend([1.0, 2.0])
    nodes = [oh.make_node("Add", ["x", "huge_w"], ["y"], name="add")]
    m = mk_model(nodes, [vi("x", [2])], [vi("y", None)], [w])
    tracemalloc.start()
    t0 = time.perf_counter()
    try:
        env.expect(m, InvalidModelError, "huge_w")
        elapsed = time.perf_counter() - t0
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert elapsed < 2.0 and peak < 32 * 2**20, (elapsed, peak)


def test_huge_declared_shape_in_external_data(env: Env) -> None:
    write_bin(os.path.join(env.models, "w.bin"), 64)
    path = env.write("model.onnx", external_model("w.bin", length=64, dims=[1 << 40, 1 << 40]))
    env.expect(path, UnsafeExternalDataError, "'weights'", "64 bytes")


def test_nan_and_inf_weights_load_fine(env: Env) -> None:
    w = np.array([np.nan, np.inf, -np.inf, -0.0, 1.0, np.float32(np.nan) * -1], np.float32)
    w_bits = w.view(np.uint32).copy()
    w_bits[0] = 0x7FC0BEEF  # a NaN with a payload
    w = w_bits.view(np.float32)
    nodes = [oh.make_node("Mul", ["x", "w"], ["y"], name="mul")]
    m = mk_model(nodes, [vi("x", [6])], [vi("y", [6])], [onh.from_array(w, "w")])
    before = snapshot(env.root)
    graph = lepton_ir.load(m)
    assert graph.initializers["w"].const_value.numpy().view(np.uint32).tolist() == w_bits.tolist()
    exported = lepton_ir.to_onnx(graph)
    assert onh.to_array(exported.graph.initializer[0]).view(np.uint32).tolist() == w_bits.tolist()
    feeds = {"x": np.ones(6, np.float32)}
    a, b = run_model(m, feeds)["y"], run_model(exported, feeds)["y"]
    assert a.tobytes() == b.tobytes() and np.isnan(a[0]) and np.isinf(a[1])
    assert snapshot(env.root) == before


# ----- fuzz ---------------------------------------------------------------------------------


_MUTATION = st.tuples(st.sampled_from(["flip", "set", "insert", "delete"]), st.integers(0, 2**31), st.integers(0, 255))


def _mutate(data: bytes, ops: list[tuple[str, int, int]]) -> bytes:
    buf = bytearray(data)
    for kind, pos, byte in ops:
        if not buf:
            buf.append(byte)
            continue
        i = pos % len(buf)
        if kind == "flip":
            buf[i] ^= 1 << (byte % 8)
        elif kind == "set":
            buf[i] = byte
        elif kind == "insert":
            buf.insert(i, byte)
        else:
            del buf[i]
    return bytes(buf)


def _load_ok_or_lepton_error(load: Callable[[], object]) -> None:
    try:
        graph = load()
    except LeptonError:
        return
    lepton_ir.verify(graph)  # type: ignore[arg-type]
    lepton_ir.to_onnx(graph)  # type: ignore[arg-type]


def _if_model() -> bytes:
    then_g = oh.make_graph([oh.make_node("Add", ["x", "k"], ["t"], name="inner_add")], "then", [], [vi("t", [2])],
                           initializer=[onh.from_array(np.float32([1, 2]), "k")])
    else_g = oh.make_graph([oh.make_node("Neg", ["x"], ["e"], name="inner_neg")], "else", [], [vi("e", [2])])
    nodes = [oh.make_node("If", ["c"], ["y"], name="branch", then_branch=then_g, else_branch=else_g),
             oh.make_node("LeakyRelu", ["y"], ["z"], name="leaky", alpha=0.2)]
    return mk_model(nodes, [vi("x", [2]), vi("c", [], T.BOOL)], [vi("z", [2])]).SerializeToString()


BASES = [SMALL, _if_model()]


@given(st.sampled_from(BASES), st.lists(_MUTATION, min_size=1, max_size=8))
@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
def test_fuzzed_model_bytes_load_or_raise_a_lepton_error(base: bytes, ops: list[tuple[str, int, int]]) -> None:
    data = _mutate(base, ops)
    _load_ok_or_lepton_error(lambda: lepton_ir.load(data))
