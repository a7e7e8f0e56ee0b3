"""TVM build failures say what failed: the first line names the ONNX node, its op and TVM's reason; TVM's full
text is in `details` and behind the CLI's --verbose; --json carries the fields. The failures are made on
purpose (the ones TVM really has get fixed): legalization that leaves one op as it is, a pipeline that does
not lower kernel calls, a legalization that raises."""

from __future__ import annotations

import json
import os
import shutil

import numpy as np
import onnx
import pytest
import tvm
from onnx import TensorProto, helper, numpy_helper
from typer.testing import CliRunner

import lepton
import lepton_ir
import targets
from lepton.cli import app
from lepton.codegen import tvm_build, vector_math
from lepton.codegen.failures import codegen_error, error_line
from lepton.codegen.frontend import to_relax
from lepton.codegen.provenance import Provenance
from lepton.compiler import optimize_for
from lepton.errors import CodegenError, SourceNode
from lepton.input_shapes import pin_input_shapes

DEMO = os.path.join(os.path.dirname(__file__), "..", "bench", "models", "digits_cnn.onnx")
REASON = "CodeGenVM cannot emit this Relax operator directly: relax.sigmoid"


def _model(batch: int | str = 1) -> onnx.ModelProto:
    """conv0 (Conv) -> sig1 (Sigmoid) -> add2 (Add, with the input)."""
    w = numpy_helper.from_array(np.random.default_rng(0).standard_normal((4, 4, 1, 1)).astype(np.float32), "w")
    graph = helper.make_graph(
        [helper.make_node("Conv", ["x", "w"], ["c"], name="conv0"),
         helper.make_node("Sigmoid", ["c"], ["s"], name="sig1"),
         helper.make_node("Add", ["s", "x"], ["y"], name="add2")],
        "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [batch, 4, 8, 8])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [batch, 4, 8, 8])], [w])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)


@pytest.fixture
def sigmoid_left_unlowered(monkeypatch: pytest.MonkeyPatch) -> None:
    """The CPU pipeline's legalization leaves relax.sigmoid as it is, so TVM's VM codegen cannot emit it."""
    original = vector_math.legalize_map

    def legalize_map() -> dict:  # type: ignore[type-arg]
        table = original()
        table["relax.sigmoid"] = lambda _bb, call: call
        return table

    monkeypatch.setattr(vector_math, "legalize_map", legalize_map)


def _compile_error(model: onnx.ModelProto, target: str = "x86") -> CodegenError:
    with pytest.raises(CodegenError) as info:
        lepton.compile(model, target, use_cache=False, verify=False)
    return info.value


@pytest.mark.usefixtures("sigmoid_left_unlowered")
def test_first_line_names_the_node_its_op_and_tvms_reason() -> None:
    e = _compile_error(_model())
    assert str(e) == f"TVM failed to build node 'sig1' (Sigmoid) for target 'x86': {REASON}"
    assert e.nodes == (SourceNode("sig1", "Sigmoid"),) and e.reason == REASON and e.named == ("relax.sigmoid",)
    assert e.details.startswith("InternalError: CodeGenVM cannot emit this Relax operator directly. Run the")
    assert "Offending call:\nR.sigmoid(" in e.details  # TVM's full text
    assert e.exit_code == 3  # an internal error (DESIGN §8, the CLI's exit codes)
    assert e.__cause__ is None and isinstance(e.__context__, tvm.error.InternalError)  # no traceback from TVM


@pytest.mark.usefixtures("sigmoid_left_unlowered")
def test_the_symbolic_dims_hint_keeps_the_fields() -> None:
    e = _compile_error(_model(batch="N"))
    first, hint = str(e).splitlines()
    assert first == f"TVM failed to build node 'sig1' (Sigmoid) for target 'x86': {REASON}"
    assert "symbolic input dims" in hint and "--input-shape" in hint
    assert e.nodes == (SourceNode("sig1", "Sigmoid"),) and "Offending call" in e.details


def test_a_fused_kernel_is_traced_to_the_nodes_it_fuses(monkeypatch: pytest.MonkeyPatch) -> None:
    # TVM's "zero" pipeline fuses but leaves kernel calls for the VM, which cannot emit them
    monkeypatch.setattr(tvm_build, "relax_pipeline", lambda _target, _notes=None: tvm.relax.get_pipeline("zero"))
    e = _compile_error(_model())
    (kernel,) = e.named
    assert kernel.startswith("fused_") and kernel in str(e).splitlines()[0]
    assert e.nodes == (SourceNode("conv0", "Conv"), SourceNode("sig1", "Sigmoid"), SourceNode("add2", "Add"))
    assert str(e).startswith("TVM failed to build nodes 'conv0' (Conv), 'sig1' (Sigmoid), 'add2' (Add) for target")


def test_a_failure_naming_nothing_says_so_and_names_the_pass(monkeypatch: pytest.MonkeyPatch) -> None:
    original = vector_math.legalize_map

    def legalize_map() -> dict:  # type: ignore[type-arg]
        def refuse(_bb: object, _call: object) -> None:
            raise ValueError("sigmoid refused")

        return {**original(), "relax.sigmoid": refuse}

    monkeypatch.setattr(vector_math, "legalize_map", legalize_map)
    e = _compile_error(_model())
    first, second = str(e).splitlines()
    assert first == "TVM failed to build the module for target 'x86' in pass LegalizeOps: ValueError: sigmoid refused"
    assert second == "TVM's text names no Relax operator or kernel that Lepton can trace to an ONNX node"
    assert e.nodes == () and e.tvm_pass == "LegalizeOps" and e.details == "ValueError: sigmoid refused"


def test_a_name_lepton_cannot_trace_is_reported_as_tvms() -> None:
    provenance = Provenance()
    to_relax(lepton_ir.load(_model()), provenance)
    text = ("Check failed: cannot lower fused_mystery_thing7 in R.nn.conv2d\n"
            "# from tvm.script import ir as I\n@R.function\ndef main(): R.sigmoid(x)")
    e = codegen_error(tvm.error.InternalError(text), "x86", provenance)
    first, second = str(e).splitlines()
    assert first == ("TVM failed to build node 'conv0' (Conv) for target 'x86': "
                     "Check failed: cannot lower fused_mystery_thing7 in R.nn.conv2d: relax.nn.conv2d")
    assert second == "Lepton cannot trace fused_mystery_thing7 (named by TVM) to an ONNX node"
    assert e.named == ("fused_mystery_thing7", "relax.nn.conv2d")  # not the IR dump's R.sigmoid


def test_provenance_gives_each_node_its_own_code() -> None:
    provenance = Provenance()
    to_relax(lepton_ir.load(_model()), provenance)
    assert provenance.op_nodes("relax.nn.conv2d") == [SourceNode("conv0", "Conv")]
    assert provenance.op_nodes("relax.sigmoid") == [SourceNode("sig1", "Sigmoid")]
    assert provenance.op_nodes("relax.add") == [SourceNode("add2", "Add")]
    assert provenance.kernel_nodes("fused_conv2d3_tir_sigmoid_add12") == [
        SourceNode("conv0", "Conv"), SourceNode("sig1", "Sigmoid"), SourceNode("add2", "Add")]
    assert provenance.kernel_nodes("sigmoid1") == [SourceNode("sig1", "Sigmoid")]
    assert provenance.kernel_nodes("fused_pad_conv2d", whole=True) is None  # pad: no node's
    assert provenance.kernel_nodes("fused_pad_conv2d") == [SourceNode("conv0", "Conv")]
    assert provenance.kernel_nodes("take_where") is None


def test_every_kernel_of_a_model_is_traced_to_nodes() -> None:
    """Kernel names survive layout conversion, legalization and fusion in a form provenance reads."""
    tgt = targets.resolve("x86")
    graph = lepton_ir.load(DEMO)
    pin_input_shapes(graph, {"image": [1, 1, 8, 8]})
    optimize_for(graph, tgt)
    provenance = Provenance()
    mod = to_relax(graph, provenance)
    with tgt.tvm_target():
        mod = tvm.transform.Sequential(tvm_build.cpu_prepare_passes(tgt))(mod)
    kernels = [str(gv.name_hint) for gv, f in mod.functions_items() if isinstance(f, tvm.tirx.PrimFunc)]
    assert kernels and all(provenance.kernel_nodes(k) for k in kernels), kernels
    convs = [k for k in kernels if "conv2d" in k]
    # the x86 pipeline fuses Conv + Relu into lepton.FusedConvRelu: the kernel is traced to that node
    assert convs and all(any(n.op_type == "Conv" or n.op_type.startswith("FusedConv")
                             for n in provenance.kernel_nodes(k) or []) for k in convs)


@pytest.mark.parametrize("text, line", [
    ("Traceback (most recent call last):\n  File \"x.py\", line 3, in f\n    g()\nKeyError: 'w'", "KeyError: 'w'"),
    ("model.cu(2): warning #177-D: variable declared\n    int u;\n        ^\n\nmodel.cu(3): error: identifier \"b\"",
     "model.cu(3): error: identifier \"b\""),
    ("# Metadata omitted\n  lv = R.add(x, y)\nCannot fuse these", "Cannot fuse these"),
    ("CodeGenVM cannot emit this.\nOffending call:\nR.sigmoid(x)", "CodeGenVM cannot emit this."),
])
def test_error_line_is_the_line_that_states_the_error(text: str, line: str) -> None:
    assert error_line(text) == line


@pytest.mark.skipif(shutil.which("nvcc") is None, reason="needs nvcc")
def test_nvcc_failure_gives_its_error_line_and_keeps_its_output() -> None:
    with pytest.raises(CodegenError) as info:
        tvm_build.compile_cuda("__global__ void k(float* a) {\n  int unused;\n  a[0] = b;\n}\n", "sm_80")
    e = info.value
    assert str(e) == 'nvcc failed to compile the CUDA kernels for sm_80: model.cu(3): error: identifier "b" is undefined'
    assert "warning" in e.details and "1 error detected" in e.details


@pytest.mark.usefixtures("sigmoid_left_unlowered")
def test_cli_prints_the_short_message_and_the_full_text_with_verbose(tmp_path: str) -> None:
    path, out = os.path.join(tmp_path, "m.onnx"), os.path.join(tmp_path, "out")
    onnx.save(_model(), path)
    runner = CliRunner()
    args = ["compile", path, "--target", "x86", "-o", out, "--no-cache", "--no-verify"]

    res = runner.invoke(app, args)
    assert res.exit_code == 3, res.output
    assert res.stderr.splitlines()[0] == f"error: TVM failed to build node 'sig1' (Sigmoid) for target 'x86': {REASON}"
    assert "Offending call" not in res.stderr and "--verbose" in res.stderr

    res = runner.invoke(app, [*args, "--verbose"])
    assert res.exit_code == 3, res.output
    assert res.stderr.splitlines()[0].startswith("error: TVM failed to build node 'sig1' (Sigmoid)")
    assert "Offending call:\nR.sigmoid(" in res.stderr

    res = runner.invoke(app, [*args, "--json"])
    assert res.exit_code == 3, res.output
    error = json.loads(res.stdout)["error"]
    assert error["type"] == "CodegenError" and error["exit_code"] == 3 and error["reason"] == REASON
    assert error["nodes"] == [{"name": "sig1", "op_type": "Sigmoid"}] and error["named"] == ["relax.sigmoid"]
    assert "details" not in error and not os.path.exists(out)

    res = runner.invoke(app, [*args, "--json", "--verbose"])
    assert res.exit_code == 3 and "Offending call:\nR.sigmoid(" in json.loads(res.stdout)["error"]["details"]
