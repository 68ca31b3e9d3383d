"""Issue 14: one writer per run, resumable after any crash, every bad input a named error.

Each test reproduces one failure found by trying itmatch as a hostile or careless user would
(the item number of the issue is in the test's docstring), through the command line where the
user meets it.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from itmatch.cli import main
from itmatch.training.config import DEFAULTS, SCHEMA, load_config
from itmatch.training.trainer import train

from conftest import REPO_ROOT, tiny_overrides

ONE_STAGE = {
    "name": "one",
    "stages": [{"name": "rank", "epochs": 2, "lr": 1e-3, "train": ["image", "text"], "rank": "sum"},
               {"name": "more", "epochs": 1, "lr": 1e-4, "train": ["image", "text"], "rank": "max_violation"}],
}  # fmt: skip


def recipe_file(tmp_path: Path, recipe: dict = ONE_STAGE) -> Path:
    path = tmp_path / "recipe.yaml"
    path.write_text(yaml.safe_dump(recipe))
    return path


def train_args(recipe: Path, out: Path, data: Path, *extra: str) -> list[str]:
    sets = sum((["--set", o] for o in tiny_overrides(data)[3:]), [])
    return ["train", "--config", str(recipe), "--out", str(out), "--format", "precomp", "--data", str(data),
            "--val-split", "dev", "--quiet", *sets, *extra]  # fmt: skip


def records(run: Path) -> list[dict]:
    return [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]


def timeless(recs: list[dict]) -> list[dict]:
    return [{k: v for k, v in r.items() if k != "epoch_time_s"} for r in recs]


class Crash(Exception):
    pass


def crashed_run(tmp_path: Path, data: Path, at_step: int = 11, *extra: str) -> tuple[Path, dict]:
    """A run killed (an exception in the logger) after its checkpoint at step 8 (checkpoint_every=4)."""
    cfg = load_config(recipe_file(tmp_path), tiny_overrides(data, "training.checkpoint_every=4", *extra))
    run = tmp_path / "crashed"

    def crash(record):
        if record.get("global_step") == at_step and "train/loss" in record:
            raise Crash

    with pytest.raises(Crash):
        train(cfg, run, log=crash)
    return run, cfg


# --- 1. one writer per run folder ------------------------------------------------------------------


def test_a_second_training_on_the_same_out_fails_naming_the_folder_and_the_holder(tmp_path, precomp_data):
    """Item 1: two trainings on one --out at once both exited 0 and interleaved metrics.jsonl."""
    run = tmp_path / "run"
    args = train_args(recipe_file(tmp_path), run, precomp_data)
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT / "src"), "OMP_NUM_THREADS": "1"}
    second: dict = {}

    def start_a_second_writer(record):
        if record.get("global_step") == 3 and not second:  # the first run is mid-epoch, holding the folder
            second["proc"] = subprocess.run([sys.executable, "-m", "itmatch", *args], capture_output=True, text=True,
                                            env=env, timeout=300)  # fmt: skip

    cfg = load_config(recipe_file(tmp_path), tiny_overrides(precomp_data))
    train(cfg, run, log=start_a_second_writer)
    proc = second["proc"]
    assert proc.returncode == 1, proc.stderr
    assert f"itmatch train: error: run folder {run} is in use by another itmatch train (held by PID {os.getpid()})" in proc.stderr
    assert "Traceback" not in proc.stderr
    steps = [r["global_step"] for r in records(run) if "train/loss" in r]
    assert steps == sorted(set(steps))  # one writer's records only
    # The lock dies with its holder: the next writer (a resume) gets in.
    assert main(["train", "--resume", "--out", str(run), "--quiet"]) == 0


# --- 2. what a resume may change -----------------------------------------------------------------


def test_resume_applies_allowed_changes_and_names_the_refused_ones(tmp_path, precomp_data, capsys):
    """Item 2: train --resume silently ignored --config and --set, so a bad training value could
    never be rescued."""
    run, cfg = crashed_run(tmp_path, precomp_data)
    refused = [(["--set", "training.batch_size=16"], "training.batch_size"),
               (["--set", "stages.0.lr=0.5"], "stages.rank.lr"),
               (["--set", "stages.rank.epochs=0"], "stages.rank.epochs"),  # below the epochs it has run
               (["--seed", "3"], "seed"),
               (["--set", "model.embed_dim=16"], "model.embed_dim")]  # fmt: skip
    for flags, named in refused:
        assert main(["train", "--resume", "--out", str(run), "--quiet", *flags]) == 1
        err = capsys.readouterr().err
        assert err.startswith("itmatch train: error: ") and f"--resume cannot change {named} " in err, err
    (tmp_path / "other").mkdir()
    other = recipe_file(tmp_path / "other", {**ONE_STAGE, "model": {"embed_dim": 8}})
    same_data = [o for o in tiny_overrides(precomp_data) if "embed_dim" not in o]
    assert main(["train", "--resume", "--out", str(run), "--config", str(other), "--quiet",
                 *sum((["--set", o] for o in same_data), [])]) == 1  # fmt: skip
    assert "--resume cannot change model.embed_dim " in capsys.readouterr().err
    assert main(["train", "--resume", "--out", str(run), "--init-from", str(run), "--quiet"]) == 1
    assert "--init-from does not go with --resume" in capsys.readouterr().err

    # Allowed: how it runs, and the epochs of a stage not yet finished.
    rc = main(["train", "--resume", "--out", str(run), "--quiet", "--set", "training.log_every=3",
               "--set", "training.eval_batch_size=7", "--set", "stages.more.epochs=2"])  # fmt: skip
    assert rc == 0, capsys.readouterr().err
    saved = yaml.safe_load((run / "config.yaml").read_text())
    assert saved["training"]["log_every"] == 3 and saved["training"]["eval_batch_size"] == 7
    assert [s["epochs"] for s in saved["stages"]] == [2, 2]
    after = [r["global_step"] for r in records(run) if "train/loss" in r and r["global_step"] > 8]
    assert after and all(step % 3 == 0 for step in after)  # the new cadence applies from the checkpoint on
    assert [r["stage"] for r in records(run) if "val/rsum" in r] == ["rank", "rank", "more", "more"]
    state = torch.load(run / "checkpoints" / "last.pt", weights_only=True)
    assert state["config"]["training"]["eval_batch_size"] == 7


# --- 3. a torn metrics log -----------------------------------------------------------------------


def test_resume_repairs_a_torn_metrics_tail_and_the_log_matches_an_uninterrupted_run(tmp_path, precomp_data):
    """Item 3: a torn last line in metrics.jsonl made the run unresumable (JSONDecodeError)."""
    run, cfg = crashed_run(tmp_path, precomp_data)
    clean = tmp_path / "clean"
    train(cfg, clean)
    with (run / "metrics.jsonl").open("a") as fh:
        fh.write('{"global_step": 12, "stage": "ra')  # a crash or a full disk mid-write
    assert main(["train", "--resume", "--out", str(run), "--quiet"]) == 0
    assert timeless(records(run)) == timeless(records(clean))  # every line parses, no step twice


def test_damage_in_the_middle_of_the_log_is_named(tmp_path, precomp_data, capsys):
    run, _ = crashed_run(tmp_path, precomp_data)
    lines = (run / "metrics.jsonl").read_text().splitlines()
    lines[2] = lines[2][:10]
    (run / "metrics.jsonl").write_text("\n".join(lines) + "\n")
    assert main(["train", "--resume", "--out", str(run), "--quiet"]) == 1
    assert f"itmatch train: error: {run / 'metrics.jsonl'}, line 3: not a JSON record" in capsys.readouterr().err


# --- 4. temporary files of a killed checkpoint write -------------------------------------------


def test_temp_files_of_a_killed_atomic_write_are_removed(tmp_path, precomp_data):
    """Item 4: checkpoints/.last.pt.*.tmp stayed forever after a kill during the atomic write."""
    run, _ = crashed_run(tmp_path, precomp_data)
    left = [run / "checkpoints" / ".last.pt.k2j3h4.tmp", run / ".metrics.jsonl.x8y9.tmp"]
    for path in left:
        path.write_bytes(b"\0" * 4096)  # what a kill mid-write leaves
    keep = run / "checkpoints" / "notes.txt"
    keep.write_text("mine")
    assert main(["train", "--resume", "--out", str(run), "--quiet"]) == 0
    assert not any(p.exists() for p in left) and keep.read_text() == "mine"
    assert not list(run.rglob("*.tmp"))


# --- 5. every config value checked at load time ----------------------------------------------------


BAD_VALUES = [
    ("training.batch_size=abc", "training.batch_size: expected a positive integer, got 'abc'"),
    ("training.batch_size=2.5", "training.batch_size: expected a positive integer, got 2.5"),
    ("training.batch_size=1", "training.batch_size: expected an integer >= 2, got 1"),
    ("stages.0.epochs=abc", "stages[0].epochs: expected a non-negative integer, got 'abc'"),
    ("stages.0.lr=abc", "stages[0].lr: expected a non-negative number, got 'abc'"),
    ("training.grad_clip=abc", "training.grad_clip: expected a non-negative number, got 'abc'"),
    ("loss.margin=abc", "loss.margin: expected a non-negative number, got 'abc'"),
    ("model.embed_dim=0", "model.embed_dim: expected a positive integer, got 0"),
    ("training.log_every=0", "training.log_every: expected a positive integer, got 0"),
    ("training.eval_batch_size=0", "training.eval_batch_size: expected a positive integer, got 0"),
    ("training.device=tpu", "training.device: expected auto, cpu, mps, cuda or cuda:N, got 'tpu'"),
    ("training.threads=-1", "training.threads: expected a positive integer or null, got -1"),
    ("data.image_size=-5", "data.image_size: expected an integer >= 16, got -5"),
    ("training.checkpoint_every=-3", "training.checkpoint_every: expected a non-negative integer, got -3"),
    ("training.accumulate=0", "training.accumulate: expected a positive integer, got 0"),
    ("training.num_workers=-1", "training.num_workers: expected a non-negative integer, got -1"),
    ("training.precision=fp8", "training.precision: expected one of 'fp32', 'bf16', 'fp16', got 'fp8'"),
    ("model.classifier_dropout=1.5", "model.classifier_dropout: expected a number in [0, 1), got 1.5"),
    ("model.text_encoder=lstm", "model.text_encoder: expected one of 'gru', 'minilm', got 'lstm'"),
    ("stages.0.classifier=yes please", "stages[0].classifier: expected true or false, got 'yes please'"),
    ("seed=true", "seed: expected a non-negative integer, got True"),
]


@pytest.mark.parametrize("override, message", BAD_VALUES, ids=[o for o, _ in BAD_VALUES])
def test_a_bad_config_value_fails_at_once_with_one_named_line(tmp_path, precomp_data, capsys, override, message):
    """Item 5: tracebacks (TypeError, ValueError, ZeroDivisionError) or silently accepted nonsense."""
    run = tmp_path / "run"
    assert main(train_args(recipe_file(tmp_path), run, precomp_data, "--set", override)) == 1
    assert capsys.readouterr().err == f"itmatch train: error: {message}\n"
    assert not run.exists()  # failed before anything was written


def test_a_bad_value_in_the_recipe_file_names_the_file(tmp_path, precomp_data, capsys):
    recipe = recipe_file(tmp_path, {**ONE_STAGE, "training": {"eval_batch_size": "big"}})
    assert main(train_args(recipe, tmp_path / "run", precomp_data)) == 1
    assert capsys.readouterr().err == f"itmatch train: error: {recipe}: training.eval_batch_size: expected a positive integer, got 'big'\n"


def test_a_vocabulary_min_count_that_leaves_no_word_is_refused(tmp_path, precomp_data, capsys):
    assert main(train_args(recipe_file(tmp_path), tmp_path / "run", precomp_data, "--set", "data.vocab_min_count=100000")) == 1
    err = capsys.readouterr().err
    assert err.startswith("itmatch train: error: data.vocab_min_count: no word of the training captions appears 100000 times")


def test_numbers_written_as_yaml_strings_and_good_values_load():
    cfg = load_config("vsepp", ["stages.0.lr=1e-3", "training.device=cuda:1", "training.threads=2", "loss.margin=0"])
    assert cfg["stages"][0]["lr"] == 0.001 and isinstance(cfg["stages"][0]["lr"], float)
    assert cfg["training"]["device"] == "cuda:1" and cfg["loss"]["margin"] == 0.0


def test_every_config_key_has_a_schema_entry():
    """A key added to DEFAULTS or MODEL_DEFAULTS must get its type in training.config.SCHEMA."""
    for section, defaults in [("", {k: v for k, v in DEFAULTS.items() if not isinstance(v, (dict, list))})] + [
        (k, v) for k, v in DEFAULTS.items() if isinstance(v, dict)
    ]:
        missing = set(defaults) - set(SCHEMA[section])
        assert not missing, f"no schema entry for {section or 'top-level'} key(s) {sorted(missing)}"
        # and every default passes its own check
        for key, field in SCHEMA[section].items():
            field(defaults[key], key)


# --- 14c. a resumed finished run keeps its wall time ---------------------------------------------


def test_resuming_a_finished_run_keeps_its_wall_time(tmp_path, precomp_data):
    """Item 14: resuming a finished run overwrote the summary's wall time with ~0."""
    run = tmp_path / "run"
    assert main(train_args(recipe_file(tmp_path), run, precomp_data)) == 0
    before = json.loads((run / "summary.json").read_text())["wall_time_s"]
    assert main(["train", "--resume", "--out", str(run), "--quiet"]) == 0
    after = json.loads((run / "summary.json").read_text())["wall_time_s"]
    assert before > 0.2 and after == pytest.approx(before, rel=0.05)  # was ~0: only the resumed session counted
