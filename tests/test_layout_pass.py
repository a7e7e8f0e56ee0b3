"""`convert-layout` (passes/layout): channels-last regions around 2-d convolutions.

Structure before/after (transposes only at region edges, back-to-back ones cancelled, weights converted once
at compile time, ConvTranspose and ops without an NHWC form left NCHW), the reasons it gives for what it leaves,
a hypothesis property over random conv/pool/elementwise/concat chains (onnxruntime's outputs kept, the IR
verifies, a second run changes nothing), and compiles on x86 with the pass on, the layout matrix's cases included.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import onnx
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from onnx import TensorProto as T
from onnx import helper as oh
from onnx import numpy_helper as nh

import lepton
import lepton_ir
import targets
from lepton_ir import Graph
from passes import PassContext, PassManager, parse_pipeline
from passes.layout import METADATA_KEY, ConvertLayout, layout_plan, with_layout_pass
from passes.layout.convert import NO_NHWC_KERNEL
from passes.ort import run_model
from passutil import assert_outputs_close, run_pass

LAYOUT_OPS = {"NhwcConv", "NhwcMaxPool", "NhwcAveragePool", "NhwcResize"}


class _M:
    """Builds a small NCHW float32 model; `out(...)` names its outputs (shapes from onnx shape inference)."""

    def __init__(self, seed: int = 0) -> None:
        self.nodes: list[onnx.NodeProto] = []
        self.inits: list[onnx.TensorProto] = []
        self.rng = np.random.default_rng(seed)

    def const(self, a: np.ndarray, prefix: str = "k") -> str:
        name = f"{prefix}{len(self.inits)}"
        self.inits.append(nh.from_array(np.asarray(a), name))
        return name

    def weight(self, *shape: int) -> str:
        return self.const((self.rng.standard_normal(shape) / np.sqrt(np.prod(shape[1:]))).astype(np.float32), "w")

    def op(self, op_type: str, *inputs: str, outputs: int = 1, **attrs: object) -> str | list[str]:
        names = [f"{op_type.lower()}{len(self.nodes)}_{i}" for i in range(outputs)]
        self.nodes.append(oh.make_node(op_type, list(inputs), names, name=f"{op_type}{len(self.nodes)}", **attrs))
        return names[0] if outputs == 1 else names

    def conv(self, x: str, cin: int, cout: int, k: int = 3, bias: bool = True, group: int = 1, **attrs: object) -> str:
        if "auto_pad" not in attrs:
            attrs.setdefault("pads", [k // 2] * 4)
        ins = [x, self.weight(cout, cin // group, k, k)]
        if bias:
            ins.append(self.const(self.rng.standard_normal(cout).astype(np.float32), "b"))
        return self.op("Conv", *ins, group=group, **attrs)  # type: ignore[return-value]

    def model(self, inputs: Sequence[tuple[str, Sequence[int]]], outputs: Sequence[str], opset: int = 17) -> onnx.ModelProto:
        g = oh.make_graph(self.nodes, "m", [oh.make_tensor_value_info(n, T.FLOAT, list(s)) for n, s in inputs],
                          [oh.make_tensor_value_info(o, T.FLOAT, None) for o in outputs], self.inits)
        m = oh.make_model(g, opset_imports=[oh.make_opsetid("", opset)], ir_version=8)
        inferred = onnx.shape_inference.infer_shapes(m, strict_mode=True)
        shapes = {v.name: v for v in [*inferred.graph.value_info, *inferred.graph.output]}
        for o in m.graph.output:
            o.CopyFrom(shapes[o.name])
        return m


def _feeds(model: onnx.ModelProto, seed: int = 0) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    return {i.name: rng.standard_normal([d.dim_value for d in i.type.tensor_type.shape.dim]).astype(np.float32)
            for i in model.graph.input}


def _convert(model: onnx.ModelProto) -> Graph:
    """Import, run convert-layout (checking `modified` and the verifier), check onnxruntime's outputs are kept."""
    graph = lepton_ir.load(model)
    run_pass(ConvertLayout(), graph)
    feeds = _feeds(model)
    assert_outputs_close(run_model(model, feeds), run_model(lepton_ir.to_onnx(graph), feeds))
    return graph


