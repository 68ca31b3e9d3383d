"""What activation checkpointing (``training.backbone_checkpointing``) saves and costs a CNN
fine-tuning step: EfficientNet-Lite2 forward + backward on photos of 380 px (the best recipe's
photo size), train mode, channels-last, freed memory kept (``training.retain_memory``), one thread.

    .venv/bin/python benchmarks/backbone_checkpointing.py [--steps 2] [--batches 16 32] [--checkpointed 64 128] [--precision bf16]

Every case runs in a child process of its own (peak memory is per process): batch sizes
``--batches`` without and with checkpointing, then ``--checkpointed`` with it only (without it the
activations of 64 or 128 photos cannot fit a 24 GB machine: the batch-32 peak is 11.8 GB); a case
the kernel kills for memory is recorded as failed. Per case:
seconds per step (median of the timed steps, after one warm-up step), CPU seconds and page faults
per step, and the child's peak resident memory; with the epoch time that step implies for the best
recipe's 27,500 caption rows at batch 128. Writes benchmarks/results/backbone_checkpointing.json
(with the load average: on a busy machine the seconds grow, the memory does not);
``--precision bf16`` runs every step under bf16 autocast (what the benchmarks train in where the
CPU computes bf16 fast) and writes backbone_checkpointing_bf16.json.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys

from _common import load_average, time_steps, write_result

BACKBONE, SIZE = "efficientnet_lite2", 380
EPOCH_ROWS = 27_500  # the best recipe's training caption rows (5,500 photos x 5)


def child(batch: int, checkpointed: bool, steps: int, precision: str) -> dict[str, float | bool]:
    import torch

    from itmatch.features.backbones import checkpoint_activations, get_backbone
    from itmatch.memory import retain_freed_memory

    torch.set_num_threads(1)
    retained = retain_freed_memory()
    net = get_backbone(BACKBONE).train().to(memory_format=torch.channels_last)
    if checkpointed:
        checkpoint_activations(net)
    x = torch.randn(batch, 3, SIZE, SIZE).to(memory_format=torch.channels_last)

    def step() -> None:
        net.zero_grad(set_to_none=True)
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=precision == "bf16"):
            y = net(x)
        y.float().sum().backward()

    return {"retain_applied": retained, **time_steps(step, steps)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--steps", type=int, default=2, help="timed steps per case (after one warm-up)")
    ap.add_argument("--batches", type=int, nargs="*", default=[16, 32], help="batch sizes measured both ways")
    ap.add_argument("--checkpointed", type=int, nargs="*", default=[64, 128], help="batch sizes measured with checkpointing only")
    ap.add_argument("--precision", choices=["fp32", "bf16"], default="fp32", help="bf16: every step under bf16 autocast")
    ap.add_argument("--child", nargs=2, type=int, metavar=("BATCH", "CHECKPOINTED"), help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        print(json.dumps(child(args.child[0], bool(args.child[1]), args.steps, args.precision)))
        return
    cases = [(b, c) for b in args.batches for c in (False, True)] + [(b, True) for b in args.checkpointed]
    out: dict = {"backbone": BACKBONE, "image_size": SIZE, "precision": args.precision, "threads": 1, "steps": args.steps, "load_before": load_average(), "cases": {}}
    for batch, checkpointed in cases:
        name = f"b{batch}_{'checkpointed' if checkpointed else 'plain'}"
        cmd = [sys.executable, __file__, "--child", str(batch), str(int(checkpointed)), "--steps", str(args.steps), "--precision", args.precision]
        run = subprocess.run(cmd, capture_output=True, text=True)
        if run.returncode != 0:  # -9: killed, on this machine by the kernel when memory ran out
            result = {"failed": f"exit {run.returncode}" + (" (SIGKILL: out of memory)" if run.returncode == -9 else ""),
                      "stderr_tail": run.stderr[-500:]}  # fmt: skip
        else:
            result = json.loads(run.stdout.strip().splitlines()[-1])
            result["photos_per_s"] = round(batch / result["step_s"], 2)
            result["epoch_h_at_this_rate"] = round(EPOCH_ROWS / result["photos_per_s"] / 3600, 2)
        out["cases"][name] = result
        print(name, result, flush=True)
    for batch in args.batches:
        plain, ckpt = out["cases"][f"b{batch}_plain"], out["cases"][f"b{batch}_checkpointed"]
        if "failed" not in plain and "failed" not in ckpt:
            ckpt["time_ratio"] = round(ckpt["step_s"] / plain["step_s"], 2)
            ckpt["cpu_time_ratio"] = round(ckpt["user_s_per_step"] / plain["user_s_per_step"], 2)
            ckpt["peak_ratio"] = round(ckpt["peak_rss_gb"] / plain["peak_rss_gb"], 2)
    out["load_after"] = load_average()
    print(write_result("backbone_checkpointing" + ("_bf16" if args.precision == "bf16" else ""), out))


if __name__ == "__main__":
    main()
