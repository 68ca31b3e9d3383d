"""``itmatch evaluate`` (run and saved embeddings), ``tsne`` and ``compare`` through the real
command line, in-process, on a tiny learnable precomp data set (60 test images)."""

from __future__ import annotations

import json
import struct
from pathlib import Path

import numpy as np
import pytest
import torch

from itmatch.cli import main

from conftest import TINY_MODEL, write_precomp

# Every tiny run: one epoch of each of vsepp's two stages, the tiny model, dev for selection.
TINY_SETS = [*TINY_MODEL, "stages.*.epochs=1", "stages.*.lr=1e-3", "training.log_every=50"]


def data_flags(data: Path) -> list[str]:
    return ["--format", "precomp", "--data", str(data), "--val-split", "dev"]


def set_flags(overrides: list[str]) -> list[str]:
    return [arg for o in overrides for arg in ("--set", o)]


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """(run folder, data folder) of one tiny vsepp run, shared by this module's tests."""
    root = tmp_path_factory.mktemp("cli")
    data = write_precomp(root / "precomp", {"train": 200, "dev": 60, "test": 60})
    run = root / "run"
    argv = [
        "train",
        "--config",
        "vsepp",
        "--out",
        str(run),
        *data_flags(data),
        "--quiet",
        *set_flags(TINY_SETS),
    ]
    assert main(argv) == 0
    return run, data


def slow_recall(im: np.ndarray, tx: np.ndarray) -> dict[str, float]:
    """R@1/5/10 both ways and rsum by full argsort per query (tie-free float scores)."""
    return slow_recall_of(im.astype(np.float64) @ tx.astype(np.float64).T)