def _ops(graph: Graph, op_type: str) -> list[lepton_ir.Node]:
    return [n for n in graph if n.op_type == op_type]


def _region(node: lepton_ir.Node) -> bool:
    return node.domain == "lepton"


def _resnet_block() -> onnx.ModelProto:
    m = _M()
    c1 = m.op("Relu", m.conv("x", 3, 8))
    p = m.op("MaxPool", c1, kernel_shape=[2, 2], strides=[2, 2])
    c2 = m.op("Relu", m.conv(p, 8, 8))
    c3 = m.conv(c2, 8, 8, bias=False)
    s = m.op("Relu", m.op("Add", c3, p))
    s = m.op("Mul", s, m.const(np.linspace(0.5, 2, 8, dtype=np.float32).reshape(8, 1, 1)))
    g = m.op("GlobalAveragePool", s)
    f = m.op("Flatten", g)
    y = m.op("Gemm", f, m.weight(4, 8), transB=1)
    return m.model([("x", [1, 3, 16, 16])], [y])


def test_resnet_block_is_one_region_with_transposes_only_at_its_edges() -> None:
    graph = _convert(_resnet_block())
    transposes = _ops(graph, "Transpose")
    assert len(transposes) == 2  # the input into NHWC, the pooled [1, 1, 1, C] back before Flatten
    entry, exit_ = transposes
    assert entry.inputs[0] is graph.inputs[0] and [int(p) for p in entry.attr("perm")] == [0, 2, 3, 1]
    assert [int(p) for p in exit_.attr("perm")] == [0, 3, 1, 2]
    assert {u.op_type for u in exit_.outputs[0].users()} == {"Flatten"}
    assert [n.op_type for n in graph if _region(n)] == ["NhwcConv", "NhwcMaxPool", "NhwcConv", "NhwcConv"]
    assert not _ops(graph, "Conv") and not _ops(graph, "MaxPool") and not _ops(graph, "GlobalAveragePool")
    # elementwise ops and the per-channel constant run in NHWC: the [8, 1, 1] scale became [1, 1, 1, 8]
    mul = _ops(graph, "Mul")[0]
    assert mul.inputs[1].shape == (1, 1, 1, 8) and mul.inputs[0].shape == (1, 8, 8, 8)
    assert _ops(graph, "ReduceMean")[0].attr("axes") == [1, 2]
    assert graph.metadata_props[METADATA_KEY] == "NHWC" and graph.opset_imports["lepton"] == 1


def test_exported_graph_carries_the_function_bodies_and_checks() -> None:
    graph = _convert(_resnet_block())
    model = lepton_ir.to_onnx(graph)
    assert {f.name for f in model.functions} == {"NhwcConv", "NhwcMaxPool"}
    assert all(f.domain == "lepton" for f in model.functions)
    onnx.checker.check_model(model, full_check=True)
    # re-imported, the bodies are inlined: standard ops only, same results
    again = lepton_ir.load(model)
    assert not any(n.domain == "lepton" for n in again)


def test_weights_are_converted_once_at_compile_time() -> None:
    m = _M()
    w = m.weight(4, 4, 3, 3)
    a = m.op("Conv", "x", w, pads=[1, 1, 1, 1])
    b = m.op("Conv", m.op("Relu", a), w, pads=[1, 1, 1, 1])  # the same weights
    model = m.model([("x", [1, 4, 6, 6])], [b])
    oihw = nh.to_array(m.inits[0])
    graph = _convert(model)
    convs = [n for n in graph if n.op_type == "NhwcConv"]
    assert len(convs) == 2 and convs[0].inputs[1] is convs[1].inputs[1]
    hwio = convs[0].inputs[1]
    assert hwio.name in graph.initializers and w not in graph.initializers  # the OIHW copy is gone
    np.testing.assert_array_equal(hwio.const_value.numpy(), oihw.transpose(2, 3, 1, 0))
    assert not any(n.op_type == "Transpose" and n.inputs[0] is hwio for n in graph)  # never per call
    result = ConvertLayout().run(lepton_ir.load(model), PassContext())
    assert result.stats["weights_converted"] == 1


