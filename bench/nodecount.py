"""Node counts: Lepton's x86 pipeline vs onnxruntime's extended graph optimizations vs onnxsim (issue #13).

    python -m bench.nodecount [--models NAME,...] [--without PASS[,PASS]] [--no-check]

Every model is first pinned to static input shapes in the ONNX itself (batch 1; the corpus entries'
`input_shapes`), so all tools see the same static model. Then, per model:
- `lepton-target`: the nodes left after the x86 target's pass pipeline alone (`targets/x86.toml`);
- `lepton`: the nodes of the graph `lepton.compile` hands to TVM: the target pipeline plus the codegen
  lowering passes, to a fixed point (`lepton.compiler.optimize_for`);
- `ort-extended`: the nodes of the model onnxruntime saves (`optimized_model_filepath`) with
  `graph_optimization_level = ORT_ENABLE_EXTENDED` on the CPU execution provider. Its contrib ops
  (domain com.microsoft: FusedConv, SkipLayerNormalization, ...) count as nodes, and are listed:
  they are what onnxruntime fuses;
- `onnxsim`: the output of `onnxsim.simplify`.
Counts are of top-level nodes (nodes inside If/Loop/Scan bodies are not counted), for every tool alike;
a Lepton-domain op (an ONNX function) is one node. Unless `--no-check`, each tool's graph is run in
onnxruntime (optimizations off) on the same inputs as the original, and a graph whose outputs differ
(rtol/atol 1e-4) is flagged: its count is not a result.

Models: the bench models (`bench/models.py`, less the synthetic `generated_10k` unless named) and the
corpus (`bench/corpus.py`: torchvision and Hugging Face exports made in-process with both PyTorch
exporters, the BERT-family ones with attention masks, and the ONNX files packages ship). `--without`
removes passes from the target pipeline (see `pipeline_without`).

Writes bench/results/nodecount.json and nodecount.md (the table, also printed).
"""

from __future__ import annotations

import argparse
import collections
import json
import os
import tempfile
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import numpy as np
import onnx

RESULTS = os.path.join(os.path.dirname(__file__), "results")
TOOLS = ("lepton-target", "lepton", "ort-extended", "onnxsim")
STANDARD_DOMAINS = ("", "ai.onnx")


@dataclass(frozen=True)
class Model:
    """A model to count: how to build it, the static input shapes to pin, and inputs where synthesis cannot know."""

    name: str
    source: str
    build: Callable[[], onnx.ModelProto]
    input_shapes: Mapping[str, Sequence[int]] = field(default_factory=dict)
    inputs: Callable[[], dict[str, np.ndarray]] | None = None


def models() -> dict[str, Model]:
    """Every model the harness knows, by name: the bench models, then the corpus (with the masked-BERT extras)."""
    from bench.corpus import CORPUS, MASKED_BERT_EXTRA
    from bench.models import BENCH_MODELS

    out = {name: Model(name, "bench/models.py (TorchScript-style, opset 17)", build) for name, build in BENCH_MODELS.items()}
    for e in (*CORPUS, *MASKED_BERT_EXTRA):
        out[e.name] = Model(e.name, e.source, e.model, e.input_shapes, e.inputs)
    return out


DEFAULT_EXCLUDED = ("generated_10k",)  # synthetic (bench.cleanup's stress graph): no fusion to find there


# ----- pipelines ------------------------------------------------------------------------------------------------


def pipeline_items(text: str) -> list[str]:
    """The items of pipeline text, options kept: `"a,b{x=1,y=2},c"` -> `["a", "b{x=1,y=2}", "c"]`."""
    items, depth, start = [], 0, 0
    for i, ch in enumerate(text):
        depth += {"{": 1, "}": -1}.get(ch, 0)
        if ch == "," and depth == 0:
            items.append(text[start:i].strip())
            start = i + 1
    items.append(text[start:].strip())
    return [item for item in items if item]


def pipeline_without(text: str, without: Sequence[str]) -> str:
    """`text` less every item whose pass is named in `without`; ValueError naming any pass `text` does not run."""
    items = pipeline_items(text)
    names = [item.split("{", 1)[0].strip() for item in items]
    missing = [w for w in without if w not in names]
    if missing:
        raise ValueError(f"--without names {', '.join(missing)}, not in the pipeline: {', '.join(dict.fromkeys(names))}")
    return ",".join(item for item, name in zip(items, names, strict=True) if name not in without)


def split_names(text: str) -> list[str]:
    return [n.strip() for n in text.split(",") if n.strip()]


