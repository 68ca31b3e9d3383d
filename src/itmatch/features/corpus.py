"""What a model's image side reads from a corpus: its cached CNN features, or its photos.

Shared by the trainer (:mod:`itmatch.training.data`) and every model user
(:meth:`itmatch.inference.Matcher.embed_corpus`), so it sits below both.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch

from itmatch.data import Corpus
from itmatch.errors import ConfigError


def default_cache_dir() -> Path:
    return Path(os.environ.get("ITMATCH_CACHE", Path.home() / ".cache" / "itmatch"))


def feature_cache_dir(data_cfg: dict[str, Any]) -> Path:
    """Where cached features live: ``data.feature_cache``, else ``$ITMATCH_CACHE/features``
    (image features and a frozen sentence encoder's outputs both go there)."""
    return Path(data_cfg.get("feature_cache") or default_cache_dir() / "features")


def corpus_features(
    corpus: Corpus,
    data_cfg: dict[str, Any],
    progress: bool | Callable[[int, int], None] = False,
    device: torch.device | str | None = None,
    grid: bool = False,
) -> np.ndarray:
    """Image features (N x D float32) for a corpus, in its image order.

    Precomp corpora carry their features. Otherwise ``data.features`` is either ``auto`` (extract
    with ``data.feature_backbone`` on ``device`` (None: auto), cached: a second call with the same
    images does no work) or the folder of an ``itmatch extract`` output.

    ``grid``: the backbone's grid features instead (N x cells x D, float16 as stored: half the
    memory; the grid encoder casts each batch), from a grid feature store.
    """
    if corpus.features is not None:
        if grid:
            raise ConfigError(
                f"model.image_pool: gpo needs grid features, but {corpus.name}/{corpus.split} carries pooled "
                "precomputed features only; use a data format with an image folder, or model.image_pool: mean"
            )
        return np.array(corpus.features, dtype=np.float32)  # a writable in-memory copy of the memmap
    from itmatch.features.extract import extract_features
    from itmatch.features.store import FeatureStore

    source = data_cfg.get("features") or "auto"
    if source == "none":
        raise ConfigError(
            f"data.features: none, but the model reads precomputed features of {corpus.name}/{corpus.split}; "
            "set model.backbone to train on photos, or data.features: auto"
        )
    if source == "auto":
        from itmatch.device import pick_device
        from itmatch.features.backbones import require_weights
        cache = feature_cache_dir(data_cfg)
        backbone = data_cfg["feature_backbone"]
        store = extract_features(
            corpus.image_root,
            corpus.image_ids,
            cache,
            backbone=backbone,
            weights=require_weights(backbone, data_cfg.get("feature_weights"), "data.feature_weights"),
            progress=progress,
            image_size=int(data_cfg.get("image_size", 224)),
            device=pick_device(device),
            grid=grid,
        )
    else:
        store = FeatureStore.open(Path(source))
        if grid and store.grid is None:
            raise ConfigError(
                f"data.features={source}: a pooled feature store, but model.image_pool: gpo reads grid features "
                "(itmatch.features.extract_features(..., grid=True), or data.features: auto)"
            )
        if not grid and store.grid is not None:
            return store.lookup_pooled(corpus.image_ids)
    if grid:
        return np.asarray(store.array[store.rows(corpus.image_ids)])
    return np.array(store.lookup(corpus.image_ids), dtype=np.float32)


def check_photos(corpus: Corpus) -> list[Path]:
    """The corpus's photo paths; ImageReadError naming every missing one, ConfigError without a folder."""
    from itmatch.errors import ImageReadError

    if corpus.image_root is None:
        raise ConfigError(
            f"model.backbone needs photos, but {corpus.name}/{corpus.split} has precomputed features only; "
            "use a data format with an image folder, or model.backbone: null"
        )
    paths = corpus.image_paths()
    missing = {str(p): "no such file" for p in paths if not p.is_file()}
    if missing:
        raise ImageReadError(missing)
    return paths