def test_back_to_back_transposes_cancel() -> None:
    """An NHWC model (TF style): Transpose to NCHW -> Conv -> Relu -> Transpose back. Nothing is left of either."""
    m = _M()
    x = m.op("Transpose", "x", perm=[0, 3, 1, 2])
    y = m.op("Transpose", m.op("Relu", m.conv(x, 3, 5)), perm=[0, 2, 3, 1])
    graph = _convert(m.model([("x", [1, 7, 7, 3])], [y]))
    assert not _ops(graph, "Transpose")
    assert [n.op_type for n in graph] == ["NhwcConv", "Relu"]
    assert graph.outputs[0].name == y  # the output keeps its name


def test_edge_transposes_compose_with_the_models_own() -> None:
    """A model transpose next to the region that does not cancel becomes one Transpose (not two)."""
    m = _M()
    y = m.op("Transpose", m.conv("x", 3, 4), perm=[0, 1, 3, 2])  # NCHW -> NCWH
    graph = _convert(m.model([("x", [1, 3, 5, 6])], [y]))
    perms = [[int(p) for p in t.attr("perm")] for t in _ops(graph, "Transpose")]
    assert perms == [[0, 2, 3, 1], [0, 3, 2, 1]]  # in; NHWC -> NCWH directly


def test_conv_transpose_and_ops_without_an_nhwc_form_stay_nchw() -> None:
    m = _M()
    a = m.op("Relu", m.conv("x", 4, 4))
    t = m.op("ConvTranspose", a, m.weight(4, 4, 2, 2), strides=[2, 2])
    n = m.op("InstanceNormalization", t, m.const(np.full(4, 1.5, np.float32)), m.const(np.full(4, 0.1, np.float32)))
    y = m.op("Relu", m.conv(n, 4, 4))
    model = m.model([("x", [1, 4, 6, 6])], [y])
    plan = layout_plan(lepton_ir.load(model))
    assert plan["ConvTranspose2"] == NO_NHWC_KERNEL["ConvTranspose"]
    graph = _convert(model)
    assert len(_ops(graph, "ConvTranspose")) == 1 and len(_ops(graph, "InstanceNormalization")) == 1
    ct = _ops(graph, "ConvTranspose")[0]
    assert ct.inputs[0].producer.op_type == "Transpose" and ct.inputs[1].shape == (4, 4, 2, 2)  # NCHW, IOHW
    assert [n.op_type for n in graph if _region(n)] == ["NhwcConv", "NhwcConv"]
    # edges: in, out before ConvTranspose, in after InstanceNormalization, out at the graph output
    assert [[int(p) for p in t.attr("perm")] for t in _ops(graph, "Transpose")] == [[0, 2, 3, 1], [0, 3, 1, 2]] * 2


@pytest.mark.parametrize(("build", "node", "reason"), [
    (lambda m: m.op("Conv", "x", "w", pads=[1, 1, 1, 1]), "Conv0", "weights are not a constant"),
    (lambda m: m.op("MaxPool", m.conv("x", 3, 3), kernel_shape=[2, 2], outputs=2)[0], "MaxPool1", "Indices"),
    (lambda m: m.op("ReduceMean", m.conv("x", 3, 3), axes=[1], keepdims=0), "ReduceMean1", "keepdims=0"),
    (lambda m: m.op("Conv", m.op("Unsqueeze", "x", m.const(np.array([2]))), m.weight(3, 3, 1, 3, 3),
                    pads=[0, 1, 1, 0, 1, 1]), "Conv1", "not a 2-d convolution"),
])
def test_what_stays_nchw_is_given_a_reason(build, node: str, reason: str) -> None:  # type: ignore[no-untyped-def]
    """Negative cases: runtime weights would need a transpose at every call; MaxPool's Indices index the NCHW
    tensor; a keepdims=0 reduction drops the axes the layout is defined on; a 3-d convolution has no NHWC form."""
    m = _M()
    y = build(m)
    inputs = [("x", [1, 3, 6, 6])] + ([("w", [3, 3, 3, 3])] if node == "Conv0" else [])
    model = m.model(inputs, [y], opset=13)
    plan = layout_plan(lepton_ir.load(model))
    assert reason in plan[node], plan
    graph = lepton_ir.load(model)
    before = lepton_ir.to_onnx(graph).SerializeToString()
    run_pass(ConvertLayout(), graph)
    op = node.rstrip("0123456789")
    assert any(n.op_type == op and not n.domain for n in graph)
    feeds = _feeds(model)
    assert_outputs_close(run_model(model, feeds), run_model(lepton_ir.to_onnx(graph), feeds))
    if node == "Conv0":
        assert lepton_ir.to_onnx(graph).graph.node == onnx.load_from_string(before).graph.node  # nothing to do


