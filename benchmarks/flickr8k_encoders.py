"""Stronger encoders on Flickr8k: frozen features vs a fine-tuned EfficientNet-Lite0, GRU vs MiniLM,
each with and without the adversarial stages. Train on ../shared/data/flickr8k train (500 images
held out for model selection), score the selected checkpoint on dev (1K protocol).

    .venv/bin/python benchmarks/flickr8k_encoders.py measure            # images/s of the photo path
    .venv/bin/python benchmarks/flickr8k_encoders.py run VARIANT [...]  # train (or reuse) + score
    .venv/bin/python benchmarks/flickr8k_encoders.py table              # the markdown table

Variants (``NAME: recipe [@ base run]``) and what they run:

- ``gru``: vsepp with ``model.backbone=efficientnet_lite0``. The backbone is in the model but
  frozen and pretrained in every stage, so every epoch reads the cached features: this is the
  frozen-features + GRU baseline (the plain ``vsepp`` run of flickr8k_compare.py, if present, is
  scored too as ``vsepp``), and its checkpoint holds the backbone so fine-tuning can start from it.
- ``gru_ft``: finetune @ gru (the backbone unfrozen, photos, augmentation).
- ``gru_adv``: miie_adv @ gru (classifier, then adversarial stages, frozen backbone).
- ``gru_adv_ft``: finetune_adv @ gru_adv (adversarial training with the backbone unfrozen), with
  finetune_adv's earlier lambda 0.5 and D at the encoders' learning rate (SLOW_D): D's labels get
  flipped, which is why finetune_adv now uses miie_adv's settings (as ``minilm_adv_ft`` does).
- ``minilm``, ``minilm_ft``, ``minilm_adv``, ``minilm_adv_ft``: the same with
  ``model.text_encoder=minilm`` (the transformer stays frozen: its projection trains).
- ``minilm_tft``: vsepp_minilm's ``text_finetune`` stage alone @ minilm (the transformer trains).
- ``minilm_full`` (+ ``minilm_full_ft``, ``minilm_full_tft``): frozen MiniLM at the vsepp recipe's own size
  (d = 1024, 1 + 15 epochs), affordable because frozen-MiniLM epochs take seconds.
- ``minilm_full_tft_ft``: finetune @ minilm_full_tft (both encoders fine-tuned, one epoch each:
  the transformer first, on cached features; then the CNN, on photos, the transformer frozen).

Every setting shared with flickr8k_compare.py comes from flickr8k_setup.py (d = 512, 1 + 7
baseline epochs, 1 thread); each fine-tuning stage runs one epoch (FT_OVERRIDES), sized for a
busy 2-core CPU. Everything run is recorded in
benchmarks/results/flickr8k_encoders.json, variant by variant (the file accumulates). Set
MALLOC_MMAP_THRESHOLD_ / MALLOC_TRIM_THRESHOLD_ high to keep glibc from re-mapping big
activations on every step (the result file records the environment).
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path
from typing import Any

import torch

from itmatch.data import load_corpus
from itmatch.training.config import load_config

from _common import RESULTS_DIR, write_result
from flickr8k_setup import CACHE, DATA, OVERRIDES

RUNS = Path("/tmp/itmatch-f8k-encoders")
COMPARE_RUNS = Path("/tmp/itmatch-f8k-compare")  # flickr8k_compare.py's plain vsepp runs
RESULT = "flickr8k_encoders"
SEED = 0
FT_OVERRIDES = [  # one epoch over all 27,500 training caption rows (~45 min at ~10 photos/s)
    "stages.finetune.epochs=1",
    "stages.adversarial_finetune.epochs=1",
    "training.num_workers=1",
]
BACKBONE = ["model.backbone=efficientnet_lite0"]
MINILM = ["model.text_encoder=minilm"]
SLOW_D = [  # finetune_adv before this benchmark showed D's labels flipped: lambda 0.5, D at the encoders' lr
    "stages.adversarial_finetune.adversarial.lambda=0.5",
    "stages.adversarial_finetune.lr_parts.classifier=2e-5",
]
FULL_SIZE = ["model.embed_dim=1024", "stages.hardest.epochs=15", "stages.hardest.lr_decay_epochs=8"]

# name: (recipe, base variant or None, overrides on top of flickr8k_setup.OVERRIDES)
VARIANTS: dict[str, tuple[str, str | None, list[str]]] = {
    "gru": ("vsepp", None, BACKBONE),
    "gru_ft": ("finetune", "gru", BACKBONE + FT_OVERRIDES),
    "gru_adv": ("miie_adv", "gru", BACKBONE),
    # Run with finetune_adv as it was before the D / lambda fix (kept as the evidence for it).
    "gru_adv_ft": ("finetune_adv", "gru_adv", BACKBONE + FT_OVERRIDES + SLOW_D),
    "minilm": ("vsepp", None, BACKBONE + MINILM),
    "minilm_ft": ("finetune", "minilm", BACKBONE + MINILM + FT_OVERRIDES),
    "minilm_adv": ("miie_adv", "minilm", BACKBONE + MINILM),
    "minilm_adv_ft": ("finetune_adv", "minilm_adv", BACKBONE + MINILM + FT_OVERRIDES),
    # The MiniLM transformer fine-tuned too (part text_backbone): vsepp_minilm's last stage alone.
    "minilm_tft": ("vsepp_minilm", "minilm", BACKBONE + ["stages.warmup.epochs=0", "stages.hardest.epochs=0"]),
    # Frozen MiniLM epochs cost seconds (memoised sentences), so the vsepp recipe's own size fits:
    # d = 1024 and 1 + 15 epochs instead of flickr8k_setup's cut (512, 1 + 7).
    "minilm_full": ("vsepp", None, BACKBONE + MINILM + FULL_SIZE),
    "minilm_full_ft": ("finetune", "minilm_full", BACKBONE + MINILM + FULL_SIZE + FT_OVERRIDES),
    "minilm_full_tft": ("vsepp_minilm", "minilm_full", BACKBONE + FULL_SIZE + ["stages.warmup.epochs=0", "stages.hardest.epochs=0"]),
    # Both fine-tuned: the CNN's epoch on top of the transformer's.
    "minilm_full_tft_ft": ("finetune", "minilm_full_tft", BACKBONE + MINILM + FULL_SIZE + FT_OVERRIDES),
    # More than one CNN epoch, one epoch per run so that every epoch is scored on dev: each
    # continues the previous one's weights at the same constant rates (a fresh Adam state) over
    # another shuffle and other crops (its own seed).
    "minilm_full_ft_e2": ("finetune", "minilm_full_ft", BACKBONE + MINILM + FULL_SIZE + FT_OVERRIDES + ["seed=1"]),
    "minilm_full_ft_e3": ("finetune", "minilm_full_ft_e2", BACKBONE + MINILM + FULL_SIZE + FT_OVERRIDES + ["seed=2"]),
}
ROW_ORDER = ["vsepp", "gru", "gru_ft", "minilm", "minilm_ft", "minilm_tft", "gru_adv", "gru_adv_ft", "minilm_adv",
             "minilm_adv_ft", "minilm_full", "minilm_full_ft", "minilm_full_ft_e2", "minilm_full_ft_e3", "minilm_full_tft",
             "minilm_full_tft_ft"]  # fmt: skip
DESCRIPTIONS = {
    "vsepp": "frozen features + GRU (plain vsepp recipe, no backbone in the model)",
    "gru": "frozen features + GRU (backbone in the model, frozen: cached features)",
    "gru_ft": "fine-tuned backbone + GRU",
    "gru_adv": "frozen features + GRU + adversarial stages",
    "gru_adv_ft": "fine-tuned backbone + GRU + adversarial (lambda 0.5, D at the encoders' lr: D flipped)",
    "minilm": "frozen features + MiniLM",
    "minilm_ft": "fine-tuned backbone + MiniLM",
    "minilm_adv": "frozen features + MiniLM + adversarial stages",
    "minilm_adv_ft": "fine-tuned backbone + MiniLM + adversarial (lambda 0.1, D 50x faster)",
    "minilm_tft": "frozen features + MiniLM, transformer fine-tuned 1 epoch",
    "minilm_full": "frozen features + MiniLM, vsepp recipe size (d 1024, 1 + 15 epochs)",
    "minilm_full_ft": "minilm_full + fine-tuned backbone",
    "minilm_full_tft": "minilm_full + transformer fine-tuned 1 epoch",
    "minilm_full_tft_ft": "minilm_full_tft + fine-tuned backbone (both encoders fine-tuned)",
    "minilm_full_ft_e2": "minilm_full_ft + a second backbone epoch (fresh Adam, seed 1 shuffle)",
    "minilm_full_ft_e3": "minilm_full_ft_e2 + a third backbone epoch (fresh Adam, seed 2 shuffle)",
}


def load_results() -> dict[str, Any]:
    path = RESULTS_DIR / f"{RESULT}.json"
    if not path.exists():
        return {}
    data = json.loads(path.read_text())
    return {k: data[k] for k in ("measure", "variants") if k in data}


def save(results: dict[str, Any]) -> None:
    results["table_markdown"] = table(results.get("variants", {}))
    results["goal"] = {
        "rsum_above": 300.0,
        "reached_by": sorted(k for k, v in results.get("variants", {}).items() if v["dev_1k"]["rsum"] > 300),
    }
    results["settings"] = {
        "data": str(DATA), "feature_cache": CACHE, "runs": str(RUNS), "seed": SEED,
        "shared_overrides": OVERRIDES, "ft_overrides": FT_OVERRIDES,
        "malloc_env": {k: v for k, v in os.environ.items() if k.startswith("MALLOC_")},
    }  # fmt: skip
    write_result(RESULT, results)


def measure() -> dict[str, Any]:
    """Photo-path throughput at batch 128: training steps with the backbone unfrozen (GRU text
    side), and the frozen backbone's forward pass, as the trainer runs them."""
    from itmatch.models import build_model
    from itmatch.models.text_processing import make_text_processor
    from itmatch.training.data import train_val_corpora, training_data
    from itmatch.training.schedule import parse_stage
    from itmatch.training.step import StepContext, train_step
    from itmatch.training.trainer import make_optimizers, set_trainable

    cfg = load_config("finetune", [*OVERRIDES, *BACKBONE, *FT_OVERRIDES, "data.features=none"], skip_missing_stages=True)
    torch.set_num_threads(int(cfg["training"]["threads"] or torch.get_num_threads()))
    train_corpus, val_corpus = train_val_corpora(cfg["data"])
    from itmatch.data.text import Vocabulary

    vocab = Vocabulary.build(train_corpus.flat_captions(), min_count=4)
    processor = make_text_processor(cfg["model"], vocab)
    data = training_data(cfg, train_corpus, val_corpus, processor, device=torch.device("cpu"))
    model = build_model(cfg["model"], len(vocab), data.feature_dim)
    data.attach(model)
    stage = parse_stage(cfg["stages"][0], "finetune")
    set_trainable(model, stage)
    optimizers = make_optimizers(model, stage, 0)
    ctx = StepContext(margin=0.2, grad_clip=2.0)
    out: dict[str, Any] = {"batch_size": 128, "threads": torch.get_num_threads(), "image_size": 224}
    steps = []
    t_load = time.perf_counter()
    for step, batch in data.pairs.epoch(seed=0):
        t = time.perf_counter()
        train_step(model, batch, stage, optimizers, ctx)
        steps.append({"load_s": t - t_load, "step_s": time.perf_counter() - t})
        t_load = time.perf_counter()
        if step == 3:
            break
    timed = steps[1:]  # the first step pays one-off costs
    out["finetune_step_s"] = [round(s["step_s"], 2) for s in steps]
    out["finetune_images_per_s"] = 128 * len(timed) / sum(s["step_s"] for s in timed)
    out["data_wait_s_per_step"] = sum(s["load_s"] for s in timed) / len(timed)
    model.eval()
    pixels = data.val_images[0:128]
    with torch.no_grad():
        t = time.perf_counter()
        for i in range(0, 128, 32):
            model.encode_images(pixels[i : i + 32])
        out["frozen_forward_images_per_s"] = 128 / (time.perf_counter() - t)
    full_epoch_rows = 5 * (len(load_corpus("flickr8k", DATA, "train")) - int(cfg["data"]["val_holdout"]))
    out["full_epoch_caption_rows"] = full_epoch_rows
    out["full_epoch_finetune_h_estimate"] = full_epoch_rows / out["finetune_images_per_s"] / 3600
    out["load_average_after"] = [round(x, 2) for x in os.getloadavg()]
    return out