# ----- the model every tool sees --------------------------------------------------------------------------------


def pin_shapes(model: onnx.ModelProto, shapes: Mapping[str, Sequence[int]]) -> onnx.ModelProto:
    """A copy of `model` whose named inputs have the given static dims (`dim_param` and `dim_value: -1` replaced);
    a symbol pinned on an input is also replaced where graph outputs and value_info carry it."""
    out = onnx.ModelProto()
    out.CopyFrom(model)
    symbols: dict[str, int] = {}
    by_name = {vi.name: vi for vi in out.graph.input}
    for name, dims in shapes.items():
        tdims = by_name[name].type.tensor_type.shape.dim
        if len(tdims) != len(dims):
            raise ValueError(f"input {name!r} has rank {len(tdims)}, the shape to pin {list(dims)}")
        for d, n in zip(tdims, dims, strict=True):
            if d.HasField("dim_param"):
                symbols[d.dim_param] = int(n)
            d.dim_value = int(n)
    for vi in [*out.graph.input, *out.graph.output, *out.graph.value_info]:
        for d in vi.type.tensor_type.shape.dim:
            if d.HasField("dim_param") and d.dim_param in symbols:
                d.dim_value = symbols[d.dim_param]
    return out


def op_counts(nodes: Sequence[onnx.NodeProto]) -> dict[str, int]:
    """Op types by count, most first; ops outside the standard domain as `domain::op_type`."""
    c = collections.Counter(n.op_type if n.domain in STANDARD_DOMAINS else f"{n.domain}::{n.op_type}" for n in nodes)
    return dict(c.most_common())


def contrib_ops(nodes: Sequence[onnx.NodeProto]) -> dict[str, int]:
    """The non-standard-domain op types among `nodes`, by count (`domain::op_type`)."""
    return {k: v for k, v in op_counts(nodes).items() if "::" in k}


# ----- the tools ------------------------------------------------------------------------------------------------


def lepton_graphs(model: onnx.ModelProto, pipeline: str) -> dict[str, Any]:
    """`{"lepton-target": graph, "lepton": graph}`: after `pipeline` alone, and after `optimize_for` (the pipeline
    plus the codegen lowering passes), each from a fresh import of `model`."""
    import lepton_ir
    import targets
    from lepton.compiler import optimize_for
    from passes import PassManager
    from passes.base import parse_pipeline

    after_target = lepton_ir.load(model)
    PassManager(parse_pipeline(pipeline)).run(after_target)
    to_tvm = lepton_ir.load(model)
    optimize_for(to_tvm, targets.resolve("x86"), pipeline)
    return {"lepton-target": after_target, "lepton": to_tvm}


def ort_extended(model: onnx.ModelProto, path: str) -> onnx.ModelProto:
    """The graph onnxruntime's ORT_ENABLE_EXTENDED optimizations leave on the CPU provider, as it saves it to `path`."""
    import onnxruntime as ort

    from passes.ort import ort_compatible

    opts = ort.SessionOptions()
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED
    opts.optimized_model_filepath = path
    opts.intra_op_num_threads = 1
    opts.log_severity_level = 3
    ort.InferenceSession(ort_compatible(model).SerializeToString(), opts, providers=["CPUExecutionProvider"])
    return onnx.load(path)


def onnxsim_model(model: onnx.ModelProto) -> onnx.ModelProto:
    import onnxsim

    simplified, _ok = onnxsim.simplify(model, check_n=0)
    return simplified


def _max_err(ref: Mapping[str, np.ndarray], got: Mapping[str, np.ndarray]) -> tuple[bool, float]:
    worst = 0.0
    for name, x in ref.items():
        y = got.get(name)
        if y is None or y.shape != x.shape:
            return False, float("inf")
        if x.dtype.kind in "fc":
            worst = max(worst, float(np.max(np.abs(x.astype(np.float64) - y.astype(np.float64)), initial=0.0)))
            if not np.allclose(y, x, rtol=1e-4, atol=1e-4, equal_nan=True):
                return False, worst
        elif not np.array_equal(x, y):
            return False, float("inf")
    return True, worst