def test_pass_is_one_shot_idempotent_and_named_in_pipelines() -> None:
    p = parse_pipeline("convert-layout{format=NHWC}")[0]
    assert isinstance(p, ConvertLayout) and not p.repeat and p.spec() == "convert-layout"
    graph = lepton_ir.load(_resnet_block())
    result = PassManager("fold-constants,convert-layout,eliminate-dead-code").run(graph)
    assert [r.name for r in result.records if r.stage == 1] == ["convert-layout"]
    assert not ConvertLayout().run(graph, PassContext()).modified
    stats = next(r.stats for r in result.records if r.name == "convert-layout")
    assert stats["converted_Conv"] == 3 and stats["transposes_inserted"] == 2


def test_batchnorm_inside_a_region_becomes_a_channels_last_scale_and_shift() -> None:
    m = _M()
    r = m.op("Relu", m.conv("x", 3, 4))  # after a Relu: not folded into the convolution
    n = m.op("BatchNormalization", r, *(m.const(np.linspace(lo, hi, 4, dtype=np.float32)) for lo, hi in
                                        ((0.5, 2), (-1, 1), (-0.2, 0.3), (0.5, 1.5))))
    graph = _convert(m.model([("x", [1, 3, 5, 5])], [m.conv(n, 4, 2)]))
    assert not _ops(graph, "BatchNormalization") and len(_ops(graph, "Transpose")) == 2
    assert _ops(graph, "Mul")[0].inputs[1].shape == (1, 1, 1, 4)


def test_layout_pass_goes_before_fusions_that_hide_convolutions() -> None:
    assert with_layout_pass("fold-constants,fuse-batchnorm") == "fold-constants,fuse-batchnorm,convert-layout"
    assert with_layout_pass("fuse-bias,fuse-activation,eliminate-dead-code") == \
        "fuse-bias,convert-layout,fuse-activation,eliminate-dead-code"
    assert with_layout_pass("convert-layout,fold-constants") == "convert-layout,fold-constants"


def test_axis_ops_are_remapped() -> None:
    m = _M()
    a = m.conv("x", 4, 6)
    s1, s2 = m.op("Split", a, m.const(np.array([2, 4])), axis=1, outputs=2)
    cat = m.op("Concat", m.conv(s2, 4, 2, k=1), s1, axis=-3)
    sl = m.op("Slice", cat, m.const(np.array([1, 0])), m.const(np.array([3, 5])), m.const(np.array([1, -1])),
              m.const(np.array([1, 2])))
    sm = m.op("Softmax", m.op("Pad", sl, m.const(np.array([0, 1, 0, 1, 0, 0, 1, 0]))), axis=1)
    r = m.op("ReduceSum", sm, m.const(np.array([2, 3])), keepdims=1)
    am = m.op("Cast", m.op("ArgMax", m.conv(sm, 3, 2), axis=1, keepdims=1), to=T.FLOAT)
    graph = _convert(m.model([("x", [1, 4, 6, 6])], [r, am]))
    assert _ops(graph, "Split")[0].attr("axis") == 3 and _ops(graph, "Concat")[0].attr("axis") == 3
    assert _ops(graph, "Softmax")[0].attr("axis") == 3 and _ops(graph, "ArgMax")[0].attr("axis") == 3
    assert len(_ops(graph, "Transpose")) == 3  # one in, two out (the two graph outputs)
    assert _ops(graph, "Cast")[0].inputs[0].producer.op_type == "ArgMax"  # the Cast runs in NHWC too


