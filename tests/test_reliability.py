"""Issue 14: one writer per run, resumable after any crash, every bad input a named error.

Each test reproduces one failure found by trying itmatch as a hostile or careless user would
(the item number of the issue is in the test's docstring), through the command line where the
user meets it.
"""

from __future__ import annotations

import json
import os
import re
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


# --- 6. one line for every error the user can act on ---------------------------------------------


def _npy(path: Path, array) -> Path:
    np.save(path, array)
    return path


def _eval_embeddings(tmp_path: Path, images, texts) -> list[str]:
    im = images if isinstance(images, Path) else _npy(tmp_path / "im.npy", images)
    tx = texts if isinstance(texts, Path) else _npy(tmp_path / "tx.npy", texts)
    return ["evaluate", "--image-emb", str(im), "--text-emb", str(tx), "--json"]


def _rows(n: int, d: int = 8) -> np.ndarray:
    return np.random.default_rng(n).normal(size=(n, d)).astype(np.float32)


def _with_nan(a: np.ndarray, value: float) -> np.ndarray:
    a = a.copy()
    a[3, 2] = value
    return a


def _text_file(path: Path) -> Path:
    path.write_text("0.1 0.2\n0.3 0.4\n")
    return path


def _npz(path: Path) -> Path:
    np.savez(path, a=_rows(4))
    return path


BAD_EMBEDDINGS = {
    "4N caption rows": (lambda t: _rows(4), lambda t: _rows(16), "4 images need 20 captions, got 16"),
    "5N+1 caption rows": (lambda t: _rows(4), lambda t: _rows(21), "4 images need 20 captions, got 21"),
    "NaN": (lambda t: _rows(4), lambda t: _with_nan(_rows(20), np.nan), "1 row(s) hold NaN or infinite values (rows 3)"),
    "inf": (lambda t: _with_nan(_rows(4), np.inf), lambda t: _rows(20), "1 row(s) hold NaN or infinite values (rows 3)"),
    "empty": (lambda t: np.zeros((0, 8), np.float32), lambda t: _rows(20), "the array is empty (shape (0, 8))"),
    "strings": (lambda t: np.array([["a", "b"]] * 4), lambda t: _rows(20), "expected numbers, got dtype <U1"),
    "npz": (lambda t: _npz(t / "im.npz"), lambda t: _rows(20), "is a .npz archive"),
    "text file": (lambda t: _text_file(t / "im.npy"), lambda t: _rows(20), "is not a .npy array (no .npy header"),
    "1-D": (lambda t: np.zeros(8, np.float32), lambda t: _rows(20), "expected a 2-D array (rows x dims), got shape (8,)"),
}


@pytest.mark.parametrize("case", list(BAD_EMBEDDINGS))
def test_bad_embedding_files_are_one_named_error(tmp_path, capsys, case):
    """Item 6 (and 14: a text .npy was reported as "pickled data")."""
    make_im, make_tx, expected = BAD_EMBEDDINGS[case]
    assert main(_eval_embeddings(tmp_path, make_im(tmp_path), make_tx(tmp_path))) == 1
    err = capsys.readouterr().err
    assert err.startswith("itmatch evaluate: error: ") and expected in err and err.count("\n") == 1, err
    assert "pickled" not in err


def test_5fold1k_on_fewer_than_5000_images_is_a_named_error(tmp_path, capsys):
    assert main([*_eval_embeddings(tmp_path, _rows(10), _rows(50)), "--protocol", "5fold1k"]) == 1
    err = capsys.readouterr().err
    assert err.startswith("itmatch evaluate: error: protocol '5fold1k' is 5 folds of 1,000 images and needs 5,000 images; got 10")


def test_debug_shows_the_traceback(tmp_path, monkeypatch):
    args = _eval_embeddings(tmp_path, _rows(4), _rows(16))
    from itmatch.errors import ItmatchError

    with pytest.raises(ItmatchError, match="4 images need 20 captions"):
        main(["--debug", *args])
    monkeypatch.setenv("ITMATCH_DEBUG", "1")
    with pytest.raises(ItmatchError):
        main(args)


def test_saved_embeddings_load_without_torch_warnings(tmp_path):
    """Item 14: every --image-emb load printed torch's non-writable-array UserWarning."""
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT / "src"), "OMP_NUM_THREADS": "1"}
    proc = subprocess.run([sys.executable, "-W", "always", "-m", "itmatch", *_eval_embeddings(tmp_path, _rows(4), _rows(20))],
                          capture_output=True, text=True, env=env, timeout=300)  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    assert "Warning" not in proc.stderr and "writable" not in proc.stderr
    assert set(json.loads(proc.stdout)) >= {"rsum", "i2t_r1"}


