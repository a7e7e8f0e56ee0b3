"""Dynamic dims written as `dim_value: -1` (paddle2onnx) or `dim_param: "?"` are unknown dims everywhere:
import, shape inference, --input-shape, the manifest signature and the module's run-time input checks."""

from __future__ import annotations

import importlib.util
import os

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper

import lepton
import lepton_ir
from lepton.artifact import signature_from_onnx
from lepton.cli import app
from lepton.input_shapes import pin_input_shapes
from passes.ort import run_model


def _set_dims(vi: onnx.ValueInfoProto, dims: list[int | str]) -> None:
    """Write dims verbatim (helper.make_tensor_value_info refuses -1): ints as dim_value, strings as dim_param."""
    shape = vi.type.tensor_type.shape
    del shape.dim[:]
    for d in dims:
        if isinstance(d, int):
            shape.dim.add(dim_value=d)
        else:
            shape.dim.add(dim_param=d)


def _paddle_style() -> onnx.ModelProto:
    """x[-1,3,?,?] -> Conv -> Relu -> GlobalAveragePool -> Flatten -> Gemm, every dynamic dim written the way
    paddle2onnx writes it (value infos of intermediates too)."""
    rng = np.random.default_rng(0)
    w = rng.standard_normal((4, 3, 3, 3)).astype(np.float32)
    fc = rng.standard_normal((2, 4)).astype(np.float32)
    nodes = [
        helper.make_node("Conv", ["x", "w"], ["c"], pads=[1, 1, 1, 1]),
        helper.make_node("Relu", ["c"], ["r"]),
        helper.make_node("GlobalAveragePool", ["r"], ["p"]),
        helper.make_node("Flatten", ["p"], ["f"]),
        helper.make_node("Gemm", ["f", "fc"], ["y"], transB=1),
    ]
    g = helper.make_graph(
        nodes, "paddle_style",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, None)],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)],
        [onnx.numpy_helper.from_array(w, "w"), onnx.numpy_helper.from_array(fc, "fc")],
        value_info=[helper.make_tensor_value_info("c", TensorProto.FLOAT, None)],
    )
    _set_dims(g.input[0], [-1, 3, "?", "?"])
    _set_dims(g.output[0], [-1, 2])
    _set_dims(g.value_info[0], [-1, 4, -1, -1])
    return helper.make_model(g, opset_imports=[helper.make_opsetid("", 11)], ir_version=6)


def test_import_reads_minus_one_and_placeholder_as_unknown() -> None:
    graph = lepton_ir.load(_paddle_style())
    assert graph.inputs[0].shape == (None, 3, None, None)
    inner = next(o for n in graph for o in n.outputs if o.name == "c")
    for shape in (graph.outputs[0].shape, inner.shape):  # shape inference may name the unknown dims, never fix them
        assert shape is not None and not any(isinstance(d, int) and d < 0 for d in shape)
    assert not isinstance(graph.outputs[0].shape[0], int) and graph.outputs[0].shape[1] == 2
    assert inner.shape[1] == 4 and not any(isinstance(d, int) for d in (inner.shape[0], inner.shape[2]))


def test_minus_one_in_a_subgraph_is_unknown_too() -> None:
    then = helper.make_graph([helper.make_node("Relu", ["x"], ["t"])], "then", [],
                             [helper.make_tensor_value_info("t", TensorProto.FLOAT, None)])
    other = helper.make_graph([helper.make_node("Neg", ["x"], ["e"])], "else", [],
                              [helper.make_tensor_value_info("e", TensorProto.FLOAT, None)])
    _set_dims(then.output[0], [-1, 3])
    _set_dims(other.output[0], [-1, 3])
    g = helper.make_graph([helper.make_node("If", ["c"], ["y"], then_branch=then, else_branch=other)], "g",
                          [helper.make_tensor_value_info("c", TensorProto.BOOL, []),
                           helper.make_tensor_value_info("x", TensorProto.FLOAT, None)],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)])
    _set_dims(g.input[1], [-1, 3])
    _set_dims(g.output[0], [-1, 3])
    graph = lepton_ir.load(helper.make_model(g, opset_imports=[helper.make_opsetid("", 16)], ir_version=8))
    assert graph.inputs[1].shape == (None, 3)
    sub_outputs = [v.shape for sub in list(graph.all_graphs())[1:] for v in sub.outputs]
    assert len(sub_outputs) == 2 and all(s is not None and not isinstance(s[0], int) and s[1] == 3 for s in sub_outputs)


