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

from itmatch.errors import ConfigError
from itmatch.losses import confusion_loss, triplet_ranking_loss
from itmatch.losses_alignment import (
    alignment_penalty,
    critic_loss,
    gradient_penalty,
    member_classifier_loss,
    modality_labels,
)
from itmatch.models import JointModel, grad_reverse
from itmatch.training.distributed import DistInfo, gather_no_grad, gather_with_grad, shard_sizes
from itmatch.training.schedule import Stage

PRECISIONS = ("fp32", "bf16", "fp16")


@dataclass
class StepContext:
    """How steps run: devices, precision, distribution. Built once per stage by the trainer."""

    margin: float = 0.2
    same_image_negatives: bool = False  # loss.same_image_negatives
    grad_clip: float = 2.0
    accumulate: int = 1
    device_type: str = "cpu"
    precision: str = "fp32"
    dist: DistInfo = field(default_factory=DistInfo)
    encoders: nn.Module | None = None  # DDP-wrapped EncoderPair when distributed
    classifier: nn.Module | None = None  # DDP-wrapped classifier when distributed
    scaler: torch.amp.GradScaler | None = None  # fp16 only; one per run (its scale carries over stages)
    # train_step calls in this stage (the context is built per stage); drives the adversary's
    # re-initialisation every ``reinit_every`` steps. A resumed run counts from its resume point.
    steps_done: int = 0

    def autocast(self) -> contextlib.AbstractContextManager:
        if self.precision == "fp32":
            return contextlib.nullcontext()
        dtype = torch.bfloat16 if self.precision == "bf16" else torch.float16
        return torch.autocast(device_type=self.device_type, dtype=dtype)