def _no_space_at_fsync(monkeypatch):
    import errno

    def full(fd):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(os, "fsync", full)


def test_a_full_disk_in_training_names_the_file_and_the_space(tmp_path, precomp_data, capsys, monkeypatch):
    _no_space_at_fsync(monkeypatch)
    run = tmp_path / "run"
    assert main(train_args(recipe_file(tmp_path), run, precomp_data)) == 1
    err = capsys.readouterr().err
    assert err.startswith(f"itmatch train: error: no space left on the device to write {run}/"), err
    assert "it needed at least " in err and " free there" in err and err.count("\n") == 1


def test_a_read_only_output_folder_is_one_named_error(tmp_path, precomp_data, capsys, monkeypatch):
    import errno

    read_only = tmp_path / "ro"
    real_mkdir = Path.mkdir

    def mkdir(self, *args, **kwargs):
        if str(self).startswith(str(read_only)):
            raise OSError(errno.EROFS, "Read-only file system", str(self))
        return real_mkdir(self, *args, **kwargs)

    monkeypatch.setattr(Path, "mkdir", mkdir)
    assert main(train_args(recipe_file(tmp_path), read_only / "run", precomp_data)) == 1
    err = capsys.readouterr().err
    assert err == f"itmatch train: error: cannot write {read_only / 'run'}: the file system is read-only (choose an output folder on a writable disk)\n"


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    from test_retrieval_support import search_setup

    return search_setup(tmp_path_factory)


def test_a_full_disk_in_extract_names_the_file_and_the_size_before_writing(setup, tmp_path, capsys, monkeypatch):
    import errno

    def full(fd, offset, length):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(os, "posix_fallocate", full)
    out = tmp_path / "features"
    rc = main(["extract", "--format", "karpathy", "--data", str(setup.dataset_json), "--split", "train", "--out", str(out),
               "--workers", "0", "--quiet"])  # fmt: skip
    assert rc == 1
    err = capsys.readouterr().err
    # 24 images x 1280 float32 features (EfficientNet-Lite0) + the .npy header
    assert re.match(rf"itmatch extract: error: no space left on the device to write {out}/\S+/features.npy; "
                    r"it needed at least 12\d\d\d\d bytes; \S+ (MiB|bytes) free there\n$", err), err  # fmt: skip


def test_a_full_disk_in_index_names_the_file(setup, tmp_path, capsys, monkeypatch):
    _no_space_at_fsync(monkeypatch)
    out = tmp_path / "index"
    assert main(["index", str(setup.run), str(setup.photos), "-o", str(out), "--quiet"]) == 1
    err = capsys.readouterr().err
    assert err.startswith(f"itmatch index: error: no space left on the device to write {out}/gen-000001/photos.npy; it needed at least")


def test_non_utf8_captions_in_index_are_a_named_error(setup, tmp_path, capsys):
    bad = tmp_path / "captions.txt"
    bad.write_bytes(b"a dog on the grass\n\xff\xfe a cat\n")
    assert main(["index", str(setup.run), str(setup.photos), "-o", str(tmp_path / "index"), "--captions", str(bad)]) == 1
    assert capsys.readouterr().err == f"itmatch index: error: {bad}: not UTF-8 text (invalid start byte at byte 19)\n"


# --- 7. one CSV reader ------------------------------------------------------------------------------


def test_an_unclosed_quote_in_index_captions_is_refused_like_in_training(setup, tmp_path, capsys):
    """Item 7: index --captions swallowed 39 lines into one sentence after an unclosed quote."""
    from itmatch.data.readers import _read_flickr_captions
    from itmatch.errors import DataError

    lines = ["image,caption", "a.jpg,a dog runs", 'b.jpg,"a cat sleeps'] + [f"c{i}.jpg,a bird {i}" for i in range(39)]
    lines.append('d.jpg,"a horse" jumps')
    bad = tmp_path / "captions.csv"
    bad.write_text("\n".join(lines) + "\n")
    assert main(["index", str(setup.run), str(setup.photos), "-o", str(tmp_path / "index"), "--captions", str(bad)]) == 1
    err = capsys.readouterr().err
    assert err.startswith(f"itmatch index: error: {bad}, line 3: "), err
    with pytest.raises(DataError, match=r", line 3: "):
        _read_flickr_captions(bad)  # the training reader: the same verdict, from the same parser