def epoch_times(run_dir: Path) -> list[dict[str, Any]]:
    records = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return [
        {"stage": r["stage"], "epoch": r["epoch"], "epoch_time_s": round(r["epoch_time_s"], 1), "val_rsum": r["val/rsum"]}
        for r in records
        if "epoch_time_s" in r
    ]


def score(run_dir: Path) -> dict[str, Any]:
    from itmatch.evaluation.invariance import invariance_metrics
    from itmatch.evaluation.recall import evaluate_embeddings
    from itmatch.inference import Matcher

    matcher = Matcher.from_run(run_dir, "best")
    dev = load_corpus("flickr8k", DATA, "dev")
    t = time.perf_counter()
    im, tx = matcher.embed_corpus(dev)
    embed_s = time.perf_counter() - t
    metrics = {k: v for k, v in evaluate_embeddings(im, tx, protocol="1k").items() if not isinstance(v, list)}
    metrics.update(invariance_metrics(im, tx, seed=SEED))
    metrics["embed_dev_s"] = embed_s
    return metrics


def run_variant(name: str, threads: int | None = None) -> dict[str, Any]:
    from itmatch.training.trainer import train

    recipe, base, extra = VARIANTS[name]
    if threads:  # after flickr8k_setup's training.threads=1: this one wins
        extra = [*extra, f"training.threads={threads}"]
    run_dir = RUNS / name
    cfg = load_config(recipe, [*OVERRIDES, f"seed={SEED}", *extra], skip_missing_stages=True)  # a variant's own seed wins
    t = time.perf_counter()
    if (run_dir / "summary.json").exists():
        trained = False
    elif (run_dir / "checkpoints" / "last.pt").exists():
        train(None, run_dir, resume=True, progress=True)
        trained = True
    else:
        init = RUNS / base if base else None
        if init is not None and not (init / "summary.json").exists():
            raise SystemExit(f"{name} starts from {base}: run that variant first")
        train(cfg, run_dir, init_from=init, progress=True)
        trained = True
    train_s = time.perf_counter() - t
    summary = json.loads((run_dir / "summary.json").read_text())
    best = summary["best"]
    photo_stages = {s["name"] for s in cfg["stages"] if "backbone" in s["train"]}
    return {
        "description": DESCRIPTIONS[name],
        "recipe": recipe,
        "init_from": str(RUNS / base) if base else None,
        "overrides": [*extra],
        "train_images": int(cfg["data"]["max_train_images"] or 5500),
        "stages": [{k: s[k] for k in ("name", "epochs", "lr", "lr_parts", "train", "rank", "adversarial")} for s in cfg["stages"]],
        "inputs": {s["name"]: "photos" if s["name"] in photo_stages else "cached features" for s in cfg["stages"]},
        "epochs": epoch_times(run_dir),
        "selected": {"stage": best.get("stage"), "epoch": best.get("epoch"), "val_rsum": best.get("val/rsum")},
        "train_wall_s": summary["wall_time_s"],  # of the run, when trained (possibly by an earlier call)
        "trained_by_this_call": trained,
        "this_call_s": train_s,
        "run_dir": str(run_dir),
        "dev_1k": score(run_dir),
    }


