"""Sentences encoded in batches of similar length (itmatch.models.text_processing.encode_by_length):
every row is the sentence's own embedding, in the input order, as one-at-a-time encoding gives it."""

from __future__ import annotations

import random

import pytest
import torch

from itmatch.models.encoders import GRUTextEncoder
from itmatch.models.text_processing import VocabTextProcessor, encode_by_length


class _Vocab:
    def encode(self, text: str) -> list[int]:
        return [1 + (ord(c) % 20) for c in text.split()[0]] + [2] * (len(text.split()) - 1)


def sentences(n: int, seed: int = 0) -> list[str]:
    rng = random.Random(seed)
    return [" ".join(rng.choice(["a", "dog", "runs", "on", "the", "grass", "two", "kids"]) for _ in range(rng.randint(1, 30)))
            for _ in range(n)]  # fmt: skip


@pytest.mark.parametrize("batch_size", [1, 7, 64, 1000])
def test_rows_come_back_in_input_order_and_equal_one_at_a_time(batch_size):
    torch.manual_seed(0)
    processor = VocabTextProcessor(_Vocab())
    gru = GRUTextEncoder(vocab_size=21, word_dim=8, embed_dim=16).eval()
    texts = sentences(53)
    encoded = processor.encode(texts)
    widths: list[int] = []

    def collate(batch):
        widths.append(max(len(e) for e in batch))
        return processor.collate(batch)

    with torch.no_grad():
        got = encode_by_length(encoded, collate, lambda b: gru(b["tokens"], b["lengths"]), batch_size)
        slow = torch.cat([gru(**{k: v for k, v in processor.collate([e]).items()}) for e in encoded])
    assert got.shape == (53, 16)
    torch.testing.assert_close(got, slow, rtol=1e-5, atol=1e-6)  # batch shapes differ: float rounding only
    # Batches in length order: the padded work is what the sorted lengths give, never more.
    lengths = sorted(len(e) for e in encoded)
    assert widths == [max(lengths[i : i + batch_size]) for i in range(0, 53, batch_size)]


def test_a_fake_encoder_sees_each_sentence_once_and_its_row_is_its_own():
    encoded = [[i] * (1 + (i * 7) % 11) for i in range(40)]  # lengths shuffled against ids

    def collate(batch):
        return {"ids": torch.tensor([e[0] for e in batch]), "length": torch.tensor([len(e) for e in batch])}

    seen: list[int] = []

    def encode(b):
        seen.extend(b["ids"].tolist())
        return torch.stack([b["ids"].float(), b["length"].float()], dim=1)

    out = encode_by_length(encoded, collate, encode, 6)
    assert sorted(seen) == list(range(40))
    assert out[:, 0].tolist() == [float(i) for i in range(40)]
    assert out[:, 1].tolist() == [float(len(e)) for e in encoded]
