"""One optimisation step of a stage: ranking loss, classifier loss and the adversarial term,
with optional gradient accumulation, mixed precision and cross-rank gathering.

The losses are computed over the *global* batch: each rank embeds its shard, the embeddings are
gathered with gradients (:func:`itmatch.training.distributed.gather_with_grad`), so hardest
negatives come from every rank and the modality classifier sees every embedding.

Gradient accumulation splits the batch into ``accumulate`` micro-batches whose losses are
summed: memory drops, but negatives (and the hardest negative) come from the micro-batch only.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from itmatch.losses import (
    classifier_accuracy,
    classifier_loss,
    confusion_loss,
    modality_logits_and_labels,
    triplet_ranking_loss,
)
from itmatch.models import JointModel, grad_reverse
from itmatch.training.distributed import DistInfo, gather_no_grad, gather_with_grad
from itmatch.training.schedule import Stage

PRECISIONS = ("fp32", "bf16", "fp16")


@dataclass
class StepContext:
    """How steps run: devices, precision, distribution. Built once per stage by the trainer."""

    margin: float = 0.2
    grad_clip: float = 2.0
    accumulate: int = 1
    device_type: str = "cpu"
    precision: str = "fp32"
    dist: DistInfo = field(default_factory=DistInfo)
    encoders: nn.Module | None = None  # DDP-wrapped EncoderPair when distributed
    classifier: nn.Module | None = None  # DDP-wrapped classifier when distributed
    scaler: torch.amp.GradScaler | None = None  # fp16 on CUDA only

    def autocast(self) -> contextlib.AbstractContextManager:
        if self.precision == "fp32":
            return contextlib.nullcontext()
        dtype = torch.bfloat16 if self.precision == "bf16" else torch.float16
        return torch.autocast(device_type=self.device_type, dtype=dtype)


def split_batch(batch: dict[str, Any], parts: int) -> list[dict[str, Any]]:
    """``parts`` micro-batches of (nearly) equal size, in order."""
    n = batch["images"].shape[0]
    if parts <= 1 or n <= 1:
        return [batch]
    bounds = torch.linspace(0, n, min(parts, n) + 1).round().long().tolist()
    return [
        {
            "images": batch["images"][a:b],
            "text": {k: v[a:b] for k, v in batch["text"].items()},
            "image_ids": batch["image_ids"][a:b],
        }
        for a, b in zip(bounds[:-1], bounds[1:])
    ]


@contextlib.contextmanager
def frozen(module: nn.Module) -> Iterator[None]:
    """Temporarily stop gradients into ``module``'s parameters (its outputs still carry gradient)."""
    flags = [p.requires_grad for p in module.parameters()]
    for p in module.parameters():
        p.requires_grad_(False)
    try:
        yield
    finally:
        for p, flag in zip(module.parameters(), flags):
            p.requires_grad_(flag)


def _full(x: torch.Tensor) -> torch.Tensor:
    """Autocast's half-precision outputs back to float32 for the losses; float32 and float64
    pass unchanged (a float64 model keeps float64 losses, which exact comparisons rely on)."""
    return x.float() if x.dtype in (torch.float16, torch.bfloat16) else x


def _backward(loss: torch.Tensor, ctx: StepContext) -> None:
    (ctx.scaler.scale(loss) if ctx.scaler is not None else loss).backward()


def _clip_and_step(optimizer: torch.optim.Optimizer, ctx: StepContext) -> None:
    if ctx.scaler is not None:
        ctx.scaler.unscale_(optimizer)
    if ctx.grad_clip:
        params = [p for g in optimizer.param_groups for p in g["params"] if p.grad is not None]
        if params:
            torch.nn.utils.clip_grad_norm_(params, ctx.grad_clip)
    if ctx.scaler is not None:
        ctx.scaler.step(optimizer)
    else:
        optimizer.step()


