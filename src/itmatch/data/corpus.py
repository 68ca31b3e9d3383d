"""The one in-memory corpus type every reader produces."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

CAPTIONS_PER_IMAGE = 5


@dataclass
class Corpus:
    """One split of an image-caption data set.

    Image ``i`` owns caption rows ``5i .. 5i+4`` of :meth:`flat_captions` (the evaluation
    protocol depends on that order).

    Attributes:
        name: data set name (e.g. ``flickr8k``).
        split: split name (``train``, ``val``/``dev``, ``test``, ...).
        image_ids: N unique ids (file names relative to ``image_root`` where images exist).
        captions: N lists of exactly 5 raw caption strings.
        image_root: folder the image ids are relative to, or None (precomputed features only).
        features: optional N x D precomputed image features (VSE++ "precomp" format).
        notes: human-readable remarks from the reader (e.g. captions dropped beyond 5).
    """

    name: str
    split: str
    image_ids: list[str]
    captions: list[list[str]]
    image_root: Path | None = None
    features: np.ndarray | None = None
    notes: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        if len(self.image_ids) != len(self.captions):
            raise ValueError(
                f"{self.name}/{self.split}: {len(self.image_ids)} image ids but {len(self.captions)} caption groups"
            )
        for image_id, caps in zip(self.image_ids, self.captions):
            if len(caps) != CAPTIONS_PER_IMAGE:
                raise ValueError(f"{self.name}/{self.split}: image {image_id!r} has {len(caps)} captions, expected 5")
        if self.features is not None and len(self.features) != len(self.image_ids):
            raise ValueError(
                f"{self.name}/{self.split}: {len(self.features)} feature rows for {len(self.image_ids)} images"
            )

    def __len__(self) -> int:
        return len(self.image_ids)

    @property
    def num_captions(self) -> int:
        return CAPTIONS_PER_IMAGE * len(self.image_ids)

    def flat_captions(self) -> list[str]:
        """All captions in protocol order: image i's captions at rows 5i..5i+4."""
        return [c for caps in self.captions for c in caps]

    def image_paths(self) -> list[Path]:
        if self.image_root is None:
            raise ValueError(f"{self.name}/{self.split} has no image folder (precomputed features only)")
        return [self.image_root / image_id for image_id in self.image_ids]

    def subset(self, indices: list[int] | np.ndarray, split: str | None = None) -> Corpus:
        """A new corpus with the images at ``indices`` (in that order)."""
        idx = [int(i) for i in indices]
        return Corpus(
            name=self.name,
            split=split or self.split,
            image_ids=[self.image_ids[i] for i in idx],
            captions=[list(self.captions[i]) for i in idx],
            image_root=self.image_root,
            features=None if self.features is None else self.features[idx],
            notes=list(self.notes),
        )
