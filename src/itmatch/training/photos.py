"""Training on photos: the caption-row photo dataset (seeded augmentation per row), its batches,
validation photos, and the backbone state that decides when cached features may stand in."""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from itmatch.training.batches import PairBatches, caption_order

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
