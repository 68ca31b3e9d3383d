"""The per-step learning-rate schedule of a stage (linear warm-up, cosine decay), against the
schedule written out step by step here, and as the trainer applies it."""

from __future__ import annotations

import math

import pytest

from itmatch.errors import ConfigError
from itmatch.training.config import load_config
from itmatch.training.schedule import parse_stage
from itmatch.training.trainer import train

from conftest import tiny_overrides

BASE = {"name": "s", "epochs": 3, "lr": 1e-3, "train": ["image", "text", "text_backbone"], "rank": "sum"}


def written_out(lr: float, epochs: int, steps_per_epoch: int, warmup: int, cosine: bool) -> list[float]:
    """The schedule as a list, one rate per step of the stage."""
    total = epochs * steps_per_epoch
    rates = []
    for t in range(total):
        rate = lr * (math.cos(math.pi * t / total) + 1) / 2 if cosine else lr
        if warmup and t < warmup:
            rate = rate * (t + 1) / warmup
        rates.append(rate)
    return rates


@pytest.mark.parametrize("warmup", [0, 1, 7, 40])
@pytest.mark.parametrize("cosine", [False, True])
def test_lr_for_is_the_written_out_schedule_for_every_part(warmup, cosine):
    raw = {**BASE, "lr_warmup_steps": warmup, "lr_parts": {"text_backbone": 2e-5}}
    if cosine:
        raw["lr_schedule"] = "cosine"
    stage = parse_stage(raw, "t")
    spe = 11
    for part, lr in (("image", 1e-3), ("text_backbone", 2e-5)):
        got = [stage.lr_for(part, e, s, spe) for e in range(3) for s in range(spe)]
        assert got == pytest.approx(written_out(lr, 3, spe, warmup, cosine), rel=1e-12)
    assert stage.per_step_lr == (cosine or warmup > 0)
    if cosine and warmup < 16:  # near half at the middle step (t = 16 of 33), and never below zero
        assert stage.lr_for("image", 1, 5, 11) == pytest.approx(1e-3 * (1 + math.cos(math.pi * 16 / 33)) / 2)
        assert min(got) > 0


def test_the_step_schedule_is_unchanged_by_default():
    stage = parse_stage({**BASE, "epochs": 6, "lr_decay_epochs": 2, "lr_decay_gamma": 0.5}, "t")
    assert not stage.per_step_lr
    assert [stage.lr_for("image", e, s, 5) for e in range(6) for s in (0, 4)] == pytest.approx(
        [1e-3 * 0.5 ** (e // 2) for e in range(6) for _ in (0, 4)]
    )
    assert "lr_schedule" not in stage.to_dict() and "lr_warmup_steps" not in stage.to_dict()  # old runs compare equal
    with_warmup = parse_stage({**BASE, "lr_warmup_steps": 3, "lr_decay_epochs": 1}, "t")
    assert [with_warmup.lr_for("image", 0, s, 4) for s in range(4)] == pytest.approx([1e-3 / 3, 2e-3 / 3, 1e-3, 1e-3])
    assert with_warmup.lr_for("image", 1, 0, 4) == pytest.approx(1e-4)
    assert with_warmup.to_dict()["lr_warmup_steps"] == 3


@pytest.mark.parametrize(
    "bad, match",
    [
        ({"lr_schedule": "linear"}, r"t\.lr_schedule: 'linear' is not one of \['step', 'cosine'\]"),
        ({"lr_schedule": "cosine", "lr_decay_epochs": 2}, "lr_decay_epochs is the step schedule's"),
        ({"lr_warmup_steps": -1}, r"t\.lr_warmup_steps"),
    ],
)
def test_bad_schedules_are_refused_with_the_stage_named(bad, match):
    with pytest.raises(ConfigError, match=match):
        parse_stage({**BASE, **bad}, "t")


def test_the_trainer_applies_warm_up_and_cosine_step_by_step(tmp_path, precomp_data):
    recipe = ["stages=[{name: a, epochs: 2, lr: 1.0e-3, lr_parts: {text: 4.0e-3}, train: [image, text], rank: sum, "
              "lr_schedule: cosine, lr_warmup_steps: 10}]"]  # fmt: skip
    seen: dict[str, list[float]] = {"image": [], "text": []}

    def log(record: dict) -> None:
        for part in seen:
            if f"lr/{part}" in record:
                seen[part].append(record[f"lr/{part}"])

    train(load_config("vsepp", tiny_overrides(precomp_data, *recipe)), tmp_path / "run", log=log)
    spe = math.ceil(200 * 5 / 32)  # log_every = 1: one record per step
    assert len(seen["image"]) == 2 * spe
    assert seen["image"] == pytest.approx(written_out(1e-3, 2, spe, 10, True), rel=1e-9)
    assert seen["text"] == pytest.approx(written_out(4e-3, 2, spe, 10, True), rel=1e-9)
