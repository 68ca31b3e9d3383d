"""Does a larger frozen backbone pay for its cost? EfficientNet-Lite0 vs Lite1 vs Lite2 on the
cheap Flickr8k testbed (frozen MiniLM sentence vectors + frozen pooled image features).

    .venv/bin/python benchmarks/flickr8k_backbones.py extract BACKBONE [--data DIR]   # speed + full cache
    .venv/bin/python benchmarks/flickr8k_backbones.py speed    # all backbones in alternation, 64 photos x 3
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

import argparse
import json
import shutil
import statistics
import time
from pathlib import Path
from typing import Any

import flickr8k_baseline as base

from _common import RESULT_HEADER, result_lock, write_result

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
    return {k: v for k, v in base.load_results(RESULT).items() if k not in RESULT_HEADER}


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
    with result_lock(RESULT):
        results = _load()
        results.setdefault("extraction", {})[backbone] = results.get("extraction", {}).get(backbone, {}) | entry
        write_result(RESULT, results)
    print(json.dumps(entry))
    return entry


def speed(data: Path, images: int = 64, rounds: int = 3) -> dict[str, Any]:
    """Images/s of every backbone measured in alternation (rounds x backbones, the order rotated
    each round), so that a load change on the shared machine hits all of them alike: per round,
    decode + resize + crop of ``images`` train photos, then one forward pass of that batch (one
    thread). Reports each backbone's median over the rounds."""
    import torch

    from itmatch.data import load_corpus
    from itmatch.features.backbones import backbone_spec, get_backbone

    torch.set_num_threads(1)
    train = load_corpus("flickr8k", str(data), "train")
    paths = [Path(train.image_root) / i for i in train.image_ids[:images]]
    names = list(BACKBONES)
    models = {name: get_backbone(name) for name in names}
    times: dict[str, dict[str, list[float]]] = {n: {"decode": [], "forward": []} for n in names}
    for r in range(rounds):
        for name in names[r % len(names):] + names[: r % len(names)]:
            spec = backbone_spec(name)
            transform = spec.transform(BACKBONES[name])
            start = time.perf_counter()
            batch = torch.stack([transform(p) for p in paths])
            mid = time.perf_counter()
            with torch.inference_mode():
                models[name](batch)
            end = time.perf_counter()
            times[name]["decode"].append(mid - start)
            times[name]["forward"].append(end - mid)
    out: dict[str, Any] = {"images": images, "rounds": rounds, "threads": 1, "backbones": {}}
    for name in names:
        dec, fwd = statistics.median(times[name]["decode"]), statistics.median(times[name]["forward"])
        out["backbones"][name] = {
            "image_size": BACKBONES[name],
            "decode_s_per_image": round(dec / images, 4),
            "forward_s_per_image": round(fwd / images, 4),
            "images_per_s": round(images / (dec + fwd), 2),
            "forward_images_per_s": round(images / fwd, 2),
            "round_seconds": {k: [round(t, 2) for t in v] for k, v in times[name].items()},
        }
    lite0 = out["backbones"]["efficientnet_lite0"]["images_per_s"]
    for name in names:
        out["backbones"][name]["cost_vs_lite0"] = round(lite0 / out["backbones"][name]["images_per_s"], 2)
    with result_lock(RESULT):
        write_result(RESULT, _load() | {"speed_interleaved": out})
    print(json.dumps({n: {k: v for k, v in b.items() if k != "round_seconds"} for n, b in out["backbones"].items()}))
    return out


def table() -> str:
    """base.table plus the cost of each backbone, and what each larger one gains over Lite0 per
    extra second of extraction (per 1,000 photos; the interleaved timing where there is one)."""
    results = _load()
    runs, extraction = results.get("runs", {}), results.get("extraction", {})
    interleaved = results.get("speed_interleaved", {}).get("backbones", {})
    by_variant: dict[str, list[float]] = {}
    for entry in runs.values():
        by_variant.setdefault(entry["variant"], []).append(entry["dev_metrics"]["rsum"])
    rsum = {k: statistics.mean(v) for k, v in by_variant.items()}

    def per_1000(backbone: str) -> float | None:
        if backbone in interleaved:
            return 1000 / interleaved[backbone]["images_per_s"]
        if backbone in extraction:
            return 1000 / extraction[backbone]["speed_images_per_s"]
        return None

    lines = [base.table(RESULT), ""]
    lines.append("| variant | backbone | px | images/s (300 photos, in turn) | images/s (interleaved) | "
                 "extraction s per 1,000 photos | dev rsum vs Lite0 | extra s per 1,000 photos | "
                 "rsum gained per extra s/1,000 |")  # fmt: skip
    lines.append("|---|---|---|---|---|---|---|---|---|")
    base_cost = per_1000("efficientnet_lite0")
    for variant in VARIANTS:
        backbone = BACKBONE_OF[variant]
        cost = per_1000(backbone)
        if cost is None or variant not in rsum:
            continue
        seq = extraction.get(backbone, {}).get("speed_images_per_s")
        inter = interleaved.get(backbone, {}).get("images_per_s")
        cells = [variant, backbone, str(BACKBONES[backbone]), f"{seq:.2f}" if seq else "-",
                 f"{inter:.2f}" if inter else "-", f"{cost:.0f}"]  # fmt: skip
        if base_cost is not None and "minilm_lite0" in rsum and variant != "minilm_lite0":
            gain, extra = rsum[variant] - rsum["minilm_lite0"], cost - base_cost
            cells += [f"{gain:+.1f}", f"{extra:.0f}", f"{gain / extra:+.3f}" if extra > 0 else "n/a"]
        else:
            cells += ["-", "-", "-"]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def _extract_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("backbone", choices=sorted(BACKBONES))
    base.data_argument(p)
    p.add_argument("--speed-only", action="store_true", help="only the 300-photo timing (cache already full)")


def _speed_arguments(p: argparse.ArgumentParser) -> None:
    base.data_argument(p)
    p.add_argument("--images", type=int, default=64)
    p.add_argument("--rounds", type=int, default=3)


def main() -> None:
    base.main(
        __doc__,
        VARIANTS,
        {},
        RESULT,
        "Flickr8k frozen MiniLM, Lite0 vs Lite1 vs Lite2",
        extra={
            "extract": ("cache one backbone's features and time its extraction", _extract_arguments,
                        lambda args: extract(args.backbone, args.data, args.speed_only)),
            "speed": ("photos/s of each backbone's forward pass", _speed_arguments,
                      lambda args: speed(args.data, args.images, args.rounds)),
            "table": ("markdown table of every run so far, with the cost of each backbone", lambda p: None,
                      lambda args: print(table())),
        },
    )  # fmt: skip


if __name__ == "__main__":
    main()
