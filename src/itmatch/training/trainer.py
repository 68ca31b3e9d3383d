"""The training loop: runs a recipe's stages in order and writes one run folder.

Run folder::

    config.yaml        the resolved recipe
    vocab.json         vocabulary (built from the training split only)
    metrics.jsonl      one JSON record per log step and per validation
    checkpoints/last.pt, checkpoints/best.pt   (atomic; best = highest validation rsum)
    summary.json       the best validation record and where it came from

Resume (``resume=True``) continues from ``last.pt`` exactly: stage, epoch, step within the epoch,
model and optimizer states, the fp16 grad scaler, every rank's torch RNG state (CPU and CUDA) and
the per-epoch shuffling (a function of seed, stage and epoch).

Seeds: the model is initialised from ``seed`` (the same weights on every rank); then each rank
draws its dropout / stochastic-depth masks from its own stream (``seed + rank``), while the data
order stays a function of ``seed`` alone.
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

from itmatch.checkpoints import load_checkpoint, save_checkpoint
from itmatch.device import pick_device
from itmatch.errors import ConfigError, ItmatchError
from itmatch.features.backbones import checkpoint_activations
from itmatch.fileio import atomic_write_text, exclusive_lock, remove_stale_temp_files
from itmatch.losses import classifier_accuracy, dann_lambda
from itmatch.memory import retain_freed_memory
from itmatch.models import JointModel, build_model
from itmatch.models.joint import resolve_model_config
from itmatch.models.text_processing import encode_by_length, make_text_processor, text_batch_size
from itmatch.training.config import resume_config
from itmatch.training.data import train_val_corpora, training_data
from itmatch.training.distributed import (
    DistInfo,
    barrier,
    gather_objects,
    global_shard_sizes,
    init_distributed,
    shutdown_distributed,
)
from itmatch.training.rng import capture_rng_state, restore_rng_state
from itmatch.training.schedule import Stage, parse_stages
from itmatch.training.step import PRECISIONS, StepContext, to_floats, train_step

Logger = Callable[[dict[str, Any]], None]


__all__ = ["pick_device", "train", "step_context"]  # pick_device lives in itmatch.device


# Model keys that shape only the modality classifier (see --init-from in _train).
CLASSIFIER_KEYS = frozenset({"classifier_hidden", "classifier_dropout", "classifier_members"})


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def rank_seed(seed: int, rank: int) -> int:
    """The RNG seed of rank ``rank``'s dropout masks: distinct per rank (identical masks on every
    rank would make N GPUs draw one mask N times), ``seed`` itself on rank 0."""
    return int(seed) + int(rank)


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
    return {key: torch.optim.Adam(g, fused=_fused_adam_fits(g)) for key, g in groups.items() if g}


def _fused_adam_fits(groups: list[dict[str, Any]]) -> bool:
    """Whether torch's fused Adam kernel takes these parameters (CPU or CUDA floats). It updates
    the same way as the default per-tensor loop in one pass: a step over MiniLM's 22.7M
    parameters took 0.061 s against 0.101 s on one loaded CPU thread
    (benchmarks/results/finetune_speed_noamx.json)."""
    params = [p for g in groups for p in g["params"]]
    return bool(params) and all(p.device.type in ("cpu", "cuda") and p.is_floating_point() for p in params)


def set_learning_rates(
    optimizers: dict[str, torch.optim.Optimizer], stage: Stage, epoch: int, step: int = 0, steps_per_epoch: int = 1
) -> None:
    for opt in optimizers.values():
        for group in opt.param_groups:
            group["lr"] = stage.lr_for(group["part"], epoch, step, steps_per_epoch)


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
    # Photos come decoded by DataLoader workers (PhotoImages.batches); tensors are sliced.
    slices = images.batches(batch_size) if hasattr(images, "batches") else (images[i : i + batch_size] for i in range(0, len(images), batch_size))
    im = torch.cat([model.encode_images(part.to(device, non_blocking=True)).cpu() for part in slices])
    return im, encode_by_length(captions, collate, model.encode_texts, text_batch_size(batch_size, device), device)


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
    if _retains_memory(tcfg.get("retain_memory", "auto"), device, stages, cfg["data"]):
        retain_freed_memory()  # photo batches: no mmap, page faults and munmap of every activation
    try:
        return _train(cfg, stages, run_dir, state, info, device, init_from, progress and info.is_main, log)
    finally:
        shutdown_distributed()
        torch.set_num_threads(threads)


def _checkpoint_backbone(model: JointModel) -> None:
    """``training.backbone_checkpointing``: the backbone recomputes its activations in backward."""
    backbone = model.image_encoder.backbone
    if backbone is None:
        raise ConfigError("training.backbone_checkpointing: the model has no backbone (set model.backbone, or leave this false)")
    try:
        checkpoint_activations(backbone)
    except ItmatchError as e:
        raise ConfigError(f"training.backbone_checkpointing: {e}") from None


def _retains_memory(setting: str | bool, device: torch.device, stages: list[Stage], data: dict[str, Any]) -> bool:
    """``training.retain_memory``: True / False, or ``auto``: on a CPU device when photos may go
    through the CNN in this process: a data set of photos (not ``precomp``) and a stage that
    trains the backbone, or ``data.features`` ``auto`` (features missing from the cache are
    extracted first: 5x faster at 380 px here) or ``none`` (frozen stages embed the photos); not
    with a folder of precomputed features. Faster photo batches at a higher peak memory:
    docs/training.md."""
    if setting == "auto":
        cnn = any("backbone" in s.train for s in stages) or data.get("features", "auto") in ("auto", "none")
        return device.type == "cpu" and data.get("format") != "precomp" and cnn
    return bool(setting)


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
    if tcfg.get("backbone_checkpointing", False):
        _checkpoint_backbone(model)
    # The same initial weights everywhere (built from the global seed), then one stream per rank.
    seed_everything(rank_seed(seed, info.rank))
    progress_state = Progress()
    best = Best()
    scaler = _grad_scaler(tcfg["precision"], device)
    if state is not None:
        model.load_state_dict(state["model"])
        progress_state = Progress(**state["progress"])
        best = Best(state["best"]["rsum"], state["best"]["record"])
        if not restore_rng_state(state["rng"], info.rank, device):
            raise ItmatchError(
                f"{run_dir}: the checkpoint holds the RNG state of fewer ranks than this run's {info.world_size}; "
                "resume with the number of processes it was saved with"
            )
        if scaler is not None and state.get("scaler"):
            scaler.load_state_dict(state["scaler"])
    elif init_from is not None:
        source = load_checkpoint(_checkpoint_path(init_from))
        # Compared with defaults filled in (a run saved before a model key existed still fits);
        # the backbone's weights file is not compared: the checkpoint holds the backbone.
        theirs, ours = resolve_model_config(source["config"]["model"]), resolve_model_config(cfg["model"])
        # The modality classifier's shape may differ (an adversary of another capacity on the same
        # encoders): then this run's classifier starts fresh and the encoders load alone.
        differ = sorted(k for k in theirs.keys() | ours.keys() if k != "backbone_weights" and theirs.get(k) != ours.get(k))
        encoders_differ = [k for k in differ if k not in CLASSIFIER_KEYS]
        if encoders_differ:
            detail = "; ".join(f"{k}: {theirs.get(k)!r} there, {ours.get(k)!r} here" for k in encoders_differ)
            raise ItmatchError(f"--init-from {init_from}: its model config differs from this recipe's ({detail})")
        weights = source["model"]
        if differ:
            weights = {k: v for k, v in weights.items() if not k.startswith("classifier.")}
            weights.update({f"classifier.{k}": v for k, v in model.classifier.state_dict().items()})
        model.load_state_dict(weights)
    if main:  # on resume too: the settings a resume may change are the run's settings from now on
        atomic_write_text(run_dir / "config.yaml", yaml.safe_dump(cfg, sort_keys=False))
    metrics_log = MetricsLog(run_dir / "metrics.jsonl", progress_state.global_step if resume else None) if main else None

    def emit(record: dict[str, Any]) -> None:
        if metrics_log is not None:
            metrics_log.write(record)
            if log is not None:
                log(record)

    def rng_states() -> dict[str, list[Any]]:
        # Collective: every rank calls it at the same points, rank 0 keeps the states.
        states = gather_objects(capture_rng_state(device), info)
        return {"cpu": [s["cpu"] for s in states], "cuda": [s["cuda"] for s in states]}

    def checkpoint(path: Path, optimizers: dict[str, torch.optim.Optimizer] | None, rng: dict[str, list[Any]]) -> None:
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
                "rng": rng,  # per rank: {"cpu": [...], "cuda": [...]}
                "scaler": scaler.state_dict() if scaler is not None else None,
                "wall_time_s": time_before + (time.time() - start),
            },
        )

    start = time.time()
    # Training time of the earlier sessions of this run (a resumed run's summary counts them all).
    time_before = _time_before(state, run_dir) if resume else 0.0
    for stage_index in range(progress_state.stage, len(stages)):
        stage = stages[stage_index]
        set_trainable(model, stage)
        _prime_sentence_cache(model, cfg, data, info, progress)
        optimizers = make_optimizers(model, stage, progress_state.epoch)
        if state is not None and state.get("optimizer_stage") == stage_index:
            for key, opt in optimizers.items():
                opt.load_state_dict(state["optimizers"][key])
            set_learning_rates(optimizers, stage, progress_state.epoch, progress_state.step, len(pairs))
        state = None  # only the first resumed stage restores optimizer state
        ctx = step_context(model, cfg, info, device, scaler=scaler)
        steps_per_epoch = len(pairs)
        for epoch in range(progress_state.epoch, stage.epochs):
            set_learning_rates(optimizers, stage, epoch, progress_state.step, steps_per_epoch)
            batches = pairs.epoch(epoch_seed(seed, stage_index, epoch), progress_state.step, info.rank, info.world_size)
            bar = _bar(progress, steps_per_epoch, progress_state.step, f"{stage.name} {epoch + 1}/{stage.epochs}")
            epoch_start = time.time()
            for step, batch in batches:
                batch = _to_device(batch, device)
                if "shard_sizes" not in batch and info.enabled:
                    # PairBatches yields shards of a global batch; their sizes need no exchange.
                    batch["shard_sizes"] = global_shard_sizes(_global_rows(batch, step, pairs), info.world_size)
                done = (epoch * steps_per_epoch + step) / max(1, stage.epochs * steps_per_epoch)
                if stage.per_step_lr:
                    set_learning_rates(optimizers, stage, epoch, step, steps_per_epoch)
                adv_lambda = 0.0
                if stage.adversarial is not None:
                    a = stage.adversarial
                    adv_lambda = dann_lambda(done, a.lambda_) if a.schedule == "dann" else a.lambda_
                values = train_step(model, batch, stage, optimizers, ctx, adv_lambda)
                progress_state.step = step + 1
                progress_state.global_step += 1
                if bar is not None:
                    bar.update(1)
                # The values stay on the device until a log step: reading them waits for the GPU.
                if progress_state.global_step % int(tcfg["log_every"]) == 0:
                    values = to_floats(values)
                    if bar is not None:
                        bar.set_postfix(loss=f"{values['loss']:.3f}")
                    values = {f"train/{k}": v for k, v in values.items()}
                    values.update({f"lr/{g['part']}": g["lr"] for o in optimizers.values() for g in o.param_groups})
                    emit(_record(progress_state, stage, epoch, values))
                every = int(tcfg["checkpoint_every"])
                if every and progress_state.global_step % every == 0 and progress_state.step < steps_per_epoch:
                    checkpoint(last_path, optimizers, rng_states())
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
            # After rank 0's validation (which may draw from its RNG): the states to resume from.
            rng = rng_states()
            if main:
                if record["best"]:
                    best = Best(val["rsum"], record)
                    checkpoint(ckpt_dir / "best.pt", None, rng)
                checkpoint(last_path, optimizers if progress_state.stage == stage_index else None, rng)
            barrier(info)  # the other ranks wait for validation and the checkpoint
        progress_state.stage, progress_state.epoch, progress_state.step = stage_index + 1, 0, 0

    rng = rng_states()
    if main and not (ckpt_dir / "best.pt").exists():
        # No stage selects on rsum (or none ran): the final model is the chosen one.
        checkpoint(ckpt_dir / "best.pt", None, rng)
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


def _grad_scaler(precision: str, device: torch.device) -> torch.amp.GradScaler | None:
    """The run's fp16 loss scaler (one per run: its scale carries over stages and resumes)."""
    if precision not in PRECISIONS:
        raise ItmatchError(f"training.precision: {precision!r} is not one of {list(PRECISIONS)}")
    if precision != "fp16":
        return None
    if device.type not in ("cuda", "cpu"):
        raise ItmatchError(f"training.precision: fp16 needs a CUDA device or the CPU (this run uses {device}); use bf16")
    # On the CPU fp16 is slow and only useful to test the scaled path; bf16 needs no scaler.
    return torch.amp.GradScaler(device.type)


