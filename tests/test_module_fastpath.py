"""CompiledModule's per-call path (lepton/module.py) and its thread choice (lepton/threads.py).

The fast path (checks against per-input specs made at load, staging tensors, zero-copy large inputs,
outputs copied out by DLPack) must give what the full path and onnxruntime give, still refuse every bad
input with an InputError naming it, take non-contiguous and misaligned inputs, and hand out outputs the
caller owns: not the module's constants, not views of its staging tensors, not each other.
"""

from __future__ import annotations

import threading
from typing import Any

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

import lepton
from lepton import threads as lt
from lepton.errors import InputError
from lepton.module import ZERO_COPY_MIN_BYTES, CompiledModule
from lepton.threads import ThreadChoice, available_cpus


def _symbolic_model() -> onnx.ModelProto:
    """x[N,4], bias[N,3], mask: bool[3] -> y = Relu(x @ W + bias), idx = ArgMax, sel = Where(mask, y, bias),
    flat = Reshape(x, [-1]) (a view of the input in TVM) and const = the initializer `table` (the VM's constant)."""
    rng = np.random.default_rng(0)
    inits = [numpy_helper.from_array(rng.standard_normal((4, 3)).astype(np.float32), "W"),
             numpy_helper.from_array(np.asarray([1.5, -2.0, 3.25], np.float32), "table"),
             numpy_helper.from_array(np.asarray([-1], np.int64), "flat_shape")]
    nodes = [helper.make_node("MatMul", ["x", "W"], ["m"]), helper.make_node("Add", ["m", "bias"], ["a"]),
             helper.make_node("Relu", ["a"], ["y"]), helper.make_node("ArgMax", ["a"], ["idx"], axis=1, keepdims=0),
             helper.make_node("Where", ["mask", "y", "bias"], ["sel"]),
             helper.make_node("Reshape", ["x", "flat_shape"], ["flat"]),
             helper.make_node("Identity", ["table"], ["const"])]
    outputs = [("y", TensorProto.FLOAT, ["N", 3]), ("idx", TensorProto.INT64, ["N"]), ("sel", TensorProto.FLOAT, ["N", 3]),
               ("flat", TensorProto.FLOAT, [None]), ("const", TensorProto.FLOAT, [3])]
    graph = helper.make_graph(
        nodes, "fastpath_symbolic",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 4]),
         helper.make_tensor_value_info("bias", TensorProto.FLOAT, ["N", 3]),
         helper.make_tensor_value_info("mask", TensorProto.BOOL, [3])],
        [helper.make_tensor_value_info(n, t, s) for n, t, s in outputs], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.checker.check_model(model, full_check=True)
    return model


def _static_model() -> onnx.ModelProto:
    """x[128,256] (128 KiB, above ZERO_COPY_MIN_BYTES) -> y = Relu(x @ W)[128,8], total = ReduceSum(x) (0-d)."""
    rng = np.random.default_rng(1)
    w = numpy_helper.from_array((rng.standard_normal((256, 8)) / 16).astype(np.float32), "W")
    nodes = [helper.make_node("MatMul", ["x", "W"], ["m"]), helper.make_node("Relu", ["m"], ["y"]),
             helper.make_node("ReduceSum", ["x"], ["total"], keepdims=0)]
    graph = helper.make_graph(
        nodes, "fastpath_static", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [128, 256])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [128, 8]),
         helper.make_tensor_value_info("total", TensorProto.FLOAT, [])], [w])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.checker.check_model(model, full_check=True)
    return model


SYMBOLIC, STATIC = _symbolic_model(), _static_model()
assert 128 * 256 * 4 >= ZERO_COPY_MIN_BYTES


@pytest.fixture(scope="module")
def sym() -> CompiledModule:
    module = lepton.compile(SYMBOLIC, "x86", use_cache=False).module
    assert module is not None
    return module


@pytest.fixture(scope="module")
def static() -> CompiledModule:
    module = lepton.compile(STATIC, "x86", use_cache=False).module
    assert module is not None
    return module


