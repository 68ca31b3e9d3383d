"""The training loop: runs a recipe's stages in order and writes one run folder.

Run folder::

    config.yaml        the resolved recipe
    vocab.json         vocabulary (built from the training split only)
    metrics.jsonl      one JSON record per log step and per validation
    checkpoints/last.pt, checkpoints/best.pt   (atomic; best = highest validation rsum)
    summary.json       the best validation record and where it came from

Resume (``resume=True``) continues from ``last.pt`` exactly: stage, epoch, step within the epoch,
model and optimizer states and the per-epoch shuffling (a function of seed, stage and epoch).
"""

from __future__ import annotations

import json
import os
import random
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import yaml

from itmatch.errors import ConfigError, ItmatchError
from itmatch.fileio import exclusive_lock
from itmatch.losses import classifier_accuracy, dann_lambda
from itmatch.models import JointModel, build_model
from itmatch.models.joint import resolve_model_config
from itmatch.models.text_processing import make_text_processor
from itmatch.training.checkpoint import (
    atomic_write_text,
    load_checkpoint,
    remove_stale_temp_files,
    save_checkpoint,
)
from itmatch.training.config import resume_config
from itmatch.training.data import train_val_corpora, training_data
from itmatch.training.distributed import (
    DistInfo,
    barrier,
    init_distributed,
    shutdown_distributed,
)
from itmatch.training.schedule import Stage, parse_stages
from itmatch.training.step import PRECISIONS, StepContext, train_step

Logger = Callable[[dict[str, Any]], None]


def pick_device(name: str = "auto") -> torch.device:
    """``auto`` -> cuda, then mps, then cpu; any other name is used as given."""
    if name != "auto":
        return torch.device(name)
    if torch.cuda.is_available():
        return torch.device("cuda")
    if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
        return torch.device("mps")
    return torch.device("cpu")


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def epoch_seed(seed: int, stage_index: int, epoch: int) -> int:
    """The shuffling seed of one epoch: a pure function, so a resumed run shuffles identically."""
    return (int(seed) * 1_000_003 + stage_index * 10_007 + epoch) % (2**63)


@dataclass
class Progress:
    stage: int = 0
    epoch: int = 0  # within the stage
    step: int = 0  # within the epoch
    global_step: int = 0

    def to_dict(self) -> dict[str, int]:
        return {"stage": self.stage, "epoch": self.epoch, "step": self.step, "global_step": self.global_step}


@dataclass
class Best:
    rsum: float = float("-inf")
    record: dict[str, Any] = field(default_factory=dict)


def set_trainable(model: JointModel, stage: Stage) -> None:
    for part, params in model.parts().items():
        for p in params:
            p.requires_grad_(part in stage.train)


def make_optimizers(model: JointModel, stage: Stage, epoch: int) -> dict[str, torch.optim.Optimizer]:
    """One Adam for the encoder parts and one for the classifier, each with per-part groups."""
    groups: dict[str, list[dict[str, Any]]] = {"encoders": [], "classifier": []}
    for part, params in model.parts().items():
        if part in stage.train and params:
            key = "classifier" if part == "classifier" else "encoders"
            groups[key].append({"params": params, "lr": stage.lr_for(part, epoch), "part": part})
    return {key: torch.optim.Adam(g) for key, g in groups.items() if g}


def set_learning_rates(optimizers: dict[str, torch.optim.Optimizer], stage: Stage, epoch: int) -> None:
    for opt in optimizers.values():
        for group in opt.param_groups:
            group["lr"] = stage.lr_for(group["part"], epoch)


