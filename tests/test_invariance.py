"""Modality-invariance metrics (probe, centroid distance, MMD) and the evaluation plots."""

from __future__ import annotations

import json
import struct

import numpy as np
import pytest
import torch

from itmatch.evaluation.invariance import (
    MMD_BANDWIDTH,
    centroid_distance,
    invariance_metrics,
    mmd,
    probe_accuracy,
)
from itmatch.evaluation.plots import plot_training_curves, tsne_coordinates, tsne_grid, tsne_map


def unit(x: np.ndarray) -> np.ndarray:
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def clouds(n_img: int, n_txt: int, d: int = 16, shift: float = 0.0, seed: int = 0):
    """Unit vectors; texts shifted by ``shift`` along the first axis before normalising."""
    rng = np.random.default_rng(seed)
    img = unit(rng.standard_normal((n_img, d)))
    txt = rng.standard_normal((n_txt, d))
    txt[:, 0] += shift
    return img.astype(np.float32), unit(txt).astype(np.float32)


def test_probe_reads_chance_on_one_distribution_and_100_on_separated_clouds():
    img, txt = clouds(800, 4000)  # unbalanced on purpose: the probe subsamples texts to 800
    assert abs(probe_accuracy(img, txt) - 50.0) < 6.0
    img, txt = clouds(800, 4000, shift=6.0)
    assert probe_accuracy(img, txt) > 97.0


def test_probe_is_seeded_and_accepts_torch_or_numpy():
    img, txt = clouds(300, 900, shift=1.0)
    a = probe_accuracy(img, txt, seed=3)
    assert probe_accuracy(torch.from_numpy(img), torch.from_numpy(txt), seed=3) == a
    assert probe_accuracy(img, txt, seed=3) == a
    assert 50.0 < a <= 100.0


def test_centroid_distance_and_mmd_separate_same_from_shifted():
    img, txt = clouds(600, 3000, d=8)
    same_c, same_mmd = centroid_distance(img, txt), mmd(img, txt)
    img, txt = clouds(600, 3000, d=8, shift=1.5)
    shift_c, shift_mmd = centroid_distance(img, txt), mmd(img, txt)
    assert same_c < 0.1 and abs(same_mmd) < 0.01
    assert shift_c > 0.4 and shift_mmd > 0.05
    assert shift_mmd > 20 * abs(same_mmd)
    # exact values on a tiny case
    a = np.array([[1.0, 0.0], [1.0, 0.0]])
    b = np.array([[0.0, 1.0], [0.0, 1.0]])
    assert centroid_distance(a, b) == pytest.approx(np.sqrt(2))
    # kxx = kyy = 1 off the diagonal, kxy = exp(-2 / (2 * 1)) with bandwidth 1
    assert mmd(a, b, bandwidth=1.0) == pytest.approx(2 - 2 * np.exp(-1.0))
    assert mmd(a, a) == 0.0  # every point identical: nothing to measure


def slow_mmd(a: np.ndarray, b: np.ndarray, sigma: float) -> float:
    """Unbiased MMD^2 with an RBF kernel, one pair at a time."""

    def k(x, y):
        return float(np.exp(-np.sum((np.float64(x) - np.float64(y)) ** 2) / (2 * sigma**2)))

    n, m = len(a), len(b)
    xx = sum(k(a[i], a[j]) for i in range(n) for j in range(n) if i != j) / (n * (n - 1))
    yy = sum(k(b[i], b[j]) for i in range(m) for j in range(m) if i != j) / (m * (m - 1))
    xy = sum(k(a[i], b[j]) for i in range(n) for j in range(m)) / (n * m)
    return xx + yy - 2 * xy