def plain_vsepp() -> dict[str, Any] | None:
    run_dir = COMPARE_RUNS / f"vsepp-seed{SEED}"
    if not (run_dir / "summary.json").exists():
        return None
    best = json.loads((run_dir / "summary.json").read_text())["best"]
    return {
        "description": DESCRIPTIONS["vsepp"],
        "recipe": "vsepp",
        "init_from": None,
        "overrides": [],
        "train_images": 5500,
        "note": "trained by benchmarks/flickr8k_compare.py with the same flickr8k_setup overrides and seed",
        "epochs": epoch_times(run_dir),
        "selected": {"stage": best.get("stage"), "epoch": best.get("epoch"), "val_rsum": best.get("val/rsum")},
        "run_dir": str(run_dir),
        "dev_1k": score(run_dir),
    }


def table(variants: dict[str, Any]) -> str:
    cols = ["i2t_r1", "i2t_r5", "i2t_r10", "t2i_r1", "t2i_r5", "t2i_r10", "rsum", "probe_acc"]
    head = "| variant | what | " + " | ".join(cols) + " | s / epoch (stage: s) |"
    lines = [head, "|" + "---|" * (len(cols) + 3)]
    for name in ROW_ORDER:
        if name not in variants:
            continue
        v = variants[name]
        per_stage: dict[str, list[float]] = {}
        for e in v["epochs"]:
            per_stage.setdefault(e["stage"], []).append(e["epoch_time_s"])
        times = ", ".join(f"{s}: {sum(t) / len(t):.0f}" for s, t in per_stage.items())
        cells = " | ".join(f"{v['dev_1k'][c]:.1f}" for c in cols)
        lines.append(f"| {name} | {v['description']} | {cells} | {times} |")
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("command", choices=["measure", "run", "table"])
    ap.add_argument("variants", nargs="*")
    ap.add_argument("--threads", type=int, help="training.threads for the runs (default: flickr8k_setup's 1)")
    args = ap.parse_intermixed_args()
    results = load_results()
    if args.command == "measure":
        results["measure"] = measure()
        print(json.dumps(results["measure"], indent=2))
    elif args.command == "run":
        torch.set_num_threads(1)  # as training.threads in flickr8k_setup; scoring runs here too
        for name in args.variants:
            if name == "vsepp":
                row = plain_vsepp()
                if row is None:
                    raise SystemExit(f"no finished plain vsepp run in {COMPARE_RUNS}")
            elif name not in VARIANTS:
                raise SystemExit(f"unknown variant {name!r}; known: vsepp, {', '.join(VARIANTS)}")
            else:
                row = run_variant(name, args.threads)
            base = VARIANTS[name][1] if name in VARIANTS else None
            threads = f" --threads {args.threads}" if args.threads else ""
            row["command"] = f".venv/bin/python benchmarks/flickr8k_encoders.py run{threads} {name}" + (
                f"  (after: run {base})" if base else ""
            )
            # Re-read before writing: other chains of variants may run (and save) meanwhile.
            results = load_results()
            results.setdefault("variants", {})[name] = row
            save(results)
            print(f"{name}: dev rsum {row['dev_1k']['rsum']:.1f}, probe {row['dev_1k']['probe_acc']:.1f}%", flush=True)
    print(table(results.get("variants", {})))
    if args.command == "measure":
        save(results)


if __name__ == "__main__":
    main()
