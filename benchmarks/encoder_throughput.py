"""Training captions/s of each image-encoder variant at batch 128, next to its matmul limit.

    .venv/bin/python benchmarks/encoder_throughput.py [--threads 1] [--steps 3] [--only NAME ...]

One training step (forward, hardest-negative loss, backward, Adam) of the joint model at batch 128,
d = 1024, fp32, on random inputs of the real shapes, for every way this project trains the image
side: precomputed pooled features + a linear projection (EfficientNet-Lite0 1280-d, Lite2 1408-d),
precomputed Lite0 grid features (7 x 7 x 1280) + per-cell projection + GPO, and the CNN itself
fine-tuned on photos (Lite0 at 224 px, Lite2 at 260 px). The text side is frozen all-MiniLM-L6-v2
(its sentence vectors memoised, as in training: a projection's cost), so each row is the image
side's; the last row fine-tunes MiniLM instead (pooled Lite2 features), the best recipe's stage 3.

The matmul limit of a row: the step's matrix-multiply and convolution FLOPs (counted by
``torch.utils.flop_counter.FlopCounterMode`` over one step) at this machine's measured float32
matmul rate (2048 x 2048, the same thread count): the captions/s the step would reach if every
FLOP ran at matmul speed. Writes benchmarks/results/encoder_throughput.json.
"""

from __future__ import annotations

import argparse
import statistics
import time
from typing import Any

import torch
from torch.utils.flop_counter import FlopCounterMode
from train_throughput import matmul_gflops

from itmatch.models import build_model
from itmatch.training.schedule import parse_stage
from itmatch.training.step import StepContext, train_step
from itmatch.training.trainer import make_optimizers, set_trainable

from _common import write_result

B, D = 128, 1024
# name: (model config, input kind, input shape per image, parts trained, what it is)
VARIANTS: dict[str, tuple[dict[str, Any], str, tuple[int, ...], list[str], str]] = {
    "pooled_lite0": ({}, "features", (1280,), ["image", "text"], "Lite0 pooled features (1280) + linear"),
    "pooled_lite2": ({}, "features", (1408,), ["image", "text"], "Lite2 pooled features (1408) + linear"),
    "grid_gpo_lite0": ({"image_pool": "gpo"}, "features", (49, 1280), ["image", "text"],
                       "Lite0 grid features (7 x 7 x 1280) + per-cell linear + MLP + GPO"),
    "finetune_lite0": ({"backbone": "efficientnet_lite0"}, "photos", (3, 224, 224), ["image", "backbone", "text"],
                       "EfficientNet-Lite0 fine-tuned on 224 px photos"),
    "finetune_lite2": ({"backbone": "efficientnet_lite2"}, "photos", (3, 260, 260), ["image", "backbone", "text"],
                       "EfficientNet-Lite2 fine-tuned on 260 px photos"),
    "pooled_lite2_minilm_ft": ({}, "features", (1408,), ["image", "text", "text_backbone"],
                               "Lite2 pooled features + linear, MiniLM fine-tuned (the best recipe's stage 3)"),
}  # fmt: skip


def make_batch(kind: str, shape: tuple[int, ...], captions: dict[str, torch.Tensor], gen: torch.Generator) -> dict[str, Any]:
    images = torch.randn(B, *shape, generator=gen)
    if kind == "photos":
        images = images.contiguous(memory_format=torch.channels_last)
    return {"images": images, "text": captions, "image_ids": torch.arange(B)}


def fake_captions(gen: torch.Generator) -> dict[str, torch.Tensor]:
    """128 word-piece sequences of Flickr8k-like lengths (8-24 pieces, mean ~15), padded at the end."""
    lengths = torch.randint(8, 25, (B,), generator=gen)
    ids = torch.randint(1000, 20000, (B, int(lengths.max())), generator=gen)
    mask = (torch.arange(ids.shape[1]).unsqueeze(0) < lengths.unsqueeze(1)).long()
    return {"input_ids": ids * mask, "attention_mask": mask}


def measure(name: str, steps: int, gflops: float) -> dict[str, Any]:
    cfg, kind, shape, train, about = VARIANTS[name]
    torch.manual_seed(0)
    feature_dim = shape[-1] if kind == "features" else None
    model = build_model({"embed_dim": D, "text_encoder": "minilm", **cfg}, vocab_size=1, feature_dim=feature_dim)
    stage = parse_stage({"name": "s", "epochs": 1, "lr": 2e-4, "train": train, "rank": "max_violation"}, "bench")
    set_trainable(model, stage)
    model.train()
    if model.image_encoder.backbone is not None:
        model.image_encoder.backbone.to(memory_format=torch.channels_last)
    opts = make_optimizers(model, stage, 0)
    ctx = StepContext(margin=0.2, grad_clip=2.0)
    gen = torch.Generator().manual_seed(0)
    captions = fake_captions(gen)  # the same captions every step: a frozen MiniLM's memo serves them
    batches = [make_batch(kind, shape, captions, gen) for _ in range(steps + 1)]
    train_step(model, batches[0], stage, opts, ctx)  # warm-up (and the memo's one transformer pass)
    times = []
    for batch in batches[1:]:
        start = time.perf_counter()
        train_step(model, batch, stage, opts, ctx)
        times.append(time.perf_counter() - start)
    with FlopCounterMode(display=False) as counter:
        train_step(model, batches[-1], stage, opts, ctx)
    flops = counter.get_total_flops()
    step = statistics.median(times)
    return {
        "about": about,
        "trains": train,
        "median_step_s": round(step, 4),
        "captions_per_s": round(B / step, 1),
        "matmul_gflop_per_step": round(flops / 1e9, 2),
        "matmul_limit_captions_per_s": round(B / (flops / (gflops * 1e9)), 1),
        "fraction_of_limit": round((flops / step) / (gflops * 1e9), 3),
        "steps_timed": len(times),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--steps", type=int, default=3, help="timed steps per variant (after one warm-up)")
    ap.add_argument("--only", nargs="*", choices=sorted(VARIANTS), help="measure these variants only")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    gflops = matmul_gflops(torch.device("cpu"))
    rows = {}
    for name in args.only or VARIANTS:
        rows[name] = measure(name, args.steps, gflops)
        print(name, rows[name], flush=True)
    write_result("encoder_throughput", {
        "batch_size": B, "embed_dim": D, "threads": args.threads, "precision": "fp32",
        "matmul_gflops_float32_2048": round(gflops, 1), "variants": rows,
    })  # fmt: skip


if __name__ == "__main__":
    main()
