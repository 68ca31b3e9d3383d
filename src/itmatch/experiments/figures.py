"""The demo's pictures: validation curves of every model, and query examples (a caption and
each model's top-5 images)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from itmatch.evaluation.plots import new_figure, save_figure
from itmatch.fileio import atomic_write_text

if TYPE_CHECKING:
    from itmatch.data import Corpus


CURVE_PANELS: tuple[tuple[str, str], ...] = (
    ("val/rsum", "validation rsum"),
    ("val/probe_acc", "validation probe accuracy % (50 = invariant)"),
    ("val/centroid_dist", "validation centroid distance"),
    ("val/mmd", "validation MMD"),
)


def comparison_curves(
    logs: dict[str, list[dict[str, Any]]], labels: dict[str, str], path: Path
) -> Path:
    """One PNG with the validation curves of every model (x: epochs since the start of the baseline).

    ``logs[key]``: records as :func:`itmatch.experiments.demo_report.joined_metrics` returns them. A model that starts from
    another one is drawn from that run's selected epoch on (the checkpoint it started from).
    """
    fig = new_figure(11, 6.5)
    axes = [fig.add_subplot(2, 2, k + 1) for k in range(len(CURVE_PANELS))]
    for n, (key, records) in enumerate(logs.items()):
        val = [r for r in records if "val/rsum" in r]
        inherited = [r for r in val if r["run"] != key]
        own = [r for r in val if r["run"] == key]
        if inherited:
            # the branch starts from the inherited run's selected (best) epoch
            best = [k for k, r in enumerate(inherited, start=1) if r.get("best")]
            start = best[-1] if best else len(inherited)
            points = [(start, inherited[start - 1])] + [(start + k, r) for k, r in enumerate(own, start=1)]
        else:
            points = list(enumerate(own, start=1))
        xs = [x for x, _ in points]
        for ax, (metric, _) in zip(axes, CURVE_PANELS):
            ys = [float(r.get(metric, np.nan)) for _, r in points]
            ax.plot(xs, ys, marker="o", markersize=3, linewidth=1.4, color=f"C{n}", label=labels.get(key, key))
    for ax, (_, title) in zip(axes, CURVE_PANELS):
        ax.set_title(title, fontsize=10)
        ax.set_xlabel("epoch")
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=8, loc="lower right")
    fig.tight_layout()
    return save_figure(fig, path)


def query_examples(
    corpus: Corpus,
    embeddings: dict[str, tuple[torch.Tensor, torch.Tensor]],
    labels: dict[str, str],
    out_dir: Path,
    *,
    n_queries: int = 4,
    min_words: int = 7,
    seed: int = 0,
) -> list[Path]:
    """One PNG per query: a random test caption (at least ``min_words`` words) and each model's
    top-5 images, then the caption's own image with its rank (framed in green, also in the top 5).
    ``queries.json`` lists the captions and the 1-based rank of their image for every model."""
    captions = corpus.flat_captions()
    rng = np.random.default_rng(seed)
    eligible = [j for j, c in enumerate(captions) if len(c.split()) >= min_words] or list(range(len(captions)))
    chosen = sorted(int(j) for j in rng.choice(eligible, size=min(n_queries, len(eligible)), replace=False))
    out_dir.mkdir(parents=True, exist_ok=True)
    paths: list[Path] = []
    listing = []
    for n, j in enumerate(chosen, start=1):
        rows = []
        ranks = {}
        for key, (im, tx) in embeddings.items():
            scores = (im @ tx[j]).numpy()
            order = np.argsort(-scores, kind="stable")
            truth = j // 5
            # ties count against the query, as in the recall protocol
            rank = int(np.sum(scores >= scores[truth])) - 1
            rows.append((labels.get(key, key), [int(i) for i in order[:5]], rank))
            ranks[key] = rank + 1
        paths.append(_query_figure(corpus, captions[j], j // 5, rows, out_dir / f"query_{n}.png"))
        listing.append({"file": paths[-1].name, "caption": captions[j], "caption_row": j,
                        "image": corpus.image_ids[j // 5], "rank_of_its_image": ranks})  # fmt: skip
    paths.append(atomic_write_text(out_dir / "queries.json", json.dumps(listing, indent=2) + "\n"))
    return paths


def _query_figure(corpus: Corpus, caption: str, truth: int, rows: list[tuple[str, list[int], int]], path: Path) -> Path:
    from PIL import Image

    def load(i: int) -> np.ndarray:
        with Image.open(Path(corpus.image_root) / corpus.image_ids[i]) as img:
            return np.asarray(img.convert("RGB"))

    n_cols = 6  # top 5, then the caption's own image
    fig = new_figure(1.9 * n_cols + 1.6, 2.3 * len(rows) + 0.7)
    fig.suptitle(f"\u201c{caption}\u201d", fontsize=11)
    for r, (label, top, rank) in enumerate(rows):
        cells = [(i, f"#{k + 1}") for k, i in enumerate(top)] + [(truth, f"its image: rank {rank + 1}")]
        for c, (i, title) in enumerate(cells):
            ax = fig.add_subplot(len(rows), n_cols, r * n_cols + c + 1)
            ax.imshow(load(i))
            ax.set_xticks([])
            ax.set_yticks([])
            hit = i == truth
            for spine in ax.spines.values():
                spine.set_color("tab:green" if hit else "lightgrey")
                spine.set_linewidth(5 if hit else 1)
            ax.set_title(title + (" \u2713" if hit and c < 5 else ""), fontsize=9,
                         color="tab:green" if hit else "black")  # fmt: skip
            if c == 0:
                ax.set_ylabel(label.replace(" (", "\n("), fontsize=9)
            if c == 5:
                ax.set_facecolor("white")
    fig.tight_layout(rect=(0, 0, 1, 0.95), h_pad=1.2)
    return save_figure(fig, path)