def test_resize_and_pooling_run_channels_last() -> None:
    m = _M()
    a = m.op("AveragePool", m.conv("x", 3, 4), kernel_shape=[3, 3], strides=[2, 2], pads=[1, 1, 1, 1],
             count_include_pad=1)
    b = m.op("MaxPool", a, kernel_shape=[2, 2], auto_pad="SAME_UPPER")
    c = m.op("Resize", b, "", m.const(np.array([1, 1, 2, 2], np.float32)), mode="nearest")
    y = m.conv(c, 4, 4)
    graph = _convert(m.model([("x", [1, 3, 9, 9])], [y], opset=19))
    assert [n.op_type for n in graph if _region(n)] == ["NhwcConv", "NhwcAveragePool", "NhwcMaxPool", "NhwcResize",
                                                         "NhwcConv"]
    assert len(_ops(graph, "Transpose")) == 2
    assert [n for n in graph if n.op_type == "NhwcMaxPool"][0].attr("pads") == [0, 0, 1, 1]


# ----- property: random conv chains keep onnxruntime's outputs ------------------------------------------------


@st.composite
def conv_chains(draw: st.DrawFn) -> onnx.ModelProto:
    """Random chains of conv / pooling / elementwise / concat / split / slice / reduce / resize / ConvTranspose /
    BatchNormalization / Transpose-pair ops over NCHW float32 tensors (static shapes, opset 13 or 18)."""
    opset = draw(st.sampled_from([13, 18]))
    m = _M(draw(st.integers(0, 2**16)))
    c0, h0, w0 = draw(st.integers(1, 5)), draw(st.integers(4, 9)), draw(st.integers(4, 9))
    live: list[tuple[str, tuple[int, int, int, int]]] = [("x", (1, c0, h0, w0))]

    def shape_of(model_nodes: str) -> tuple[int, ...]:
        partial = oh.make_model(oh.make_graph(m.nodes, "p", [oh.make_tensor_value_info("x", T.FLOAT, [1, c0, h0, w0])],
                                              [oh.make_tensor_value_info(model_nodes, T.FLOAT, None)], m.inits),
                                opset_imports=[oh.make_opsetid("", opset)], ir_version=8)
        inferred = onnx.shape_inference.infer_shapes(partial, strict_mode=True)
        info = next(v for v in [*inferred.graph.value_info, *inferred.graph.output] if v.name == model_nodes)
        return tuple(d.dim_value for d in info.type.tensor_type.shape.dim)

    for _ in range(draw(st.integers(1, 7))):
        x, (n, c, h, w) = live[-1] if draw(st.booleans()) else draw(st.sampled_from(live))
        kind = draw(st.sampled_from(["conv", "conv", "pool", "unary", "const", "add", "concat", "split", "slice",
                                     "reduce", "gap", "pad", "softmax", "resize", "convT", "bn", "tpair"]))
        if kind == "conv" or (kind in ("pool", "gap", "reduce") and h < 2):
            k = draw(st.sampled_from([1, 3])) if min(h, w) >= 3 else 1
            group = draw(st.sampled_from([g for g in (1, 2, c) if c % g == 0]))
            cout = group * draw(st.integers(1, 3))
            d = draw(st.sampled_from([1, 2])) if k == 3 and min(h, w) > 5 else 1
            auto = draw(st.sampled_from(["NOTSET", "NOTSET", "SAME_UPPER", "SAME_LOWER", "VALID"]))
            attrs: dict[str, object] = {"strides": [draw(st.sampled_from([1, 2])) for _ in range(2)],
                                        "dilations": [d, d]}
            if auto == "NOTSET":
                attrs["pads"] = [draw(st.integers(0, k - 1 + (d - 1) * (k > 1))) for _ in range(4)]
            elif auto == "VALID" and min(h, w) < (k - 1) * d + 1:
                attrs["pads"] = [k // 2] * 4
            else:  # onnxruntime has no dilated SAME convolution
                attrs["auto_pad"], attrs["dilations"] = auto, [1, 1]
            y = m.conv(x, c, cout, k=k, group=group, bias=draw(st.booleans()), **attrs)
        elif kind == "pool":
            k = draw(st.integers(1, min(3, h, w)))
            attrs = {"kernel_shape": [k, k], "strides": [draw(st.sampled_from([1, 2]))] * 2,
                     "pads": [draw(st.integers(0, k - 1)) for _ in range(4)]}
            if draw(st.booleans()):
                y = m.op("MaxPool", x, **attrs)
            else:
                y = m.op("AveragePool", x, count_include_pad=int(draw(st.booleans())), **attrs)
        elif kind == "unary":
            op = draw(st.sampled_from(["Relu", "Sigmoid", "HardSigmoid", "LeakyRelu", "Clip", "Neg"]))
            y = m.op(op, x, m.const(np.float32(-0.5)), m.const(np.float32(0.5))) if op == "Clip" else m.op(op, x)
        elif kind == "const":
            shape = draw(st.sampled_from([(c, 1, 1), (1, c, 1, 1), (w,), (h, 1), (1,), (), (1, c, h, w)]))
            y = m.op(draw(st.sampled_from(["Add", "Mul", "Sub", "Div", "PRelu"])), x,
                     m.const(m.rng.uniform(0.5, 2, shape).astype(np.float32)))
        elif kind == "add":
            same = [v for v, s in live if s == (n, c, h, w)]
            y = m.op(draw(st.sampled_from(["Add", "Mul", "Max"])), x, draw(st.sampled_from(same)))
        elif kind == "concat":
            same = [v for v, s in live if s[2:] == (h, w)]
            y = m.op("Concat", x, draw(st.sampled_from(same)), axis=draw(st.sampled_from([1, -3])))
        elif kind == "split" and c >= 2:
            a, _b = m.op("Split", x, m.const(np.array([1, c - 1])), axis=1, outputs=2)
            y = a
        elif kind == "slice":
            axis = draw(st.integers(1, 3))
            dim = (c, h, w)[axis - 1]
            y = m.op("Slice", x, m.const(np.array([draw(st.integers(0, dim - 1))])), m.const(np.array([dim])),
                     m.const(np.array([axis - 4 if draw(st.booleans()) else axis])))
        elif kind == "reduce":
            axes = sorted(draw(st.sets(st.integers(1, 3), min_size=1)))
            if opset >= 18:
                y = m.op("ReduceMean", x, m.const(np.array(axes)), keepdims=1)
            else:
                y = m.op("ReduceMean", x, axes=axes, keepdims=1)
        elif kind == "gap":
            y = m.op(draw(st.sampled_from(["GlobalAveragePool", "GlobalMaxPool"])), x)
        elif kind == "pad":
            y = m.op("Pad", x, m.const(np.array([0, draw(st.integers(0, 1)), 1, 0, 0, 0, 0, draw(st.integers(0, 2))])))
        elif kind == "softmax":
            y = m.op("Softmax", x, axis=draw(st.integers(-4, 3)))
        elif kind == "resize":
            y = m.op("Resize", x, "", m.const(np.array([1, 1, 2, 1.5], np.float32)),
                     mode=draw(st.sampled_from(["nearest", "linear"])))
        elif kind == "convT":
            y = m.op("ConvTranspose", x, m.weight(c, 2, 2, 2), strides=[2, 2])
        elif kind == "bn":
            y = m.op("BatchNormalization", x, *(m.const(m.rng.uniform(0.5, 2, c).astype(np.float32)) for _ in range(4)))
        else:  # a transpose pair the region may cancel
            y = m.op("Transpose", m.op("Transpose", x, perm=[0, 2, 3, 1]), perm=[0, 3, 1, 2])
        live.append((y, shape_of(y)))  # type: ignore[arg-type]
    outs = list(dict.fromkeys([live[-1][0], *draw(st.lists(st.sampled_from([v for v, _ in live[1:]]), max_size=2))]))
    return m.model([("x", [1, c0, h0, w0])], outs, opset=opset)


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(conv_chains())
def test_random_conv_chains_keep_onnxruntime_outputs(model: onnx.ModelProto) -> None:
    graph = _convert(model)
    for t in _ops(graph, "Transpose"):  # an edge the pass made is never next to another transpose or on a constant
        src = t.inputs[0].producer
        pair = [t] + ([src] if src is not None and src.op_type == "Transpose" else [])
        assert len(pair) == 1 or not any(_edge(n) for n in pair), f"back-to-back transposes at {t.name}:\n{graph}"
        assert t.inputs[0].const_value is None, f"{t.name} transposes the constant {t.inputs[0].name} at every call"
    assert not ConvertLayout().run(graph, PassContext()).modified  # idempotent


def _edge(node: lepton_ir.Node) -> bool:
    """A transpose `convert-layout` inserted at a region edge (they are named after the value they convert)."""
    return "_to_nhwc_" in node.name or "_to_nchw_" in node.name


# ----- compiles with the pass on (x86) ---------------------------------------------------------------------------


def _x86() -> targets.Target:
    t = targets.resolve("x86")
    if not t.runs_here():
        pytest.skip("needs an x86 host")
    return t


def _with_pass(t: targets.Target) -> str:
    return with_layout_pass(t.pipeline)


def test_compile_verifies_with_the_pass_and_skips_tvms_layout_conversion() -> None:
    t = _x86()
    res = lepton.compile(_resnet_block(), t, passes=_with_pass(t), use_cache=False)
    assert res.verify_report is not None and res.verify_report.ok
    notes = [n for n in res.manifest.notes if n.startswith("layouts after")]
    assert len(notes) == 1 and notes[0].startswith("layouts after Lepton's convert-layout"), res.manifest.notes
    assert "3 conv2d NHWC" in notes[0] and "max_pool2d NHWC" in notes[0]
    log = [p for p in res.manifest.passes if p["pass"] == "convert-layout"]
    assert len(log) == 1 and log[0]["stats"]["converted_Conv"] == 3


def test_pass_log_shows_where_winograd_and_prepacking_applied() -> None:
    """Winograd and weight prepacking stay in the codegen; their records follow the passes' in the pass log, naming
    the ONNX nodes (a convolution of convert-layout carries its node's name into Relax)."""
    t = _x86()
    m = _M()
    y = m.op("Relu", m.conv(m.op("Relu", m.conv("x", 3, 64)), 64, 64))  # Conv2: 3x3, stride 1, 64 -> 64
    res = lepton.compile(m.model([("x", [1, 3, 8, 8])], [y]), t, passes=_with_pass(t), use_cache=False)
    assert res.verify_report is not None and res.verify_report.ok
    records = {r["pass"]: r for r in res.manifest.passes if r["stage"] == "codegen"}
    (where,) = records["codegen:winograd"]["where"]  # the 64 -> 64 convolution, not the 3 -> 64 one
    assert records["codegen:winograd"]["stats"] == {"convolutions": 1} and where.startswith("Conv2_NhwcConv")
    assert any(n.endswith(f"Winograd F(2x2, 3x3): {where}") for n in res.manifest.notes), res.manifest.notes
    prepack = records["codegen:prepack-weights"]
    assert prepack["stats"]["kernels"] == 2 and any(w.startswith("Conv0_NhwcConv") for w in prepack["where"])
    assert [r["stage"] for r in res.manifest.passes][-2:] == ["codegen", "codegen"]  # after the passes' records


from test_layout_matrix import CASES  # noqa: E402 - the layout matrix's 43 cases, reused with the pass on


@pytest.mark.parametrize("name", list(CASES))
def test_layout_matrix_cases_verify_with_the_pass_on_x86(name: str) -> None:
    t = _x86()
    case = CASES[name]
    res = lepton.compile(case.model(), t, passes=_with_pass(t), use_cache=False)
    assert res.verify_report is not None and res.verify_report.ok
    note = next(n for n in res.manifest.notes if n.startswith("layouts after"))
    assert note.startswith("layouts after Lepton's convert-layout") and "conv2d NHWC" in note, res.manifest.notes
    if name.startswith("convtranspose") and "1d" not in name and "3d" not in name:
        assert "conv2d_transpose NCHW" in note  # left in NCHW: no channels-last kernel in TVM 0.27
    elif case.layout and "2d " in case.layout:  # 2-d pooling and resize run channels-last as under TVM's conversion
        assert case.layout in note, note