@torch.no_grad()
def embed_split(
    model: JointModel,
    images: torch.Tensor,
    captions: list[Any],
    collate: Callable,
    batch_size: int,
    device: torch.device,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Joint-space embeddings of N images and their 5N captions (on the CPU)."""
    model.eval()
    im = torch.cat([model.encode_images(images[i : i + batch_size].to(device)).cpu() for i in range(0, len(images), batch_size)])
    tx = []
    for i in range(0, len(captions), batch_size):
        text = {k: v.to(device) for k, v in collate(captions[i : i + batch_size]).items()}
        tx.append(model.encode_texts(text).cpu())
    return im, torch.cat(tx)


@torch.no_grad()
def validation_metrics(model: JointModel, im: torch.Tensor, tx: torch.Tensor, seed: int) -> dict[str, float]:
    """Recall (all images of the split), modality-invariance metrics and the classifier's accuracy."""
    from itmatch.evaluation.invariance import invariance_metrics
    from itmatch.evaluation.recall import evaluate_embeddings

    metrics = {k: v for k, v in evaluate_embeddings(im, tx, protocol="all").items() if not isinstance(v, list)}
    metrics.update(invariance_metrics(im, tx, seed=seed))
    device = next(model.classifier.parameters()).device
    # Balanced over the two modalities (there are 5x more captions than images), so a classifier
    # that always answers "text" reads 50%, not 83%.
    metrics["classifier_acc"] = 0.5 * (
        classifier_accuracy(model.classifier(im.to(device)), torch.ones(len(im), device=device))
        + classifier_accuracy(model.classifier(tx.to(device)), torch.zeros(len(tx), device=device))
    )
    return metrics


class MetricsLog:
    """Append-only JSON-lines log; on resume, records past the checkpoint are dropped (so the log
    agrees with the checkpoint and has no duplicates) and a torn last line is cut off."""

    def __init__(self, path: Path, resume_step: int | None = None):
        self.path = path
        if resume_step is not None and path.exists():
            kept = [line for line, record in read_metrics_lines(path) if record.get("global_step", 0) <= resume_step]
            atomic_write_text(path, "".join(line + "\n" for line in kept))
        elif resume_step is None:
            path.write_text("")

    def write(self, record: dict[str, Any]) -> None:
        with self.path.open("a") as f:
            f.write(json.dumps(record, sort_keys=True) + "\n")


def read_metrics_lines(path: Path) -> list[tuple[str, dict[str, Any]]]:
    """(line, record) of every record of a metrics log. Lines that do not parse at the end of the
    file are a torn tail (a crash or a full disk mid-write) and are left out; one in the middle
    is damage that resuming cannot repair, and an error names it."""
    lines = path.read_text(encoding="utf-8", errors="replace").splitlines()
    out: list[tuple[str, dict[str, Any]]] = []
    bad: int | None = None
    for n, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
            if not isinstance(record, dict):
                raise ValueError("not an object")
        except ValueError:
            bad = n if bad is None else bad
            continue
        if bad is not None:
            raise ItmatchError(f"{path}, line {bad}: not a JSON record, and records follow it (the log is damaged)")
        out.append((line, record))
    return out


RUN_LOCK = ".lock"


def train(
    cfg: dict[str, Any] | None,
    run_dir: str | Path,
    *,
    resume: bool = False,
    init_from: str | Path | None = None,
    progress: bool = False,
    log: Logger | None = None,
) -> dict[str, Any]:
    """Train the recipe ``cfg`` (a resolved config, see :func:`itmatch.training.config.load_config`).

    ``init_from``: a run folder or checkpoint whose model weights (and vocabulary) start this run,
    e.g. to run the adversarial stages on a trained baseline. ``log`` receives every metrics
    record (the CLI prints them). Returns the summary (also written to ``summary.json``).

    With ``resume``, ``cfg`` (optional) may change what :func:`resume_config` allows (device,
    threads, evaluation batch size, cadences, epochs of stages not yet finished); any other
    difference from the run's own config is refused, naming the keys.

    Under ``torchrun`` every rank calls this; rank 0 alone writes the run folder and validates.
    The run folder is locked for the whole run: a second writer fails at once, naming the holder.
    """
    run_dir = Path(run_dir)
    if int(os.environ.get("RANK", "0")) != 0:  # torchrun's other ranks never write the folder
        return _train_in(cfg, run_dir, resume, init_from, progress, log)
    with exclusive_lock(run_dir / RUN_LOCK, f"run folder {run_dir} is in use by another itmatch train"):
        # Under the lock no writer is alive: what a killed atomic write left behind is garbage.
        remove_stale_temp_files(run_dir)
        remove_stale_temp_files(run_dir / "checkpoints")
        return _train_in(cfg, run_dir, resume, init_from, progress, log)


def _train_in(
    cfg: dict[str, Any] | None,
    run_dir: Path,
    resume: bool,
    init_from: str | Path | None,
    progress: bool,
    log: Logger | None,
) -> dict[str, Any]:
    ckpt_dir = run_dir / "checkpoints"
    last_path = ckpt_dir / "last.pt"
    state: dict[str, Any] | None = None
    if resume:
        if init_from is not None:
            raise ItmatchError("--init-from does not go with --resume: a resumed run continues from its own last checkpoint")
        state = load_checkpoint(last_path)
        saved_cfg = state["config"]
        cfg = saved_cfg if cfg is None else resume_config(saved_cfg, cfg, state["progress"], str(run_dir))
    elif cfg is None:
        raise ItmatchError("train: a config is required unless resume=True")
    elif last_path.exists():
        raise ItmatchError(f"{run_dir} already holds a run; pass --resume to continue it or choose another --out")
    if not cfg["data"].get("format") or not cfg["data"].get("path"):
        raise ConfigError("data.format and data.path are required to train (pass --format and --data)")
    stages = parse_stages(cfg["stages"])
    tcfg = cfg["training"]
    seed = int(cfg["seed"])
    seed_everything(seed)
    threads = torch.get_num_threads()
    if tcfg.get("threads"):
        torch.set_num_threads(int(tcfg["threads"]))
    info, device = init_distributed(pick_device(tcfg["device"]))
    try:
        return _train(cfg, stages, run_dir, state, info, device, init_from, progress and info.is_main, log)
    finally:
        shutdown_distributed()
        torch.set_num_threads(threads)


def _train(
    cfg: dict[str, Any],
    stages: list[Stage],
    run_dir: Path,
    state: dict[str, Any] | None,
    info: DistInfo,
    device: torch.device,
    init_from: str | Path | None,
    progress: bool,
    log: Logger | None,
) -> dict[str, Any]:
    tcfg = cfg["training"]
    seed = int(cfg["seed"])
    resume = state is not None
    main = info.is_main
    ckpt_dir = run_dir / "checkpoints"
    last_path = ckpt_dir / "last.pt"
    if main:
        run_dir.mkdir(parents=True, exist_ok=True)

    train_corpus, val_corpus = train_val_corpora(cfg["data"])
    vocab = _prepare_vocab(cfg, run_dir, train_corpus, resume, init_from, save=main)
    processor = make_text_processor(cfg["model"], vocab)
    # Cached features, or photos when the model has its own backbone (see itmatch.training.data).
    data = training_data(cfg, train_corpus, val_corpus, processor, progress=progress, device=device)
    pairs, val_captions = data.pairs, data.val_captions

    model = build_model(cfg["model"], vocab_size=len(vocab), feature_dim=data.feature_dim).to(device)
    data.attach(model)  # before any weights are loaded: snapshots the pretrained backbone, freezes BN statistics
    progress_state = Progress()
    best = Best()
    if state is not None:
        model.load_state_dict(state["model"])
        progress_state = Progress(**state["progress"])
        best = Best(state["best"]["rsum"], state["best"]["record"])
        torch.set_rng_state(state["rng"])
    elif init_from is not None:
        source = load_checkpoint(_checkpoint_path(init_from))
        # Compared with defaults filled in (a run saved before a model key existed still fits);
        # the backbone's weights file is not compared: the checkpoint holds the backbone.
        theirs, ours = resolve_model_config(source["config"]["model"]), resolve_model_config(cfg["model"])
        differ = sorted(k for k in theirs.keys() | ours.keys() if k != "backbone_weights" and theirs.get(k) != ours.get(k))
        if differ:
            detail = "; ".join(f"{k}: {theirs.get(k)!r} there, {ours.get(k)!r} here" for k in differ)
            raise ItmatchError(f"--init-from {init_from}: its model config differs from this recipe's ({detail})")
        model.load_state_dict(source["model"])
    if main:  # on resume too: the settings a resume may change are the run's settings from now on
        atomic_write_text(run_dir / "config.yaml", yaml.safe_dump(cfg, sort_keys=False))
    metrics_log = MetricsLog(run_dir / "metrics.jsonl", progress_state.global_step if resume else None) if main else None

    def emit(record: dict[str, Any]) -> None:
        if metrics_log is not None:
            metrics_log.write(record)
            if log is not None:
                log(record)

    def checkpoint(path: Path, optimizers: dict[str, torch.optim.Optimizer] | None) -> None:
        if not main:
            return
        save_checkpoint(
            path,
            {
                "format": "itmatch-checkpoint-1",
                "model": model.state_dict(),
                "optimizers": {k: o.state_dict() for k, o in (optimizers or {}).items()},
                "optimizer_stage": progress_state.stage if optimizers else -1,
                "config": cfg,
                "vocab": vocab.to_dict(),
                "feature_dim": data.feature_dim,
                "progress": progress_state.to_dict(),
                "best": {"rsum": best.rsum, "record": best.record},
                "rng": torch.get_rng_state(),
                "wall_time_s": time_before + (time.time() - start),
            },
        )

    start = time.time()
    # Training time of the earlier sessions of this run (a resumed run's summary counts them all).
    time_before = _time_before(state, run_dir) if resume else 0.0
    for stage_index in range(progress_state.stage, len(stages)):
        stage = stages[stage_index]
        set_trainable(model, stage)
        optimizers = make_optimizers(model, stage, progress_state.epoch)
        if state is not None and state.get("optimizer_stage") == stage_index:
            for key, opt in optimizers.items():
                opt.load_state_dict(state["optimizers"][key])
            set_learning_rates(optimizers, stage, progress_state.epoch)
        state = None  # only the first resumed stage restores optimizer state
        ctx = step_context(model, cfg, info, device)
        steps_per_epoch = len(pairs)
        for epoch in range(progress_state.epoch, stage.epochs):
            set_learning_rates(optimizers, stage, epoch)
            batches = pairs.epoch(epoch_seed(seed, stage_index, epoch), progress_state.step, info.rank, info.world_size)
            bar = _bar(progress, steps_per_epoch, progress_state.step, f"{stage.name} {epoch + 1}/{stage.epochs}")
            epoch_start = time.time()
            for step, batch in batches:
                batch = _to_device(batch, device)
                done = (epoch * steps_per_epoch + step) / max(1, stage.epochs * steps_per_epoch)
                adv_lambda = 0.0
                if stage.adversarial is not None:
                    a = stage.adversarial
                    adv_lambda = dann_lambda(done, a.lambda_) if a.schedule == "dann" else a.lambda_
                values = train_step(model, batch, stage, optimizers, ctx, adv_lambda)
                progress_state.step = step + 1
                progress_state.global_step += 1
                if bar is not None:
                    bar.update(1)
                    bar.set_postfix(loss=f"{values['loss']:.3f}")
                if progress_state.global_step % int(tcfg["log_every"]) == 0:
                    values = {f"train/{k}": v for k, v in values.items()}
                    values.update({f"lr/{g['part']}": g["lr"] for o in optimizers.values() for g in o.param_groups})
                    emit(_record(progress_state, stage, epoch, values))
                every = int(tcfg["checkpoint_every"])
                if every and progress_state.global_step % every == 0 and progress_state.step < steps_per_epoch:
                    checkpoint(last_path, optimizers)
            if bar is not None:
                bar.close()
            epoch_time = time.time() - epoch_start
            progress_state.step = 0
            progress_state.epoch = epoch + 1
            if progress_state.epoch >= stage.epochs:
                progress_state.stage, progress_state.epoch = stage_index + 1, 0
            if main:
                val_im, val_tx = embed_split(model, data.val_images, val_captions, processor.collate, data.eval_batch_size, device)
                val = validation_metrics(model, val_im, val_tx, seed)
                record = _record(progress_state, stage, epoch, {f"val/{k}": v for k, v in val.items()})
                record["epoch_time_s"] = epoch_time
                record["best"] = stage.select == "rsum" and val["rsum"] > best.rsum
                emit(record)
                if record["best"]:
                    best = Best(val["rsum"], record)
                    checkpoint(ckpt_dir / "best.pt", None)
                checkpoint(last_path, optimizers if progress_state.stage == stage_index else None)
            barrier(info)  # the other ranks wait for validation and the checkpoint
        progress_state.stage, progress_state.epoch, progress_state.step = stage_index + 1, 0, 0

    if main and not (ckpt_dir / "best.pt").exists():
        # No stage selects on rsum (or none ran): the final model is the chosen one.
        checkpoint(ckpt_dir / "best.pt", None)
    summary = {
        "run_dir": str(run_dir),
        "best": best.record,
        "global_steps": progress_state.global_step,
        "wall_time_s": time_before + (time.time() - start),
        "world_size": info.world_size,
    }
    if main:
        atomic_write_text(run_dir / "summary.json", json.dumps(summary, indent=2, sort_keys=True))
    barrier(info)
    return summary


def step_context(model: JointModel, cfg: dict[str, Any], info: DistInfo, device: torch.device) -> StepContext:
    """How this stage's steps run; under torchrun the trainable parts are wrapped in DDP (per
    stage, since DDP registers only the parameters that train)."""
    tcfg = cfg["training"]
    precision = tcfg["precision"]
    if precision not in PRECISIONS:
        raise ItmatchError(f"training.precision: {precision!r} is not one of {list(PRECISIONS)}")
    if precision == "fp16" and device.type != "cuda":
        raise ItmatchError(f"training.precision: fp16 needs a CUDA device (this run uses {device}); use bf16")
    ctx = StepContext(
        margin=float(cfg["loss"]["margin"]),
        grad_clip=float(tcfg["grad_clip"]),
        accumulate=int(tcfg["accumulate"]),
        device_type=device.type,
        precision=precision,
        dist=info,
        scaler=torch.amp.GradScaler("cuda") if precision == "fp16" else None,
    )
    if info.enabled:
        from torch.nn.parallel import DistributedDataParallel as DDP

        ids = [device.index] if device.type == "cuda" else None
        pair = model.encoders()
        if any(p.requires_grad for p in pair.parameters()):
            ctx.encoders = DDP(pair, device_ids=ids, forward_sync_buffers=False)
        if any(p.requires_grad for p in model.classifier.parameters()):
            ctx.classifier = DDP(model.classifier, device_ids=ids, forward_sync_buffers=False)
    return ctx


def _time_before(state: dict[str, Any] | None, run_dir: Path) -> float:
    if state is not None and "wall_time_s" in state:
        return float(state["wall_time_s"])
    try:  # a checkpoint written before wall_time_s was kept: the summary of a finished run has it
        return float(json.loads((run_dir / "summary.json").read_text())["wall_time_s"])
    except (OSError, ValueError, KeyError, TypeError):
        return 0.0


def _checkpoint_path(run_or_checkpoint: str | Path) -> Path:
    p = Path(run_or_checkpoint)
    return p / "checkpoints" / "best.pt" if p.is_dir() else p


def _prepare_vocab(cfg: dict[str, Any], run_dir: Path, train_corpus, resume: bool, init_from, save: bool = True):
    from itmatch.data.text import Vocabulary

    vocab_path = run_dir / "vocab.json"
    if resume:
        return Vocabulary.load(vocab_path)
    if init_from is not None:
        vocab = Vocabulary.from_dict(load_checkpoint(_checkpoint_path(init_from))["vocab"])
    else:
        # Built from the training split only: never from validation or test captions.
        min_count = int(cfg["data"]["vocab_min_count"])
        vocab = Vocabulary.build(train_corpus.flat_captions(), min_count=min_count)
        if cfg["model"].get("text_encoder", "gru") == "gru" and len(vocab) <= len(Vocabulary.SPECIALS):
            raise ConfigError(
                f"data.vocab_min_count: no word of the training captions appears {min_count} times, so the "
                "vocabulary would be empty; lower it"
            )
    if save:
        vocab.save(vocab_path)
    return vocab


def _record(p: Progress, stage: Stage, epoch: int, values: dict[str, Any]) -> dict[str, Any]:
    return {"global_step": p.global_step, "stage": stage.name, "epoch": epoch + 1, **values}


def _to_device(batch: dict[str, Any], device: torch.device) -> dict[str, Any]:
    if device.type == "cpu":
        return batch
    return {
        "images": batch["images"].to(device, non_blocking=True),
        "text": {k: v.to(device, non_blocking=True) for k, v in batch["text"].items()},
        "image_ids": batch["image_ids"].to(device),
    }


def _bar(enabled: bool, total: int, initial: int, desc: str):
    if not enabled:
        return None
    from tqdm import tqdm

    return tqdm(total=total, initial=initial, desc=desc, leave=False, dynamic_ncols=True)

