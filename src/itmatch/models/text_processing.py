"""Turning sentences into the batch dictionaries the text encoders read."""

from __future__ import annotations

from collections.abc import Sequence
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


def make_text_processor(model_cfg: dict[str, Any], vocab: Any) -> TextProcessor:
    if model_cfg.get("text_encoder", "gru") == "minilm":
        from itmatch.models.minilm import MiniLMTextProcessor

        return MiniLMTextProcessor()
    return VocabTextProcessor(vocab)