def _ort(model: onnx.ModelProto, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    sess = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    names = [o.name for o in sess.get_outputs()]
    return dict(zip(names, sess.run(names, feeds), strict=True))


def _sym_feeds(n: int, seed: int) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    return {"x": rng.standard_normal((n, 4)).astype(np.float32), "bias": rng.standard_normal((n, 3)).astype(np.float32),
            "mask": rng.random(3) < 0.5}


def _static_feeds(seed: int) -> dict[str, np.ndarray]:
    return {"x": np.random.default_rng(seed).standard_normal((128, 256)).astype(np.float32)}


def _aligned(a: np.ndarray, offset: int = 0) -> np.ndarray:
    """A copy of `a` whose data starts `offset` bytes past a 64-byte boundary."""
    buf = np.empty(a.nbytes + 128, np.uint8)
    start = (-buf.ctypes.data) % 64 + offset
    out = buf[start:start + a.nbytes].view(a.dtype).reshape(a.shape)
    out[...] = a
    assert out.ctypes.data % 64 == offset
    return out


def _assert_close(got: dict[str, np.ndarray], want: dict[str, np.ndarray]) -> None:
    assert list(got) == list(want)
    for name, w in want.items():
        assert got[name].dtype == w.dtype and got[name].shape == w.shape, name
        np.testing.assert_allclose(got[name], w, rtol=1e-5, atol=1e-5, err_msg=name)


# --- same results on every path ---


@pytest.mark.parametrize("n", [1, 3])
def test_fast_path_matches_full_path_and_onnxruntime(sym: CompiledModule, n: int) -> None:
    feeds = _sym_feeds(n, seed=n)
    fast = sym.run(feeds)
    assert sym._fast_check(feeds) is not None  # these inputs take the fast path ...
    lists = {k: v.tolist() for k, v in feeds.items()}
    assert sym._fast_check(lists) is None  # ... and Python lists the full one
    full = sym.run(lists)
    for name in fast:
        np.testing.assert_array_equal(fast[name], full[name], err_msg=name)
    _assert_close(fast, _ort(SYMBOLIC, feeds))


def test_static_model_matches_onnxruntime_with_zero_copy_and_staged_inputs(static: CompiledModule) -> None:
    x = _static_feeds(0)["x"]
    want = _ort(STATIC, {"x": x})
    _assert_close(static.run(x=_aligned(x)), want)  # 64-byte aligned, >= ZERO_COPY_MIN_BYTES: no copy
    _assert_close(static.run(x=_aligned(x, 4)), want)  # misaligned: copied into the staging tensor
    readonly = _aligned(x)
    readonly.flags.writeable = False  # numpy will not export it by DLPack: copied
    _assert_close(static.run(x=readonly), want)
    _assert_close(static.run(x=np.asfortranarray(x)), want)


def test_tvm_gets_64_byte_aligned_inputs_and_large_aligned_ones_without_a_copy(static: CompiledModule,
                                                                               sym: CompiledModule) -> None:
    """TVM's kernels assume 64-byte aligned data (tvm.runtime.from_dlpack refuses less): whatever the caller
    passes, the tensor handed over is aligned; only a large, aligned, writeable C-contiguous array is shared."""
    x = _static_feeds(0)["x"]
    readonly = _aligned(x)
    readonly.flags.writeable = False
    small = _sym_feeds(1, seed=0)["x"]
    cases = [(static, _aligned(x), True), (static, _aligned(x, 4), False), (static, readonly, False),
             (static, np.asfortranarray(x), False), (sym, _aligned(small), False), (sym, _aligned(small, 4), False)]
    for module, arr, shared in cases:
        view = np.from_dlpack(module._plans[0].tensor(arr, module._device))
        assert view.ctypes.data % 64 == 0
        assert np.shares_memory(view, arr) is shared
        np.testing.assert_array_equal(view, arr)


def test_non_contiguous_and_misaligned_inputs(sym: CompiledModule) -> None:
    feeds = _sym_feeds(3, seed=7)
    want = _ort(SYMBOLIC, feeds)
    wide = np.zeros((3, 8), np.float32)
    wide[:, ::2] = feeds["x"]
    strided = {**feeds, "x": wide[:, ::2]}  # every other column
    assert not strided["x"].flags.c_contiguous
    _assert_close(sym.run(strided), want)
    transposed = {**feeds, "bias": np.ascontiguousarray(feeds["bias"].T).T}  # Fortran order
    _assert_close(sym.run(transposed), want)
    misaligned = {k: _aligned(v, offset=4 if v.dtype != bool else 1) for k, v in feeds.items()}
    _assert_close(sym.run(misaligned), want)


def test_shape_changes_reallocate_the_staging_tensors(sym: CompiledModule) -> None:
    for n in (2, 5, 1, 5, 2):
        feeds = _sym_feeds(n, seed=10 + n)
        _assert_close(sym.run(feeds), _ort(SYMBOLIC, feeds))


# --- bad inputs still raise InputError naming the input ---


@pytest.mark.parametrize(("change", "message"), [
    ({"x": np.zeros((2, 4), np.float64)}, "input 'x': dtype float64, expected float32"),
    ({"mask": np.zeros(3, np.int64)}, "input 'mask': dtype int64, expected bool"),
    ({"x": np.zeros((2, 5), np.float32)}, r"input 'x': dim 1 is 5, expected 4"),
    ({"x": np.zeros((2, 4, 1), np.float32)}, "input 'x': rank 3"),
    ({"mask": np.zeros(4, bool)}, "input 'mask': dim 0 is 4, expected 3"),
    ({"bias": np.zeros((3, 3), np.float32)}, r"input 'bias': dim 0 \(N\) is 3, but input 'x' has N = 2"),
    ({"x": np.zeros((2, 4), np.float32).astype(">f4")}, "input 'x': dtype >f4, expected float32"),
])
def test_bad_inputs_raise_input_error(sym: CompiledModule, change: dict[str, Any], message: str) -> None:
    with pytest.raises(InputError, match=message):
        sym.run({**_sym_feeds(2, seed=0), **change})


def test_bad_names_raise_input_error(sym: CompiledModule, static: CompiledModule) -> None:
    feeds = _sym_feeds(2, seed=0)
    with pytest.raises(InputError, match="unknown input.*'z'"):
        sym.run({**feeds, "z": feeds["x"]})
    with pytest.raises(InputError, match="missing input.*'mask'"):
        sym.run({k: v for k, v in feeds.items() if k != "mask"})
    with pytest.raises(InputError, match="unknown input.*'y'"):
        static.run(y=_static_feeds(0)["x"])  # right count, wrong name
    with pytest.raises(InputError, match="input 'x': dim 0 is 127, expected 128"):
        static.run(x=np.zeros((127, 256), np.float32))


# --- outputs belong to the caller ---


def test_outputs_of_consecutive_calls_do_not_alias(sym: CompiledModule) -> None:
    a_in, b_in = _sym_feeds(2, seed=1), _sym_feeds(2, seed=2)
    a = sym.run(a_in)
    a_saved = {k: v.copy() for k, v in a.items()}
    b = sym.run(b_in)
    for name in a:  # the second call left the first call's outputs alone
        np.testing.assert_array_equal(a[name], a_saved[name], err_msg=name)
        assert not np.shares_memory(a[name], b[name]), name
        for v in (*a_in.values(), *b_in.values()):
            assert not np.shares_memory(a[name], v), name
    _assert_close(b, _ort(SYMBOLIC, b_in))
    # `flat` is a view of the input's staging tensor inside TVM: the second call overwrote that tensor
    np.testing.assert_array_equal(a["flat"], a_in["x"].reshape(-1))
    np.testing.assert_array_equal(b["flat"], b_in["x"].reshape(-1))
    outs = list(b.values())
    assert not any(np.shares_memory(p, q) for i, p in enumerate(outs) for q in outs[i + 1:])


def test_writing_to_an_output_changes_nothing_the_module_keeps(sym: CompiledModule) -> None:
    feeds = _sym_feeds(2, seed=3)
    first = sym.run(feeds)
    assert first["const"].flags.writeable
    first["const"][:] = 0  # the VM returns its constant itself; Lepton hands out a copy
    first["flat"][:] = 0
    again = sym.run(feeds)
    np.testing.assert_array_equal(again["const"], np.asarray([1.5, -2.0, 3.25], np.float32))
    np.testing.assert_array_equal(again["flat"], feeds["x"].reshape(-1))


def test_zero_copy_input_is_not_returned_or_written(static: CompiledModule) -> None:
    x = _aligned(_static_feeds(4)["x"])
    before = x.copy()
    out = static.run(x=x)
    np.testing.assert_array_equal(x, before)
    assert not any(np.shares_memory(v, x) for v in out.values())
    assert out["total"].shape == ()


def test_concurrent_calls_of_one_module_are_serialized(sym: CompiledModule) -> None:
    """Two threads on one module: the VM keeps per-call state and the staging tensors are shared."""
    cases = [_sym_feeds(4, seed=20 + i) for i in range(2)]
    wants = [_ort(SYMBOLIC, f) for f in cases]
    errors: list[str] = []

    def work(i: int) -> None:
        for _ in range(200):
            got = sym.run(cases[i])
            for name, w in wants[i].items():
                if not np.allclose(got[name], w, rtol=1e-5, atol=1e-5):
                    errors.append(f"thread {i}: {name}")
                    return

    workers = [threading.Thread(target=work, args=(i,)) for i in range(2)]
    for w in workers:
        w.start()
    for w in workers:
        w.join()
    assert errors == []


# --- the thread choice ---


def _drive(choice: ThreadChoice, key: Any, seconds: dict[int, float], calls: int = 10_000) -> list[int]:
    """Run the protocol with fixed call times per thread count until a call is no longer timed after a
    choice; the thread counts asked for (that last call excluded)."""
    asked = []
    for _ in range(calls):
        n, timed = choice.next(key)
        if not timed and choice.decided(key) is not None:
            return asked
        asked.append(n)
        if timed:
            choice.record(key, n, seconds[n])
    raise AssertionError("no choice")


def test_small_model_is_tried_both_ways_and_keeps_one_thread_when_faster() -> None:
    choice = ThreadChoice(cpus=4)
    asked = _drive(choice, "k", {1: 20e-6, 4: 50e-6})
    assert choice.decided("k") == 1
    assert asked[:1 + lt.SIZE_CALLS] == [4] * (1 + lt.SIZE_CALLS)  # warm-up and sizing on all CPUs
    trials = asked[1 + lt.SIZE_CALLS:]
    assert set(trials) == {1, 4} and trials[0] == 1
    switches = sum(a != b for a, b in zip(trials, trials[1:], strict=False))
    assert switches == 2 * lt.ROUNDS - 1  # blocks: one thread, all CPUs, ... (ROUNDS each)
    assert trials.count(1) >= lt.ROUNDS * 0.9 * lt.BLOCK_S / 20e-6  # each block lasts BLOCK_S (of 20 us calls)
    assert choice.next("k") == (1, False)  # decided: no more timing


def test_a_choice_from_trials_is_measured_again_later_and_a_big_model_never() -> None:
    now = [0.0]
    choice = ThreadChoice(cpus=2, clock=lambda: now[0])
    _drive(choice, "small", {1: 10e-6, 2: 30e-6})
    _drive(choice, "big", {1: 0.5, 2: 0.02})
    assert (choice.decided("small"), choice.decided("big")) == (1, 2)
    now[0] += lt.RECHECK_S - 1
    assert choice.next("small") == (1, False)
    now[0] += 1
    asked = _drive(choice, "small", {1: 30e-6, 2: 10e-6})  # the machine changed: two threads win now
    assert asked[0] == 1 and set(asked) == {1, 2}  # trial blocks again, no warm-up or sizing
    assert choice.decided("small") == 2
    now[0] += 100 * lt.RECHECK_S
    assert choice.next("big") == (2, False)


@pytest.mark.parametrize(("one", "many", "keep"), [(50e-6, 20e-6, 2), (100e-6, 89e-6, 2), (100e-6, 91e-6, 1),
                                                  (20e-6, 21e-6, 1), (96e-6, 100e-6, 1)])
def test_small_model_keeps_one_thread_unless_all_cpus_are_clearly_faster(one: float, many: float, keep: int) -> None:
    choice = ThreadChoice(cpus=2)
    _drive(choice, None, {1: one, 2: many})
    assert choice.decided(None) == keep
    assert lt.prefer_one_thread([one], [many]) is (keep == 1)


def test_big_model_keeps_all_cpus_without_trying_one_thread() -> None:
    choice = ThreadChoice(cpus=8)
    asked = _drive(choice, None, {1: 1e-3, 8: lt.SMALL_CALL_S})
    assert choice.decided(None) == 8
    assert asked == [8] * (1 + lt.SIZE_CALLS)


def test_one_slow_sizing_call_does_not_make_a_model_big() -> None:
    choice = ThreadChoice(cpus=2)
    choice.next(None)  # warm-up
    for s in (0.5, 20e-6, 20e-6):  # a hiccup, then the model's real time
        n, timed = choice.next(None)
        assert timed
        choice.record(None, n, s)
    _drive(choice, None, {1: 10e-6, 2: 30e-6})
    assert choice.decided(None) == 1


def test_shapes_are_measured_separately_up_to_a_limit() -> None:
    choice = ThreadChoice(cpus=2)
    _drive(choice, (1,), {1: 10e-6, 2: 30e-6})
    _drive(choice, (64,), {1: 30e-3, 2: 20e-3})
    assert (choice.decided((1,)), choice.decided((64,))) == (1, 2)
    for k in range(2, lt.MAX_SHAPES):
        choice.next((k,))
    assert choice.next(("one too many",)) == (2, False)
    assert choice.decided(("one too many",)) is None


def test_module_reports_its_choice_and_runs_correctly_while_choosing(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("TVM_NUM_THREADS", raising=False)
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    module = lepton.compile(STATIC, "x86", use_cache=False).module
    feeds = _static_feeds(5)
    want = _ort(STATIC, feeds)
    with pytest.raises(InputError, match="threads"):
        module.threads(x=(128, 256))  # a static signature takes no shapes
    for _ in range(5000):
        _assert_close(module.run(feeds), want)
        if module.threads() is not None:
            break
    cpus = len(available_cpus())
    assert module.threads() in ({1, cpus} if cpus > 1 else {None})


def test_symbolic_module_chooses_per_shape(sym: CompiledModule) -> None:
    with pytest.raises(InputError, match="every input"):
        sym.threads(x=(2, 4))
    assert sym.threads(x=(9, 4), bias=(9, 3), mask=(3,)) is None  # never called with N = 9


def test_user_thread_setting_disables_the_choice(monkeypatch: pytest.MonkeyPatch) -> None:
    import tvm

    monkeypatch.setenv("TVM_NUM_THREADS", "1")
    module = lepton.compile(STATIC, "x86", use_cache=False).module
    feeds = _static_feeds(6)
    got: list[int] = []

    def in_fresh_thread() -> None:  # TVM's pools are per calling thread: this one starts with TVM's own
        for _ in range(100):
            module.run(feeds)
        got.append(int(tvm.get_global_func("runtime.NumThreads")()))

    t = threading.Thread(target=in_fresh_thread)
    t.start()
    t.join()
    assert got == [1]  # TVM_NUM_THREADS=1 held: the module neither tried nor set another count
    assert module.threads() is None


def test_use_threads_sizes_the_calling_threads_pool(monkeypatch: pytest.MonkeyPatch) -> None:
    import tvm

    monkeypatch.delenv("TVM_NUM_THREADS", raising=False)
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    got: list[int] = []

    def work() -> None:
        for n in (1, len(available_cpus()), 1):
            lt.use_threads(n)
            got.append(int(tvm.get_global_func("runtime.NumThreads")()))

    t = threading.Thread(target=work)
    t.start()
    t.join()
    assert got == [1, len(available_cpus()), 1]
