"""One kernel or Relax ops: how the transformer fusions' ops are best lowered (lepton/codegen/fused_transformer.py).

    python -m bench.fusion_lowering [--models bert_ts,...] [--repeat 15] [--inner 20] [--out ...]

The models are bench.fusion's BERT/DistilBERT exports (BERT-Tiny shape, sequence 64, both exporters, input shapes
pinned). Per model, one process compiles (x86, verified against onnxruntime on the same inputs) and times in
alternating blocks (`bench.latency.time_blocks`, paired ratios as in bench.fusion):
- `onnxruntime` (all graph optimizations, the target's core count as intra-op threads);
- `unfused`: the x86 pipeline without the transformer fusions;
- `default`: the x86 pipeline with `fused_transformer.LOWERING` as shipped;
- one variant per `--variant KEY=VALUE[,KEY=VALUE]` (default: each non-default choice alone:
  attention=kernel, layernorm=ops, layernorm=kernel, projection=packed, projection=separate, whichever differ
  from the shipped LOWERING), LOWERING set so while it converts.
Set TVM_NUM_THREADS to fix Lepton's thread count (otherwise each module chooses one or all CPUs on its first
calls, `lepton.threads`, which on a busy machine can differ between variants).

Writes `--out` (JSON) and prints a table.
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import statistics
from datetime import UTC, datetime
from typing import Any

from bench.nodecount import pin_shapes, pipeline_without, split_names

RESULTS = os.path.join(os.path.dirname(__file__), "results")
FUSIONS = ("merge-qkv", "fuse-attention", "fuse-gelu", "fuse-bias-gelu", "fuse-layernorm", "fuse-rmsnorm",
           "fuse-skip-layernorm")
CHOICES = {"attention": ("kernel", "ops"), "layernorm": ("kernel", "ops"), "projection": ("packed", "separate")}


def main(argv: list[str] | None = None) -> None:
    import lepton
    import lepton_ir
    import targets
    from bench.fusion import models, paired_ratio
    from bench.latency import ort_runner, time_blocks
    from lepton.codegen import fused_transformer as ft
    from lepton.verify.inputs import synthesize
    from targets.host import cpu_model

    known = {k: v for k, v in models().items() if k != "resnet18_bn"}
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--models", default="", help=f"comma-separated (default: all); known: {', '.join(known)}")
    p.add_argument("--variant", action="append", default=[], metavar="KEY=VALUE[,KEY=VALUE]")
    p.add_argument("--repeat", type=int, default=15)
    p.add_argument("--inner", type=int, default=20)
    p.add_argument("--out", default=os.path.join(RESULTS, "fusion_lowering.json"))
    args = p.parse_args(argv)
    shipped = dict(ft.LOWERING)
    variants = [dict(kv.split("=", 1) for kv in split_names(v)) for v in args.variant] or \
        [{k: c} for k, cs in CHOICES.items() for c in cs if c != shipped.get(k)]
    for v in variants:
        for k, c in v.items():
            if c not in CHOICES.get(k, ()):
                p.error(f"unknown variant {k}={c}; choices: {CHOICES}")
    target = targets.resolve("x86")
    base = target.pipeline
    rows = []
    for name in split_names(args.models) or list(known):
        m = known[name]
        model = pin_shapes(m.build(), m.input_shapes)
        feeds = synthesize(lepton_ir.load(model))
        cores = int(target.options.get("num_cores", os.cpu_count() or 1))
        runners: dict[str, Any] = {"onnxruntime": ort_runner(model, cores)}
        builds = [("unfused", pipeline_without(base, FUSIONS), {}), ("default", base, {}),
                  *((",".join(f"{k}={c}" for k, c in v.items()), base, v) for v in variants)]
        for label, pipeline, lowering in builds:
            ft.LOWERING.update(lowering)
            try:
                runners[label] = lepton.compile(model, target, passes=pipeline, use_cache=False, verify_inputs=feeds).run
            finally:
                ft.LOWERING.clear()
                ft.LOWERING.update(shipped)
            print(f"{name}: compiled {label}", flush=True)
        live = {k: functools.partial(f, feeds) for k, f in runners.items()}
        rounds = time_blocks(live, args.repeat, dict.fromkeys(live, args.inner))
        row = {"model": name, "source": m.source, "loadavg_1min": os.getloadavg()[0], "tools": {
            k: {"ms": round(statistics.median(v), 4), "vs_onnxruntime": round(paired_ratio(v, rounds["onnxruntime"]), 3),
                "vs_default": round(paired_ratio(v, rounds["default"]), 3)} for k, v in rounds.items()}}
        rows.append(row)
    meta = {"started": datetime.now(UTC).isoformat(timespec="seconds"), "cpu": cpu_model(),
            "cores": len(os.sched_getaffinity(0)), "tvm_num_threads": os.environ.get("TVM_NUM_THREADS"),
            "shipped": shipped, "repeat": args.repeat, "inner": args.inner}
    os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
    with open(args.out, "w") as f:
        json.dump({**meta, "rows": rows}, f, indent=1)
    print("| model | build | median ms | vs onnxruntime (paired) | vs default (paired) |\n|---|---|---:|---:|---:|")
    for r in rows:
        for tool, t in r["tools"].items():
            print(f"| {r['model']} | {tool} | {t['ms']:.3f} | {t['vs_onnxruntime']:.2f} | {t['vs_default']:.2f} |")


if __name__ == "__main__":
    main()
