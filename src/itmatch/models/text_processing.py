"""Turning sentences into the batch dictionaries the text encoders read."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any, Protocol

import torch


class TextProcessor(Protocol):
    """Encodes sentences once (``encode``) and pads a batch of them (``collate``)."""

    def encode(self, texts: Sequence[str]) -> list[Any]: ...

    def collate(self, encoded: Sequence[Any]) -> dict[str, torch.Tensor]: ...


class VocabTextProcessor:
    """Regex tokenizer + the run's vocabulary -> ``{"tokens": B x T, "lengths": B}`` for the GRU."""

    def __init__(self, vocab: Any):
        self.vocab = vocab

    def encode(self, texts: Sequence[str]) -> list[list[int]]:
        return [self.vocab.encode(t) for t in texts]

    def collate(self, encoded: Sequence[Sequence[int]]) -> dict[str, torch.Tensor]:
        lengths = torch.tensor([len(e) for e in encoded], dtype=torch.long)
        tokens = torch.zeros(len(encoded), int(lengths.max()), dtype=torch.long)
        for i, e in enumerate(encoded):
            tokens[i, : len(e)] = torch.as_tensor(e, dtype=torch.long)
        return {"tokens": tokens, "lengths": lengths}

    def __call__(self, texts: Sequence[str]) -> dict[str, torch.Tensor]:
        return self.collate(self.encode(texts))


# Sentences per batch when embedding on a CPU: MiniLM over 1,024 Flickr8k dev captions in length
# order, one thread, took 2.45-2.68 s at 16-64 per batch, 2.87 s at 128 and 4.45 s at 512 (larger
# batches leave the caches; in file order at 512: 6.45 s): benchmarks/results/finetune_speed.json.
# A GPU wants the evaluation batch size instead.
CPU_TEXT_BATCH = 64


def text_batch_size(batch_size: int, device: torch.device | str) -> int:
    """Sentences per batch for embedding on ``device``: at most CPU_TEXT_BATCH on a CPU."""
    return min(batch_size, CPU_TEXT_BATCH) if torch.device(device).type == "cpu" else batch_size


def encode_by_length(
    encoded: Sequence[Sequence[Any]],
    collate: Callable[[Sequence[Any]], Mapping[str, torch.Tensor]],
    encode: Callable[[dict[str, torch.Tensor]], torch.Tensor],
    batch_size: int,
    device: torch.device | str = "cpu",
) -> torch.Tensor:
    """``encode`` over batches of ``encoded`` sentences taken in order of length, the rows
    returned in the input order (on the CPU). The input must not be empty.

    A padded batch costs its longest sentence times its size: Flickr8k captions run from 3 to
    40+ tokens, so batches of similar lengths do the same work in a fraction of the time. The
    encoders mask padding, so each row is what it would be in any batch (up to float rounding
    of the batch's shape)."""
    order = sorted(range(len(encoded)), key=lambda i: len(encoded[i]))
    parts = []
    for start in range(0, len(order), batch_size):
        rows = order[start : start + batch_size]
        batch = {k: v.to(device) for k, v in collate([encoded[i] for i in rows]).items()}
        parts.append(encode(batch).cpu())
    out = torch.cat(parts)
    restored = torch.empty_like(out)
    restored[torch.as_tensor(order, dtype=torch.long)] = out
    return restored


def make_text_processor(model_cfg: dict[str, Any], vocab: Any) -> TextProcessor:
    if model_cfg.get("text_encoder", "gru") == "minilm":
        from itmatch.models.minilm import MiniLMTextProcessor

        return MiniLMTextProcessor()
    return VocabTextProcessor(vocab)
