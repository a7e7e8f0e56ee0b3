"""Rebuild the shipped tuning database for this machine's target from the bench models (on the reference machine).

    python -m bench.ship_tuning [--minutes resnet18=5,resnet50=7,...] [--work build/tuning] [--target x86]

`lepton.tuning.ship.ship` does the work (tune, prune, measure, write `targets/tuning/<tuning_key>/`
with its MANIFEST.json); this passes it the bench models (`bench/models.py`) and their inputs.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from bench.models import BENCH_MODELS, synth_inputs
from lepton.tuning.ship import ship

DEFAULT_MINUTES = {"resnet18": 5.0, "resnet50": 7.0, "mobilenet_v2": 7.0, "bert_small": 3.0, "bert_base": 4.0}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--minutes", default=",".join(f"{k}={v:g}" for k, v in DEFAULT_MINUTES.items()),
                        help="tuning minutes per bench model, NAME=MIN,...")
    parser.add_argument("--work", default="build/tuning", help="folder of the full (resumable) databases")
    parser.add_argument("--target", default="x86")
    args = parser.parse_args(argv)
    minutes = {k: float(v) for k, v in (item.split("=") for item in args.minutes.split(","))}
    ship(BENCH_MODELS, minutes, Path(args.work), args.target, inputs=synth_inputs)


if __name__ == "__main__":
    main()
