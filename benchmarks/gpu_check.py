"""The GPU check of issue 12, in one run (driven by ``benchmarks/gpu_check.sh``; < 8 minutes on one GPU).

Writes one JSON (default ``benchmarks/results/gpu_check.json``) with:

1. ``cuda_tests``: the test suite's ``cuda``-marked tests (fp16/bf16/fp32 steps, accumulation,
   exact resume with the CUDA RNG and scaler, no host sync in a step, fp32 GPU == CPU loss);
2. ``distributed``: a 2-process ``torchrun`` training run on the one GPU with nccl, and when the
   device refuses two ranks (NCCL rejects two ranks on one GPU) a 1-process run instead;
3. ``throughput``: captions/s and peak GPU memory of the GRU model (the recipe default:
   d = 1024, 300-d words, 1280-d features) at batch 128 for fp32, bf16 and fp16;
4. ``finetune``: photo fine-tuning (EfficientNet-Lite0 trained, 224 px, random crops) photos/s
   through the trainer with DataLoader workers;
5. ``loss_equality``: the fp32 loss of one batch on the GPU and on the CPU, equal to 1e-4.

Without a CUDA device it runs what the CPU can (the tests skip, the distributed run uses 2
gloo processes on the CPU, the loss is computed on the CPU only, the fine-tuning path runs as a
tiny smoke run) and the JSON says ``"gpu": null`` and ``"complete": false``: such a file is not a
GPU result. ``--out`` chooses the file (the .sh passes it on).
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import xml.etree.ElementTree as ET
from pathlib import Path
from typing import Any

import numpy as np
import torch

from _common import REPO_ROOT, command_line, git_state, machine_info

PY = sys.executable
TAIL = 3000  # characters of a failed command's output kept in the JSON


def tail(text: str) -> str:
    return text[-TAIL:]


def run(cmd: list[str], timeout: float, env: dict[str, str] | None = None) -> dict[str, Any]:
    start = time.perf_counter()
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=env, cwd=REPO_ROOT)
        rc, output = proc.returncode, proc.stdout + proc.stderr
    except subprocess.TimeoutExpired as exc:
        rc = "timeout"
        output = (exc.stdout or b"").decode(errors="replace") if isinstance(exc.stdout, bytes) else (exc.stdout or "")
    return {"cmd": " ".join(cmd), "rc": rc, "seconds": round(time.perf_counter() - start, 1), "output_tail": tail(output)}


def child_env() -> dict[str, str]:
    src = str(REPO_ROOT / "src")
    path = os.environ.get("PYTHONPATH")
    return dict(os.environ, PYTHONPATH=src + (os.pathsep + path if path else ""), OMP_NUM_THREADS="1")


# ------------------------------------------------------------------------------------------
# 1. cuda-marked tests


def cuda_tests(work: Path, timeout: float) -> dict[str, Any]:
    xml = work / "cuda_tests.xml"
    result = run([PY, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-m", "cuda", "tests", f"--junitxml={xml}"],
                 timeout, child_env())  # fmt: skip
    counts: dict[str, Any] = {"passed": 0, "failed": 0, "errors": 0, "skipped": 0, "failures": []}
    if xml.exists():
        for case in ET.parse(xml).getroot().iter("testcase"):
            name = f"{case.get('classname')}::{case.get('name')}"
            if case.find("failure") is not None:
                counts["failed"] += 1
                counts["failures"].append(name)
            elif case.find("error") is not None:
                counts["errors"] += 1
                counts["failures"].append(name)
            elif case.find("skipped") is not None:
                counts["skipped"] += 1
            else:
                counts["passed"] += 1
    # without a GPU every cuda test skips: nothing was checked (None), which is not a pass
    ok = (result["rc"] == 0 and counts["passed"] > 0) if torch.cuda.is_available() else None
    if result["rc"] == 0:
        result["output_tail"] = result["output_tail"][-400:]
    return {**counts, **result, "ok": ok}


# ------------------------------------------------------------------------------------------
# 2. torchrun


def write_precomp(folder: Path, n_train: int, n_dev: int, dim: int = 32, seed: int = 0) -> Path:
    """A learnable precomp data set (as the tests' ``write_precomp``)."""
    rng = np.random.default_rng(seed)
    words = [f"w{i}" for i in range(40)]
    vectors = rng.normal(size=(len(words), dim))
    folder.mkdir(parents=True, exist_ok=True)
    for split, n in (("train", n_train), ("dev", n_dev)):
        feats, lines = [], []
        for _ in range(n):
            concepts = rng.choice(len(words), size=3, replace=False)
            feats.append(vectors[concepts].sum(0) + 0.3 * rng.normal(size=dim))
            lines += [" ".join(["a", "photo", "of"] + [words[c] for c in rng.permutation(concepts)]) for _ in range(5)]
        np.save(folder / f"{split}_ims.npy", np.asarray(feats, dtype=np.float32))
        (folder / f"{split}_caps.txt").write_text("\n".join(lines) + "\n")
    return folder


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def distributed(work: Path, device: str, timeout: float) -> dict[str, Any]:
    data = write_precomp(work / "precomp", 512, 50)
    sets = ["data.format=precomp", f"data.path={data}", "data.val_split=dev", "data.vocab_min_count=1",
            "model.embed_dim=64", "model.word_dim=32", "training.batch_size=64", "training.log_every=4",
            "stages.0.epochs=1", "stages.1.epochs=1", f"training.device={device}"]  # fmt: skip
    torchrun = str(Path(PY).parent / "torchrun")
    if not Path(torchrun).exists():
        torchrun_cmd = [PY, "-m", "torch.distributed.run"]
    else:
        torchrun_cmd = [torchrun]
    attempts = []
    for nproc in (2, 1):
        out = work / f"run_{nproc}proc"
        cmd = [*torchrun_cmd, "--nproc_per_node", str(nproc), "--master_port", str(free_port()), "-m", "itmatch",
               "train", "--config", "vsepp", "--out", str(out), "--quiet", *sum((["--set", s] for s in sets), [])]  # fmt: skip
        attempt = run(cmd, timeout, child_env())
        attempt["processes"] = nproc
        attempt["backend"] = ("nccl" if device == "cuda" else "gloo") if nproc > 1 else None
        summary = out / "summary.json"
        if attempt["rc"] == 0 and summary.exists():
            s = json.loads(summary.read_text())
            attempt.update(world_size=s["world_size"], global_steps=s["global_steps"], wall_time_s=round(s["wall_time_s"], 2),
                           best_rsum=(s.get("best") or {}).get("val/rsum"))  # fmt: skip
            state = torch.load(out / "checkpoints" / "last.pt", weights_only=True)
            attempt["rng_states_saved"] = len(state["rng"]["cpu"])
            attempt["cuda_rng_saved"] = all(x is not None for x in state["rng"]["cuda"])
            attempt["output_tail"] = attempt["output_tail"][-400:]
        attempts.append(attempt)
        if attempt["rc"] == 0:
            break  # 2 processes worked: no fallback needed
    ok = any(a["rc"] == 0 for a in attempts)
    return {"ok": ok, "processes_that_ran": next((a["processes"] for a in attempts if a["rc"] == 0), None), "attempts": attempts}


# ------------------------------------------------------------------------------------------
# 3. throughput of the GRU model


def gru_batch(g: torch.Generator, b: int, vocab: int, feat_dim: int, device: torch.device) -> dict[str, Any]:
    lengths = torch.randint(8, 21, (b,), generator=g)  # mean 14: Flickr8k-like captions
    tokens = torch.randint(4, vocab, (b, int(lengths.max())), generator=g)
    return {"images": torch.randn(b, feat_dim, generator=g).to(device), "text": {"tokens": tokens.to(device), "lengths": lengths},
            "image_ids": torch.arange(b, device=device)}  # fmt: skip


def throughput(device: torch.device, steps: int, batch_size: int = 128) -> list[dict[str, Any]]:
    from itmatch.models import build_model
    from itmatch.training.schedule import parse_stage
    from itmatch.training.step import StepContext, to_floats, train_step
    from itmatch.training.trainer import make_optimizers

    vocab, feat_dim = 2600, 1280
    stage = parse_stage({"name": "hardest", "epochs": 1, "lr": 2e-4, "train": ["image", "text"], "rank": "max_violation"}, "bench")
    out = []
    for precision in ("fp32", "bf16", "fp16"):
        torch.manual_seed(0)
        model = build_model({"embed_dim": 1024, "word_dim": 300}, vocab_size=vocab, feature_dim=feat_dim).to(device)
        optimizers = make_optimizers(model, stage, 0)
        scaler = torch.amp.GradScaler(device.type) if precision == "fp16" else None
        ctx = StepContext(device_type=device.type, precision=precision, scaler=scaler)
        g = torch.Generator().manual_seed(0)
        batches = [gru_batch(g, batch_size, vocab, feat_dim, device) for _ in range(steps + 3)]
        for batch in batches[:3]:
            train_step(model, batch, stage, optimizers, ctx)
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
        times = []
        for batch in batches[3:]:
            t = time.perf_counter()
            values = train_step(model, batch, stage, optimizers, ctx)
            torch.cuda.synchronize(device)
            times.append(time.perf_counter() - t)
        step = statistics.median(times)
        out.append({
            "precision": precision, "batch_size": batch_size, "steps_measured": steps,
            "median_step_ms": round(1000 * step, 3), "captions_per_s": round(batch_size / step, 1),
            "peak_gpu_memory_mib": round(torch.cuda.max_memory_allocated(device) / 2**20, 1),
            "last_loss": to_floats(values)["loss"], "fp16_scale": scaler.get_scale() if scaler else None,
        })  # fmt: skip
        del model, optimizers, batches
        torch.cuda.empty_cache()
    return out


# ------------------------------------------------------------------------------------------
# 4. photo fine-tuning through the trainer


def write_photos(folder: Path, n_train: int, n_dev: int, size: int, seed: int = 0) -> Path:
    """A flickr8k-format folder of JPEG photos (coloured noise; captions name the colour)."""
    from PIL import Image

    rng = np.random.default_rng(seed)
    colours = {"red": (220, 30, 30), "green": (30, 200, 40), "blue": (30, 40, 220), "yellow": (230, 220, 30)}
    names_c = list(colours)
    (folder / "images").mkdir(parents=True, exist_ok=True)
    lines, names = ["image,caption"], []
    for i in range(n_train + n_dev):
        colour = names_c[i % 4]
        pixels = np.clip(np.array(colours[colour]) + rng.normal(0, 40, (size, size * 4 // 3, 3)), 0, 255).astype(np.uint8)
        name = f"{1000 + i}_x.jpg"
        Image.fromarray(pixels).save(folder / "images" / name, quality=90)
        names.append(name)
        lines += [f"{name},a {colour} picture number {c} ." for c in range(5)]
    (folder / "captions.txt").write_text("\n".join(lines) + "\n")
    (folder / "train_images.txt").write_text("\n".join(names[:n_train]) + "\n")
    (folder / "dev_images.txt").write_text("\n".join(names[n_train:]) + "\n")
    return folder


def finetune(work: Path, device: str, smoke: bool, workers: int) -> dict[str, Any]:
    from itmatch.training.config import load_config
    from itmatch.training.trainer import train

    n_train, n_dev, size, image_size, batch = (8, 4, 40, 32, 8) if smoke else (256, 32, 300, 224, 128)
    data = write_photos(work / "photos", n_train, n_dev, size)
    recipe = work / "finetune.yaml"
    recipe.write_text(json.dumps({"name": "gpu_check_finetune", "model": {"backbone": "efficientnet_lite0"}, "stages": [
        {"name": "finetune", "epochs": 2, "lr": 2e-5, "lr_parts": {"backbone": 1e-5},
         "train": ["image", "backbone", "text"], "rank": "max_violation"}]}))  # fmt: skip
    precision = "bf16" if device == "cuda" else "fp32"
    cfg = load_config(recipe, [
        "data.format=flickr8k", f"data.path={data}", "data.val_split=dev", "data.vocab_min_count=1",
        f"data.image_size={image_size}", f"data.feature_cache={work / 'cache'}", f"training.batch_size={batch}",
        f"training.num_workers={workers}", f"training.device={device}", f"training.precision={precision}",
        "training.log_every=1000", "model.embed_dim=256", "model.word_dim=64",
    ])  # fmt: skip
    run_dir = work / "finetune_run"
    start = time.perf_counter()
    train(cfg, run_dir)
    wall = time.perf_counter() - start
    recs = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    epochs = [r["epoch_time_s"] for r in recs if "epoch_time_s" in r]
    photos = 5 * n_train  # one augmented crop per caption row per epoch
    return {
        "smoke_run_not_a_measurement": smoke, "device": device, "precision": precision, "image_size": image_size,
        "batch_size": batch, "num_workers": workers, "photos_per_epoch": photos,
        "epoch_time_s": [round(t, 2) for t in epochs],
        # the second epoch: the first one includes worker start-up and cuDNN's algorithm search
        "photos_per_s": round(photos / epochs[-1], 1), "wall_s": round(wall, 1),
        "peak_gpu_memory_mib": round(torch.cuda.max_memory_allocated() / 2**20, 1) if device == "cuda" else None,
    }  # fmt: skip


# ------------------------------------------------------------------------------------------
# 5. fp32 GPU == CPU


def loss_equality(gpu: bool) -> dict[str, Any]:
    from itmatch.models import build_model
    from itmatch.training.schedule import parse_stage
    from itmatch.training.step import StepContext, to_floats, train_step
    from itmatch.training.trainer import make_optimizers, set_trainable

    torch.backends.cuda.matmul.allow_tf32 = False  # TF32 would round matmul inputs to 10 bits
    torch.backends.cudnn.allow_tf32 = False
    stage = parse_stage({"name": "s", "epochs": 1, "lr": 0.0, "train": ["image", "text", "classifier"],
                         "rank": "max_violation", "adversarial": {"mode": "grl", "lambda": 0.5}}, "check")  # fmt: skip
    losses = {}
    for name in ("cpu", "cuda") if gpu else ("cpu",):
        device = torch.device(name)
        torch.manual_seed(0)
        model = build_model({"embed_dim": 1024, "word_dim": 300}, vocab_size=2600, feature_dim=1280).to(device)
        set_trainable(model, stage)
        batch = gru_batch(torch.Generator().manual_seed(1), 128, 2600, 1280, device)
        values = train_step(model, batch, stage, make_optimizers(model, stage, 0), StepContext(device_type=name, grad_clip=0.0), 0.5)
        losses[name] = to_floats(values)
    out: dict[str, Any] = {"losses": losses, "tolerance_rel": 1e-4}
    if gpu:
        rel = {k: abs(losses["cuda"][k] - losses["cpu"][k]) / max(abs(losses["cpu"][k]), 1e-12) for k in ("loss", "rank_loss", "d_loss")}
        out.update(relative_difference=rel, ok=all(v <= 1e-4 for v in rel.values()))
    else:
        out.update(ok=None, note="no CUDA device: the CPU loss only")
    return out


# ------------------------------------------------------------------------------------------


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default=str(REPO_ROOT / "benchmarks" / "results" / "gpu_check.json"))
    ap.add_argument("--steps", type=int, default=30, help="timed steps per precision")
    ap.add_argument("--skip-tests", action="store_true", help="skip the cuda-marked tests (they run in a subprocess)")
    ap.add_argument("--skip-distributed", action="store_true")
    ap.add_argument("--skip-finetune", action="store_true")
    args = ap.parse_args()
    start = time.perf_counter()
    gpu = torch.cuda.is_available()
    device = "cuda" if gpu else "cpu"
    report: dict[str, Any] = {
        "name": "gpu_check",
        "date": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "command": command_line(),
        "git": git_state(),
        "machine": machine_info(),
        "device": device,
        "gpu": torch.cuda.get_device_name(0) if gpu else None,
        "gpu_absent": not gpu,
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
    }
    sections: dict[str, Any] = {}
    out = Path(args.out)

    def save() -> None:
        report["sections"] = sections
        report["wall_s"] = round(time.perf_counter() - start, 1)
        done = [s.get("ok") for s in sections.values() if isinstance(s, dict)]
        report["complete"] = gpu and len(sections) == 5 and all(d is True for d in done)
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(report, indent=2) + "\n")

    def section(name: str, fn, *a) -> None:
        t = time.perf_counter()
        try:
            result = fn(*a)
        except Exception as exc:  # one failed section must not lose the others
            result = {"ok": False, "error": f"{type(exc).__name__}: {exc}"}
        if isinstance(result, dict):
            result.setdefault("seconds", round(time.perf_counter() - t, 1))
        sections[name] = result
        print(f"[gpu_check] {name}: {json.dumps(result)[:300]}", file=sys.stderr, flush=True)
        save()

    with tempfile.TemporaryDirectory(prefix="itmatch-gpu-check-") as tmp:
        work = Path(tmp)
        if not args.skip_tests:
            section("cuda_tests", cuda_tests, work, 200)
        if not args.skip_distributed:
            section("distributed", distributed, work, device, 100)
        if gpu:
            section("throughput", lambda: {"ok": True, "model": "gru d1024 w300 f1280", "results": throughput(torch.device("cuda"), args.steps)})
        else:
            sections["throughput"] = {"ok": None, "skipped": "no CUDA device"}
        if not args.skip_finetune:
            workers = max(1, min(8, (os.cpu_count() or 2) - 2))
            section("finetune", lambda: {"ok": True, **finetune(work, device, not gpu, workers if gpu else 1)})
        section("loss_equality", loss_equality, gpu)
    save()
    print(f"[gpu_check] wrote {out} (device {device}, complete {report['complete']}, {report['wall_s']} s)", file=sys.stderr)


if __name__ == "__main__":
    main()
