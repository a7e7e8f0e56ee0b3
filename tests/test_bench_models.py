"""The benchmark model builders make valid ONNX that runs in onnxruntime.

The small models are checked in the default run; ResNet-50, BERT-base and the 10k-node
generated graph are marked slow (`make test-all`).
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import onnx
import onnxruntime as ort
import pytest

from bench import models as bm


def _run(model: onnx.ModelProto) -> list[np.ndarray]:
    so = ort.SessionOptions()
    so.log_severity_level = 3  # the generated graph's dead Constants make ORT warn
    sess = ort.InferenceSession(model.SerializeToString(), so, providers=["CPUExecutionProvider"])
    return sess.run(None, bm.synth_inputs(model))


def _check(model: onnx.ModelProto, out_shape: tuple[int, ...]) -> None:
    assert model.ir_version == bm.IR_VERSION
    assert [(o.domain, o.version) for o in model.opset_import] == [("", bm.OPSET)]
    onnx.checker.check_model(model, full_check=True)
    (out,) = _run(model)
    assert out.dtype == np.float32
    assert out.shape == out_shape
    assert np.isfinite(out).all()
    assert np.abs(out).max() > 0


def _ops(model: onnx.ModelProto) -> set[str]:
    return {n.op_type for n in model.graph.node}


SMALL: dict[str, tuple[Callable[[], onnx.ModelProto], tuple[int, ...]]] = {
    "resnet18": (bm.resnet18, (1, 1000)),
    "mobilenet_v2": (bm.mobilenet_v2, (1, 1000)),
    "bert_small": (lambda: bm.bert_small(seq=16, layers=2), (1, 16, 512)),
    "generated": (lambda: bm.generated(n_nodes=2000), (4, 8)),
}

SLOW: dict[str, tuple[Callable[[], onnx.ModelProto], tuple[int, ...]]] = {
    "resnet50": (bm.resnet50, (1, 1000)),
    "bert_base": (bm.bert_base, (1, 128, 768)),
    "generated_10k": (bm.generated, (4, 8)),
}


@pytest.mark.parametrize("name", sorted(SMALL))
def test_small_model_checks_and_runs(name: str) -> None:
    build, shape = SMALL[name]
    _check(build(), shape)


@pytest.mark.slow
@pytest.mark.parametrize("name", sorted(SLOW))
def test_large_model_checks_and_runs(name: str) -> None:
    build, shape = SLOW[name]
    _check(build(), shape)


@pytest.mark.slow
def test_resnet50_flattens_with_a_shape_chain() -> None:
    m = bm.resnet50()
    assert {"Shape", "Gather", "Unsqueeze", "Concat", "Reshape"} <= _ops(m)
    assert "Flatten" not in _ops(m)
    assert sum(n.op_type == "BatchNormalization" for n in m.graph.node) == 53


def test_registry_names() -> None:
    assert set(bm.BENCH_MODELS) == {"resnet18", "resnet50", "mobilenet_v2", "bert_small", "bert_base", "generated_10k"}
    assert all(callable(f) for f in bm.BENCH_MODELS.values())


def test_builders_are_deterministic() -> None:
    a = bm.generated(n_nodes=300, seed=3)
    b = bm.generated(n_nodes=300, seed=3)
    c = bm.generated(n_nodes=300, seed=4)
    assert a.SerializeToString() == b.SerializeToString()
    assert a.SerializeToString() != c.SerializeToString()
    m1 = bm.mobilenet_v2()
    m2 = bm.mobilenet_v2()
    assert m1.SerializeToString() == m2.SerializeToString()


def test_exporter_style_content() -> None:
    """The cleanup work the models are meant to carry is actually there."""
    bert = bm.bert_small(seq=16, layers=2)
    ops = _ops(bert)
    assert {"Identity", "Dropout", "Cast", "Erf", "Softmax", "LayerNormalization", "ReduceMean", "Pow"} <= ops
    # Cast to the same dtype: input_ids is int64 already
    casts = [n for n in bert.graph.node if n.op_type == "Cast" and n.input[0] == "input_ids"]
    assert casts and casts[0].attribute[0].i == onnx.TensorProto.INT64
    # duplicated Shape nodes on one tensor, and duplicated identical Constants
    shape_srcs = [n.input[0] for n in bert.graph.node if n.op_type == "Shape"]
    assert len(shape_srcs) > len(set(shape_srcs))
    consts = [n.attribute[0].t.SerializeToString() for n in bert.graph.node if n.op_type == "Constant"]
    assert len(consts) > len(set(consts))
    # Reshape targets come from Shape chains
    producers = {o: n for n in bert.graph.node for o in n.output}
    reshape = next(n for n in bert.graph.node if n.op_type == "Reshape")
    assert producers[reshape.input[1]].op_type == "Concat"

    assert "Flatten" in _ops(bm.resnet18())
    mb = bm.mobilenet_v2()
    clips = [n for n in mb.graph.node if n.op_type == "Clip"]
    assert clips and all(producers_of(mb)[i].op_type == "Constant" for n in clips for i in n.input[1:])
    assert any(
        n.op_type == "Conv" and any(a.name == "group" and a.i > 1 for a in n.attribute) for n in mb.graph.node
    )

    gen = bm.generated(n_nodes=2000)
    assert abs(len(gen.graph.node) - 2000) <= 8
    # dead nodes: some node outputs reach no graph output
    used = {i for n in gen.graph.node for i in n.input} | {o.name for o in gen.graph.output}
    assert any(all(o not in used for o in n.output) for n in gen.graph.node)
    # duplicated subexpressions: identical (op, inputs, attributes) more than once
    keys = [
        (n.op_type, tuple(n.input), tuple(a.SerializeToString() for a in n.attribute))
        for n in gen.graph.node
        if n.op_type != "Constant"
    ]
    assert len(keys) > len(set(keys))


def producers_of(model: onnx.ModelProto) -> dict[str, onnx.NodeProto]:
    return {o: n for n in model.graph.node for o in n.output}
