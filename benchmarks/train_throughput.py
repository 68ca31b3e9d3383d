"""Training throughput at batch 128 on precomputed features, and the GRU's achieved GFLOP/s
next to this machine's measured float32 matmul GFLOP/s (the practical limit).

    .venv/bin/python benchmarks/train_throughput.py [--steps 20] [--threads 1] [--device cpu] [--precision fp32]

Writes benchmarks/results/train_throughput[_DEVICE][_PRECISION][_Nthreads].json (plain name: cpu, fp32, 1 thread). Caption lengths follow Flickr8k's (mean ~13.7
tokens with <start>/<end>); the model is the recipe default (d = 1024, 300-d words, one GRU layer,
1280-d EfficientNet-Lite0 features), with the hardest-negative loss.
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from itmatch.models import build_model
from itmatch.training.schedule import parse_stage
from itmatch.training.step import StepContext, train_step
from itmatch.training.trainer import make_optimizers

from _common import write_result


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def matmul_gflops(device: torch.device, n: int = 2048, reps: int = 10) -> float:
    a, b = torch.randn(n, n, device=device), torch.randn(n, n, device=device)
    for _ in range(3):
        a @ b
    times = []
    for _ in range(reps):
        sync(device)
        t = time.perf_counter()
        a @ b
        sync(device)
        times.append(time.perf_counter() - t)
    return 2 * n**3 / statistics.median(times) / 1e9


def gru_flops(tokens: int, word_dim: int, hidden: int) -> float:
    """Forward + backward multiply-add FLOPs of a one-layer GRU over ``tokens`` time steps x batch:
    forward 2 * 3 * (I*H + H*H) per token; backward ~2x forward (input and weight gradients)."""
    forward = 2 * 3 * (word_dim * hidden + hidden * hidden) * tokens
    return 3 * forward


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--batch-size", type=int, default=128)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--precision", default="fp32", choices=["fp32", "bf16", "fp16"])
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--tag", default="", help="suffix of the result name, e.g. the CPU kind (avx2)")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    vocab_size, feat_dim, word_dim, d, b = 2600, 1280, 300, 1024, args.batch_size
    device = torch.device(args.device)
    model = build_model({"embed_dim": d, "word_dim": word_dim}, vocab_size=vocab_size, feature_dim=feat_dim).to(device)
    stage = parse_stage({"name": "hardest", "epochs": 1, "lr": 2e-4, "train": ["image", "text"], "rank": "max_violation"}, "bench")
    opts = make_optimizers(model, stage, 0)
    ctx = StepContext(
        margin=0.2, grad_clip=2.0, precision=args.precision, device_type=device.type,
        scaler=torch.amp.GradScaler("cuda") if args.precision == "fp16" else None,
    )  # fmt: skip
    g = torch.Generator().manual_seed(0)

    def batch():
        lengths = torch.randint(8, 21, (b,), generator=g)  # mean 14: Flickr8k-like
        tokens = torch.randint(4, vocab_size, (b, int(lengths.max())), generator=g)
        return {"images": torch.randn(b, feat_dim, generator=g).to(device),
                "text": {"tokens": tokens.to(device), "lengths": lengths}, "image_ids": torch.arange(b, device=device)}  # fmt: skip

    batches = [batch() for _ in range(args.steps + 3)]
    for bt in batches[:3]:
        train_step(model, bt, stage, opts, ctx)
    step_times, gru_times, token_counts = [], [], []
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    for bt in batches[3:]:
        sync(device)
        t = time.perf_counter()
        train_step(model, bt, stage, opts, ctx)
        sync(device)
        step_times.append(time.perf_counter() - t)
        token_counts.append(int(bt["text"]["lengths"].sum()))
        # the GRU alone, forward + backward, on the same batch
        enc = model.text_encoder
        sync(device)
        t = time.perf_counter()
        with ctx.autocast():
            out = enc(**bt["text"])
        out.float().sum().backward()
        sync(device)
        gru_times.append(time.perf_counter() - t)
        model.zero_grad(set_to_none=True)
    step = statistics.median(step_times)
    tokens = statistics.median(token_counts)
    gru_gflops = gru_flops(tokens, word_dim, d) / statistics.median(gru_times) / 1e9
    peak = matmul_gflops(device)
    suffix = ("" if device.type == "cpu" else f"_{device.type}") + ("" if args.precision == "fp32" else f"_{args.precision}")
    suffix += "" if args.threads == 1 or device.type != "cpu" else f"_{args.threads}threads"
    suffix += f"_{args.tag}" if args.tag else ""
    write_result(
        "train_throughput" + suffix,
        {
            "batch_size": b,
            "threads": args.threads,
            "device": str(device),
            "device_name": torch.cuda.get_device_name(device) if device.type == "cuda" else None,
            "peak_gpu_memory_mib": torch.cuda.max_memory_allocated(device) / 2**20 if device.type == "cuda" else None,
            "precision": args.precision,
            "model": {"embed_dim": d, "word_dim": word_dim, "feature_dim": feat_dim, "vocab_size": vocab_size},
            "median_step_s": step,
            "captions_per_s": b / step,
            "text_encoder_fwd_bwd_s": statistics.median(gru_times),
            "gru_achieved_gflops": gru_gflops,
            "matmul_gflops_float32_2048": peak,
            "gru_fraction_of_matmul_peak": gru_gflops / peak,
            "steps_measured": args.steps,
        },
    )


if __name__ == "__main__":
    main()
