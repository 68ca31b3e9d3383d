"""From a recipe's ``data`` section to what the trainer consumes: corpora, features, captions.

Two input paths, chosen by ``model.backbone`` (see :func:`training_data`):

- **Features** (``model.backbone: null``): the image encoder reads precomputed CNN features
  (:func:`itmatch.features.corpus.corpus_features`: extracted once into the cache, or a precomp
  corpus's own);
  :class:`PairBatches` batches them in memory.
- **Photos** (``model.backbone`` names a backbone): the model holds the CNN. Training batches
  decode the photos in DataLoader worker processes with the backbone's training preprocessing
  (random resized crop + horizontal flip, :data:`TRAIN_CROP_SCALE`), validation uses its
  evaluation preprocessing (resize + centre crop). While the backbone is frozen *and still has
  its pretrained weights* an epoch reads the cached features instead (the same numbers the
  frozen backbone would compute on centre crops, at a fraction of the cost); once it has been
  trained, or with ``data.features: none``, every epoch runs it on photos, so cached features
  are never read stale. A run whose stages all train the backbone never touches the cache.
  BatchNorm: see :func:`itmatch.models.batchnorm.freeze_batchnorm_statistics`.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from itmatch.data import Corpus
from itmatch.data.splits import load_split
from itmatch.errors import ConfigError
from itmatch.features.corpus import check_photos, corpus_features
from itmatch.models.batchnorm import freeze_batchnorm_statistics
from itmatch.training.batches import PairBatches
from itmatch.training.photos import (
    PHOTO_EVAL_BATCH,
    TRAIN_CROP_SCALE,
    CaptionPhotos,
    PhotoImages,
    PhotoPairBatches,
    _BackboneState,
)


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


@dataclass
class TrainingData:
    """What the trainer consumes: training batches, validation images and captions."""

    pairs: PairBatches | PhotoPairBatches
    val_images: torch.Tensor | PhotoImages
    val_captions: list[Any]
    feature_dim: int  # what the image encoder's projection reads (the backbone's output size)
    eval_batch_size: int
    backbone_state: _BackboneState | None = None
    channels_last: bool = False

    def attach(self, model: torch.nn.Module) -> None:
        """Call once, right after building the model and before loading any weights into it."""
        backbone = model.image_encoder.backbone
        if self.backbone_state is None:
            return
        if backbone is None:
            raise ConfigError("training data was prepared for photos but the model has no backbone")
        freeze_batchnorm_statistics(backbone)
        if self.channels_last:
            backbone.to(memory_format=torch.channels_last)
        self.backbone_state.attach(backbone)


def training_data(
    cfg: dict[str, Any],
    train_corpus: Corpus,
    val_corpus: Corpus,
    processor: Any,
    progress: bool | Callable[[int, int], None] = False,
    device: torch.device | None = None,
) -> TrainingData:
    """Training batches and validation inputs for a resolved recipe (see the module docstring).

    Features path: reads (or extracts once into the cache) the features of both corpora now.
    Photos path: reads no features now; cached features of ``model.backbone`` are read (or
    extracted) only by an epoch that can use them, unless ``data.features`` is ``none``.
    """
    data_cfg, tcfg = cfg["data"], cfg["training"]
    batch_size = int(tcfg["batch_size"])
    train_captions = processor.encode(train_corpus.flat_captions())
    val_captions = processor.encode(val_corpus.flat_captions())
    backbone = cfg["model"].get("backbone")
    if not backbone:
        from itmatch.models.joint import uses_grid_features

        grid = uses_grid_features(cfg["model"])  # N x cells x D grids for a GPO image encoder
        train_feats = torch.from_numpy(corpus_features(train_corpus, data_cfg, progress=progress, device=device, grid=grid))
        val_feats = torch.from_numpy(corpus_features(val_corpus, data_cfg, progress=progress, device=device, grid=grid))
        pairs = PairBatches(train_feats, train_captions, processor.collate, batch_size)
        return TrainingData(pairs, val_feats, val_captions, int(train_feats.shape[-1]), int(tcfg["eval_batch_size"]))

    from itmatch.features.backbones import ensure_available

    spec = ensure_available(backbone)  # names the extra to install when its library is missing
    image_size = int(data_cfg.get("image_size", 224))
    train_paths, val_paths = check_photos(train_corpus), check_photos(val_corpus)
    source = data_cfg.get("features") or "auto"
    weights = cfg["model"].get("backbone_weights")
    if source not in ("auto", "none"):
        _check_store_fits(Path(source), backbone, weights, image_size)
    # cached features are those of the model's own backbone and weights (read while it is pristine)
    cache_cfg = dict(data_cfg, feature_backbone=backbone, feature_weights=weights)
    corpora = {"train": train_corpus, "val": val_corpus}

    def load(which: str) -> torch.Tensor:
        return torch.from_numpy(corpus_features(corpora[which], cache_cfg, progress=progress, device=device))

    state = _BackboneState(allow_features=source != "none", load_features=load)
    # On CPU, channels-last convolutions train EfficientNet-Lite0 ~1.7x faster (its depthwise
    # convolutions otherwise take a slow generic path); photo batches are made to match.
    channels_last = device is None or device.type == "cpu"
    memory_format = torch.channels_last if channels_last else torch.contiguous_format
    pairs = PhotoPairBatches(
        CaptionPhotos(train_paths, spec.transform(image_size, train=True, scale=TRAIN_CROP_SCALE)),
        train_captions,
        processor.collate,
        batch_size,
        state,
        num_workers=int(tcfg.get("num_workers") or 0),
        pin_memory=device is not None and device.type == "cuda",
        memory_format=memory_format,
    )
    val_images = PhotoImages(
        val_paths, spec.transform(image_size, train=False), state, memory_format=memory_format,
        num_workers=int(tcfg.get("num_workers") or 0), pin_memory=device is not None and device.type == "cuda",
    )  # fmt: skip
    eval_bs = min(int(tcfg["eval_batch_size"]), PHOTO_EVAL_BATCH)
    return TrainingData(pairs, val_images, val_captions, int(spec.feature_dim), eval_bs, state, channels_last)


def _check_store_fits(folder: Path, backbone: str, weights: str | None, image_size: int) -> None:
    """A ``data.features`` folder must hold features of the model's own backbone, weights and preprocessing."""
    from itmatch.features.store import FeatureStore, cache_key

    store = FeatureStore.open(folder)
    if store.meta.get("key") != cache_key(backbone, weights, image_size):
        which = f"weights {weights}" if weights else "its built-in weights"
        raise ConfigError(
            f"data.features={folder}: its features ({store.backbone}, {store.meta.get('preprocessing')}) are not those of "
            f"model.backbone={backbone!r} with {which} at data.image_size={image_size}"
        )
