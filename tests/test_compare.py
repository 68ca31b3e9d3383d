"""The comparison runner: recipes x seeds, runs reused, mean +- std computed from the per-seed values."""

from __future__ import annotations

import json
import statistics

import pytest

from itmatch.errors import ConfigError
from itmatch.training import compare as compare_module
from itmatch.training.compare import markdown_table, order_specs, parse_spec, run_comparison

from conftest import tiny_overrides


def test_spec_parsing_and_order():
    assert parse_spec("vsepp") == ("vsepp", None)
    assert parse_spec("miie_adv@vsepp") == ("miie_adv", "vsepp")
    assert order_specs(["miie_adv@vsepp", "vsepp"]) == ["vsepp", "miie_adv@vsepp"]
    with pytest.raises(ConfigError, match="base 'vsepp' is not among"):
        order_specs(["miie_adv@vsepp"])
    with pytest.raises(ConfigError, match="expected NAME or NAME@BASE"):
        parse_spec("x@")


def test_markdown_table_formats_mean_and_std():
    table = markdown_table({"a": {"rsum": {"mean": 300.04, "std": 2.5, "n": 3}}}, columns=[("rsum", "rsum")])
    assert table.splitlines()[2] == "| a (n=3) | 300.0 ± 2.5 |"


def test_comparison_trains_scores_and_reuses_runs(tmp_path, precomp_data, monkeypatch):
    # stages.* applies to every stage of every recipe; stages.hardest only to recipes that have it
    overrides = tiny_overrides(precomp_data, "stages.*.epochs=1", "stages.*.lr=1e-3", "stages.hardest.epochs=2")
    specs = ["vsepp", "vsepp_more@vsepp"]
    result = run_comparison(specs, [0, 1], tmp_path / "cmp", overrides=overrides, eval_split="test")
    per_seed = result["per_seed"]
    assert set(per_seed) == set(specs) and all(len(v) == 2 for v in per_seed.values())
    for spec in specs:
        rsums = [r["rsum"] for r in per_seed[spec]]
        assert result["summary"][spec]["rsum"]["mean"] == pytest.approx(statistics.fmean(rsums))
        assert result["summary"][spec]["rsum"]["std"] == pytest.approx(statistics.stdev(rsums))
        assert all(r["rsum"] > 60 for r in per_seed[spec])  # chance rsum on 60 images is ~ 60
    table = (tmp_path / "cmp" / "table.md").read_text()
    assert "| vsepp (n=2) |" in table and "| vsepp_more@vsepp (n=2) |" in table
    assert (tmp_path / "cmp" / "tsne.png").stat().st_size > 10_000
    # the derived recipe started from the baseline's weights, seed by seed
    cfg = json.loads((tmp_path / "cmp" / "vsepp_more-seed1" / "summary.json").read_text())
    assert cfg["global_steps"] > 0

    def no_training(*args, **kwargs):
        raise AssertionError("finished runs must be reused, not retrained")

    monkeypatch.setattr("itmatch.training.trainer.train", no_training)
    again = run_comparison(specs, [0, 1], tmp_path / "cmp", overrides=overrides, eval_split="test")
    assert again["summary"] == result["summary"]
    assert compare_module.TABLE_COLUMNS[0][0] == "i2t_r1"
