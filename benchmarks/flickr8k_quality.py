"""Flickr8k quality of the VSE++ baseline: train on ../shared/data/flickr8k train (500 train
images held out for model selection), report Recall@K, medr and rsum on the dev split (1K
protocol), plus the wall time of feature extraction and of one training epoch.

    .venv/bin/python benchmarks/flickr8k_quality.py [--seed 0] [--set KEY=VALUE ...]

Writes benchmarks/results/flickr8k_quality.json. Settings (model width, epochs) come from
flickr8k_setup.py; the run goes to its RUNS folder as vsepp-seed0, where flickr8k_compare.py
reuses it. Extraction is timed on the dev split into an empty cache (cold) and through the warm cache.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

from itmatch.data import load_corpus
from itmatch.features.corpus import corpus_features
from itmatch.inference import Matcher
from itmatch.training.config import load_config
from itmatch.training.trainer import train

from _common import write_result
from flickr8k_setup import DATA, OVERRIDES, RUNS


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--set", dest="overrides", action="append", default=[])
    args = ap.parse_args()

    overrides = [*OVERRIDES, f"seed={args.seed}", *args.overrides]
    cfg = load_config("vsepp", overrides, skip_missing_stages=True)

    # Feature extraction: the dev split into an empty cache (cold, timed), then every train and dev
    # image through the benchmark cache (warm after the first run).
    train_corpus = load_corpus("flickr8k", DATA, "train")
    dev = load_corpus("flickr8k", DATA, "dev")
    with tempfile.TemporaryDirectory() as cold_cache:
        t = time.perf_counter()
        corpus_features(dev, {**cfg["data"], "feature_cache": cold_cache}, progress=True)
        cold_s = time.perf_counter() - t
    t = time.perf_counter()
    corpus_features(train_corpus, cfg["data"], progress=True)
    corpus_features(dev, cfg["data"], progress=True)
    cached_s = time.perf_counter() - t

    run_dir = Path(RUNS) / f"vsepp-seed{args.seed}"
    if not (run_dir / "summary.json").exists():
        train(cfg, run_dir, progress=True, resume=(run_dir / "checkpoints" / "last.pt").exists())
    train_s = json.loads((run_dir / "summary.json").read_text())["wall_time_s"]  # of the (last) training session
    records = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    epoch_times = [r["epoch_time_s"] for r in records if "epoch_time_s" in r]

    matcher = Matcher.from_run(run_dir, "best")
    from itmatch.evaluation.invariance import invariance_metrics
    from itmatch.evaluation.recall import evaluate_embeddings

    im, tx = matcher.embed_corpus(dev)
    metrics = evaluate_embeddings(im, tx, protocol="1k")
    metrics.update(invariance_metrics(im, tx))
    best = json.loads((run_dir / "summary.json").read_text())["best"]
    write_result(
        "flickr8k_quality",
        {
            "recipe": "vsepp",
            "seed": args.seed,
            "overrides": overrides,
            "train_images": len(train_corpus) - 500,
            "val_images": 500,
            "dev_images": len(dev),
            "dev_metrics_1k": metrics,
            "selected": {"stage": best.get("stage"), "epoch": best.get("epoch"), "val_rsum": best.get("val/rsum")},
            "feature_extraction_cold_dev_s": cold_s,
            "feature_extraction_cold_images_per_s": len(dev) / cold_s,
            "feature_lookup_cached_7000_images_s": cached_s,
            "epoch_time_s_median": sorted(epoch_times)[len(epoch_times) // 2] if epoch_times else None,
            "epoch_captions": len(train_corpus.flat_captions()) - 2500,
            "train_wall_s": train_s,
            "run_dir": str(run_dir),
        },
    )


if __name__ == "__main__":
    main()
