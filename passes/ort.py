"""The one place passes touch onnxruntime: evaluate an ONNX model on given inputs.

Used by constant folding (batched evaluation of constant subgraphs) and by the per-pass
numerical check. Graph optimizations are disabled so results are the kernels' own.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
import onnx


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
    sess = ort.InferenceSession(model.SerializeToString(), opts, providers=["CPUExecutionProvider"])
    names = list(outputs) if outputs is not None else [o.name for o in sess.get_outputs()]
    return dict(zip(names, sess.run(names, dict(inputs)), strict=True))
