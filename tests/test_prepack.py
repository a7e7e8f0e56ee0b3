"""Weight prepacking on CPU targets: constant kernel inputs are stored in the order the scheduled loops read
them (reordered at compile time, never per call), the user is told, and results still match onnxruntime."""

from __future__ import annotations

import numpy as np
import onnx
import tvm
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from onnx import TensorProto, helper
from tvm import relax, tirx

import lepton
import lepton_ir
import targets
from lepton.codegen import to_relax
from lepton.codegen.tvm_build import _relax_calls, cpu_prepack_passes, cpu_prepare_passes, cpu_schedule_passes
from passes.ort import run_model

X86 = targets.resolve("x86")


def _matmul_model(m: int, k: int, n: int, *, shared_weight_input: bool = False, seed: int = 0) -> onnx.ModelProto:
    """y = gelu(x @ W + b); with `shared_weight_input`, also z = x @ v for a runtime input v shaped like W."""
    rng = np.random.default_rng(seed)
    w = (rng.standard_normal((k, n)) / np.sqrt(k)).astype(np.float32)
    b = rng.standard_normal(n).astype(np.float32)
    nodes = [helper.make_node("MatMul", ["x", "w"], ["mm"]), helper.make_node("Add", ["mm", "b"], ["a"]),
             helper.make_node("Gelu", ["a"], ["y"])]
    inputs = [helper.make_tensor_value_info("x", TensorProto.FLOAT, [m, k])]
    outputs = [helper.make_tensor_value_info("y", TensorProto.FLOAT, [m, n])]
    if shared_weight_input:
        nodes.append(helper.make_node("MatMul", ["x", "v"], ["z"]))
        inputs.append(helper.make_tensor_value_info("v", TensorProto.FLOAT, [k, n]))
        outputs.append(helper.make_tensor_value_info("z", TensorProto.FLOAT, [m, n]))
    g = helper.make_graph(nodes, "m", inputs, outputs,
                          [onnx.numpy_helper.from_array(w, "w"), onnx.numpy_helper.from_array(b, "b")])
    return helper.make_model(g, opset_imports=[helper.make_opsetid("", 20)], ir_version=10)


def _kernel_param_shapes(model: onnx.ModelProto, prepack: bool) -> dict[str, list[tuple[int, ...]]]:
    """Parameter shapes of each matmul kernel the compiled Relax module's main function calls."""
    passes = cpu_prepare_passes(X86) + cpu_schedule_passes(X86) + (cpu_prepack_passes() if prepack else [])
    with X86.tvm_target():
        mod = tvm.transform.Sequential(passes)(to_relax(lepton_ir.load(model)))
    shapes = {}
    for e in _relax_calls(mod, tvm.ir.Op.get("relax.call_tir")):
        if "matmul" in e.args[0].name_hint:
            shapes[e.args[0].name_hint] = [tuple(int(d) for d in p.shape) for p in mod[e.args[0]].params]
    assert all(isinstance(f, (tirx.PrimFunc, relax.Function)) for f in mod.functions.values())
    return shapes


def test_matmul_weights_are_reordered_at_compile_time() -> None:
    model = _matmul_model(32, 128, 256)
    (plain,), (packed,) = _kernel_param_shapes(model, False).values(), _kernel_param_shapes(model, True).values()
    assert plain == [(32, 128), (128, 256), (256,), (32, 256)]
    assert packed[0] == (32, 128) and packed[-1] == (32, 256)  # activations keep their layout
    assert packed[1] != (128, 256) and np.prod(packed[1]) == 128 * 256  # the weight is a reordered copy
    assert packed[1][-1] % X86.vector_lanes == 0  # ... whose innermost axis is a whole number of vectors


def test_user_is_told_and_results_match() -> None:
    model = _matmul_model(16, 64, 96)
    res = lepton.compile(model, "x86", use_cache=False)
    assert any("prepacked" in note for note in res.module.manifest.notes)
    x = np.random.default_rng(1).standard_normal((16, 64)).astype(np.float32)
    np.testing.assert_allclose(res.run(x=x)["y"], run_model(model, {"x": x})["y"], rtol=1e-4, atol=1e-5)


def test_kernel_shared_with_a_runtime_weight_is_left_alone_and_correct() -> None:
    """One kernel called on a constant and on a runtime input cannot change the layout it reads."""
    model = _matmul_model(8, 32, 48, shared_weight_input=True)
    rng = np.random.default_rng(2)
    feeds = {"x": rng.standard_normal((8, 32)).astype(np.float32), "v": rng.standard_normal((32, 48)).astype(np.float32)}
    res = lepton.compile(model, "x86", use_cache=False)
    got, want = res.run(**feeds), run_model(model, feeds)
    for name in ("y", "z"):
        np.testing.assert_allclose(got[name], want[name], rtol=1e-4, atol=1e-5)


@settings(max_examples=8, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(m=st.integers(1, 40), k=st.integers(1, 70), n=st.sampled_from([1, 7, 16, 48, 64, 100, 128]),
       conv=st.booleans(), seed=st.integers(0, 2**16))
def test_prepacked_models_match_onnxruntime(m: int, k: int, n: int, conv: bool, seed: int) -> None:
    if conv:  # NHWC convolution: HWIO weights reordered for the scheduled tiles
        rng = np.random.default_rng(seed)
        w = (rng.standard_normal((n, k, 3, 3)) / np.sqrt(9 * k)).astype(np.float32)
        g = helper.make_graph([helper.make_node("Conv", ["x", "w"], ["y"], pads=[1, 1, 1, 1])], "m",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, k, 6, m % 9 + 1])], [],
                              [onnx.numpy_helper.from_array(w, "w")])
        model = onnx.shape_inference.infer_shapes(helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)],
                                                                    ir_version=10))
        model.graph.output.extend([vi for vi in model.graph.value_info if vi.name == "y"])
        feeds = {"x": rng.standard_normal((1, k, 6, m % 9 + 1)).astype(np.float32)}
    else:
        model = _matmul_model(m, k, n, seed=seed)
        feeds = {"x": np.random.default_rng(seed).standard_normal((m, k)).astype(np.float32)}
    res = lepton.compile(model, "x86", use_cache=False, verify=False)
    np.testing.assert_allclose(res.run(**feeds)["y"], run_model(model, feeds)["y"], rtol=1e-4, atol=1e-5)
