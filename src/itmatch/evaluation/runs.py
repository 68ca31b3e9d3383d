"""A trained run scored on one split: the one "load, embed, score recall and invariance" path.

``itmatch evaluate``, ``itmatch tsne``, the comparison runner and the demo all go through here, so
they load the same checkpoint the same way and report the same metrics.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from itmatch.data import Corpus

if TYPE_CHECKING:
    from itmatch.inference import Ensemble, Matcher


@dataclass
class RunEmbeddings:
    """One split embedded by one checkpoint (or an ensemble): N image rows, 5N caption rows in image order."""

    matcher: Matcher | Ensemble
    corpus: Corpus
    images: torch.Tensor
    texts: torch.Tensor


def embed_run(
    run: str | Path | Sequence[str | Path],
    split: str,
    *,
    checkpoint: str = "best",
    data: Mapping[str, Any] | None = None,
    corpus: Corpus | None = None,
    device: str | torch.device = "auto",
    progress: bool = False,
) -> RunEmbeddings:
    """Embed ``split`` of the run's data set with its ``checkpoint`` (``best``/``last``/a file).

    ``data``: entries that replace the run's own ``data`` config (to score another data set, e.g.
    ``{"format": "coco", "path": ...}``); ``corpus``: an already loaded corpus to embed instead
    (``split`` and ``data`` are then not read). ``run`` may be a list of runs: they are scored as
    one :class:`~itmatch.inference.Ensemble` (the mean of their similarities) on the first one's data.
    """
    from itmatch.data.splits import load_split
    from itmatch.inference import Ensemble, Matcher

    if isinstance(run, (str, Path)):
        matcher: Matcher | Ensemble = Matcher.from_run(run, checkpoint, device=device)
    else:
        matcher = Ensemble.from_runs(run, checkpoint, device=device)
    if corpus is None:
        corpus = load_split({**matcher.config["data"], **(data or {})}, split)
    images, texts = matcher.embed_corpus(corpus, progress=progress)
    return RunEmbeddings(matcher, corpus, images, texts)


def score_embeddings(
    images: torch.Tensor,
    texts: torch.Tensor,
    *,
    protocol: str = "all",
    invariance: bool = True,
    seed: int = 0,
    folds: bool = True,
) -> dict[str, Any]:
    """Recall@K under ``protocol`` (:func:`~itmatch.evaluation.recall.evaluate_embeddings`) and,
    unless ``invariance`` is False, the modality-invariance metrics (probe and MMD seeded by
    ``seed``). ``folds=False`` drops a 5-fold result's per-fold list (every value then a number).
    A ValueError names what does not fit (counts, protocol)."""
    from itmatch.evaluation.invariance import invariance_metrics
    from itmatch.evaluation.recall import evaluate_embeddings

    metrics = evaluate_embeddings(images, texts, protocol=protocol)
    if not folds:
        metrics.pop("folds", None)
    if invariance:
        metrics.update(invariance_metrics(images, texts, seed=seed))
    return metrics