def train_step(
    model: JointModel,
    batch: dict[str, Any],
    stage: Stage,
    optimizers: dict[str, torch.optim.Optimizer],
    ctx: StepContext,
    adv_lambda: float = 0.0,
) -> dict[str, float]:
    """One optimisation step of ``stage`` on this rank's shard ``batch``; returns logged values
    (losses summed over micro-batches, for the global batch)."""
    model.train()
    opt_enc, opt_d = optimizers.get("encoders"), optimizers.get("classifier")
    encoders: Callable = ctx.encoders if ctx.encoders is not None else model.encoders()
    classifier: Callable = ctx.classifier if ctx.classifier is not None else model.classifier
    adv = stage.adversarial
    encoders_learn = opt_enc is not None and (stage.rank is not None or adv is not None)
    classifier_alone = opt_d is not None and (stage.classifier or (adv is not None and adv.mode == "alternate"))
    chunks = split_batch(batch, ctx.accumulate)
    out: dict[str, float] = {}

    def add(key: str, value: float) -> None:
        out[key] = out.get(key, 0.0) + value

    if classifier_alone:
        # The classifier learns the true labels on detached embeddings: the encoders are untouched.
        opt_d.zero_grad(set_to_none=True)
        correct = total = 0
        for chunk in chunks:
            with torch.no_grad(), ctx.autocast():
                im, tx = model(chunk["images"], chunk["text"])
            im, tx = gather_no_grad(_full(im), ctx.dist), gather_no_grad(_full(tx), ctx.dist)
            with ctx.autocast():
                logits, labels = modality_logits_and_labels(classifier, im, tx)
                d_loss = classifier_loss(_full(logits), labels)
            _backward(d_loss, ctx)
            add("d_loss", float(d_loss.detach()))
            correct += classifier_accuracy(_full(logits.detach()), labels) * len(labels)
            total += len(labels)
        _clip_and_step(opt_d, ctx)
        out["d_acc"] = correct / total

    if encoders_learn:
        for opt in optimizers.values():
            opt.zero_grad(set_to_none=True)
        correct = total = 0
        for chunk in chunks:
            with ctx.autocast():
                im, tx = encoders(chunk["images"], chunk["text"])
            im, tx = gather_with_grad(_full(im), ctx.dist), gather_with_grad(_full(tx), ctx.dist)
            ids = gather_no_grad(chunk["image_ids"], ctx.dist)
            loss = im.new_zeros(())
            if stage.rank is not None:
                rank = triplet_ranking_loss(im, tx, ctx.margin, stage.rank == "max_violation", image_ids=ids)
                loss = loss + rank
                add("rank_loss", float(rank.detach()))
            if adv is not None and adv.mode == "grl":
                # One backward: the classifier descends L_D, the encoders get -lambda * dL_D.
                with ctx.autocast():
                    logits, labels = modality_logits_and_labels(classifier, grad_reverse(im, adv_lambda), grad_reverse(tx, adv_lambda))
                d_loss = classifier_loss(_full(logits), labels)
                loss = loss + d_loss
                add("d_loss", float(d_loss.detach()))
                correct += classifier_accuracy(_full(logits.detach()), labels) * len(labels)
                total += len(labels)
            elif adv is not None:
                # Alternate mode: the encoders minimise the confusion objective against the
                # classifier as it is now; no gradient reaches the classifier's parameters.
                with frozen(model.classifier), ctx.autocast():
                    logits, labels = modality_logits_and_labels(model.classifier, im, tx)
                conf = confusion_loss(_full(logits), labels, adv.objective)
                loss = loss + adv_lambda * conf
                add("confusion_loss", float(conf.detach()))
            _backward(loss, ctx)
            add("loss", float(loss.detach()))
        if total:
            out["d_acc"] = correct / total
        _clip_and_step(opt_enc, ctx)
        if adv is not None and adv.mode == "grl" and opt_d is not None:
            _clip_and_step(opt_d, ctx)
    else:
        out["loss"] = out.get("d_loss", 0.0)
    if ctx.scaler is not None:
        ctx.scaler.update()
    if adv is not None:
        out["lambda"] = adv_lambda
    return out
