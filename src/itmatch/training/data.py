"""From a recipe's ``data`` section to what the trainer consumes: corpora, features, captions."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from itmatch.data import Corpus
from itmatch.errors import ConfigError


def load_split(data_cfg: dict[str, Any], split: str) -> Corpus:
    """Read one split of the data set the config names."""
    from itmatch.data import load_corpus

    if not data_cfg.get("format") or not data_cfg.get("path"):
        raise ConfigError("data.format and data.path must be set (e.g. --format flickr8k --data PATH)")
    return load_corpus(data_cfg["format"], data_cfg["path"], split, image_root=data_cfg.get("image_root"))


def train_val_corpora(data_cfg: dict[str, Any]) -> tuple[Corpus, Corpus]:
    """The training corpus and the model-selection corpus.

    Without ``val_split`` the last ``val_holdout`` images of a fixed permutation (``holdout_seed``,
    the same for every run seed) are held out of the training split.
    """
    train = load_split(data_cfg, data_cfg["train_split"])
    if data_cfg.get("val_split"):
        val = load_split(data_cfg, data_cfg["val_split"])
    else:
        holdout = int(data_cfg["val_holdout"])
        if not 0 < holdout < len(train):
            raise ConfigError(
                f"data.val_holdout={holdout} must be between 1 and the training split size - 1 ({len(train) - 1})"
            )
        order = np.random.default_rng(int(data_cfg["holdout_seed"])).permutation(len(train))
        val = train.subset(np.sort(order[-holdout:]), split=f"{train.split}-holdout")
        train = train.subset(np.sort(order[:-holdout]))
    if data_cfg.get("max_train_images"):
        train = train.subset(range(min(len(train), int(data_cfg["max_train_images"]))))
    return train, val


def corpus_features(
    corpus: Corpus, data_cfg: dict[str, Any], progress: bool | Callable[[int, int], None] = False
) -> np.ndarray:
    """Image features (N x D float32) for a corpus, in its image order.

    Precomp corpora carry their features. Otherwise ``data.features`` is either ``auto`` (extract
    with ``data.feature_backbone``, cached: a second call with the same images does no work) or
    the folder of an ``itmatch extract`` output.
    """
    if corpus.features is not None:
        return np.array(corpus.features, dtype=np.float32)  # a writable in-memory copy of the memmap
    from itmatch.features.extract import FeatureStore, extract_features

    source = data_cfg.get("features") or "auto"
    if source == "auto":
        from itmatch.training.config import default_cache_dir

        cache = Path(data_cfg.get("feature_cache") or default_cache_dir() / "features")
        store = extract_features(
            corpus.image_root,
            corpus.image_ids,
            cache,
            backbone=data_cfg["feature_backbone"],
            progress=progress,
            image_size=int(data_cfg.get("image_size", 224)),
        )
    else:
        store = FeatureStore.open(Path(source))
    return np.array(store.lookup(corpus.image_ids), dtype=np.float32)


@dataclass
class PairBatches:
    """Training pairs (caption k, its image k // 5) of a corpus, batched by a seeded permutation."""

    images: torch.Tensor  # N x D features
    captions: list[Any]  # 5N encoded captions
    collate: Callable[[Sequence[Any]], dict[str, torch.Tensor]]
    batch_size: int

    def __len__(self) -> int:
        return (len(self.captions) + self.batch_size - 1) // self.batch_size

    def order(self, seed: int) -> torch.Tensor:
        g = torch.Generator().manual_seed(int(seed))
        return torch.randperm(len(self.captions), generator=g)

    def batch(self, caption_rows: torch.Tensor) -> dict[str, Any]:
        image_rows = caption_rows // 5
        return {
            "images": self.images[image_rows],
            "text": self.collate([self.captions[int(k)] for k in caption_rows]),
            "image_ids": image_rows,
        }

    def epoch(self, seed: int, start_step: int = 0, rank: int = 0, world_size: int = 1):
        """Yield ``(step, batch)`` for one epoch, skipping the first ``start_step`` batches (resume).

        ``batch_size`` is the global batch: with several ranks each takes its contiguous shard of
        every global batch, so the union over ranks is exactly the single-process batch (unlike
        torch's DistributedSampler, which interleaves the permutation across ranks).
        """
        from itmatch.training.distributed import shard_bounds

        order = self.order(seed)
        for step in range(start_step, len(self)):
            rows = order[step * self.batch_size : (step + 1) * self.batch_size]
            lo, hi = shard_bounds(len(rows), rank, world_size)
            yield step, self.batch(rows[lo:hi])
