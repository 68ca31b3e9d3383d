"""Flickr8k quality of a recipe: train on ../shared/data/flickr8k train (500 train images held out
for model selection), report Recall@K, medr and rsum on the dev split (1K protocol), plus the wall
time of feature extraction and of one training epoch.

    .venv/bin/python benchmarks/flickr8k_quality.py [--config vsepp] [--seed 0] [--set KEY=VALUE ...]

Writes benchmarks/results/flickr8k_quality[_NAME].json (NAME = --name, default the recipe name
unless it is vsepp). Feature extraction goes to --cache (default /tmp/itmatch-bench-cache); its time
is reported together with whether the cache was cold.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from itmatch.data import load_corpus
from itmatch.inference import Matcher
from itmatch.training.config import load_config
from itmatch.training.data import corpus_features
from itmatch.training.trainer import train

from _common import REPO_ROOT, write_result

DATA = REPO_ROOT.parent / "shared" / "data" / "flickr8k"


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--config", default="vsepp")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--name", default=None)
    ap.add_argument("--data", default=str(DATA))
    ap.add_argument("--cache", default="/tmp/itmatch-bench-cache")
    ap.add_argument("--runs", default="/tmp/itmatch-bench-runs")
    ap.add_argument("--set", dest="overrides", action="append", default=[])
    args = ap.parse_args()

    overrides = [
        "data.format=flickr8k", f"data.path={args.data}", "data.val_holdout=500",
        f"data.feature_cache={args.cache}", f"seed={args.seed}", *args.overrides,
    ]  # fmt: skip
    cfg = load_config(args.config, overrides)

    # Feature extraction of every train and dev image, timed (a warm cache reports ~0 s).
    cold = not Path(args.cache).exists()
    t = time.perf_counter()
    train_corpus = load_corpus("flickr8k", args.data, "train")
    dev = load_corpus("flickr8k", args.data, "dev")
    corpus_features(train_corpus, cfg["data"], progress=True)
    corpus_features(dev, cfg["data"], progress=True)
    extract_s = time.perf_counter() - t

    name = args.name or (args.config if args.config != "vsepp" else "")
    run_dir = Path(args.runs) / f"{args.config}-seed{args.seed}-{int(time.time())}"
    t = time.perf_counter()
    train(cfg, run_dir, progress=True)
    train_s = time.perf_counter() - t
    records = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    epoch_times = [r["epoch_time_s"] for r in records if "epoch_time_s" in r and r["stage"] != "classifier"]

    matcher = Matcher.from_run(run_dir, "best")
    from itmatch.evaluation.invariance import invariance_metrics
    from itmatch.evaluation.recall import evaluate_embeddings

    im, tx = matcher.embed_corpus(dev)
    metrics = evaluate_embeddings(im, tx, protocol="1k")
    metrics.update(invariance_metrics(im, tx))
    best = json.loads((run_dir / "summary.json").read_text())["best"]
    write_result(
        "flickr8k_quality" + (f"_{name}" if name else ""),
        {
            "recipe": args.config,
            "seed": args.seed,
            "overrides": args.overrides,
            "train_images": len(train_corpus) - 500,
            "val_images": 500,
            "dev_images": len(dev),
            "dev_metrics_1k": metrics,
            "selected": {"stage": best.get("stage"), "epoch": best.get("epoch"), "val_rsum": best.get("val/rsum")},
            "feature_extraction_s": extract_s,
            "feature_cache_cold": cold,
            "epoch_time_s_median": sorted(epoch_times)[len(epoch_times) // 2] if epoch_times else None,
            "train_wall_s": train_s,
            "run_dir": str(run_dir),
        },
    )


if __name__ == "__main__":
    main()
