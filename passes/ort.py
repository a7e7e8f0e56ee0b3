"""The one place passes touch onnxruntime: evaluate an ONNX model on given inputs.

Used by constant folding (batched evaluation of constant subgraphs) and by the per-pass
numerical check. Graph optimizations are disabled so results are the kernels' own.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence

import functools

import numpy as np
import onnx

from lepton_ir.structure import all_node_protos

#: The newest default-domain opset and IR version onnxruntime 1.31 loads.
ORT_MAX_OPSET = 26
ORT_MAX_IR_VERSION = 13


def run_model(
    model: onnx.ModelProto,
    inputs: Mapping[str, np.ndarray],
    outputs: Sequence[str] | None = None,
    *,
    optimize: bool = False,
) -> dict[str, np.ndarray]:
    """Run `model` in onnxruntime (CPU, 1 thread) and return the named outputs."""
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.graph_optimization_level = (
        ort.GraphOptimizationLevel.ORT_ENABLE_ALL if optimize else ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    )
    opts.intra_op_num_threads = 1
    opts.inter_op_num_threads = 1
    opts.log_severity_level = 3
    sess = ort.InferenceSession(ort_compatible(model).SerializeToString(), opts, providers=["CPUExecutionProvider"])
    names = list(outputs) if outputs is not None else [o.name for o in sess.get_outputs()]
    return dict(zip(names, sess.run(names, dict(inputs)), strict=True))


def ort_compatible(model: onnx.ModelProto) -> onnx.ModelProto:
    """`model`, or a copy onnxruntime loads: a default-domain opset newer than `ORT_MAX_OPSET` is
    declared as `ORT_MAX_OPSET` when every op the model uses (subgraphs included) has the same schema
    version at both, i.e. means the same thing there; an IR version newer than `ORT_MAX_IR_VERSION`
    is declared as that (newer IR versions add element types, which onnxruntime checks by itself)."""
    entry = next((o for o in model.opset_import if o.domain in ("", "ai.onnx")), None)
    lower_opset = entry is not None and entry.version > ORT_MAX_OPSET and not model.functions
    if lower_opset:
        ops = {n.op_type for n in all_node_protos(model.graph) if n.domain in ("", "ai.onnx")}
        lower_opset = all(_since(op, entry.version) == _since(op, ORT_MAX_OPSET) for op in ops)
    lower_ir = model.ir_version > ORT_MAX_IR_VERSION
    if not lower_opset and not lower_ir:
        return model
    lowered = onnx.ModelProto()
    lowered.CopyFrom(model)
    if lower_ir:
        lowered.ir_version = ORT_MAX_IR_VERSION
    if lower_opset:
        for o in lowered.opset_import:
            if o.domain in ("", "ai.onnx"):
                o.version = ORT_MAX_OPSET
    return lowered


@functools.lru_cache(maxsize=4096)
def _since(op_type: str, opset: int) -> int:
    try:
        return int(onnx.defs.get_schema(op_type, opset, "").since_version)
    except onnx.defs.SchemaError:
        return -1


def session(model: onnx.ModelProto, outputs: Sequence[str]) -> Callable[[Mapping[str, np.ndarray]], dict[str, np.ndarray]]:
    """One onnxruntime session (CPU, 1 thread, optimizations off) of `model` returning `outputs`, which
    may name any value of the main graph: those that are not graph outputs are added as outputs."""
    import onnxruntime as ort

    exposed = onnx.ModelProto()
    exposed.CopyFrom(ort_compatible(model))
    listed = {o.name for o in exposed.graph.output}
    exposed.graph.output.extend(onnx.ValueInfoProto(name=n) for n in outputs if n not in listed)
    opts = ort.SessionOptions()
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    opts.intra_op_num_threads = 1
    opts.inter_op_num_threads = 1
    opts.log_severity_level = 3
    sess = ort.InferenceSession(exposed.SerializeToString(), opts, providers=["CPUExecutionProvider"])
    names = list(outputs)

    def run(feeds: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        return dict(zip(names, sess.run(names, dict(feeds)), strict=True))

    return run
