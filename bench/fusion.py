"""Latency with passes on and off: Lepton vs onnxruntime on transformer and BatchNorm-CNN exports (issue #13).

    python -m bench.fusion [--models NAME,...] [--without PASS[,PASS]]... [--repeat 9] [--inner 20] [--quiet-wait 60]

Models (batch 1, fp32, random weights, exported in-process through bench/corpus.py's builders, input shapes
pinned in the ONNX so both tools see the same static model):
- `bert_ts`, `bert_dynamo`: Hugging Face BertModel with attention mask (last quarter padded) and token types,
  TorchScript (`torch.onnx.export(dynamo=False)`, opset 16) and dynamo (opset 18) exports;
- `distilbert_ts`, `distilbert_dynamo`: DistilBertModel with attention mask, TorchScript (opset 14) and
  dynamo (opset 19);
  all four at Google's BERT-Tiny shape (2 layers, hidden 128, 2 heads, FFN 512), sequence 64;
- `resnet18_bn`: torchvision ResNet-18 exported by TorchScript with BatchNormalization kept
  (`training=PRESERVE`, no constant folding), 64x64 input.

Tools, one process, timed in the same run: `onnxruntime` (default session options, i.e. all graph
optimizations, with the x86 target's core count as intra-op threads), `lepton` (with `TVM_NUM_THREADS` set to
the same count unless the caller set it) `lepton.compile(model,
"x86")`, the target's pipeline as shipped) and, per `--without` (repeatable), `lepton-without-<passes>`:
the same compile with those passes removed from the target's pipeline text (`passes=`), so a run shows what
each pass buys. Every Lepton build is verified against onnxruntime by `compile`, and its outputs are
compared with onnxruntime's before timing (rtol/atol 1e-4); a build whose outputs differ is reported, not
timed. Timing is `bench.latency.time_blocks`: one warm-up call each, then blocks of `--inner` consecutive
calls with the tools alternating block by block, `--repeat` blocks each (DESIGN §7: the runtimes' thread
pools spin after each call, so call-by-call alternation would steal the cores from the next tool). Reported:
per tool the median of its blocks' medians (ms), and ratios as the median over rounds of the ratio within
each round (`paired_ratio`), which holds through the machine's slow episodes. A variant whose graph is
byte-identical to `lepton`'s (the removed passes changed nothing on that model) is marked as such: its ratio
to `lepton` is the run's noise. Other processes on the cores slow the two runtimes' spinning thread pools
unequally (a 2-core machine shared with a test run moved ratios by 2x): before timing a model the bench waits
up to `--quiet-wait` seconds for them to stop, records the cores they used while it timed
(`other_cores_while_timing`, from /proc/stat less this process's CPU time), and warns above 0.25.

Writes bench/results/fusion.json (`--out`) and prints a Markdown table.
"""

from __future__ import annotations

import argparse
import functools
import hashlib
import json
import os
import statistics
import time
from collections.abc import Callable, Mapping, Sequence
from datetime import UTC, datetime
from typing import Any

import numpy as np
import onnx

from bench.nodecount import Model, pin_shapes, pipeline_without, split_names

RESULTS = os.path.join(os.path.dirname(__file__), "results")


def models() -> dict[str, Model]:
    from bench import corpus

    size = corpus.BertSize(hidden=128, layers=2, heads=2, ffn=512, seq=64)
    bert, distil = size.input_shapes(corpus.BERT_INPUTS), size.input_shapes(corpus.DISTILBERT_INPUTS)
    shape = f"L{size.layers} H{size.hidden} A{size.heads} FFN {size.ffn}, seq {size.seq}"
    out = [
        Model("bert_ts", f"transformers BertModel ({shape}) / TorchScript opset 16",
              functools.partial(corpus.bert_tiny, size), bert),
        Model("bert_dynamo", f"transformers BertModel ({shape}) / dynamo opset 18",
              functools.partial(corpus.bert_tiny_dynamo, size), bert),
        Model("distilbert_ts", f"transformers DistilBertModel ({shape}) / TorchScript opset 14",
              functools.partial(corpus.distilbert_tiny_torchscript, size), distil),
        Model("distilbert_dynamo", f"transformers DistilBertModel ({shape}) / dynamo opset 19",
              functools.partial(corpus.distilbert_tiny, size), distil),
        Model("resnet18_bn", "torchvision ResNet-18, BatchNormalization kept (64x64) / TorchScript opset 11",
              corpus.resnet18_bn, corpus.BY_NAME["resnet18_bn"].input_shapes),
    ]
    return {m.name: m for m in out}


def _first_line(e: BaseException) -> str:
    lines = [line.strip() for line in str(e).splitlines() if line.strip()]
    return f"{type(e).__name__}: {lines[0] if lines else '(no message)'}"[:300]


def variants(base: str, withouts: Sequence[Sequence[str]]) -> dict[str, str]:
    """Tool name -> pipeline text: `lepton` runs `base`; each `--without` set gives `lepton-without-<a+b>`."""
    out = {"lepton": base}
    for w in withouts:
        out["lepton-without-" + "+".join(w)] = pipeline_without(base, w)
    return out