def _prime_sentence_cache(model: JointModel, cfg: dict[str, Any], data: Any, info: DistInfo, progress: bool) -> None:
    """A frozen MiniLM's sentence embeddings of every training and validation caption, from the
    on-disk cache (computed once per machine; see :mod:`itmatch.features.sentences`)."""
    from itmatch.models.minilm import MiniLMTextEncoder

    encoder = model.text_encoder
    if not isinstance(encoder, MiniLMTextEncoder) or not encoder.memoize_frozen or not encoder.backbone_frozen():
        return
    from itmatch.features.corpus import feature_cache_dir
    from itmatch.features.sentences import prime_sentence_cache

    cache = feature_cache_dir(cfg["data"])
    sentences = [*data.pairs.captions, *data.val_captions]
    bars: list[Any] = []  # opened on the first report: its total is what is not cached yet

    def report(done: int, total: int) -> None:
        if not bars:
            bars.append(_bar(True, total, 0, "sentence embeddings"))
        bars[0].update(done - bars[0].n)

    # Rank 0 computes and writes what is missing; the others then read the complete cache.
    if info.is_main:
        prime_sentence_cache(encoder, sentences, cache, progress=report if progress else None)
    barrier(info)
    if not info.is_main:
        prime_sentence_cache(encoder, sentences, cache)
    for bar in bars:
        bar.close()


