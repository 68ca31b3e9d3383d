"""Does a larger frozen backbone pay for its cost? EfficientNet-Lite0 vs Lite1 vs Lite2 on the
cheap Flickr8k testbed (frozen MiniLM sentence vectors + frozen pooled image features).

    .venv/bin/python benchmarks/flickr8k_backbones.py extract BACKBONE [--data DIR]   # speed + full cache
    .venv/bin/python benchmarks/flickr8k_backbones.py run VARIANT [--seed 0] [--data DIR]
    .venv/bin/python benchmarks/flickr8k_backbones.py table    # markdown table (dev figures + cost)
    .venv/bin/python benchmarks/flickr8k_backbones.py plot     # -> results/flickr8k_backbones_curves.png

Every variant is ``minilm`` of ``benchmarks/flickr8k_baseline.py`` (the same recipe, protocol,
one thread: select on 500 held-out train images, report the 1,000 dev images) with only
``data.feature_backbone`` and ``data.image_size`` changed (each backbone at its native size),
and a shorter schedule: 1 warm-up + 9 hardest epochs instead of 1 + 29. On Lite0 the 1 + 29
curves (3 seeds, results/flickr8k_baseline.json) peak at epoch 3, 4 and 5 and then fall
(overfitting: by epoch 10 they are 15-16 rsum under the peak); the learning rate is divided by
10 only after hardest epoch 15 in both schedules, so the first 10 epochs of a 1 + 29 run and a
1 + 9 run are the same computation and select the same checkpoint. ``minilm_lite0`` reruns Lite0
at 1 + 9 for the equal comparison.

``extract BACKBONE [--speed-only]`` first times the backbone on the same 300 train photos (decode + resize +
forward, batch 64, one thread, no decoding workers) into a scratch cache, then extracts every
train and dev photo into the shared benchmark cache (what ``run`` reads), timing that too.
Results accumulate in benchmarks/results/flickr8k_backbones.json (``runs`` per variant and
seed, ``extraction`` per backbone); runs live in /tmp/itmatch-f8k-baseline/<variant>-seed<S>.
"""

from __future__ import annotations

import json
import shutil
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import flickr8k_baseline as base

from _common import write_result

RESULT = "flickr8k_backbones"
SPEED_IMAGES = 300  # the first 300 train photos (file order), the same for every backbone
SPEED_CACHE = Path("/tmp/itmatch-backbones-speed-cache")  # scratch: emptied before each timing

# The minilm variant's stages with 9 instead of 29 hardest epochs (lr / 10 still after 15: never
# reached, as in the first 10 epochs of the 1 + 29 schedule).
SHORT_STAGES = ("stages=[{name: warmup, epochs: 1, lr: 2.0e-4, train: [image, text], rank: sum}, "
                "{name: hardest, epochs: 9, lr: 2.0e-4, lr_decay_epochs: 15, train: [image, text], rank: max_violation}]")  # fmt: skip

BACKBONES = {"efficientnet_lite0": 224, "efficientnet_lite1": 240, "efficientnet_lite2": 260}


def _variant(backbone: str) -> tuple[str, list[str], str]:
    size = BACKBONES[backbone]
    return (
        "vsepp",
        base.HOLDOUT + base.MINILM + [f"data.feature_backbone={backbone}", f"data.image_size={size}", SHORT_STAGES],
        f"frozen MiniLM + frozen {backbone} features at {size} px, 1 warm-up + 9 hardest epochs",
    )


VARIANTS: dict[str, tuple[str, list[str], str]] = {
    "minilm_lite0": _variant("efficientnet_lite0"),
    "minilm_lite1": _variant("efficientnet_lite1"),
    "minilm_lite2": _variant("efficientnet_lite2"),
}
BACKBONE_OF = {"minilm_lite0": "efficientnet_lite0", "minilm_lite1": "efficientnet_lite1", "minilm_lite2": "efficientnet_lite2"}


def _load() -> dict[str, Any]:
    return base.load_results(RESULT)


def _save(payload: dict[str, Any]) -> None:
    write_result(RESULT, payload)


