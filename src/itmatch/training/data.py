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

from collections.abc import Callable, Iterator, Sequence
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


def caption_order(n: int, seed: int) -> torch.Tensor:
    """The shuffled caption rows of one epoch: a pure function of the epoch seed."""
    g = torch.Generator().manual_seed(int(seed))
    return torch.randperm(n, generator=g)


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
        return caption_order(len(self.captions), seed)

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


# --------------------------------------------------------------------------------------------
# photos: models with their own backbone

# Training crop area fraction. open_clip trains image-text models with (0.9, 1.0); torchvision's
# (0.08, 1.0) ImageNet default often cuts away what a caption describes.
TRAIN_CROP_SCALE = (0.9, 1.0)
# Photos per forward pass when validating a model with a backbone (activation memory; on CPU,
# small passes also avoid glibc re-mapping big activations on every call).
PHOTO_EVAL_BATCH = 32


def _item_seed(seed: int, row: int) -> int:
    # One generator per (epoch, caption row): the crop of a row does not depend on which worker
    # loads it or on where a resumed epoch starts.
    return (int(seed) * 2_654_435_761 + int(row) * 40_503 + 1) % (2**63)


class CaptionPhotos(torch.utils.data.Dataset):
    """Item ``(row, seed)`` -> ``(pixels, row)``: the photo of caption row ``row`` (image ``row // 5``).

    ``transform`` is a backbone's :class:`~itmatch.features.preprocess.ImageTransform`; with
    ``train=True`` its random crop and flip come from a generator seeded by ``(seed, row)``.
    """

    def __init__(self, paths: Sequence[str | Path], transform: Any):
        self.paths = [str(p) for p in paths]
        self.transform = transform

    def __len__(self) -> int:
        return 5 * len(self.paths)

    def __getitem__(self, item: tuple[int, int]) -> tuple[torch.Tensor, int]:
        row, seed = item
        path = self.paths[int(row) // 5]
        generator = torch.Generator().manual_seed(_item_seed(seed, row)) if self.transform.train else None
        try:
            return self.transform(path, generator=generator), int(row)
        except Exception as exc:  # PIL raises many types; a worker must say which file failed
            from itmatch.errors import ItmatchError

            raise ItmatchError(f"{path}: cannot read the image ({type(exc).__name__}: {exc})") from exc


class _PhotoCollate:
    """Stack pixels and build the batch dictionary (runs in the DataLoader workers)."""

    def __init__(
        self,
        captions: list[Any],
        collate: Callable[[Sequence[Any]], dict[str, torch.Tensor]],
        memory_format: torch.memory_format = torch.contiguous_format,
    ):
        self.captions = captions
        self.collate = collate
        self.memory_format = memory_format

    def __call__(self, items: list[tuple[torch.Tensor, int]]) -> dict[str, Any]:
        rows = torch.tensor([row for _, row in items], dtype=torch.long)
        return {
            "images": torch.stack([pixels for pixels, _ in items]).contiguous(memory_format=self.memory_format),
            "text": self.collate([self.captions[int(k)] for k in rows]),
            "image_ids": rows // 5,
        }


class _BackboneState:
    """Whether an epoch may read cached features: the backbone is frozen and still pristine.

    Shared by the training batches and the validation images of one run. ``attach`` snapshots
    the backbone right after the model is built (the pretrained weights, before any checkpoint
    is loaded); a backbone found different from that snapshot is stale for good.
    """

    def __init__(self, allow_features: bool, load_features: Callable[[str], torch.Tensor]):
        self.allow_features = allow_features
        self._load_features = load_features
        self._features: dict[str, torch.Tensor] = {}
        self.backbone: torch.nn.Module | None = None
        self._pristine: dict[str, torch.Tensor] | None = None
        self.stale = False
        self.epochs = {"features": 0, "photos": 0}  # training epochs by input path (observability)
        self._checked: tuple[tuple[int, int], ...] | None = None  # version fingerprint last found pristine
        self.comparisons = 0  # full state comparisons with the snapshot (observability, tests)

    def attach(self, backbone: torch.nn.Module) -> None:
        self.backbone = backbone
        if self.allow_features:
            self._pristine = {k: v.detach().to("cpu", copy=True) for k, v in backbone.state_dict().items()}

    def use_features(self) -> bool:
        if not self.allow_features or self.stale:
            return False
        if self.backbone is None:
            raise RuntimeError("training_data(...).attach(model) must be called before iterating")
        if any(p.requires_grad for p in self.backbone.parameters()):
            return False
        assert self._pristine is not None
        # Every in-place change of a tensor (an optimizer step, load_state_dict) bumps its version
        # counter: while the counters are those last found pristine, the weights still are, and
        # the full comparison (a device-to-host copy of the whole backbone on a GPU) is skipped.
        fingerprint = tuple((id(t), t._version) for t in self.backbone.state_dict(keep_vars=True).values())
        if fingerprint == self._checked:
            return True
        self.comparisons += 1
        current = self.backbone.state_dict()
        if any(not torch.equal(current[k].cpu(), v) for k, v in self._pristine.items()):
            self.stale = True
            self._pristine = None  # not needed any more
            return False
        self._checked = fingerprint
        return True

    def features(self, which: str) -> torch.Tensor:
        if which not in self._features:
            self._features[which] = self._load_features(which)
        return self._features[which]


@dataclass
class PhotoPairBatches:
    """Training pairs of a corpus with photos: same order, steps and sharding as :class:`PairBatches`.

    Each epoch reads either the cached features (backbone frozen and pristine) or the photos,
    decoded and augmented by ``num_workers`` DataLoader processes.
    """

    photos: CaptionPhotos
    captions: list[Any]
    collate: Callable[[Sequence[Any]], dict[str, torch.Tensor]]
    batch_size: int
    state: _BackboneState
    num_workers: int = 0
    pin_memory: bool = False
    memory_format: torch.memory_format = torch.contiguous_format

    def __len__(self) -> int:
        return (len(self.captions) + self.batch_size - 1) // self.batch_size

    def order(self, seed: int) -> torch.Tensor:
        return caption_order(len(self.captions), seed)

    def epoch(self, seed: int, start_step: int = 0, rank: int = 0, world_size: int = 1):
        """Yield ``(step, batch)`` like :meth:`PairBatches.epoch`."""
        if self.state.use_features():
            self.state.epochs["features"] += 1
            feats = PairBatches(self.state.features("train"), self.captions, self.collate, self.batch_size)
            yield from feats.epoch(seed, start_step, rank, world_size)
            return
        self.state.epochs["photos"] += 1
        from itmatch.training.distributed import shard_bounds

        order = self.order(seed)
        shards = []
        for step in range(start_step, len(self)):
            rows = order[step * self.batch_size : (step + 1) * self.batch_size]
            lo, hi = shard_bounds(len(rows), rank, world_size)
            shards.append([(int(r), int(seed)) for r in rows[lo:hi]])
        if not shards:
            return
        loader = torch.utils.data.DataLoader(
            self.photos,
            batch_sampler=shards,
            num_workers=self.num_workers,
            collate_fn=_PhotoCollate(self.captions, self.collate, self.memory_format),
            pin_memory=self.pin_memory,
            # Worker seeds from the epoch seed: the loader draws nothing from torch's global RNG,
            # so a resumed run's dropout / stochastic depth stay in step with the original.
            generator=torch.Generator().manual_seed(int(seed)),
        )
        yield from enumerate(loader, start=start_step)


class PhotoImages:
    """Validation images of a model with a backbone, sliced like an N x ... tensor.

    ``images[a:b]`` is the cached features of those images while the backbone is frozen and
    pristine, else their photos with the evaluation preprocessing (decoded here, in order).
    """

    def __init__(
        self,
        paths: Sequence[str | Path],
        transform: Any,
        state: _BackboneState,
        which: str = "val",
        memory_format: torch.memory_format = torch.contiguous_format,
        num_workers: int = 0,
        pin_memory: bool = False,
    ):
        self.paths = [str(p) for p in paths]
        self.transform = transform
        self.state = state
        self.which = which
        self.memory_format = memory_format
        self.num_workers = num_workers
        self.pin_memory = pin_memory

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, index: slice) -> torch.Tensor:
        if not isinstance(index, slice):
            raise TypeError("PhotoImages supports slices only")
        if self.state.use_features():
            return self.state.features(self.which)[index]
        photos = CaptionPhotos(self.paths, self.transform)
        pixels = torch.stack([photos[(5 * i, 0)][0] for i in range(*index.indices(len(self.paths)))])
        return pixels.contiguous(memory_format=self.memory_format)

    def batches(self, batch_size: int) -> Iterator[torch.Tensor]:
        """All images in order, ``batch_size`` at a time: the cached features, or the photos
        decoded by ``num_workers`` DataLoader processes (pinned for a GPU) while the model
        embeds the previous batch."""
        if self.state.use_features():
            feats = self.state.features(self.which)
            yield from (feats[i : i + batch_size] for i in range(0, len(self.paths), batch_size))
            return
        rows = [[(5 * i, 0) for i in range(a, min(a + batch_size, len(self.paths)))] for a in range(0, len(self.paths), batch_size)]
        loader = torch.utils.data.DataLoader(
            CaptionPhotos(self.paths, self.transform),
            batch_sampler=rows,
            num_workers=self.num_workers,
            collate_fn=_stack_pixels,
            pin_memory=self.pin_memory,
        )
        for pixels in loader:
            yield pixels.contiguous(memory_format=self.memory_format)


def _stack_pixels(items: list[tuple[torch.Tensor, int]]) -> torch.Tensor:
    return torch.stack([pixels for pixels, _ in items])


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