def step_context(
    model: JointModel,
    cfg: dict[str, Any],
    info: DistInfo,
    device: torch.device,
    scaler: torch.amp.GradScaler | None = None,
) -> StepContext:
    """How this stage's steps run; under torchrun the trainable parts are wrapped in DDP (per
    stage, since DDP registers only the parameters that train). ``scaler``: the run's fp16
    scaler (made here when None)."""
    tcfg = cfg["training"]
    precision = tcfg["precision"]
    if scaler is None:
        scaler = _grad_scaler(precision, device)
    ctx = StepContext(
        margin=float(cfg["loss"]["margin"]),
        same_image_negatives=bool(cfg["loss"].get("same_image_negatives", False)),  # absent in pre-option configs
        grad_clip=float(tcfg["grad_clip"]),
        accumulate=int(tcfg["accumulate"]),
        device_type=device.type,
        precision=precision,
        dist=info,
        scaler=scaler if precision == "fp16" else None,
    )
    if info.enabled:
        from torch.nn.parallel import DistributedDataParallel as DDP

        ids = [device.index] if device.type == "cuda" else None
        pair = model.encoders()
        if any(p.requires_grad for p in pair.parameters()):
            ctx.encoders = DDP(pair, device_ids=ids, **_NO_FORWARD_BUFFER_SYNC)
        if any(p.requires_grad for p in model.classifier.parameters()):
            ctx.classifier = DDP(model.classifier, device_ids=ids, **_NO_FORWARD_BUFFER_SYNC)
    return ctx