def extract(backbone: str, data: Path, speed_only: bool = False) -> dict[str, Any]:
    """Time ``backbone`` on SPEED_IMAGES photos, then (unless ``speed_only``) fill the benchmark
    cache for train + dev."""
    import torch

    from itmatch.data import load_corpus
    from itmatch.features import extract_corpus_features, extract_features
    from itmatch.features.backbones import weights_identity

    size = BACKBONES[backbone]
    torch.set_num_threads(1)
    train = load_corpus("flickr8k", str(data), "train")
    shutil.rmtree(SPEED_CACHE, ignore_errors=True)
    start = time.perf_counter()
    store = extract_features(
        train.image_root, train.image_ids[:SPEED_IMAGES], SPEED_CACHE, backbone=backbone,
        image_size=size, num_workers=0, num_threads=1,
    )  # fmt: skip
    speed_s = time.perf_counter() - start
    assert store.computed == SPEED_IMAGES, store.computed
    shutil.rmtree(SPEED_CACHE, ignore_errors=True)
    entry: dict[str, Any] = {
        "backbone": backbone,
        "image_size": size,
        "speed_images": SPEED_IMAGES,
        "speed_seconds": round(speed_s, 2),
        "speed_images_per_s": round(SPEED_IMAGES / speed_s, 2),
        "note": "decode + resize + centre crop + forward, batch 64, 1 thread, no decoding workers, "
        "on a machine shared with other jobs (see load_average_at_write)",
    }
    full: dict[str, Any] = {}
    for split in () if speed_only else ("train", "dev"):
        corpus = load_corpus("flickr8k", str(data), split)
        start = time.perf_counter()
        store = extract_corpus_features(
            corpus, base.CACHE, backbone=backbone, image_size=size, num_workers=0, num_threads=1
        )
        seconds = time.perf_counter() - start
        full[split] = {"images": len(corpus.image_ids), "computed": store.computed, "seconds": round(seconds, 1)}
        if store.computed:
            full[split]["images_per_s"] = round(store.computed / seconds, 2)
        entry["store"] = str(store.path)
    entry["weights"] = weights_identity(backbone, None)
    if full:
        entry["full"] = full
    results = _load()
    results.setdefault("extraction", {})[backbone] = results.get("extraction", {}).get(backbone, {}) | entry
    _save(results)
    print(json.dumps(entry))
    return entry


def run(variant: str, seed: int, data: Path) -> dict[str, Any]:
    extraction = _load().get("extraction", {})
    entry = base.run(variant, seed, data, VARIANTS, {}, RESULT)
    # base.run rewrites the file with its runs only: put the extraction timings back.
    results = _load()
    results["extraction"] = extraction
    _save(results)
    return entry


def table() -> str:
    """base.table plus the cost columns, and each larger backbone against Lite0."""
    results = _load()
    runs, extraction = results.get("runs", {}), results.get("extraction", {})
    lines = [base.table(RESULT), ""]
    lines.append("| variant | backbone | px | extraction images/s (300 photos) | s per 1,000 photos | "
                 "dev rsum vs Lite0 | extra extraction s per 1,000 photos | rsum per extra s/1,000 |")  # fmt: skip
    lines.append("|---|---|---|---|---|---|---|---|")
    by_variant: dict[str, list[float]] = {}
    for entry in runs.values():
        by_variant.setdefault(entry["variant"], []).append(entry["dev_metrics"]["rsum"])
    rsum = {k: statistics.mean(v) for k, v in by_variant.items()}
    lite0 = extraction.get("efficientnet_lite0")
    for variant in VARIANTS:
        backbone = BACKBONE_OF[variant]
        ex = extraction.get(backbone)
        if ex is None or variant not in rsum:
            continue
        per_k = 1000 / ex["speed_images_per_s"]
        cells = [variant, backbone, str(ex["image_size"]), f"{ex['speed_images_per_s']:.1f}", f"{per_k:.0f}"]
        if lite0 is not None and "minilm_lite0" in rsum and variant != "minilm_lite0":
            gain = rsum[variant] - rsum["minilm_lite0"]
            extra = per_k - 1000 / lite0["speed_images_per_s"]
            cells += [f"{gain:+.1f}", f"{extra:.0f}", f"{gain / extra:+.3f}" if extra > 0 else "n/a"]
        else:
            cells += ["-", "-", "-"]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] == "extract":
        import argparse

        ap = argparse.ArgumentParser(prog="flickr8k_backbones.py extract")
        ap.add_argument("backbone", choices=sorted(BACKBONES))
        ap.add_argument("--data", type=Path, default=base.DEFAULT_DATA)
        ap.add_argument("--speed-only", action="store_true", help="only the 300-photo timing (cache already full)")
        args = ap.parse_args(sys.argv[2:])
        extract(args.backbone, args.data, args.speed_only)
    elif len(sys.argv) > 1 and sys.argv[1] == "run":
        import argparse

        ap = argparse.ArgumentParser(prog="flickr8k_backbones.py run")
        ap.add_argument("variant", choices=sorted(VARIANTS))
        ap.add_argument("--seed", type=int, default=0)
        ap.add_argument("--data", type=Path, default=base.DEFAULT_DATA)
        args = ap.parse_args(sys.argv[2:])
        run(args.variant, args.seed, args.data)
    elif len(sys.argv) > 1 and sys.argv[1] == "table":
        print(table())
    else:
        # plot (and --help) through the shared command line
        base.main(__doc__, VARIANTS, {}, RESULT, "Flickr8k frozen MiniLM, Lite0 vs Lite1 vs Lite2")


if __name__ == "__main__":
    main()