def test_signature_reads_them_as_unknown() -> None:
    sig = signature_from_onnx(_paddle_style())
    assert sig.inputs[0].shape == (None, 3, None, None) and sig.outputs[0].shape == (None, 2)


def test_placeholder_dims_are_not_one_symbol() -> None:
    graph = lepton_ir.load(_paddle_style())
    assert pin_input_shapes(graph, {"x": [1, 3, 48, 192]}) == {}
    assert graph.inputs[0].shape == (1, 3, 48, 192)


def test_compiles_with_input_shape_and_matches_onnxruntime(tmp_path: str) -> None:
    model = _paddle_style()
    m = lepton.compile(model, "x86", input_shapes={"x": [1, 3, 48, 192]}, use_cache=False,
                       output_dir=os.path.join(tmp_path, "x86"))
    assert m.verify_report.ok
    assert [s.shape for s in m.manifest.signature.inputs] == [(1, 3, 48, 192)]
    assert [s.shape for s in m.manifest.signature.outputs] == [(1, 2)]
    x = np.random.default_rng(1).standard_normal((1, 3, 48, 192)).astype(np.float32)
    np.testing.assert_allclose(m.run(x=x)["y"], run_model(model, {"x": x})["y"], rtol=1e-4, atol=1e-5)
    with pytest.raises(lepton_ir.UserError, match="dim 2 is 40"):
        m.run(x=np.zeros((1, 3, 40, 192), np.float32))


@pytest.mark.parametrize("target", ["arm", "cuda", "opencl"])
def test_builds_for_every_target_with_input_shape(target: str, tmp_path: str) -> None:
    m = lepton.compile(_paddle_style(), target, input_shapes={"x": [1, 3, 48, 192]}, use_cache=False, verify=False,
                       output_dir=os.path.join(tmp_path, target))
    assert [s.shape for s in m.manifest.signature.inputs] == [(1, 3, 48, 192)]


def test_cli_input_shape_on_a_minus_one_model(tmp_path: str) -> None:
    from typer.testing import CliRunner

    path = os.path.join(tmp_path, "cls.onnx")
    onnx.save(_paddle_style(), path)
    out = os.path.join(tmp_path, "build")
    result = CliRunner().invoke(app, ["compile", path, "--target", "x86", "--input-shape", "x:1,3,48,192", "-o", out,
                                      "--no-cache", "--quiet"])
    assert result.exit_code == 0, result.output
    assert os.path.exists(os.path.join(out, "manifest.json"))


def _paddle_ocr(name: str) -> str:
    spec = importlib.util.find_spec("rapidocr_onnxruntime")  # never imported: its dependencies are not installed
    path = os.path.join(spec.submodule_search_locations[0], "models", name) if spec and spec.submodule_search_locations else ""
    if not os.path.exists(path):
        pytest.skip(f"rapidocr-onnxruntime's {name} is not installed (make install installs requirements-models.lock)")
    return path


def test_paddleocr_classifier_with_minus_one_batch(tmp_path: str) -> None:
    """The real paddle2onnx export of the issue: x[-1,3,?,?], compiled with --input-shape and verified."""
    path = _paddle_ocr("ch_ppocr_mobile_v2.0_cls_infer.onnx")
    proto = onnx.load(path, load_external_data=False)
    assert proto.graph.input[0].type.tensor_type.shape.dim[0].dim_value == -1  # the case this guards
    m = lepton.compile(path, "x86", input_shapes={"x": [1, 3, 48, 192]}, use_cache=False,
                       output_dir=os.path.join(tmp_path, "cls"))
    assert m.verify_report.ok
