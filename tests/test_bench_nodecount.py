"""The node-count harness (`bench/nodecount.py`) reports the real node counts of the graphs each tool produces,
and `--without` removes exactly the named passes from pipeline text (`bench.fusion` uses the same helper)."""

from __future__ import annotations

import collections
from pathlib import Path

import onnx
import onnxruntime as ort
import pytest

import lepton_ir
import targets
from bench import nodecount
from bench.fusion import variants
from bench.models import BENCH_MODELS
from lepton.compiler import optimize_for
from passes import PassManager
from passes.base import parse_pipeline


def _check_row(name: str, tmp_path: Path) -> dict:
    pipeline = targets.resolve("x86").pipeline
    row = nodecount.count_model(nodecount.models()[name], pipeline, workdir=str(tmp_path))
    tools = row["tools"]
    model = onnx.load(tmp_path / f"{name}.onnx")

    to_tvm = lepton_ir.load(model)
    optimize_for(to_tvm, targets.resolve("x86"))  # what lepton.compile runs before codegen
    assert tools["lepton"]["nodes"] == len(to_tvm) == len(lepton_ir.to_onnx(to_tvm).graph.node)
    after_target = lepton_ir.load(model)
    PassManager(parse_pipeline(pipeline)).run(after_target)
    assert tools["lepton-target"]["nodes"] == len(after_target)

    saved = onnx.load(tmp_path / f"{name}.ort-extended.onnx")  # the file onnxruntime wrote
    assert tools["ort-extended"]["nodes"] == len(saved.graph.node)
    again = tmp_path / "again.onnx"  # an independent session with the same level writes the same count
    opts = ort.SessionOptions()
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED
    opts.optimized_model_filepath = str(again)
    ort.InferenceSession(model.SerializeToString(), opts, providers=["CPUExecutionProvider"])
    assert len(onnx.load(again).graph.node) == tools["ort-extended"]["nodes"]
    contrib = collections.Counter(f"{n.domain}::{n.op_type}" for n in saved.graph.node if n.domain not in ("", "ai.onnx"))
    assert tools["ort-extended"]["contrib_ops"] == dict(contrib)

    assert tools["onnxsim"]["nodes"] == len(onnx.load(tmp_path / f"{name}.onnxsim.onnx").graph.node)
    for tool, r in tools.items():
        assert sum(r["ops"].values()) == r["nodes"], tool
        assert r["outputs_match"], (tool, r.get("max_abs_err"), r.get("check_error"))
    return row


def test_counts_are_the_graphs_counts_resnet18(tmp_path: Path) -> None:
    row = _check_row("resnet18", tmp_path)
    assert row["nodes"] == len(BENCH_MODELS["resnet18"]().graph.node)
    # onnxruntime fuses Conv+Relu into its contrib FusedConv, and those count as nodes
    assert row["tools"]["ort-extended"]["contrib_ops"].get("com.microsoft::FusedConv", 0) > 0
    counts = " | ".join(str(row["tools"][t]["nodes"]) for t in nodecount.TOOLS)
    assert f"| {row['nodes']} | {counts} | FusedConv " in nodecount.table([row])


@pytest.mark.slow
def test_counts_are_the_graphs_counts_bert_tiny(tmp_path: Path) -> None:
    pytest.importorskip("transformers")
    row = _check_row("bert_tiny", tmp_path)
    assert row["tools"]["ort-extended"]["contrib_ops"].get("com.microsoft::SkipLayerNormalization", 0) > 0


def test_pin_shapes_replaces_symbols_everywhere() -> None:
    x = onnx.helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, ["batch", -1])
    x.type.tensor_type.shape.dim[1].dim_value = -1  # paddle2onnx style
    y = onnx.helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, ["batch", "n"])
    g = onnx.helper.make_graph([onnx.helper.make_node("Relu", ["x"], ["y"])], "g", [x], [y])
    pinned = nodecount.pin_shapes(onnx.helper.make_model(g), {"x": [1, 7]})
    assert [d.dim_value for d in pinned.graph.input[0].type.tensor_type.shape.dim] == [1, 7]
    out = pinned.graph.output[0].type.tensor_type.shape.dim
    assert out[0].dim_value == 1 and out[1].dim_param == "n"  # only the pinned symbol is replaced


def test_without_removes_exactly_the_named_passes() -> None:
    text = "fold-constants,quantize{mode=int8,bits=8},eliminate-dead-code,fold-constants"
    assert nodecount.pipeline_items(text) == ["fold-constants", "quantize{mode=int8,bits=8}", "eliminate-dead-code",
                                              "fold-constants"]
    assert nodecount.pipeline_without(text, ["fold-constants"]) == "quantize{mode=int8,bits=8},eliminate-dead-code"
    assert nodecount.pipeline_without(text, ["quantize", "eliminate-dead-code"]) == "fold-constants,fold-constants"
    with pytest.raises(ValueError, match="fuse-nothing"):
        nodecount.pipeline_without(text, ["fuse-nothing"])
    base = targets.resolve("x86").pipeline
    out = variants(base, [["fuse-batchnorm"]])
    assert out["lepton"] == base
    reduced = [p.name for p in parse_pipeline(out["lepton-without-fuse-batchnorm"])]
    assert reduced == [p.name for p in parse_pipeline(base) if p.name != "fuse-batchnorm"]


def test_paired_ratio_divides_out_slow_rounds() -> None:
    from bench.fusion import paired_ratio

    # round 2 ran in a slow episode for both tools: the per-round ratio stays 0.5, the ratio of medians would not
    assert paired_ratio([1.0, 6.0, 1.1], [2.0, 12.0, 2.2]) == pytest.approx(0.5)