def _ddp_buffer_kwargs() -> dict[str, bool]:
    """DDP without the buffer broadcast before every forward (frozen BatchNorm statistics are the
    same on every rank): ``forward_sync_buffers`` in recent torch, ``broadcast_buffers`` before
    (deprecated, with a warning, where the new name exists)."""
    import inspect

    from torch.nn.parallel import DistributedDataParallel as DDP

    if "forward_sync_buffers" in inspect.signature(DDP.__init__).parameters:
        return {"forward_sync_buffers": False}
    return {"broadcast_buffers": False}


_NO_FORWARD_BUFFER_SYNC = _ddp_buffer_kwargs()


def _global_rows(batch: dict[str, Any], step: int, pairs: Any) -> int:
    """Rows of global batch ``step`` (all full but the last)."""
    total = len(pairs.captions)
    return min(pairs.batch_size, total - step * pairs.batch_size)


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
        return dict(batch)
    moved = {
        "images": batch["images"].to(device, non_blocking=True),
        "text": {k: v.to(device, non_blocking=True) for k, v in batch["text"].items()},
        "image_ids": batch["image_ids"].to(device, non_blocking=True),
    }
    if "shard_sizes" in batch:
        moved["shard_sizes"] = batch["shard_sizes"]
    return moved


def _bar(enabled: bool, total: int, initial: int, desc: str):
    if not enabled:
        return None
    from tqdm import tqdm

    return tqdm(total=total, initial=initial, desc=desc, leave=False, dynamic_ncols=True)

