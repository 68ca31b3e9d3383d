"""The multi-stage schedule: each stage says which losses are on and which parts train.

A stage (one entry of a recipe's ``stages`` list)::

    name: adversarial
    epochs: 10
    lr: 2.0e-5                 # learning rate of every trainable part ...
    lr_parts: {backbone: 1e-6} # ... unless overridden per part
    lr_decay_epochs: 5         # multiply by lr_decay_gamma every N epochs of this stage (null: never)
    lr_decay_gamma: 0.1
    lr_schedule: step          # step (lr_decay_* above, per epoch) | cosine (per step, to 0 at the stage's end)
    lr_warmup_steps: 0         # linear warm-up over the stage's first N steps (either schedule)
    train: [image, text, classifier]   # parts: image, backbone, text, text_backbone, text_base, classifier
    rank: max_violation        # null | sum | max_violation
    classifier: false          # train the modality classifier on true labels (encoders frozen or not;
                               # not with mode grl, which trains it in its joint step)
    adversarial:               # null, or how the encoders fight the classifier
      mode: grl                # grl (gradient reversal, one step) | alternate (D step, then encoder step)
                               # | wgan (Wasserstein critic with gradient penalty, alternating)
      lambda: 0.1
      schedule: dann           # constant | dann (lambda * (2 / (1 + exp(-10 p)) - 1), p = stage progress)
      objective: uniform       # alternate mode only: uniform (target 0.5) | flip (wrong label)
      label_smoothing: 0.0     # the classifier learns targets 1 - s/2 and s/2 (not wgan)
      d_steps: 1               # classifier (critic) steps per encoder step, on the step's batch
      reinit_every: 0          # > 0: the classifier gets fresh weights and optimizer state every N steps
      gp_weight: 10.0          # wgan only: weight of the critic's gradient penalty
    align:                     # null, or a non-adversarial alignment penalty added to the encoders' loss
      kind: mmd                # mmd | coral | centroid | align_uniform (itmatch.losses_alignment)
      weight: 1.0              # per pair: the step multiplies the batch-mean penalty by the batch size
      bandwidth: 1.0           # mmd only: the RBF kernel's sigma
    select: rsum               # rsum: epochs of this stage compete for best.pt; none: they do not
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

from itmatch.errors import ConfigError
from itmatch.training.schema import Bool, Float, Int, Str

PARTS = ("image", "backbone", "text", "text_backbone", "text_base", "classifier")
RANK_MODES = (None, "sum", "max_violation")
ADV_MODES = ("grl", "alternate", "wgan")
ALIGN_KINDS = ("mmd", "coral", "centroid", "align_uniform")  # itmatch.losses_alignment.ALIGNMENT_KINDS
ADV_SCHEDULES = ("constant", "dann")
ADV_OBJECTIVES = ("uniform", "flip")
SELECT_MODES = ("rsum", "none")
LR_SCHEDULES = ("step", "cosine")


@dataclass(frozen=True)
class Adversarial:
    mode: str = "grl"
    lambda_: float = 0.1
    schedule: str = "constant"
    objective: str = "uniform"
    label_smoothing: float = 0.0
    d_steps: int = 1
    reinit_every: int = 0
    gp_weight: float = 10.0

    def to_dict(self) -> dict[str, Any]:
        d = {"mode": self.mode, "lambda": self.lambda_, "schedule": self.schedule, "objective": self.objective}
        # Only the options that differ from their defaults: a run saved before they existed then
        # has the same stage dictionary (resume compares them).
        for key in ADV_OPTIONS:
            if getattr(self, key) != getattr(Adversarial, key):
                d[key] = getattr(self, key)
        return d


ADV_OPTIONS = ("label_smoothing", "d_steps", "reinit_every", "gp_weight")


@dataclass(frozen=True)
class Alignment:
    kind: str
    weight: float = 1.0
    bandwidth: float = 1.0

    def to_dict(self) -> dict[str, Any]:
        return {"kind": self.kind, "weight": self.weight, "bandwidth": self.bandwidth}


@dataclass(frozen=True)
class Stage:
    name: str
    epochs: int
    lr: float
    train: tuple[str, ...]
    rank: str | None = None
    classifier: bool = False
    adversarial: Adversarial | None = None
    align: Alignment | None = None
    lr_parts: dict[str, float] = field(default_factory=dict)
    lr_decay_epochs: int | None = None
    lr_decay_gamma: float = 0.1
    select: str = "rsum"
    lr_schedule: str = "step"
    lr_warmup_steps: int = 0

    @property
    def per_step_lr(self) -> bool:
        """Whether the learning rate changes inside an epoch (cosine decay or a warm-up)."""
        return self.lr_schedule == "cosine" or self.lr_warmup_steps > 0

    def lr_for(self, part: str, epoch: int, step: int = 0, steps_per_epoch: int = 1) -> float:
        """Learning rate of ``part`` at step ``step`` of epoch ``epoch`` (both 0-based, within
        this stage, whose epochs have ``steps_per_epoch`` steps each).

        ``step`` schedule: the part's rate times ``lr_decay_gamma`` per ``lr_decay_epochs`` done.
        ``cosine``: the part's rate times (1 + cos(pi t / T)) / 2 at step t of the stage's T.
        A warm-up then scales the first ``lr_warmup_steps`` steps by (t + 1) / warm-up steps.
        """
        lr = self.lr_parts.get(part, self.lr)
        t = epoch * steps_per_epoch + step
        if self.lr_schedule == "cosine":
            total = max(1, self.epochs * steps_per_epoch)
            lr *= 0.5 * (1.0 + math.cos(math.pi * min(t, total) / total))
        elif self.lr_decay_epochs:
            lr *= self.lr_decay_gamma ** (epoch // self.lr_decay_epochs)
        if t < self.lr_warmup_steps:
            lr *= (t + 1) / self.lr_warmup_steps
        return lr

    @property
    def trains_encoders(self) -> bool:
        return any(p in self.train for p in ("image", "backbone", "text", "text_backbone", "text_base"))

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["train"] = list(self.train)
        d["adversarial"] = self.adversarial.to_dict() if self.adversarial else None
        if self.align is None:
            del d["align"]  # absent, as in runs saved before the key existed
        else:
            d["align"] = self.align.to_dict()
        for key, default in (("lr_schedule", "step"), ("lr_warmup_steps", 0)):
            if d[key] == default:
                del d[key]  # absent, as in runs saved before the keys existed
        return d


_STAGE_KEYS = {
    "name", "epochs", "lr", "train", "rank", "classifier", "adversarial", "lr_parts",
    "lr_decay_epochs", "lr_decay_gamma", "select", "align", "lr_schedule", "lr_warmup_steps",
}  # fmt: skip


def parse_stage(raw: Mapping[str, Any], where: str) -> Stage:
    if not isinstance(raw, Mapping):
        raise ConfigError(f"{where}: a stage must be a mapping, got {type(raw).__name__}")
    unknown = set(raw) - _STAGE_KEYS
    if unknown:
        raise ConfigError(f"{where}: unknown key(s) {sorted(unknown)}; known: {sorted(_STAGE_KEYS)}")
    for key in ("name", "epochs", "lr", "train"):
        if key not in raw:
            raise ConfigError(f"{where}: missing required key {key!r}")
    train_raw = raw["train"] or ()
    if isinstance(train_raw, str) or not isinstance(train_raw, Sequence):
        raise ConfigError(f"{where}.train: expected a list of parts, got {train_raw!r}")
    train = tuple(train_raw)
    bad = [p for p in train if p not in PARTS]
    if bad:
        raise ConfigError(f"{where}.train: unknown part(s) {bad}; known: {list(PARTS)}")
    rank = raw.get("rank")
    if rank not in RANK_MODES:
        raise ConfigError(f"{where}.rank: {rank!r} is not one of {list(RANK_MODES)}")
    adversarial = None
    if raw.get("adversarial"):
        if not isinstance(raw["adversarial"], Mapping):
            raise ConfigError(f"{where}.adversarial: expected a mapping or null, got {raw['adversarial']!r}")
        a = dict(raw["adversarial"])
        unknown = set(a) - {"mode", "lambda", "schedule", "objective", *ADV_OPTIONS}
        if unknown:
            raise ConfigError(f"{where}.adversarial: unknown key(s) {sorted(unknown)}")
        adversarial = Adversarial(
            mode=a.get("mode", "grl"),
            lambda_=Float(min=0)(a.get("lambda", 0.1), f"{where}.adversarial.lambda"),
            schedule=a.get("schedule", "constant"),
            objective=a.get("objective", "uniform"),
            label_smoothing=Float(min=0, max=1, max_open=True)(a.get("label_smoothing", 0.0), f"{where}.adversarial.label_smoothing"),
            d_steps=Int(min=1)(a.get("d_steps", 1), f"{where}.adversarial.d_steps"),
            reinit_every=Int(min=0)(a.get("reinit_every", 0), f"{where}.adversarial.reinit_every"),
            gp_weight=Float(min=0)(a.get("gp_weight", 10.0), f"{where}.adversarial.gp_weight"),
        )
        for value, allowed, key in (
            (adversarial.mode, ADV_MODES, "mode"),
            (adversarial.schedule, ADV_SCHEDULES, "schedule"),
            (adversarial.objective, ADV_OBJECTIVES, "objective"),
        ):
            if value not in allowed:
                raise ConfigError(f"{where}.adversarial.{key}: {value!r} is not one of {list(allowed)}")
    align = None
    if raw.get("align"):
        if not isinstance(raw["align"], Mapping):
            raise ConfigError(f"{where}.align: expected a mapping or null, got {raw['align']!r}")
        g = dict(raw["align"])
        unknown = set(g) - {"kind", "weight", "bandwidth"}
        if unknown:
            raise ConfigError(f"{where}.align: unknown key(s) {sorted(unknown)}; known: ['bandwidth', 'kind', 'weight']")
        if g.get("kind") not in ALIGN_KINDS:
            raise ConfigError(f"{where}.align.kind: {g.get('kind')!r} is not one of {list(ALIGN_KINDS)}")
        align = Alignment(
            kind=g["kind"],
            weight=Float(min=0)(g.get("weight", 1.0), f"{where}.align.weight"),
            bandwidth=Float(min=0, min_open=True)(g.get("bandwidth", 1.0), f"{where}.align.bandwidth"),
        )
    lr_parts_raw = raw.get("lr_parts") or {}
    if not isinstance(lr_parts_raw, Mapping):
        raise ConfigError(f"{where}.lr_parts: expected a mapping of part -> learning rate, got {lr_parts_raw!r}")
    lr_parts = {str(k): Float(min=0)(v, f"{where}.lr_parts.{k}") for k, v in lr_parts_raw.items()}
    bad = [p for p in lr_parts if p not in PARTS]
    if bad:
        raise ConfigError(f"{where}.lr_parts: unknown part(s) {bad}; known: {list(PARTS)}")
    stage = Stage(
        name=Str()(raw["name"], f"{where}.name"),
        epochs=Int(min=0)(raw["epochs"], f"{where}.epochs"),
        lr=Float(min=0)(raw["lr"], f"{where}.lr"),
        train=train,
        rank=rank,
        classifier=Bool()(raw.get("classifier", False), f"{where}.classifier"),
        adversarial=adversarial,
        align=align,
        lr_parts=lr_parts,
        lr_decay_epochs=Int(min=1, nullable=True)(raw.get("lr_decay_epochs") or None, f"{where}.lr_decay_epochs"),
        lr_decay_gamma=Float(min=0, min_open=True)(raw.get("lr_decay_gamma", 0.1), f"{where}.lr_decay_gamma"),
        select=str(raw.get("select", "rsum")),
        lr_schedule=str(raw.get("lr_schedule", "step")),
        lr_warmup_steps=Int(min=0)(raw.get("lr_warmup_steps", 0), f"{where}.lr_warmup_steps"),
    )
    if stage.lr_schedule not in LR_SCHEDULES:
        raise ConfigError(f"{where}.lr_schedule: {stage.lr_schedule!r} is not one of {list(LR_SCHEDULES)}")
    if stage.lr_schedule == "cosine" and stage.lr_decay_epochs:
        raise ConfigError(f"{where}: lr_decay_epochs is the step schedule's; drop it or use lr_schedule: step")
    if stage.epochs < 0:
        raise ConfigError(f"{where}.epochs must be >= 0")
    if stage.select not in SELECT_MODES:
        raise ConfigError(f"{where}.select: {stage.select!r} is not one of {list(SELECT_MODES)}")
    if stage.rank is None and not stage.classifier and stage.adversarial is None:
        raise ConfigError(f"{where}: no loss is on (set rank, classifier or adversarial)")
    if stage.classifier and stage.adversarial is not None and stage.adversarial.mode == "grl":
        # grl already trains the classifier on the true labels in its one joint step; a second,
        # classifier-alone step would double its updates (and, with fp16, unscale twice).
        raise ConfigError(
            f"{where}: classifier: true cannot be combined with adversarial mode grl (grl trains the classifier "
            "in its joint step already); drop classifier: true, or use mode: alternate"
        )
    if stage.classifier and "classifier" not in stage.train:
        raise ConfigError(f"{where}: classifier: true needs 'classifier' in train")
    if stage.rank and not stage.trains_encoders:
        raise ConfigError(f"{where}: rank loss is on but no encoder part is in train")
    if stage.align and (stage.rank is None or not stage.trains_encoders):
        raise ConfigError(f"{where}: align is a penalty on the ranking objective: it needs rank and an encoder part in train")
    if stage.adversarial and stage.adversarial.mode == "wgan" and stage.adversarial.label_smoothing:
        raise ConfigError(f"{where}.adversarial.label_smoothing: the wgan critic has no labels to smooth")
    if stage.adversarial and not stage.trains_encoders:
        raise ConfigError(f"{where}: adversarial loss is on but no encoder part is in train")
    return stage


def parse_stages(raw: Sequence[Mapping[str, Any]], where: str = "stages") -> list[Stage]:
    if not isinstance(raw, Sequence) or isinstance(raw, (str, bytes)):
        raise ConfigError(f"{where}: expected a list of stages")
    stages = [parse_stage(s, f"{where}[{i}]") for i, s in enumerate(raw)]
    names = [s.name for s in stages]
    if len(set(names)) != len(names):
        raise ConfigError(f"{where}: stage names must be unique, got {names}")
    return stages
