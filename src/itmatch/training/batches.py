"""Training pairs of features batched in memory: caption k with its image k // 5, in a seeded
permutation per epoch, sharded across ranks."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch


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
