"""Figures: t-SNE maps of both modalities and training curves, written as PNG files.

matplotlib and scikit-learn are imported inside the functions, so importing this module (or
``itmatch.evaluation``) stays light. Figures are drawn on the Agg canvas directly
(``matplotlib.figure.Figure`` + ``FigureCanvasAgg``), never through ``pyplot``: no global backend is
switched, no window opens, and nothing leaks between calls.
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from itmatch.evaluation.arrays import ArrayLike, as_numpy

IMAGE_COLOUR = "tab:blue"
TEXT_COLOUR = "tab:orange"


def new_figure(width: float, height: float) -> Any:
    """A matplotlib Figure of ``width`` x ``height`` inches at 100 dpi, drawn off-screen (Agg)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height), dpi=100)
    FigureCanvasAgg(fig)
    return fig


def save_figure(fig: Any, path: str | Path) -> Path:
    """Write ``fig`` as a PNG at ``path`` (folders created); returns the path."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, format="png")
    return path


def tsne_coordinates(
    img: ArrayLike, txt: ArrayLike, *, max_points: int = 1000, seed: int = 0
) -> tuple[np.ndarray, np.ndarray]:
    """2-D t-SNE coordinates of a (seeded) subsample of both modalities.

    At most ``max_points`` points in all: half from each modality when both have enough, the
    rest from the other when one is short. Returns ``(coords (n, 2), is_image (n,) bool)``.
    """
    a = as_numpy(img, "image embeddings", min_rows=1).astype(np.float64)
    b = as_numpy(txt, "text embeddings", min_rows=1).astype(np.float64)
    if a.shape[1] != b.shape[1]:
        raise ValueError(f"image and text embeddings differ in dimension: {a.shape} vs {b.shape}")
    if max_points < 4:
        raise ValueError(f"max_points must be >= 4, got {max_points}")
    rng = np.random.default_rng(seed)
    n_a = min(len(a), max(max_points // 2, max_points - len(b)))
    n_b = min(len(b), max_points - n_a)
    a = a[np.sort(rng.choice(len(a), size=n_a, replace=False))]
    b = b[np.sort(rng.choice(len(b), size=n_b, replace=False))]
    x = np.concatenate([a, b])
    if len(x) < 4:
        raise ValueError(f"t-SNE needs at least 4 points, got {len(a)} images and {len(b)} texts")

    from sklearn.manifold import TSNE
    from threadpoolctl import threadpool_limits  # a scikit-learn dependency

    perplexity = float(min(30.0, (len(x) - 1) / 3.0))
    tsne = TSNE(n_components=2, perplexity=perplexity, init="pca", random_state=seed)
    # One thread: sklearn's Barnes-Hut loop is OpenMP-parallel and slows down many-fold when the
    # cores are shared (80 points: 7 s on 2 threads vs 0.3 s on 1, measured on a busy 2-core box).
    with threadpool_limits(limits=1):
        coords = tsne.fit_transform(x)
    return coords, np.r_[np.ones(n_a, dtype=bool), np.zeros(n_b, dtype=bool)]


def _draw_map(ax: Any, coords: np.ndarray, is_image: np.ndarray, title: str | None) -> None:
    ax.scatter(
        *coords[is_image].T, s=6, c=IMAGE_COLOUR, alpha=0.7, linewidths=0, label=f"image ({is_image.sum()})"
    )
    ax.scatter(
        *coords[~is_image].T, s=6, c=TEXT_COLOUR, alpha=0.7, linewidths=0, label=f"text ({(~is_image).sum()})"
    )
    ax.set_xticks([])
    ax.set_yticks([])
    ax.legend(loc="best", markerscale=3, fontsize=8)
    if title:
        ax.set_title(title, fontsize=10)


def tsne_map(
    img: ArrayLike,
    txt: ArrayLike,
    path: str | Path,
    title: str | None = None,
    max_points: int = 1000,
    seed: int = 0,
) -> Path:
    """Write a PNG t-SNE map of image and text embeddings, coloured by modality; returns the path."""
    coords, is_image = tsne_coordinates(img, txt, max_points=max_points, seed=seed)
    fig = new_figure(6, 6)
    _draw_map(fig.add_subplot(1, 1, 1), coords, is_image, title)
    fig.tight_layout()
    return save_figure(fig, path)


def tsne_grid(
    maps: Sequence[tuple[str, ArrayLike, ArrayLike]],
    path: str | Path,
    max_points: int = 1000,
    seed: int = 0,
) -> Path:
    """Write side-by-side t-SNE maps, one panel per ``(title, image_emb, text_emb)``; returns the path."""
    if not maps:
        raise ValueError("tsne_grid: no maps given")
    fig = new_figure(4.5 * len(maps), 4.8)
    for k, (title, img, txt) in enumerate(maps):
        coords, is_image = tsne_coordinates(img, txt, max_points=max_points, seed=seed)
        _draw_map(fig.add_subplot(1, len(maps), k + 1), coords, is_image, title)
    fig.tight_layout()
    return save_figure(fig, path)


def _read_jsonl(path: Path) -> list[dict[str, Any]]:
    records = []
    for lineno, line in enumerate(path.read_text().splitlines(), start=1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as exc:
            raise ValueError(f"{path}, line {lineno}: not valid JSON ({exc.msg})") from exc
        if not isinstance(record, dict):
            raise ValueError(f"{path}, line {lineno}: expected a JSON object, got {type(record).__name__}")
        records.append(record)
    return records


def _is_number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def _series(
    records: list[dict[str, Any]], x_key: str, y_key: str
) -> tuple[list[float], list[float], list[Any]]:
    xs, ys, stages = [], [], []
    for rec in records:
        if _is_number(rec.get(x_key)) and _is_number(rec.get(y_key)):
            xs.append(float(rec[x_key]))
            ys.append(float(rec[y_key]))
            stages.append(rec.get("stage"))
    return xs, ys, stages


def _monotone(xs: list[float], stages: list[Any]) -> list[float]:
    """x values made increasing across restarts: when a counter goes back (a per-stage epoch
    restarting with the next stage), the new stretch is shifted to continue after the last point."""
    out: list[float] = []
    offset = 0.0
    for k, x in enumerate(xs):
        if k and (x + offset < out[-1] or (stages[k] != stages[k - 1] and x + offset <= out[-1])):
            offset = out[-1] + 1.0 - x
        out.append(x + offset)
    return out


def _stage_boundaries(ax: Any, xs: list[float], stages: list[Any]) -> None:
    if xs and stages[0] is not None:
        label = f" {stages[0]}"
        ax.text(
            xs[0],
            1.0,
            label,
            transform=ax.get_xaxis_transform(),
            fontsize=7,
            va="top",
            ha="left",
            color="grey",
        )
    for k in range(1, len(xs)):
        if stages[k] != stages[k - 1]:
            boundary = (xs[k - 1] + xs[k]) / 2.0
            ax.axvline(boundary, color="grey", linestyle="--", linewidth=0.8)
            ax.text(
                boundary,
                1.0,
                f" {stages[k]}",
                transform=ax.get_xaxis_transform(),
                fontsize=7,
                va="top",
                ha="left",
                color="grey",
            )


def plot_training_curves(metrics_jsonl_path: str | Path, path: str | Path) -> Path:
    """Write a PNG of a run's metrics log (JSON lines); returns the path.

    One panel for ``train/loss`` against the step (``global_step`` when records have it, as the
    trainer writes them, else ``step``) and one per numeric ``val/...`` key against ``epoch``.
    Stage changes (the ``stage`` field) are drawn as dashed vertical lines. Where a counter restarts
    with each stage (the trainer's ``epoch`` does), later stages are shifted to continue after the
    earlier ones, so the x axis reads "epochs so far".
    """
    src = Path(metrics_jsonl_path)
    if not src.is_file():
        raise ValueError(f"{src}: metrics log not found")
    records = _read_jsonl(src)
    val_keys = sorted(
        {k for rec in records for k, v in rec.items() if k.startswith("val/") and _is_number(v)},
        key=lambda k: (k != "val/rsum", k),  # model selection's number first
    )
    panels: list[tuple[str, str]] = []
    step_key = "global_step" if any(_is_number(rec.get("global_step")) for rec in records) else "step"
    if any(_is_number(rec.get("train/loss")) and _is_number(rec.get(step_key)) for rec in records):
        panels.append((step_key, "train/loss"))
    panels += [("epoch", k) for k in val_keys]
    if not panels:
        raise ValueError(
            f"{src}: no 'train/loss' (with 'step') or numeric 'val/...' (with 'epoch') values to plot"
        )

    n_cols = min(3, len(panels))
    n_rows = math.ceil(len(panels) / n_cols)
    fig = new_figure(4.5 * n_cols, 3.2 * n_rows)
    for k, (x_key, y_key) in enumerate(panels):
        ax = fig.add_subplot(n_rows, n_cols, k + 1)
        xs, ys, stages = _series(records, x_key, y_key)
        xs = _monotone(xs, stages)
        ax.plot(xs, ys, marker="o" if x_key == "epoch" else None, markersize=3, linewidth=1.2)
        _stage_boundaries(ax, xs, stages)
        ax.set_xlabel(x_key)
        ax.set_title(y_key, fontsize=10)
        ax.grid(alpha=0.3)
    fig.tight_layout()
    return save_figure(fig, path)