def micro_bounds(n: int, parts: int) -> list[tuple[int, int]]:
    """``[start, stop)`` of ``parts`` micro-batches of (nearly) equal size over ``n`` rows, in
    order (fewer when ``n < parts``). A pure function of ``(n, parts)``: every rank can compute
    every other rank's micro-batch sizes without asking."""
    if parts <= 1 or n <= 1:
        return [(0, n)]
    k = min(parts, n)
    bounds = [(i * n + k // 2) // k for i in range(k + 1)]  # integers: no tensor, no rounding doubt
    return list(zip(bounds[:-1], bounds[1:]))


def split_batch(batch: dict[str, Any], parts: int) -> list[dict[str, Any]]:
    """``parts`` micro-batches of (nearly) equal size, in order."""
    bounds = micro_bounds(batch["images"].shape[0], parts)
    if len(bounds) == 1:
        return [batch]
    return [
        {
            "images": batch["images"][a:b],
            "text": {k: v[a:b] for k, v in batch["text"].items()},
            "image_ids": batch["image_ids"][a:b],
        }
        for a, b in bounds
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
    # A fused optimizer writes the parameters without bumping their version counters, which
    # tell the feature cache and the sentence memo that a frozen encoder changed: bump them.
    fused = [p for g in optimizer.param_groups if g.get("fused") for p in g["params"] if p.grad is not None]
    if fused:
        torch.autograd.graph.increment_version(fused)


def _hits(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Correct modality predictions, as a tensor (no host sync; see ``classifier_accuracy``).
    For an ensemble, the members' mean logit decides."""
    if logits.dim() == 2:
        logits = logits.mean(dim=1)
    return ((logits.detach() > 0).to(labels.dtype) == labels).sum()


def _member_logits(classifier: Callable, im: torch.Tensor, tx: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Every classifier member's logits (rows x members) for images then texts, and the labels."""
    return classifier(torch.cat([im, tx], dim=0), all_members=True), modality_labels(im, tx)


def _critic_scores(critic: Callable, im: torch.Tensor, tx: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    scores = critic(torch.cat([im, tx], dim=0))
    return scores[: im.size(0)], scores[im.size(0) :]


def reinitialise_classifier(model: JointModel, optimizer: torch.optim.Optimizer | None) -> None:
    """Fresh classifier weights, and no optimizer state (Adam's moments) left for them."""
    model.classifier.reset_parameters()
    if optimizer is not None:
        for p in model.classifier.parameters():
            optimizer.state.pop(p, None)


def batch_shard_sizes(batch: dict[str, Any], dist: DistInfo) -> tuple[int, ...]:
    """Every rank's row count of this global batch: from the batch when the data pipeline
    attached it (``shard_sizes``, no communication), else one all-gather."""
    n = int(batch["images"].shape[0])
    known = batch.get("shard_sizes")
    if known is not None:
        sizes = tuple(int(s) for s in known)
        if len(sizes) != dist.world_size or sizes[dist.rank] != n:
            raise ValueError(f"batch shard_sizes {sizes} do not fit rank {dist.rank} of {dist.world_size} with {n} rows")
        return sizes
    return shard_sizes(n, dist, batch["images"].device)


def to_floats(values: dict[str, torch.Tensor | float]) -> dict[str, float]:
    """The logged values of :func:`train_step` as Python floats: one host sync for all of them."""
    tensors = {k: v for k, v in values.items() if isinstance(v, torch.Tensor)}
    out = {k: float(v) for k, v in values.items() if not isinstance(v, torch.Tensor)}
    if tensors:
        # float64: a float64 step's losses keep their precision
        out.update(zip(tensors, torch.stack([v.double().reshape(()) for v in tensors.values()]).tolist()))
    return {k: out[k] for k in values}


def train_step(
    model: JointModel,
    batch: dict[str, Any],
    stage: Stage,
    optimizers: dict[str, torch.optim.Optimizer],
    ctx: StepContext,
    adv_lambda: float = 0.0,
) -> dict[str, torch.Tensor | float]:
    """One optimisation step of ``stage`` on this rank's shard ``batch``; returns logged values
    (losses summed over micro-batches, for the global batch).

    The values are detached 0-dim tensors on the step's device (``lambda`` is a float): reading
    them forces the host to wait for the GPU, so the trainer converts them (:func:`to_floats`)
    on log steps only.
    """
    model.train()
    opt_enc, opt_d = optimizers.get("encoders"), optimizers.get("classifier")
    encoders: Callable = ctx.encoders if ctx.encoders is not None else model.encoders()
    classifier: Callable = ctx.classifier if ctx.classifier is not None else model.classifier
    adv = stage.adversarial
    if adv is not None and adv.reinit_every and ctx.steps_done and ctx.steps_done % adv.reinit_every == 0:
        # An encoder that fools one fixed classifier may stay separable to a fresh one: keep
        # facing fresh ones (every classifier step below trains the new one on the true labels).
        reinitialise_classifier(model, opt_d)
    ctx.steps_done += 1
    encoders_learn = opt_enc is not None and (stage.rank is not None or adv is not None)
    classifier_alone = opt_d is not None and (stage.classifier or (adv is not None and adv.mode in ("alternate", "wgan")))
    # Classifier-alone steps before the encoder step: d_steps of them in alternate/wgan modes,
    # d_steps - 1 in grl (its joint step is the last classifier step).
    d_steps = 1 if adv is None else (adv.d_steps if classifier_alone else adv.d_steps - 1)
    smoothing = adv.label_smoothing if adv is not None else 0.0
    wgan = adv is not None and adv.mode == "wgan"
    if stage.classifier and encoders_learn and adv is not None and adv.mode == "grl":
        # parse_stage rejects this; a Stage built by hand must not step the classifier twice.
        raise ConfigError(f"stage {stage.name!r}: classifier: true cannot be combined with adversarial mode grl")
    # Every rank must split into the same number of micro-batches (each one is a collective).
    rank_sizes = batch_shard_sizes(batch, ctx.dist)
    parts = max(1, min(ctx.accumulate, *rank_sizes))
    chunks = split_batch(batch, parts)
    # chunk_sizes[c]: every rank's rows in micro-batch c, computed, not exchanged.
    per_rank = [[b - a for a, b in micro_bounds(n, parts)] for n in rank_sizes]
    chunk_sizes = [tuple(sizes[c] for sizes in per_rank) for c in range(len(chunks))]
    ddp_modules = [m for m in (ctx.encoders, ctx.classifier) if m is not None and hasattr(m, "no_sync")]

    def accumulating(c: int) -> contextlib.AbstractContextManager:
        # DDP all-reduces gradients on every backward; only the last micro-batch's needs to.
        stack = contextlib.ExitStack()
        if c < len(chunks) - 1:
            for m in ddp_modules:
                stack.enter_context(m.no_sync())
        return stack

    out: dict[str, torch.Tensor | float] = {}

    def add(key: str, value: torch.Tensor) -> None:
        value = _full(value.detach())
        out[key] = out[key] + value if key in out else value

    if opt_d is not None and d_steps > 0 and (classifier_alone or (adv is not None and adv.mode == "grl")):
        # The classifier learns the true labels on detached embeddings: the encoders are untouched.
        # The embeddings do not change between its steps, so they are computed once.
        detached = []
        for c, chunk in enumerate(chunks):
            with torch.no_grad(), ctx.autocast():
                im, tx = model(chunk["images"], chunk["text"])
            sizes = chunk_sizes[c]
            detached.append((gather_no_grad(_full(im), ctx.dist, sizes), gather_no_grad(_full(tx), ctx.dist, sizes)))
        for k in range(d_steps):
            opt_d.zero_grad(set_to_none=True)
            correct, total = None, 0
            for c, (im, tx) in enumerate(detached):
                with accumulating(c):
                    if wgan:
                        with ctx.autocast():
                            f_im, f_tx = _critic_scores(classifier, im, tx)
                        w_loss = critic_loss(_full(f_im), _full(f_tx))
                        # batch row k is a pair (its image's features, its caption), so im and tx pair up
                        d_loss = (w_loss + adv.gp_weight * gradient_penalty(classifier, im, tx)) * im.size(0)
                        logits, labels = torch.cat([f_im, f_tx]), modality_labels(im, tx)
                    else:
                        with ctx.autocast():
                            logits, labels = _member_logits(classifier, im, tx)
                        d_loss = member_classifier_loss(_full(logits), labels, smoothing)
                    _backward(d_loss, ctx)
                if k == d_steps - 1:  # logged once per step, for the last classifier update
                    add("d_loss", d_loss)
                hits = _hits(logits, labels)
                correct = hits if correct is None else correct + hits
                total += len(labels)
            _clip_and_step(opt_d, ctx)
            if ctx.scaler is not None and (k < d_steps - 1 or (encoders_learn and adv is not None and adv.mode == "grl")):
                ctx.scaler.update()  # the next step of the same optimizer unscales it again
        out["d_acc"] = correct * (100.0 / total)

    if encoders_learn:
        for opt in optimizers.values():
            opt.zero_grad(set_to_none=True)
        correct, total = None, 0
        for c, chunk in enumerate(chunks):
            sizes = chunk_sizes[c]
            with accumulating(c):
                with ctx.autocast():
                    im, tx = encoders(chunk["images"], chunk["text"])
                im, tx = gather_with_grad(_full(im), ctx.dist, sizes), gather_with_grad(_full(tx), ctx.dist, sizes)
                ids = gather_no_grad(chunk["image_ids"], ctx.dist, sizes)
                loss = im.new_zeros(())
                if stage.rank is not None:
                    same = None if ctx.same_image_negatives else ids
                    rank = triplet_ranking_loss(im, tx, ctx.margin, stage.rank == "max_violation", image_ids=same)
                    loss = loss + rank
                    add("rank_loss", rank)
                if stage.align is not None:
                    # A batch mean times the batch size: per pair, like the summed ranking loss.
                    penalty = alignment_penalty(stage.align.kind, im, tx, stage.align.bandwidth) * im.size(0)
                    loss = loss + stage.align.weight * penalty
                    add("align_loss", penalty)
                if adv is not None and adv.mode == "grl":
                    # One backward: the classifier descends L_D, the encoders get -lambda * dL_D.
                    with ctx.autocast():
                        logits, labels = _member_logits(classifier, grad_reverse(im, adv_lambda), grad_reverse(tx, adv_lambda))
                    d_loss = member_classifier_loss(_full(logits), labels, smoothing)
                    loss = loss + d_loss
                    add("d_loss", d_loss)
                    hits = _hits(logits, labels)
                    correct = hits if correct is None else correct + hits
                    total += len(labels)
                elif wgan:
                    # The encoders minimise the critic's W1 estimate (mean f(image) - mean f(text)).
                    with frozen(model.classifier), ctx.autocast():
                        f_im, f_tx = _critic_scores(model.classifier, im, tx)
                    w1 = -critic_loss(_full(f_im), _full(f_tx)) * im.size(0)
                    loss = loss + adv_lambda * w1
                    add("w1_estimate", w1)
                elif adv is not None:
                    # Alternate mode: the encoders minimise the confusion objective against the
                    # classifier as it is now; no gradient reaches the classifier's parameters.
                    with frozen(model.classifier), ctx.autocast():
                        logits, labels = _member_logits(model.classifier, im, tx)
                    # averaged over ensemble members, each a (rows,) confusion loss
                    conf = sum(confusion_loss(_full(logits[:, j]), labels, adv.objective) for j in range(logits.size(1))) / logits.size(1)
                    loss = loss + adv_lambda * conf
                    add("confusion_loss", conf)
                _backward(loss, ctx)
            add("loss", loss)
        if total:
            out["d_acc"] = correct * (100.0 / total)
        _clip_and_step(opt_enc, ctx)
        if adv is not None and adv.mode == "grl" and opt_d is not None:
            _clip_and_step(opt_d, ctx)
    else:
        out["loss"] = out["d_loss"]
    if ctx.scaler is not None:
        ctx.scaler.update()
    if adv is not None:
        out["lambda"] = adv_lambda
    return out
