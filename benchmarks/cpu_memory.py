"""What glibc's return of big freed blocks to the kernel costs a CPU step, and what
``itmatch.memory.retain_freed_memory`` (the trainer's ``training.retain_memory``) saves.

    .venv/bin/python benchmarks/cpu_memory.py [--steps 4]

Every case runs in child processes of its own, one torch thread: once with malloc's defaults and
once after ``retain_freed_memory()`` (process-wide, it cannot be undone in the same process):

- ``lite0_224_train_b128``: EfficientNet-Lite0 forward + backward on 128 photos of 224 px, train
  mode, channels-last: the CNN part of a photo fine-tuning step at the recipes' batch size.
- ``lite2_380_embed_b32``: EfficientNet-Lite2 forward on 32 photos of 380 px without gradients:
  what ``itmatch index`` and ``evaluate`` run per batch for the shipped model.
- ``minilm_train_b128``: MiniLM forward + backward on 128 captions of 16 word pieces: the best
  recipe's fine-tuning step.

Per case and mode: seconds per step (median of the timed steps, after one warm-up step), user and
system CPU seconds and minor page faults per timed step, and the child's peak resident memory.
Writes benchmarks/results/cpu_memory.json (the load average is recorded: on a busy machine the
seconds grow, the page faults do not).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from collections.abc import Callable

from _common import time_steps, write_result

CASES = ("lite0_224_train_b128", "lite2_380_embed_b32", "minilm_train_b128")
MODES = ("default", "retained")


def _step(case: str) -> Callable[[], None]:
    import torch

    from itmatch.features.backbones import get_backbone
    from itmatch.models.minilm import load_minilm

    if case == "lite0_224_train_b128":
        net = get_backbone("efficientnet_lite0").train().to(memory_format=torch.channels_last)
        x = torch.randn(128, 3, 224, 224).to(memory_format=torch.channels_last)

        def train_cnn() -> None:
            net.zero_grad(set_to_none=True)
            net(x).sum().backward()

        return train_cnn
    if case == "lite2_380_embed_b32":
        net = get_backbone("efficientnet_lite2").eval().to(memory_format=torch.channels_last)
        x = torch.randn(32, 3, 380, 380).to(memory_format=torch.channels_last)

        def embed() -> None:
            with torch.no_grad():
                net(x)

        return embed
    bert = load_minilm().train()
    ids = torch.randint(1000, 20000, (128, 16))
    mask = torch.ones_like(ids)

    def train_text() -> None:
        bert.zero_grad(set_to_none=True)
        bert(input_ids=ids, attention_mask=mask).last_hidden_state.sum().backward()

    return train_text


def child(case: str, mode: str, steps: int) -> dict[str, float | bool]:
    import torch

    torch.set_num_threads(1)
    applied = False
    if mode == "retained":
        from itmatch.memory import retain_freed_memory

        applied = retain_freed_memory()
    return {"retain_applied": applied, **time_steps(_step(case), steps)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--steps", type=int, default=4, help="timed steps per case and mode (after one warm-up)")
    ap.add_argument("--child", nargs=2, metavar=("CASE", "MODE"), help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        print(json.dumps(child(*args.child, args.steps)))
        return
    out: dict = {"threads": 1, "steps": args.steps, "cases": {}}
    for case in CASES:
        out["cases"][case] = {}
        for mode in MODES:
            cmd = [sys.executable, __file__, "--child", case, mode, "--steps", str(args.steps)]
            result = subprocess.run(cmd, capture_output=True, text=True, check=True)
            out["cases"][case][mode] = json.loads(result.stdout.strip().splitlines()[-1])
        d, r = out["cases"][case]["default"], out["cases"][case]["retained"]
        out["cases"][case]["speedup"] = round(d["step_s"] / r["step_s"], 2)
        print(case, out["cases"][case], flush=True)
    print(write_result("cpu_memory", out))


if __name__ == "__main__":
    main()