def test_mmd_uses_one_fixed_bandwidth_for_every_call():
    # Two "models" whose embeddings spread differently: a per-call median bandwidth would score
    # them on different kernel scales; the default is the same sigma for both, and it is reported.
    tight_img, tight_txt = clouds(40, 60, d=6, shift=0.5, seed=1)
    wide_img, wide_txt = clouds(40, 60, d=6, shift=3.0, seed=2)
    assert MMD_BANDWIDTH == 1.0
    for img, txt in ((tight_img, tight_txt), (wide_img, wide_txt)):
        want = slow_mmd(img, txt, sigma=1.0)
        assert mmd(img, txt) == pytest.approx(want, rel=1e-9, abs=1e-12)
        metrics = invariance_metrics(img, txt)
        assert metrics["mmd"] == pytest.approx(want, rel=1e-9, abs=1e-12)
        assert metrics["mmd_bandwidth"] == 1.0
    # the median heuristic, still available on request, is a different kernel per call
    pooled = np.concatenate([wide_img, wide_txt]).astype(np.float64)
    dists = [np.linalg.norm(pooled[i] - pooled[j]) for i in range(100) for j in range(100) if i != j]
    squared = np.sort(np.square(dists))
    sigma_median = float(np.sqrt(squared[(len(squared) - 1) // 2]))  # the lower median, as torch takes
    assert abs(sigma_median - 1.0) > 0.05  # so the check below tells the two kernels apart
    assert mmd(wide_img, wide_txt, bandwidth=None) == pytest.approx(slow_mmd(wide_img, wide_txt, sigma_median), rel=1e-9)
    assert mmd(wide_img, wide_txt, bandwidth=None) != pytest.approx(mmd(wide_img, wide_txt), rel=1e-3)


def test_mmd_subsamples_deterministically():
    img, txt = clouds(600, 600, d=8, shift=1.0)
    assert mmd(img, txt, max_samples=200, seed=1) == mmd(img, txt, max_samples=200, seed=1)
    assert mmd(img, txt, max_samples=200, seed=1) == pytest.approx(mmd(img, txt, max_samples=None), abs=0.05)


def test_invariance_metrics_keys_and_bad_inputs():
    img, txt = clouds(100, 500)
    m = invariance_metrics(img, txt, seed=0)
    assert set(m) == {"probe_acc", "centroid_dist", "mmd", "mmd_bandwidth"}
    assert all(isinstance(v, float) for v in m.values())
    with pytest.raises(ValueError, match="differ in dimension"):
        invariance_metrics(img, txt[:, :5])
    with pytest.raises(ValueError, match="at least 4 embeddings of each modality"):
        probe_accuracy(img[:3], txt)
    with pytest.raises(ValueError, match="2-D"):
        centroid_distance(img[0], txt)
    bad = txt.copy()
    bad[2, 2] = np.nan
    with pytest.raises(ValueError, match="NaN"):
        mmd(img, bad)


# ---------------------------------------------------------------------------------------------
# Plots
# ---------------------------------------------------------------------------------------------


def assert_png(path, min_bytes: int = 5000) -> tuple[int, int]:
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n", f"{path} is not a PNG"
    assert len(data) > min_bytes, f"{path} is suspiciously small ({len(data)} bytes)"
    width, height = struct.unpack(">II", data[16:24])
    return width, height


def test_tsne_map_and_grid_write_pngs(tmp_path):
    img, txt = clouds(60, 300, shift=3.0)
    coords, is_image = tsne_coordinates(img, txt, max_points=80, seed=0)
    assert coords.shape == (80, 2) and is_image.sum() == 40
    out = tsne_map(img, txt, tmp_path / "maps" / "one.png", title="shifted", max_points=80)
    assert out == tmp_path / "maps" / "one.png"
    w1, _ = assert_png(out)
    grid = tsne_grid(
        [("shifted", img, txt), ("same", *clouds(30, 150))], tmp_path / "grid.png", max_points=60
    )
    w2, _ = assert_png(grid)
    assert w2 > w1  # side by side panels
    with pytest.raises(ValueError, match="no maps"):
        tsne_grid([], tmp_path / "empty.png")


def test_training_curves_png(tmp_path):
    log = tmp_path / "metrics.jsonl"
    records = []
    step = 0
    for stage, epochs in (("warmup", 2), ("classifier", 1), ("adversarial", 2)):
        for epoch in range(1, epochs + 1):  # the trainer's epoch restarts with every stage
            for _ in range(3):
                step += 10
                records.append(
                    {"global_step": step, "stage": stage, "epoch": epoch, "train/loss": 1.0 / step}
                )
            records.append(
                {"global_step": step, "stage": stage, "epoch": epoch, "val/rsum": 100.0 + step,
                 "val/probe_acc": 90.0 - step / 10, "best": True, "note": "text is skipped"}
            )  # fmt: skip
    log.write_text("\n".join(json.dumps(r) for r in records) + "\n\n")
    out = plot_training_curves(log, tmp_path / "curves.png")
    assert_png(out)

    # the brief's plain "step" key works too
    plain = tmp_path / "plain.jsonl"
    plain.write_text(
        json.dumps({"epoch": 1, "step": 100, "stage": "warmup", "train/loss": 0.3, "val/rsum": 120.0}) + "\n"
    )
    assert_png(plot_training_curves(plain, tmp_path / "plain.png"), min_bytes=2000)

    bad = tmp_path / "bad.jsonl"
    bad.write_text(json.dumps(records[0]) + "\n{not json\n")
    with pytest.raises(ValueError, match="bad.jsonl, line 2: not valid JSON"):
        plot_training_curves(bad, tmp_path / "x.png")
    empty = tmp_path / "empty.jsonl"
    empty.write_text(json.dumps({"epoch": 1}) + "\n")
    with pytest.raises(ValueError, match="no 'train/loss'"):
        plot_training_curves(empty, tmp_path / "x.png")