def slow_recall_of(sims: np.ndarray) -> dict[str, float]:
    """:func:`slow_recall` of an N x 5N similarity matrix."""
    n = len(sims)
    i2t = [
        min(int(np.where(np.argsort(-sims[i]) == c)[0][0]) for c in range(5 * i, 5 * i + 5)) for i in range(n)
    ]
    t2i = [int(np.where(np.argsort(-sims[:, j]) == j // 5)[0][0]) for j in range(5 * n)]
    out = {}
    for k in (1, 5, 10):
        out[f"i2t_r{k}"] = 100.0 * np.mean(np.array(i2t) < k)
        out[f"t2i_r{k}"] = 100.0 * np.mean(np.array(t2i) < k)
    out["rsum"] = sum(out.values())
    return out


@pytest.mark.filterwarnings("error::UserWarning")  # e.g. torch reading a read-only memmap
def test_evaluate_saves_embeddings_that_score_the_same_when_read_back(tiny_run, tmp_path, capsys):
    run, _ = tiny_run
    prefix = tmp_path / "emb" / "tiny"
    prefix.parent.mkdir()
    assert main(["evaluate", str(run), "--split", "test", "--save-emb", str(prefix), "--json"]) == 0
    from_run = json.loads(capsys.readouterr().out)
    im = np.load(f"{prefix}_images.npy")
    tx = np.load(f"{prefix}_texts.npy")
    assert im.shape == (60, 32) and tx.shape == (300, 32) and im.dtype == tx.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(im, axis=1), 1.0, atol=1e-5)  # joint-space vectors
    # the printed recall is the recall of the saved vectors, by a slow reference written here
    for key, value in slow_recall(im, tx).items():
        assert from_run[key] == pytest.approx(value, abs=1e-9), key
    assert from_run["rsum"] > 200  # the tiny model learned (chance rsum on 60 images: 52.1)
    assert from_run["mmd_bandwidth"] == 1.0

    # the same vectors read back through --image-emb/--text-emb give the same numbers
    argv = ["evaluate", "--image-emb", f"{prefix}_images.npy", "--text-emb", f"{prefix}_texts.npy"]
    assert main([*argv, "--json"]) == 0
    assert json.loads(capsys.readouterr().out) == from_run
    # the text report names the protocol and the MMD kernel
    assert main([*argv, "--protocol", "5fold"]) == 0
    captured = capsys.readouterr()
    assert "60 images, 300 captions, protocol 5fold" in captured.err
    assert "rsum" in captured.out and "fixed bandwidth sigma = 1" in captured.out


def test_evaluate_errors_name_the_problem(tiny_run, tmp_path, capsys):
    run, _ = tiny_run
    prefix = tmp_path / "e"
    assert (
        main(
            ["evaluate", str(run), "--split", "test", "--save-emb", str(prefix), "--json", "--no-invariance"]
        )
        == 0
    )
    capsys.readouterr()
    images, texts = f"{prefix}_images.npy", f"{prefix}_texts.npy"

    def error(argv: list[str]) -> str:
        assert main(argv) == 1
        return capsys.readouterr().err

    assert "itmatch evaluate: error: --image-emb and --text-emb go together" in error(
        ["evaluate", "--image-emb", images]
    )
    assert "not both" in error(["evaluate", str(run), "--image-emb", images, "--text-emb", texts])
    missing = tmp_path / "missing.npy"
    assert f"--text-emb file {missing} does not exist" in error(
        ["evaluate", "--image-emb", images, "--text-emb", str(missing)]
    )
    np.save(tmp_path / "short.npy", np.load(texts)[:299])
    err = error(["evaluate", "--image-emb", images, "--text-emb", str(tmp_path / "short.npy")])
    assert "itmatch evaluate: error:" in err and "300 captions, got 299" in err
    # "1k" promises 1,000 images: 60 are refused with the names that fit
    err = error(["evaluate", "--image-emb", images, "--text-emb", texts, "--protocol", "1k"])
    assert "itmatch evaluate: error:" in err and "'1k' scores exactly 1,000 test images" in err
    assert "got 60 images: use 'all'" in err and "'5fold1k'" in err


def png_size(path: Path) -> tuple[int, int]:
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n", f"{path} is not a PNG"
    return struct.unpack(">II", data[16:24])


def test_tsne_writes_a_map(tiny_run, tmp_path, capsys):
    run, _ = tiny_run
    out = tmp_path / "maps" / "tsne.png"
    out.parent.mkdir()
    assert (
        main(["tsne", str(run), "--split", "test", "-o", str(out), "--max-points", "40", "--device", "cpu"])
        == 0
    )
    assert f"wrote {out}" in capsys.readouterr().err
    width, height = png_size(out)
    assert width >= 300 and height >= 300 and out.stat().st_size > 5_000
    # a split the data set does not have is a named error, not a traceback
    assert main(["tsne", str(run), "--split", "nosuch", "-o", str(tmp_path / "x.png")]) == 1
    err = capsys.readouterr().err
    assert err.startswith("itmatch tsne: error:") and "nosuch" in err
    assert not (tmp_path / "x.png").exists()


def test_compare_prints_the_table_it_writes(tiny_run, tmp_path, capsys):
    _, data = tiny_run
    out = tmp_path / "cmp"
    argv = ["compare", "--recipes", "vsepp", "--seeds", "2", "--out", str(out), *data_flags(data),
            "--quiet", *set_flags(TINY_SETS)]  # fmt: skip
    assert main(argv) == 0
    printed = capsys.readouterr().out
    table = (out / "table.md").read_text()
    assert printed.strip() == table.strip()
    results = json.loads((out / "results.json").read_text())
    assert results["protocol"] == "all" and results["eval_split"] == "test" and results["seeds"] == [0, 1]
    assert results["mmd_bandwidth"] == 1.0
    rsums = [r["rsum"] for r in results["per_seed"]["vsepp"]]
    assert len(rsums) == 2 and rsums[0] != rsums[1]  # two seeds, two runs
    mean = (rsums[0] + rsums[1]) / 2
    assert "| vsepp (n=2) | " in table and f"{mean:.1f} ± " in table
    for seed in (0, 1):
        assert (out / f"vsepp-seed{seed}" / "checkpoints" / "best.pt").is_file()
    assert png_size(out / "tsne.png")[0] >= 300
    # a protocol the split cannot have is refused before anything trains
    refused = tmp_path / "refused"
    assert main([*argv[:6], str(refused), *argv[7:], "--protocol", "1k"]) == 1
    err = capsys.readouterr().err
    assert err.startswith("itmatch compare: error: test split") and "'1k' scores exactly 1,000" in err
    assert not refused.exists()


def test_evaluate_center_scores_each_modality_minus_its_mean(tiny_run, tmp_path, capsys):
    run, _ = tiny_run
    prefix = tmp_path / "tiny"
    assert main(["evaluate", str(run), "--split", "test", "--save-emb", str(prefix), "--json"]) == 0
    raw = json.loads(capsys.readouterr().out)
    assert main(["evaluate", str(run), "--split", "test", "--center", "--json"]) == 0
    centred = json.loads(capsys.readouterr().out)
    im, tx = (
        np.load(f"{prefix}_images.npy").astype(np.float64),
        np.load(f"{prefix}_texts.npy").astype(np.float64),
    )
    im, tx = im - im.mean(0), tx - tx.mean(0)  # by hand: centre, then renormalise
    im, tx = im / np.linalg.norm(im, axis=1, keepdims=True), tx / np.linalg.norm(tx, axis=1, keepdims=True)
    for key, value in slow_recall(im, tx).items():
        assert centred[key] == pytest.approx(value, abs=1e-9), key
    from itmatch.evaluation.invariance import centroid_distance

    # renormalising moves the means again, so the gap is smaller, not zero: exactly the by-hand one
    assert centred["centroid_dist"] == pytest.approx(centroid_distance(im, tx), abs=1e-5)
    assert centred["centroid_dist"] < raw["centroid_dist"]


def test_evaluate_two_runs_scores_the_mean_of_their_similarities(tiny_run, tmp_path, capsys):
    run, data = tiny_run
    other = tmp_path / "seed1"  # a second model: the same recipe from another seed
    assert main(["train", "--config", "vsepp", "--out", str(other), *data_flags(data), "--quiet",
                 *set_flags([*TINY_SETS, "seed=1"])]) == 0  # fmt: skip
    sims = []
    for i, member in enumerate((run, other)):
        assert main(["evaluate", str(member), "--split", "test", "--save-emb", str(tmp_path / f"m{i}"), "--json"]) == 0
        capsys.readouterr()
        sims.append(np.load(tmp_path / f"m{i}_images.npy").astype(np.float64) @ np.load(tmp_path / f"m{i}_texts.npy").astype(np.float64).T)
    assert not np.allclose(sims[0], sims[1], atol=1e-3)  # two different models

    assert main(["evaluate", str(run), str(other), "--split", "test", "--save-emb", str(tmp_path / "ens"), "--json"]) == 0
    ensemble = json.loads(capsys.readouterr().out)
    im, tx = np.load(tmp_path / "ens_images.npy"), np.load(tmp_path / "ens_texts.npy")
    assert im.shape == (60, 64) and tx.shape == (300, 64)  # the members' 32 dimensions side by side
    np.testing.assert_allclose(np.linalg.norm(tx, axis=1), 1.0, atol=1e-5)
    mean = (sims[0] + sims[1]) / 2  # by hand: each pair scores the mean of the two cosines
    np.testing.assert_allclose(im.astype(np.float64) @ tx.astype(np.float64).T, mean, atol=1e-5)
    for key, value in slow_recall_of(mean).items():
        assert ensemble[key] == pytest.approx(value, abs=1e-9), key

    assert main(["evaluate", str(run), str(other), "--split", "test", "--no-invariance"]) == 0
    assert f"ensemble of 2 models ({run}, {other})" in capsys.readouterr().err


def test_an_ensemble_names_itself_and_needs_two_models(tiny_run):
    from itmatch.errors import ItmatchError
    from itmatch.inference import Ensemble, Matcher

    run, _ = tiny_run
    one = Matcher.from_run(run)
    with pytest.raises(ItmatchError, match="at least 2 models, got 1"):
        Ensemble([one])
    pair = Ensemble.from_runs([run, run / "checkpoints" / "last.pt"])
    assert pair.embed_dim == 2 * one.embed_dim
    assert pair.identity["checkpoint_sha256"] not in {m.sha256 for m in pair.members}
    assert pair.identity["recipe"] == "ensemble(vsepp, vsepp)"
    texts = ["a dog runs", "two people on a bench"]
    by_hand = torch.cat([m.embed_texts(texts) for m in pair.members], dim=1) / 2**0.5
    torch.testing.assert_close(pair.embed_texts(texts), by_hand)