# --- 12. paths in a run's config ----------------------------------------------------------------------


def test_a_run_trained_with_relative_paths_works_from_any_directory(tmp_path, precomp_data, capsys, monkeypatch):
    """Item 12: relative paths in a run's saved config resolved against the current directory."""
    monkeypatch.chdir(tmp_path)
    rel_data = precomp_data.relative_to(tmp_path)
    recipe = recipe_file(tmp_path, {**ONE_STAGE, "stages": ONE_STAGE["stages"][:1]})
    assert main(train_args(recipe.relative_to(tmp_path), Path("run"), rel_data)) == 0
    saved = yaml.safe_load((tmp_path / "run" / "config.yaml").read_text())
    assert saved["data"]["path"] == str(precomp_data)
    photos = tmp_path / "p"
    photos.mkdir()
    monkeypatch.chdir("/")
    capsys.readouterr()
    assert main(["evaluate", str(tmp_path / "run"), "--split", "test", "--json"]) == 0
    assert "rsum" in json.loads(capsys.readouterr().out)


def test_an_index_built_with_a_relative_run_path_opens_from_any_directory(setup, tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(setup.run.parent)
    index = tmp_path / "index"
    assert main(["index", setup.run.name, str(setup.photos), "-o", str(index), "--quiet"]) == 0
    monkeypatch.chdir("/")
    capsys.readouterr()
    assert main(["search", str(index), "--text", "a red circle", "-k", "3", "--json"]) == 0
    assert len(json.loads(capsys.readouterr().out)["photos"]) == 3


# --- 13. index --threads, and progress saved by time ------------------------------------------------


def test_index_threads_option_sets_and_restores_torch_threads(setup, tmp_path, monkeypatch):
    """Item 13: itmatch index had no --threads."""
    from itmatch.inference import Matcher

    seen = []
    real = Matcher.embed_images

    def spy(self, images, batch_size=32):
        seen.append(torch.get_num_threads())
        return real(self, images, batch_size=batch_size)

    monkeypatch.setattr(Matcher, "embed_images", spy)
    before = torch.get_num_threads()
    want = 3 if before != 3 else 2
    assert main(["index", str(setup.run), str(setup.photos), "-o", str(tmp_path / "index"), "--threads", str(want), "--quiet"]) == 0
    assert seen and set(seen) == {want} and torch.get_num_threads() == before


def test_an_interrupted_small_first_build_keeps_progress_saved_by_time(setup, tmp_path):
    """Item 13: a first build of fewer than 2,048 photos kept no progress when interrupted."""
    from itmatch.inference import Matcher
    from itmatch.retrieval import PhotoIndex, build_index

    matcher = Matcher.from_run(setup.run)
    index = tmp_path / "index"

    def stop_after_two_batches(done, total):
        if done >= 8:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        build_index(matcher, setup.photos, index, batch_size=4, save_every_seconds=1e-9, progress=stop_after_two_batches)
    assert len(PhotoIndex.open(index)) >= 4  # at least the first batch survived the interruption
    kept = len(PhotoIndex.open(index))
    summary = build_index(matcher, setup.photos, index, batch_size=4)
    assert summary.reused == kept and summary.photos == 20


# --- 14. cosmetic --------------------------------------------------------------------------------------


def test_init_from_a_yaml_file_is_a_plain_error(tmp_path, precomp_data, capsys):
    recipe = recipe_file(tmp_path)
    assert main([*train_args(recipe, tmp_path / "run", precomp_data), "--init-from", str(recipe)]) == 1
    err = capsys.readouterr().err
    assert err.startswith(f"itmatch train: error: {recipe} is not a PyTorch checkpoint")
    assert "weights_only" not in err and err.count("\n") == 1


def test_top_level_help_is_a_description_for_users(capsys):
    with pytest.raises(SystemExit):
        main(["--help"])
    out = capsys.readouterr().out
    assert "match photos and sentences" in out and "``" not in out and "in-process" not in out


# --- 8-11, 14d. the service ------------------------------------------------------------------------


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _wait_for(url: str, proc=None, timeout: float = 120) -> None:
    import time

    import httpx

    deadline = time.time() + timeout
    while time.time() < deadline:
        if proc is not None and proc.poll() is not None:
            pytest.fail(f"server exited: {proc.stderr.read() if proc.stderr else ''}")
        try:
            if httpx.get(url, timeout=2).status_code in (200, 401):
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
    pytest.fail(f"{url} did not answer within {timeout} s")


def test_slow_header_clients_cannot_exhaust_the_server_and_are_logged_once(setup, tmp_path):
    """Item 8: ~20,000 slow-header connections exhausted the server's file descriptors (new
    connections refused, 112 MB of log in 35 s)."""
    import socket
    import time

    import httpx

    pytest.importorskip("fastapi")
    port = _free_port()
    log = tmp_path / "serve.log"
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT / "src"), "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "itmatch", "serve", str(setup.index), "--port", str(port), "--threads", "1",
           "--max-connections", "20", "--header-timeout", "1"]  # fmt: skip
    with open(log, "w") as err:
        proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=err, env=env, text=True)
    try:
        base = f"http://127.0.0.1:{port}"
        _wait_for(base + "/api/health", proc)
        slow = []
        for _ in range(300):  # a slowloris: connect, send half a header, never finish
            s = socket.create_connection(("127.0.0.1", port))
            s.sendall(b"GET /api/health HTTP/1.1\r\nHost: 127.0.0.1\r\n")
            slow.append(s)
        time.sleep(0.5)
        open_fds = len(os.listdir(f"/proc/{proc.pid}/fd"))
        assert open_fds < 20 + 60  # the limit, plus the files the server itself holds
        time.sleep(1.5)  # past the header timeout: the slow connections are closed by the server
        for s in slow:
            s.settimeout(2)
            try:
                assert s.recv(1024) == b""
            except ConnectionResetError:
                pass  # aborted: also closed
            s.close()
        r = httpx.get(base + "/api/search/text", params={"q": "a red circle", "k": 3}, timeout=10)
        assert r.status_code == 200 and len(r.json()["photos"]) == 3
        # The Host check on the real server (item 11): a DNS-rebinding page's request is refused.
        evil = httpx.get(base + "/api/health", headers={"Host": "attacker.example"}, timeout=10)
        assert evil.status_code == 400 and "attacker.example" in evil.json()["detail"]
    finally:
        proc.terminate()
        proc.wait(timeout=30)
    text = log.read_text()
    assert text.count("refusing new connections") == 1, text
    assert len(text) < 5000


