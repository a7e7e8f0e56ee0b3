"""Layout matrix: every op TVM's layout conversion can reach, between two convolutions, under every layout a
shipped target names, compiled with `lepton.compile` and checked against onnxruntime.

Each case is Conv -> op -> Conv (small shapes), so channels-last conversion reaches the op from both sides
(1-d and 3-d ops through Squeeze/Unsqueeze). A layout is verified on a target that runs here: a shipped one with
that layout, else this machine's CPU target with the layout swapped in (NCHW is shipped for GPUs only).
Every shipped target that runs here verifies; the others are built (ARM, CUDA, OpenCL on a CPU machine).
Quick run: every case on the first verifying target, a representative few elsewhere; the rest is `slow`.
"""

from __future__ import annotations

import dataclasses
import importlib.util
import os
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper

import lepton
import targets
from passes.ort import run_model
from targets import Target

C, HW = 8, 8


class _Graph:
    """Builds nodes and random initializers with fresh names."""

    def __init__(self) -> None:
        self.nodes: list[onnx.NodeProto] = []
        self.inits: list[onnx.TensorProto] = []
        self.rng = np.random.default_rng(0)

    def _name(self, prefix: str) -> str:
        return f"{prefix}{len(self.nodes) + len(self.inits)}"

    def const(self, a: np.ndarray) -> str:
        name = self._name("k")
        self.inits.append(onnx.numpy_helper.from_array(a, name))
        return name

    def ints(self, *v: int) -> str:
        return self.const(np.array(v, np.int64))

    def floats(self, *v: float) -> str:
        return self.const(np.array(v, np.float32))

    def ramp(self, n: int, lo: float = 0.5, hi: float = 2.0) -> str:
        return self.const(np.linspace(lo, hi, n, dtype=np.float32))

    def op(self, op_type: str, *inputs: str, outputs: int = 1, **attrs: object) -> str | list[str]:
        names = [self._name(op_type.lower()) + f"_{i}" for i in range(outputs)]
        self.nodes.append(helper.make_node(op_type, list(inputs), names, **attrs))
        return names[0] if outputs == 1 else names

    def _weight(self, *shape: int) -> str:
        return self.const((self.rng.standard_normal(shape) / np.sqrt(np.prod(shape[1:]))).astype(np.float32))

    def conv(self, x: str, cin: int, cout: int, k: tuple[int, ...] = (3, 3), group: int = 1, **attrs: object) -> str:
        attrs.setdefault("pads", [kk // 2 for kk in k] * 2)
        bias = self.const(self.rng.standard_normal(cout).astype(np.float32))
        return self.op("Conv", x, self._weight(cout, cin // group, *k), bias, group=group, **attrs)

    def conv_t(self, x: str, cin: int, cout: int, k: tuple[int, ...], group: int = 1, **attrs: object) -> str:
        bias = self.const(self.rng.standard_normal(cout).astype(np.float32))
        return self.op("ConvTranspose", x, self._weight(cin, cout // group, *k), bias, group=group, **attrs)


Op = Callable[[_Graph, str], str]


def build_model(op: Op) -> onnx.ModelProto:
    """x [1, C, HW, HW] -> op -> y, opset 21; y's shape comes from onnxruntime (shape inference misses function ops)."""
    g = _Graph()
    g.nodes.append(helper.make_node("Identity", [op(g, "x")], ["y"]))
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, C, HW, HW])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, None)
    untyped = helper.make_graph(g.nodes, "m", [x], [y], g.inits)
    model = helper.make_model(untyped, opset_imports=[helper.make_opsetid("", 21)], ir_version=10)
    out_shape = run_model(model, {"x": np.zeros((1, C, HW, HW), np.float32)})["y"].shape
    model.graph.output[0].CopyFrom(helper.make_tensor_value_info("y", TensorProto.FLOAT, list(out_shape)))
    return model


@dataclass(frozen=True)
class Case:
    """`op` sits between two convolutions (the second takes `cout` channels; none when `cout` is 0). Under
    channels-last conversion, the artifact's layout note must name `layout` ("op LAYOUT") when one is given."""

    op: Op
    cout: int = C
    layout: str | None = None

    def model(self) -> onnx.ModelProto:
        def body(g: _Graph, x: str) -> str:
            y = self.op(g, g.conv(x, C, C))
            return g.conv(y, self.cout, C) if self.cout else y

        return build_model(body)


def _squeezed(g: _Graph, x: str) -> str:
    """[1, C, H, W] -> [1, C, W]: pooled over H, then squeezed (a 3-d tensor the conversion reaches)."""
    return g.op("Squeeze", g.op("AveragePool", x, kernel_shape=[HW, 1]), g.ints(2))


def _conv1d(g: _Graph, x: str) -> str:
    flat = g.op("Reshape", x, g.ints(1, C, HW * HW))
    return g.op("Reshape", g.conv(flat, C, C, k=(3,), group=2, dilations=[2], pads=[1, 3]), g.ints(1, C, HW, HW))


def _conv3d(g: _Graph, x: str) -> str:
    deep = g.op("Unsqueeze", x, g.ints(2))  # D 1 -> 2 below
    y = g.conv(deep, C, C, k=(2, 3, 3), group=4, dilations=[1, 2, 1], pads=[1, 2, 0, 1, 2, 2])
    return g.op("Reshape", y, g.ints(1, C, 2 * HW, HW))


def _conv_t1d(g: _Graph, x: str) -> str:
    flat = g.op("Reshape", x, g.ints(1, C, HW * HW))
    y = g.conv_t(flat, C, C, k=(3,), group=2, strides=[2], pads=[1, 1], output_padding=[1])  # 64 -> 128
    return g.op("Reshape", y, g.ints(1, C, 2 * HW, HW))


def _conv_t3d(g: _Graph, x: str) -> str:
    y = g.conv_t(g.op("Unsqueeze", x, g.ints(2)), C, C, k=(1, 2, 2), group=2, strides=[1, 2, 2])
    return g.op("Squeeze", y, g.ints(2))


def _pool1d(g: _Graph, x: str) -> str:
    p = g.op("MaxPool", _squeezed(g, x), kernel_shape=[3], pads=[1, 1])
    return g.op("Unsqueeze", g.op("AveragePool", p, kernel_shape=[2], pads=[0, 1]), g.ints(2))


def _pool3d(g: _Graph, x: str) -> str:
    p = g.op("MaxPool", g.op("Unsqueeze", x, g.ints(2)), kernel_shape=[1, 3, 3], pads=[0, 1, 1, 0, 1, 1])
    return g.op("Squeeze", g.op("AveragePool", p, kernel_shape=[1, 2, 2], pads=[0, 0, 0, 0, 1, 1]), g.ints(2))


def _resize3d(g: _Graph, x: str) -> str:
    r = g.op("Resize", g.op("Unsqueeze", x, g.ints(2)), "", g.floats(1, 1, 1, 2, 2), mode="nearest")
    return g.op("Squeeze", r, g.ints(2))


def _split(g: _Graph, x: str) -> str:
    a, b = g.op("Split", x, g.ints(3, 5), outputs=2, axis=1)
    return g.op("Concat", g.conv(b, 5, 3, k=(1, 1)), g.op("Relu", a), axis=1)


def _per_channel(lo: float, hi: float) -> np.ndarray:
    return np.linspace(lo, hi, C, dtype=np.float32).reshape(C, 1, 1)


def _batchnorm(g: _Graph, x: str) -> str:  # after a Relu, so fuse-batchnorm leaves it
    return g.op("BatchNormalization", g.op("Relu", x), g.ramp(C), g.ramp(C, -1, 1), g.ramp(C, -0.2, 0.3), g.ramp(C))


CASES: dict[str, Case] = {
    "conv2d-groups-dilation-asym-pads": Case(
        lambda g, x: g.conv(x, C, C, group=2, dilations=[2, 2], pads=[0, 1, 2, 3], strides=[1, 2])),
    "conv2d-depthwise-stride2": Case(lambda g, x: g.conv(x, C, C, group=C, strides=[2, 2], pads=[1, 0, 1, 1])),
    "conv1d-groups-dilation": Case(_conv1d, layout="conv1d NCW"),
    "conv1d-after-squeeze": Case(
        lambda g, x: g.op("Unsqueeze", g.conv(_squeezed(g, x), C, C, k=(3,), group=2, dilations=[2], pads=[3, 1]),
                          g.ints(2)),
        layout="conv1d NWC"),
    "conv3d-groups-dilation": Case(_conv3d, layout="conv3d NCDHW"),
    "convtranspose-k2-s2": Case(lambda g, x: g.conv_t(x, C, C, k=(2, 2), strides=[2, 2]),
                                layout="conv2d_transpose NHWC"),
    "convtranspose-k2-s2-to-1-channel": Case(lambda g, x: g.conv_t(x, C, 1, k=(2, 2), strides=[2, 2]), cout=1,
                                             layout="conv2d_transpose NHWC"),
    "convtranspose-k4-s2-p1": Case(lambda g, x: g.conv_t(x, C, C, k=(4, 4), strides=[2, 2], pads=[1, 1, 1, 1]),
                                   layout="conv2d_transpose NHWC"),
    "convtranspose-output-padding-groups": Case(
        lambda g, x: g.conv_t(x, C, C, k=(3, 3), group=2, strides=[2, 2], pads=[1, 0, 1, 1], output_padding=[1, 0]),
        layout="conv2d_transpose NHWC"),
    "convtranspose-dilations-depthwise": Case(
        lambda g, x: g.conv_t(x, C, C, k=(3, 3), group=C, dilations=[2, 1], pads=[1, 1, 1, 1]),
        layout="conv2d_transpose NHWC"),
    "convtranspose-strides-dilations-groups": Case(
        lambda g, x: g.conv_t(x, C, C, k=(3, 2), group=4, strides=[3, 2], dilations=[2, 3], output_padding=[2, 1]),
        layout="conv2d_transpose NHWC"),
    "convtranspose1d": Case(_conv_t1d),
    "convtranspose1d-after-squeeze": Case(
        lambda g, x: g.op("Unsqueeze", g.conv_t(_squeezed(g, x), C, C, k=(2,), strides=[2]), g.ints(2)),
        layout="conv1d_transpose NCW"),
    "convtranspose3d": Case(_conv_t3d, layout="conv3d_transpose NCDHW"),
    "maxpool-asym-pads-ceil": Case(
        lambda g, x: g.op("MaxPool", x, kernel_shape=[3, 3], strides=[2, 2], pads=[0, 1, 1, 0], ceil_mode=1),
        layout="max_pool2d NHWC"),
    "maxpool-dilations": Case(lambda g, x: g.op("MaxPool", x, kernel_shape=[2, 2], dilations=[2, 2], pads=[1, 1, 1, 1]),
                              layout="max_pool2d NHWC"),
    "averagepool-count-include-pad": Case(
        lambda g, x: g.op("AveragePool", x, kernel_shape=[3, 3], strides=[2, 2], pads=[1, 1, 1, 1],
                          count_include_pad=1),
        layout="avg_pool2d NHWC"),
    "averagepool-exclude-pad": Case(lambda g, x: g.op("AveragePool", x, kernel_shape=[3, 2], pads=[1, 0, 1, 1]),
                                    layout="avg_pool2d NHWC"),
    "pool1d-after-squeeze": Case(_pool1d, layout="max_pool1d NWC"),
    "pool3d-after-unsqueeze": Case(_pool3d, layout="max_pool3d NHDWC"),
    "globalaveragepool": Case(lambda g, x: g.op("GlobalAveragePool", x)),
    "globalmaxpool": Case(lambda g, x: g.op("GlobalMaxPool", x)),
    "resize-nearest-scales": Case(lambda g, x: g.op("Resize", x, "", g.floats(1, 1, 2, 2), mode="nearest"),
                                  layout="resize2d NHWC"),
    "resize-linear-sizes": Case(lambda g, x: g.op("Resize", x, "", "", g.ints(1, C, 12, 20), mode="linear"),
                                layout="resize2d NHWC"),
    "resize-cubic-align-corners": Case(
        lambda g, x: g.op("Resize", x, "", g.floats(1, 1, 1.5, 2), mode="cubic",
                          coordinate_transformation_mode="align_corners"),
        layout="resize2d NHWC"),
    "resize3d-after-unsqueeze": Case(_resize3d, layout="resize3d NCDHW"),
    "batchnorm-after-relu": Case(_batchnorm),
    "instancenorm": Case(lambda g, x: g.op("InstanceNormalization", x, g.ramp(C), g.ramp(C, -1, 1))),
    "groupnorm": Case(lambda g, x: g.op("GroupNormalization", x, g.ramp(C), g.ramp(C, -1, 1), num_groups=4)),
    "layernorm-chw": Case(lambda g, x: g.op("LayerNormalization", x, g.const(np.ones((C, HW, HW), np.float32)),
                                            g.const(np.zeros((C, HW, HW), np.float32)), axis=1)),
    "concat-channels": Case(lambda g, x: g.op("Concat", x, g.conv(x, C, 4, k=(1, 1)), axis=1), cout=C + 4),
    "add-mul-channel-broadcast": Case(
        lambda g, x: g.op("Mul", g.op("Add", x, g.const(_per_channel(-1, 1))), g.conv(x, C, C, k=(1, 1)))),
    "split-channels": Case(_split, cout=6),
    "slice-channels-step": Case(
        lambda g, x: g.op("Slice", x, g.ints(1, 0), g.ints(7, HW), g.ints(1, 3), g.ints(2, 1)), cout=3),
    "slice-channels-reversed": Case(lambda g, x: g.op("Slice", x, g.ints(-1), g.ints(-C - 1), g.ints(1), g.ints(-1))),
    "reducemean-channels-keepdims": Case(lambda g, x: g.op("ReduceMean", x, g.ints(1), keepdims=1), cout=1),
    "reducesum-channels": Case(lambda g, x: g.op("ReduceSum", x, g.ints(1), keepdims=0), cout=0),
    "softmax-channels": Case(lambda g, x: g.op("Softmax", x, axis=1)),
    "prelu-channels": Case(lambda g, x: g.op("PRelu", x, g.const(_per_channel(-0.5, 0.5)))),
    "pad-channels-and-spatial": Case(lambda g, x: g.op("Pad", x, g.ints(0, 1, 2, 0, 0, 2, 0, 1)), cout=C + 3),
    "pad-reflect": Case(lambda g, x: g.op("Pad", x, g.ints(0, 0, 1, 2, 0, 0, 2, 1), mode="reflect")),
    "argmax-channels": Case(
        lambda g, x: g.op("Cast", g.op("ArgMax", x, axis=1, keepdims=1), to=TensorProto.FLOAT), cout=1),
    "depthtospace": Case(lambda g, x: g.op("DepthToSpace", x, blocksize=2, mode="CRD"), cout=C // 4),
}
#: The cases the quick run takes on every target besides the host CPU target (which takes all).
REPRESENTATIVE = ("convtranspose-k4-s2-p1", "convtranspose-dilations-depthwise", "conv3d-groups-dilation",
                  "resize3d-after-unsqueeze")

SHIPPED = [targets.resolve(name) for name in targets.known()]
LAYOUTS = sorted({t.layout for t in SHIPPED})


def _host_cpu() -> Target | None:
    """The shipped base CPU target this machine runs (x86 here), if any."""
    return next((t for t in SHIPPED if t.device == "cpu" and t.name == t.kind and t.runs_here()), None)


def verifying_target(layout: str) -> Target | None:
    """A target with `layout` that runs here: a shipped one (a base before its variants), else this machine's CPU
    target with the layout swapped in; None when this machine runs no shipped CPU target."""
    here = [t for t in SHIPPED if t.layout == layout and t.runs_here()]
    if here:
        return min(here, key=lambda t: (t.name != t.kind, t.name))
    cpu = _host_cpu()
    return None if cpu is None else dataclasses.replace(cpu, name=f"{cpu.name}-{layout.lower()}", layout=layout)


def _matrix() -> list[object]:
    """(target, case) for every verifying target and every other shipped target. Quick: all cases on the host
    CPU target, the representative ones on the other verifying and base targets; target variants (same kind
    and layout as their base, other CPU features) are slow."""
    verifiers = [t for t in (verifying_target(layout) for layout in LAYOUTS) if t is not None]
    others = [t for t in SHIPPED if all(t.name != v.name for v in verifiers)]
    primary = _host_cpu()
    params = []
    for target in verifiers + others:
        for name, case in CASES.items():
            base = target.name == target.kind or any(target.name == v.name for v in verifiers)
            quick = target == primary or (base and name in REPRESENTATIVE)
            params.append(pytest.param(target, case, id=f"{target.layout}-{target.name}-{name}",
                                       marks=[] if quick else [pytest.mark.slow]))
    return params


def test_every_shipped_layout_is_verified_here() -> None:
    if _host_cpu() is None:
        pytest.skip("this machine runs no shipped CPU target")
    assert LAYOUTS == ["NCHW", "NHWC"]  # today's shipped targets; a new layout joins the matrix by itself
    for layout in LAYOUTS:
        target = verifying_target(layout)
        assert target is not None and target.layout == layout and target.runs_here()


@pytest.mark.parametrize(("target", "case"), _matrix())
def test_layout_matrix(target: Target, case: Case) -> None:
    res = lepton.compile(case.model(), target, use_cache=False)
    layouts = [n for n in res.manifest.notes if n.startswith("layouts after channels-last conversion")]
    if target.layout == "NHWC" and target.device == "cpu":
        assert len(layouts) == 1 and "conv2d NHWC" in layouts[0], res.manifest.notes
        if case.layout:
            assert case.layout in layouts[0], res.manifest.notes
    else:
        assert not layouts, res.manifest.notes
    if target.runs_here():
        assert res.verify_report is not None and res.verify_report.ok
    else:
        assert res.module is None and os.path.isfile(os.path.join(res.path, res.manifest.library))


def _ocr_detector() -> str | None:
    spec = importlib.util.find_spec("rapidocr_onnxruntime")  # located, never imported: its dependencies are absent
    if spec is None or not spec.submodule_search_locations:
        return None
    path = os.path.join(list(spec.submodule_search_locations)[0], "models", "ch_PP-OCRv4_det_infer.onnx")
    return path if os.path.isfile(path) else None


@pytest.mark.slow  # ~35 s of CPU
def test_paddleocr_detector_with_two_conv_transposes_verifies_on_x86() -> None:
    path = _ocr_detector()
    if path is None:
        pytest.skip("rapidocr_onnxruntime's ch_PP-OCRv4_det_infer.onnx is not installed (requirements-models.lock)")
    x86 = targets.resolve("x86")
    if not x86.runs_here():
        pytest.skip("needs an x86 host")
    res = lepton.compile(path, x86, use_cache=False, input_shapes={"x": [1, 3, 160, 160]})
    assert res.verify_report is not None and res.verify_report.ok
    notes = " | ".join(res.manifest.notes)
    assert "2 conv2d_transpose NHWC" in notes and "2 transposed 2-d convolution(s) computed channels-last" in notes
