"""The comparison runner: recipes x seeds, runs reused, mean +- std computed from the per-seed values."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch

from itmatch.errors import ConfigError
from itmatch.experiments.compare import order_specs, parse_spec, run_comparison, summary_table
from itmatch.experiments.demo_report import demo_table
from itmatch.experiments.tables import TABLE_COLUMNS, markdown_table

from conftest import tiny_overrides


def test_spec_parsing_and_order():
    assert parse_spec("vsepp") == ("vsepp", None)
    assert parse_spec("miie_adv@vsepp") == ("miie_adv", "vsepp")
    assert order_specs(["miie_adv@vsepp", "vsepp"]) == ["vsepp", "miie_adv@vsepp"]
    with pytest.raises(ConfigError, match="base 'vsepp' is not among"):
        order_specs(["miie_adv@vsepp"])
    with pytest.raises(ConfigError, match="expected NAME or NAME@BASE"):
        parse_spec("x@")


def test_markdown_table_formats_numbers_and_mean_and_std():
    columns = [("rsum", "rsum"), ("mmd", "MMD"), ("probe_acc", "probe")]
    table = markdown_table({"a": {"rsum": {"mean": 300.04, "std": 2.5, "n": 3}, "mmd": 0.01234}, "b": {"rsum": 7.0}}, columns)
    assert table.splitlines() == [
        "| model | rsum | MMD | probe |",
        "|---|---:|---:|---:|",
        "| a | 300.0 ± 2.5 | 0.012 | - |",  # distances with three decimals, a missing metric as "-"
        "| b | 7.0 | - | - |",
    ]


def test_comparison_and_demo_tables_share_one_layout():
    summary = {"vsepp": {"rsum": {"mean": 300.04, "std": 2.5, "n": 3}}}
    lines = summary_table(summary).splitlines()
    assert lines[0] == "| model | " + " | ".join(title for _, title in TABLE_COLUMNS) + " |"
    assert lines[2] == "| vsepp (n=3) | - | - | - | - | - | - | 300.0 ± 2.5 | - | - | - |"
    demo = demo_table({"vsepp": {"rsum": 99.04}}, {"rsum": 52.14}, n_images=60).splitlines()
    assert demo[:2] == lines[:2]
    assert demo[2] == "| VSE++ baseline | - | - | - | - | - | - | 99.0 | - | - | - |"
    assert demo[3] == "| *chance (60 images)* | - | - | - | - | - | - | 52.1 | - | - | - |"


def random_ranking_rsum(n_images: int) -> float:
    """Expected rsum of random scores: i2t hits when one of 5 right captions among 5N is in the
    top K (1 - the chance that K draws without replacement all miss), t2i when 1 of N is."""
    n_caps = 5 * n_images
    total = 0.0
    for k in (1, 5, 10):
        all_miss = 1.0
        for t in range(k):
            all_miss *= (n_caps - 5 - t) / (n_caps - t)
        total += 100.0 * (1.0 - all_miss) + 100.0 * min(k, n_images) / n_images
    return total


def test_random_ranking_rsum_by_hand():
    # 2 images, 10 captions: i2t R@1 = 5/10, R@5 = 1 - C(5,5)/C(10,5) = 1 - 1/252, R@10 = 1;
    # t2i R@1 = 1/2, R@5 = R@10 = 1 (capped by the 2 images: K/N > 1 is not a probability)
    assert random_ranking_rsum(2) == pytest.approx(100 * (0.5 + (1 - 1 / 252) + 1) + 100 * (0.5 + 1 + 1))
    assert random_ranking_rsum(60) == pytest.approx(52.1, abs=0.05)  # the figure the issue quotes


def test_comparison_trains_scores_and_reuses_runs(tmp_path, precomp_data, monkeypatch):
    import itmatch.training.trainer as trainer_module

    # The model as each training session first steps it, by run folder: what init_from loaded.
    first_step_weights: dict[str, dict[str, torch.Tensor]] = {}
    current_run: list[str] = []
    real_train, real_step = trainer_module.train, trainer_module.train_step

    def recording_train(cfg, run_dir, *args, **kwargs):
        current_run[:] = [Path(run_dir).name]
        return real_train(cfg, run_dir, *args, **kwargs)

    def recording_step(model, *args):
        first_step_weights.setdefault(current_run[0], {k: v.clone() for k, v in model.state_dict().items()})
        return real_step(model, *args)

    monkeypatch.setattr(trainer_module, "train", recording_train)
    monkeypatch.setattr(trainer_module, "train_step", recording_step)
    # stages.* applies to every stage of every recipe; stages.hardest only to recipes that have it
    overrides = tiny_overrides(precomp_data, "stages.*.epochs=1", "stages.*.lr=1e-3", "stages.hardest.epochs=2")
    specs = ["vsepp", "vsepp_more@vsepp"]
    result = run_comparison(specs, [0, 1], tmp_path / "cmp", overrides=overrides, eval_split="test")
    per_seed = result["per_seed"]
    assert set(per_seed) == set(specs) and all(len(v) == 2 for v in per_seed.values())
    chance = random_ranking_rsum(60)  # 52.1 on the 60 test images
    table_rows = {line.split(" | ")[0]: line for line in (tmp_path / "cmp" / "table.md").read_text().splitlines()}
    for spec in specs:
        rsums = [r["rsum"] for r in per_seed[spec]]
        # mean and sample std by their definitions, not by the runner's helpers
        mean = sum(rsums) / len(rsums)
        std = math.sqrt(sum((x - mean) ** 2 for x in rsums) / (len(rsums) - 1))
        assert result["summary"][spec]["rsum"]["mean"] == pytest.approx(mean, rel=1e-12)
        assert result["summary"][spec]["rsum"]["std"] == pytest.approx(std, rel=1e-12)
        assert std > 0  # two seeds, two different runs
        assert f"{mean:.1f} ± {std:.1f}" in table_rows[f"| {spec} (n=2)"]
        assert all(r["rsum"] > 5 * chance for r in per_seed[spec]), (spec, rsums, chance)  # measured 416-488
        # the per-seed metrics are the ones saved beside each run
        for seed, metrics in zip([0, 1], per_seed[spec]):
            run = tmp_path / "cmp" / f"{spec.split('@')[0]}-seed{seed}"
            assert json.loads((run / "eval_test.json").read_text()) == metrics
    header = (tmp_path / "cmp" / "table.md").read_text().splitlines()[0]
    assert header == (
        "| model | i2t R@1 | i2t R@5 | i2t R@10 | t2i R@1 | t2i R@5 | t2i R@10 | rsum | probe acc % "
        "| centroid dist | MMD (σ=1) |"
    )
    assert result["mmd_bandwidth"] == 1.0
    assert (tmp_path / "cmp" / "tsne.png").stat().st_size > 10_000
    # the derived recipe started from the baseline's best weights, seed by seed; the baseline from scratch
    for seed in (0, 1):
        base_best = torch.load(tmp_path / "cmp" / f"vsepp-seed{seed}" / "checkpoints" / "best.pt", weights_only=True)
        start = first_step_weights[f"vsepp_more-seed{seed}"]
        assert start.keys() == base_best["model"].keys()
        assert all(torch.equal(start[k], base_best["model"][k]) for k in start), seed
        assert not all(torch.equal(first_step_weights[f"vsepp-seed{seed}"][k], base_best["model"][k]) for k in start)
    other = torch.load(tmp_path / "cmp" / "vsepp-seed0" / "checkpoints" / "best.pt", weights_only=True)["model"]
    assert not all(torch.equal(first_step_weights["vsepp_more-seed1"][k], other[k]) for k in other)

    def no_training(*args, **kwargs):
        raise AssertionError("finished runs must be reused, not retrained")

    monkeypatch.setattr(trainer_module, "train", no_training)
    again = run_comparison(specs, [0, 1], tmp_path / "cmp", overrides=overrides, eval_split="test")
    assert again["summary"] == result["summary"]