@pytest.fixture()
def live_server(setup):
    """An in-process server (make_server, the guards included) over the search setup's index."""
    import threading
    import time

    from itmatch.retrieval import SearchEngine
    from itmatch.retrieval.service import create_app, make_server

    pytest.importorskip("fastapi")
    started = []

    def start(**app_options):
        app = create_app(engine=SearchEngine.open(setup.index), **app_options)
        port = _free_port()
        srv = make_server(app, "127.0.0.1", port)
        thread = threading.Thread(target=srv.run, daemon=True)
        thread.start()
        deadline = time.time() + 30
        while not srv.started:
            assert time.time() < deadline and thread.is_alive(), "server did not start"
            time.sleep(0.05)
        started.append((srv, thread))
        return f"http://127.0.0.1:{port}"

    yield start
    for srv, thread in started:
        srv.should_exit = True
        thread.join(timeout=10)


def test_a_slow_upload_decode_does_not_block_text_queries(live_server, monkeypatch):
    """Item 9: decoding a large upload blocked the event loop (text p99 9 ms -> 2.7 s).

    No wall-clock threshold (it would fail on a loaded machine): the decode is held open until
    the text queries have been answered, so they can only succeed if the decode runs off the
    event loop; inline, they would wait for it and time out."""
    import io
    import threading

    import httpx
    from PIL import Image

    from itmatch.retrieval import service

    real = service._decode_image
    release, started, lock = threading.Event(), threading.Event(), threading.Lock()
    decoding = {"now": 0, "most": 0}

    def held_decode(*args):
        with lock:
            decoding["now"] += 1
            decoding["most"] = max(decoding["most"], decoding["now"])
        started.set()
        release.wait(timeout=60)
        with lock:
            decoding["now"] -= 1
        return real(*args)

    monkeypatch.setattr(service, "_decode_image", held_decode)
    base = live_server(upload_workers=1)
    buf = io.BytesIO()
    Image.new("RGB", (64, 64), (10, 200, 30)).save(buf, format="PNG")
    statuses: list[int] = []

    def upload():
        r = httpx.post(base + "/api/search/image", files={"file": ("q.png", buf.getvalue(), "image/png")}, timeout=90)
        statuses.append(r.status_code)

    uploads = [threading.Thread(target=upload) for _ in range(2)]
    for u in uploads:
        u.start()
    try:
        assert started.wait(timeout=30), "the upload never reached the decoder"
        for _ in range(5):
            r = httpx.get(base + "/api/search/text", params={"q": "a blue square", "k": 3}, timeout=20)
            assert r.status_code == 200
            assert decoding["now"] == 1  # answered while a decode was still in progress
    finally:
        release.set()
        for u in uploads:
            u.join()
    assert statuses == [200, 200]
    assert decoding["most"] == 1  # one upload worker: the two decodes ran one after the other