def _busy_s() -> float:
    """CPU seconds all processes have spent busy (/proc/stat's first line, idle and iowait excluded)."""
    with open("/proc/stat") as f:
        v = [int(x) for x in f.readline().split()[1:]]
    return (v[0] + v[1] + v[2] + sum(v[5:8])) / os.sysconf("SC_CLK_TCK")


def _own_s() -> float:
    t = os.times()
    return t.user + t.system


class OtherWork:
    """Cores used by other processes between `start()` and `cores()`: all busy CPU time less this process's
    (its runtimes' spinning pool threads included), over the wall time."""

    def start(self) -> OtherWork:
        self.t, self.busy, self.own = time.perf_counter(), _busy_s(), _own_s()
        return self

    def cores(self) -> float:
        wall = time.perf_counter() - self.t
        return max(0.0, (_busy_s() - self.busy) - (_own_s() - self.own)) / wall if wall > 0 else 0.0


def wait_quiet(limit_s: float, threshold: float = 0.15, window_s: float = 2.0) -> tuple[float, float]:
    """Wait (up to `limit_s`) until other processes use under `threshold` cores over a `window_s` window;
    returns (seconds waited, their cores in the last window)."""
    t0 = time.perf_counter()
    while True:
        probe = OtherWork().start()
        time.sleep(window_s)
        others = probe.cores()
        if others < threshold or time.perf_counter() - t0 >= limit_s:
            return time.perf_counter() - t0, others


def bench_model(m: Model, pipelines: Mapping[str, str], repeat: int, inner: int, say: Callable[[str], None],
                quiet_wait: float = 0.0) -> dict[str, Any]:
    import lepton
    import lepton_ir
    import targets
    from bench.corpus import Unavailable
    from bench.latency import ort_runner, outputs_close, time_blocks
    from lepton.verify.inputs import synthesize

    row: dict[str, Any] = {"model": m.name, "source": m.source, "tools": {}}
    t0 = time.perf_counter()
    try:
        model = pin_shapes(m.build(), m.input_shapes)
    except Unavailable as e:
        row["skipped"] = str(e)
        return row
    row["export_s"] = round(time.perf_counter() - t0, 1)
    row["nodes"] = len(model.graph.node)
    target = targets.resolve("x86")
    cores = int(target.options.get("num_cores", os.cpu_count() or 1))
    feeds = m.inputs() if m.inputs else synthesize(lepton_ir.load(model))
    runners: dict[str, Callable[[dict[str, np.ndarray]], dict[str, np.ndarray]]] = {"onnxruntime": ort_runner(model, cores)}
    digests: dict[str, str] = {}
    for tool, text in pipelines.items():
        say(f"  compiling {tool}")
        t0 = time.perf_counter()
        try:
            res = lepton.compile(model, target, passes=text, use_cache=False, verify_inputs=feeds)
        except Exception as e:  # noqa: BLE001 - a build failing is a result
            row["tools"][tool] = {"error": _first_line(e), "compile_s": round(time.perf_counter() - t0, 1)}
            continue
        opt = os.path.join(res.path, "model.opt.onnx")  # the graph compile handed to TVM
        nodes = len(onnx.load(opt, load_external_data=False).graph.node)
        with open(opt, "rb") as f:
            digest = hashlib.sha256(f.read()).hexdigest()
        row["tools"][tool] = {"compile_s": round(time.perf_counter() - t0, 1), "nodes_to_tvm": nodes}
        if tool != "lepton" and digest == digests.get("lepton"):
            row["tools"][tool]["same_graph_as_lepton"] = True  # the removed passes changed nothing: a noise check
        digests[tool] = digest
        runners[tool] = res.run
    ref = runners["onnxruntime"](feeds)
    live: dict[str, Callable[[], object]] = {}
    for tool, run in runners.items():
        ok, err = outputs_close(ref, run(feeds))
        r = row["tools"].setdefault(tool, {})
        if ok:
            r["max_abs_err"] = err
            live[tool] = functools.partial(run, feeds)
        else:
            r["error"] = f"outputs differ from onnxruntime (max abs err {err:.3g})"
    if quiet_wait > 0:
        waited, others = wait_quiet(quiet_wait)
        row["quiet_wait_s"] = round(waited, 1)
        say(f"  waited {waited:.0f} s for other work to stop (other processes at {others:.2f} cores)")
    say(f"  timing {', '.join(live)}: {repeat} blocks of {inner} calls each")
    other = OtherWork().start()
    rounds = time_blocks(live, repeat, dict.fromkeys(live, inner))
    # other work on the cores slows the runtimes' spinning thread pools unequally: a ratio timed next to it is unsure
    row["other_cores_while_timing"] = round(other.cores(), 2)
    if row["other_cores_while_timing"] > 0.25:
        say(f"  warning: other processes used {row['other_cores_while_timing']:.2f} of {cores} cores while timing; "
            "this model's ratios are unreliable")
    for tool, ms in rounds.items():
        row["tools"][tool].update(ms=statistics.median(ms), rounds_ms=ms,
                                  ratio_vs_onnxruntime=paired_ratio(ms, rounds["onnxruntime"]),
                                  ratio_vs_lepton=paired_ratio(ms, rounds["lepton"]) if "lepton" in rounds else None)
    return row


