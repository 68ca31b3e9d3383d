"""Baseline vs modality-invariant model on Flickr8k, over several seeds.

    .venv/bin/python benchmarks/flickr8k_compare.py [--seeds 3] [--recipes vsepp miie_adv@vsepp vsepp_more@vsepp]

Trains each recipe spec per seed on Flickr8k train (500 images held out for model selection),
scores the selected checkpoint on dev (1K protocol) and writes
benchmarks/results/flickr8k_compare.json (with the table as Markdown) and
benchmarks/results/flickr8k_compare_tsne.png (t-SNE maps of seed 0). ``miie_adv@vsepp`` runs the classifier and
adversarial stages on each baseline run; ``vsepp_more@vsepp`` is the control with the same extra
epochs and no adversary. Settings come from flickr8k_setup.py; runs in its RUNS folder are reused.
"""

from __future__ import annotations

import argparse
import shutil
import time

from itmatch.training.compare import run_comparison

from _common import RESULTS_DIR, write_result
from flickr8k_setup import OVERRIDES, RUNS


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--seeds", type=int, default=3)
    ap.add_argument("--recipes", nargs="+", default=["vsepp", "miie_adv@vsepp", "vsepp_more@vsepp"])
    ap.add_argument("--set", dest="overrides", action="append", default=[])
    args = ap.parse_args()
    overrides = [*OVERRIDES, *args.overrides]
    t = time.perf_counter()
    result = run_comparison(
        args.recipes, list(range(args.seeds)), RUNS, overrides=overrides, eval_split="dev", protocol="1k",
        progress=True, log=print,
    )  # fmt: skip
    shutil.copyfile(f"{RUNS}/tsne.png", RESULTS_DIR / "flickr8k_compare_tsne.png")
    write_result(
        "flickr8k_compare",
        {
            "recipes": args.recipes, "seeds": list(range(args.seeds)), "eval_split": "dev", "protocol": "1k",
            "overrides": overrides, "wall_s": time.perf_counter() - t, "summary": result["summary"],
            "per_seed": result["per_seed"], "table_markdown": result["table"],
        },
    )  # fmt: skip


if __name__ == "__main__":
    main()