def count_model(m: Model, pipeline: str, *, check: bool = True, workdir: str | None = None) -> dict[str, Any]:
    """One row: the export's node count and each tool's, its op types, and (with `check`) whether its outputs match.

    With `workdir`, each tool's graph is left there as `<model>.<tool>.onnx` (the original as `<model>.onnx`).
    """
    import lepton_ir
    from bench.corpus import Unavailable
    from lepton.verify.inputs import synthesize
    from passes.ort import run_model

    row: dict[str, Any] = {"model": m.name, "source": m.source}
    try:
        model = pin_shapes(m.build(), m.input_shapes)
    except Unavailable as e:
        row["skipped"] = str(e)
        return row
    except Exception as e:  # noqa: BLE001 - an exporter failing on a model is a result too
        row["skipped"] = f"the export failed: {type(e).__name__}: {str(e).strip()[:300]}"
        return row
    row["opset"] = next((o.version for o in model.opset_import if o.domain in STANDARD_DOMAINS), None)
    row["nodes"] = len(model.graph.node)
    row["tools"] = {}
    own = workdir is None
    work = tempfile.mkdtemp(prefix="lepton-nodecount-") if own else workdir
    try:
        graphs: dict[str, onnx.ModelProto] = {}
        t0 = time.perf_counter()
        try:
            for tool, g in lepton_graphs(model, pipeline).items():
                graphs[tool] = lepton_ir.to_onnx(g)
                row["tools"][tool] = {"nodes": len(g)}
        except Exception as e:  # noqa: BLE001
            for tool in ("lepton-target", "lepton"):
                row["tools"].setdefault(tool, {"error": f"{type(e).__name__}: {str(e).strip()[:300]}"})
        lepton_s = time.perf_counter() - t0
        for tool, fn in (("ort-extended", lambda: ort_extended(model, os.path.join(work, f"{m.name}.ort-extended.onnx"))),
                         ("onnxsim", lambda: onnxsim_model(model))):
            t0 = time.perf_counter()
            try:
                graphs[tool] = fn()
                row["tools"][tool] = {"nodes": len(graphs[tool].graph.node), "seconds": time.perf_counter() - t0}
            except Exception as e:  # noqa: BLE001 - a tool failing on a model is a result
                row["tools"][tool] = {"error": f"{type(e).__name__}: {str(e).strip()[:300]}"}
        for tool, g in graphs.items():
            r = row["tools"][tool]
            r["ops"] = op_counts(g.graph.node)
            r["contrib_ops"] = contrib_ops(g.graph.node)
            if tool.startswith("lepton"):
                r["seconds"] = lepton_s  # both Lepton graphs, together
            if workdir is not None and tool != "ort-extended":  # onnxruntime wrote its own
                onnx.save(g, os.path.join(work, f"{m.name}.{tool}.onnx"))
        if workdir is not None:
            onnx.save(model, os.path.join(work, f"{m.name}.onnx"))
        if check and graphs:
            feeds = m.inputs() if m.inputs else synthesize(lepton_ir.load(model))
            ref = run_model(model, feeds)
            for tool, g in graphs.items():
                try:
                    ok, err = _max_err(ref, run_model(g, feeds, list(ref)))
                except Exception as e:  # noqa: BLE001 - a graph onnxruntime cannot run is a failed result
                    ok, err = False, float("inf")
                    row["tools"][tool]["check_error"] = f"{type(e).__name__}: {str(e).strip()[:200]}"
                row["tools"][tool].update(outputs_match=ok, max_abs_err=err)
    finally:
        if own:
            import shutil

            shutil.rmtree(work, ignore_errors=True)
    return row


# ----- report ---------------------------------------------------------------------------------------------------


def table(rows: Sequence[Mapping[str, Any]]) -> str:
    """Markdown: per model the export's nodes, each tool's, and the contrib ops in onnxruntime's graph."""
    lines = ["| model | source / exporter | export | Lepton target pipeline | Lepton to TVM | ORT extended | onnxsim "
             "| ORT contrib ops (count) |", "|---|---|---:|---:|---:|---:|---:|---|"]
    notes = []
    for r in rows:
        if "skipped" in r:
            lines.append(f"| {r['model']} | {r['source']} | skipped: {r['skipped'][:80]} | - | - | - | - | - |")
            continue
        cells = []
        for tool in TOOLS:
            t = r["tools"].get(tool, {})
            if "nodes" not in t:
                cells.append("error")
                notes.append(f"- {r['model']}, {tool}: {t.get('error', 'not run')}")
                continue
            bad = t.get("outputs_match") is False
            cells.append(f"{t['nodes']}{(' (**not runnable**)' if 'check_error' in t else ' (**outputs differ**)') if bad else ''}")
            if bad and "check_error" in t:
                notes.append(f"- {r['model']}, {tool}: onnxruntime cannot run the graph: {t['check_error']}")
            elif bad:
                notes.append(f"- {r['model']}, {tool}: outputs differ from the original's (max abs err {t['max_abs_err']:.3g})")
        contrib = r["tools"].get("ort-extended", {}).get("contrib_ops", {})
        ops = ", ".join(f"{k.split('::', 1)[1]} {v}" for k, v in contrib.items()) or "-"
        lines.append(f"| {r['model']} | {r['source']} | {r['nodes']} | {' | '.join(cells)} | {ops} |")
    return "\n".join(lines + ([""] + notes if notes else []))


