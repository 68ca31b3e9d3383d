"""Short pilots of adversarial settings on one Flickr8k baseline run (seed 0), to choose the
miie_adv recipe: each variant runs the classifier stage (1 epoch) and the adversarial stage
(2 epochs) from the baseline's best checkpoint and logs validation rsum, probe accuracy and the
training classifier's accuracy after every epoch.

    .venv/bin/python benchmarks/flickr8k_adversarial_pilots.py [--variants grl_slow_d grl_fast_d alternate]

Needs the baseline run of flickr8k_quality.py (RUNS/vsepp-seed0). Writes
benchmarks/results/flickr8k_adversarial_pilots.json.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from itmatch.training.config import load_config
from itmatch.training.trainer import train

from _common import write_result
from flickr8k_setup import OVERRIDES, RUNS

SHORT = ["stages.classifier.epochs=1", "stages.adversarial.epochs=2"]
VARIANTS = {
    # the first recipe: GRL, DANN ramp to 0.5, the classifier at the encoders' learning rate
    "grl_slow_d": ["stages.adversarial.lr_parts={}", "stages.adversarial.adversarial.lambda=0.5"],
    # GRL with a classifier 50x faster than the encoders and a smaller lambda (miie_adv's setting)
    "grl_fast_d": ["stages.adversarial.lr_parts={classifier: 1.0e-3}", "stages.adversarial.adversarial.lambda=0.1"],
    # alternating updates, encoders pulled towards an unsure classifier (target 0.5)
    "alternate": ["stages.adversarial.lr_parts={classifier: 1.0e-4}", "stages.adversarial.adversarial.mode=alternate",
                  "stages.adversarial.adversarial.objective=uniform", "stages.adversarial.adversarial.schedule=constant"],
}  # fmt: skip


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--variants", nargs="+", default=list(VARIANTS))
    args = ap.parse_args()
    base = Path(RUNS) / "vsepp-seed0"
    results = {}
    for name in args.variants:
        run = Path(RUNS) / "pilots" / name
        if not (run / "summary.json").exists():
            cfg = load_config("miie_adv", [*OVERRIDES, *SHORT, *VARIANTS[name], "seed=0"], skip_missing_stages=True)
            train(cfg, run, init_from=base, resume=(run / "checkpoints" / "last.pt").exists(), progress=True)
        records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
        results[name] = {
            "overrides": VARIANTS[name],
            "epochs": [
                {k: r[k] for k in ("stage", "epoch", "val/rsum", "val/probe_acc", "val/classifier_acc", "val/centroid_dist")}
                for r in records if "val/rsum" in r
            ],
        }  # fmt: skip
    baseline = [json.loads(line) for line in (base / "metrics.jsonl").read_text().splitlines() if "val/rsum" in line]
    write_result(
        "flickr8k_adversarial_pilots",
        {"baseline_val_rsum": baseline[-1]["val/rsum"], "baseline_val_probe_acc": baseline[-1]["val/probe_acc"],
         "short_stages": SHORT, "common_overrides": OVERRIDES, "variants": results},
    )  # fmt: skip


if __name__ == "__main__":
    main()