def paired_ratio(ms: Sequence[float], base: Sequence[float]) -> float:
    """The median over rounds of `ms[i] / base[i]`: each round's blocks ran back to back, so a slow episode of the
    machine (seconds to minutes, every tool slower; DESIGN §7, bench/RESULTS.md) divides out of that round's ratio
    instead of landing on whichever tool's blocks it overlapped most."""
    return statistics.median(a / b for a, b in zip(ms, base, strict=True))


def table(rows: Sequence[Mapping[str, Any]], tools: Sequence[str]) -> str:
    """Markdown: per model and tool the median ms, the ratio to onnxruntime (and to `lepton` for the variants)."""
    lines = ["| model | source / exporter | tool | nodes to TVM | median ms | vs onnxruntime (paired) | vs lepton (paired) |",
             "|---|---|---|---:|---:|---:|---:|"]
    for r in rows:
        if "skipped" in r:
            lines.append(f"| {r['model']} | {r['source']} | - | - | skipped: {r['skipped'][:80]} | - | - |")
            continue
        for tool in ("onnxruntime", *tools):
            t = r["tools"].get(tool, {})
            nodes = t.get("nodes_to_tvm", r["nodes"] if tool == "onnxruntime" else "-")
            if "ms" not in t:
                lines.append(f"| {r['model']} | {r['source']} | {tool} | {nodes} | {t.get('error', 'not run')} | - | - |")
                continue
            vs_lepton = f"{t['ratio_vs_lepton']:.2f}" if t.get("ratio_vs_lepton") and tool.startswith("lepton-") else "-"
            if t.get("same_graph_as_lepton"):
                vs_lepton += " (same graph as lepton)"
            lines.append(f"| {r['model']} | {r['source']} | {tool} | {nodes} | {t['ms']:.2f} | "
                         f"{t['ratio_vs_onnxruntime']:.2f} | {vs_lepton} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    import targets
    from targets.host import cpu_model

    known = models()
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--models", default="", help=f"comma-separated (default: all); known: {', '.join(known)}")
    p.add_argument("--without", action="append", default=[], metavar="PASS[,PASS]",
                   help="also time Lepton with these passes removed from the x86 pipeline (repeat for more variants)")
    p.add_argument("--repeat", type=int, default=9, help="blocks per tool (rounds)")
    p.add_argument("--inner", type=int, default=20, help="consecutive calls per block")
    p.add_argument("--quiet-wait", type=float, default=60.0, metavar="S",
                   help="before timing each model, wait up to S seconds for other processes to leave the cores")
    p.add_argument("--out", default=os.path.join(RESULTS, "fusion.json"))
    args = p.parse_args(argv)
    names = split_names(args.models) or list(known)
    unknown = [n for n in names if n not in known]
    if unknown:
        p.error(f"unknown model(s) {', '.join(unknown)}; known: {', '.join(known)}")
    target = targets.resolve("x86")
    base = target.pipeline
    # the same thread count as onnxruntime's; left to lepton.threads, each module picks one or both cores on its
    # first calls, and on a shared machine that choice differed between builds of one model
    threads = os.environ.setdefault("TVM_NUM_THREADS", str(target.options.get("num_cores", os.cpu_count() or 1)))
    try:
        pipelines = variants(base, [split_names(w) for w in args.without])
    except ValueError as e:
        p.error(str(e))
    started = datetime.now(UTC)
    t_start = time.perf_counter()
    rows = []
    for name in names:
        print(f"fusion: {name} ({time.perf_counter() - t_start:.0f} s in)", flush=True)
        rows.append(bench_model(known[name], pipelines, args.repeat, args.inner, lambda s: print(s, flush=True),
                                args.quiet_wait))
    meta = {"started": started.isoformat(timespec="seconds"), "cpu": cpu_model(), "cores": len(os.sched_getaffinity(0)),
            "repeat": args.repeat, "inner": args.inner, "tvm_num_threads": threads, "pipelines": pipelines,
            "quiet_wait_s": args.quiet_wait, "seconds": round(time.perf_counter() - t_start)}
    os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
    with open(args.out, "w") as f:
        json.dump({**meta, "rows": rows}, f, indent=2)
    others = [r["other_cores_while_timing"] for r in rows if "other_cores_while_timing" in r]
    print(f"{meta['started']}, {meta['cpu']}, {meta['cores']} cores, {meta['seconds']} s; other processes used "
          f"{min(others, default=0):.2f}-{max(others, default=0):.2f} cores while timing\n{table(rows, list(pipelines))}")


if __name__ == "__main__":
    main()