def ort_deltas(row: Mapping[str, Any]) -> dict[str, int]:
    """Per op type, onnxruntime's extended graph's count minus Lepton's (the graph handed to TVM), nonzero only:
    negative where onnxruntime has fewer (fused them away), positive where it has more (its fused ops, and the
    Reshapes it puts around 2-d Gemms)."""
    ort_ops = row.get("tools", {}).get("ort-extended", {}).get("ops")
    lepton_ops = row.get("tools", {}).get("lepton", {}).get("ops")
    if ort_ops is None or lepton_ops is None:
        return {}
    diff = {op: ort_ops.get(op, 0) - lepton_ops.get(op, 0) for op in {*ort_ops, *lepton_ops}}
    return dict(sorted(((op, d) for op, d in diff.items() if d), key=lambda kv: (kv[1] > 0, -abs(kv[1]), kv[0])))


def deltas_table(rows: Sequence[Mapping[str, Any]]) -> str:
    """Markdown: per model, what onnxruntime's extended optimizations leave that differs from Lepton's graph."""
    lines = ["| model | ops ORT has fewer of than Lepton | ops ORT has more of |", "|---|---|---|"]
    for r in rows:
        d = ort_deltas(r)
        if not d:
            continue
        fewer = ", ".join(f"{op.split('::')[-1]} {n}" for op, n in d.items() if n < 0) or "-"
        more = ", ".join(f"{op.split('::')[-1]} +{n}" for op, n in d.items() if n > 0) or "-"
        lines.append(f"| {r['model']} | {fewer} | {more} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    import targets
    from targets.host import cpu_model

    known = models()
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--models", default="", help=f"comma-separated (default: all but {', '.join(DEFAULT_EXCLUDED)}); "
                                                f"known: {', '.join(known)}")
    p.add_argument("--without", default="", help="PASS[,PASS]: remove these passes from the x86 target's pipeline")
    p.add_argument("--no-check", dest="check", action="store_false", help="do not run the graphs in onnxruntime")
    p.add_argument("--out", default=os.path.join(RESULTS, "nodecount.json"), help="the JSON to write (and .md beside it)")
    args = p.parse_args(argv)
    names = split_names(args.models) or [n for n in known if n not in DEFAULT_EXCLUDED]
    unknown = [n for n in names if n not in known]
    if unknown:
        p.error(f"unknown model(s) {', '.join(unknown)}; known: {', '.join(known)}")
    base = targets.resolve("x86").pipeline
    try:
        pipeline = pipeline_without(base, split_names(args.without))
    except ValueError as e:
        p.error(str(e))
    started = datetime.now(UTC)
    rows = []
    for name in names:
        t0 = time.perf_counter()
        print(f"nodecount: {name} ...", end=" ", flush=True)
        rows.append(count_model(known[name], pipeline, check=args.check))
        r = rows[-1]
        print(r.get("skipped") or ", ".join(f"{t} {r['tools'][t].get('nodes', 'error')}" for t in TOOLS if t in r["tools"])
              + f" ({time.perf_counter() - t0:.0f} s)", flush=True)
    meta = {"started": started.isoformat(timespec="seconds"), "cpu": cpu_model(), "cores": len(os.sched_getaffinity(0)),
            "pipeline": pipeline, "without": split_names(args.without), "checked": args.check}
    os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
    with open(args.out, "w") as f:
        json.dump({**meta, "rows": rows}, f, indent=2)
    text = f"{table(rows)}\n\nonnxruntime (extended) minus Lepton (to TVM), by op type:\n\n{deltas_table(rows)}"
    with open(os.path.splitext(args.out)[0] + ".md", "w") as f:
        f.write(f"{meta['started']}, {meta['cpu']}; pipeline: `{pipeline}`\n\n{text}\n")
    print(f"{meta['started']}, {meta['cpu']}\n{text}")


if __name__ == "__main__":
    main()