def _png_claiming(width: int, height: int) -> bytes:
    """A tiny PNG whose header claims ``width`` x ``height`` pixels (a decompression bomb)."""
    import io
    import struct
    import zlib

    from PIL import Image

    buf = io.BytesIO()
    Image.new("RGB", (1, 1)).save(buf, format="PNG")
    data = bytearray(buf.getvalue())
    data[16:24] = struct.pack(">II", width, height)
    data[29:33] = struct.pack(">I", zlib.crc32(bytes(data[12:29])) & 0xFFFFFFFF)
    return bytes(data)


@pytest.fixture()
def client_for(setup):
    pytest.importorskip("fastapi")
    from fastapi.testclient import TestClient

    from itmatch.retrieval import SearchEngine
    from itmatch.retrieval.service import create_app

    engine = SearchEngine.open(setup.index)

    def make(base_url: str = "http://127.0.0.1:8000", **options):
        return TestClient(create_app(engine=engine, **options), base_url=base_url)

    return make


def test_an_upload_over_pils_bomb_limit_is_413(client_for):
    """Item 10: an upload over ~178 MP got 400 "not an image PIL can read" instead of 413."""
    client = client_for()
    for size in ((20_000, 10_000), (8_000, 8_000)):  # over PIL's 2 x 89 MP limit; over ours only
        r = client.post("/api/search/image", files={"file": ("bomb.png", _png_claiming(*size), "image/png")})
        assert r.status_code == 413, (size, r.text)
        assert "image too large" in r.json()["detail"]


def test_host_header_check_and_token(client_for):
    """Item 11: no Host-header check and no auth option (a DNS-rebinding page could read photos)."""
    assert client_for("http://localhost:8000").get("/api/health").status_code == 200
    assert client_for("http://[::1]:8000").get("/api/health").status_code == 200
    r = client_for("http://rebind.attacker.example:8000").get("/api/health")
    assert r.status_code == 400 and "rebind.attacker.example" in r.json()["detail"]
    extra = client_for("http://photos.lan:8000", allowed_hosts=["127.0.0.1", "photos.lan"])
    assert extra.get("/api/health").status_code == 200
    assert client_for("http://anything:8000", allowed_hosts=["*"]).get("/api/health").status_code == 200

    locked = client_for(token="s3cret")
    r = locked.get("/api/search/text", params={"q": "a dog"})
    assert r.status_code == 401 and r.headers["www-authenticate"].startswith("Bearer")
    assert locked.get("/api/health", headers={"Authorization": "Bearer wrong"}).status_code == 401
    assert locked.get("/api/health", headers={"Authorization": "Bearer s3cret"}).status_code == 200
    first = locked.get("/", params={"token": "s3cret"})  # the address the server prints
    assert first.status_code == 200 and "HttpOnly" in first.headers["set-cookie"]
    assert locked.get("/api/health").status_code == 200  # the page's next requests carry the cookie


def test_serve_answers_the_bound_names_by_default():
    from itmatch.commands.serve import allowed_hosts

    assert allowed_hosts("127.0.0.1", []) == ["127.0.0.1", "::1", "localhost"]
    assert allowed_hosts("192.168.1.5", ["photos.lan"]) == ["192.168.1.5", "photos.lan"]
    import socket

    assert {"127.0.0.1", "localhost", socket.gethostname()} <= set(allowed_hosts("0.0.0.0", []))


def test_json_true_is_not_a_k(client_for):
    """Item 14: JSON k: true was accepted as k = 1."""
    client = client_for()
    assert client.post("/api/search/text", json={"query": "a dog", "k": True}).status_code == 422
    assert client.post("/api/search/text", json={"query": "a dog", "k": 2}).status_code == 200
