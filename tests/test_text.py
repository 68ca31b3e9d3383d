"""Tokenizer and vocabulary."""

from __future__ import annotations

import json

import pytest

from itmatch.data import Vocabulary, tokenize
from itmatch.errors import DataError


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("A child in a pink dress .", ["a", "child", "in", "a", "pink", "dress", "."]),
        ("Dog with orange ball, stands", ["dog", "with", "orange", "ball", ",", "stands"]),
        ("The dog's ball", ["the", "dog", "'s", "ball"]),
        ("The dog 's ball", ["the", "dog", "'s", "ball"]),  # pre-tokenised Flickr text
        ("It isn't, they're, we'll", ["it", "is", "n't", ",", "they", "'re", ",", "we", "'ll"]),
        ("A man in a t-shirt at 10:30 o'clock", ["a", "man", "in", "a", "t-shirt", "at", "10:30", "o'clock"]),
        ("3.5 meters, 1,000 people!", ["3.5", "meters", ",", "1,000", "people", "!"]),
        ('He said "hi" (loudly)...', ["he", "said", '"', "hi", '"', "(", "loudly", ")", "..."]),
        ("the kids' toys", ["the", "kids", "'", "toys"]),
        ("Dog\u2019s caf\u00e9", ["dog", "'s", "caf\u00e9"]),
        ("- a -- b", ["-", "a", "-", "-", "b"]),
        ("   ", []),
    ],
)
def test_tokenize_examples(text: str, expected: list[str]) -> None:
    assert tokenize(text) == expected


def test_vocabulary_threshold_and_order() -> None:
    captions = ["b a c", "a b", "a b d", "a c e", "z z"]  # a:4 b:3 c:2 z:2 d:1 e:1
    vocab = Vocabulary.build(captions, min_count=2)
    assert vocab.words[:4] == ["<pad>", "<start>", "<end>", "<unk>"]
    assert vocab.words[4:] == ["a", "b", "c", "z"]  # descending count, ties alphabetical
    assert len(vocab) == 8
    assert "d" not in vocab and "a" in vocab
    assert Vocabulary.build(captions).words[4:] == ["a"]  # default min_count=4
    assert Vocabulary.build(reversed(captions), min_count=2).words == vocab.words  # deterministic


def test_encode_decode_and_unknown_words() -> None:
    vocab = Vocabulary.build(["a dog runs", "a dog sits"], min_count=2)
    ids = vocab.encode("A dog flies!")
    assert ids[0] == Vocabulary.START and ids[-1] == Vocabulary.END
    assert ids[1:-1] == [vocab.index("a"), vocab.index("dog"), Vocabulary.UNK, Vocabulary.UNK]
    assert vocab.index("flies") == Vocabulary.UNK
    assert vocab.decode(ids) == "a dog <unk> <unk>"
    assert vocab.decode(ids, skip_special=False) == "<start> a dog <unk> <unk> <end>"
    assert vocab.decode([*ids, 0, 0]) == "a dog <unk> <unk>"  # padding dropped


def test_special_tokens_in_text_do_not_collide() -> None:
    vocab = Vocabulary.build(["<unk> <pad>"] * 4, min_count=1)
    assert vocab.words[:4] == list(Vocabulary.SPECIALS)
    assert len(set(vocab.words)) == len(vocab.words)


def test_save_load_round_trip(tmp_path) -> None:
    vocab = Vocabulary.build(["un caf\u00e9 noir", "un caf\u00e9 au lait"], min_count=1)
    path = tmp_path / "vocab.json"
    vocab.save(path)
    data = json.loads(path.read_text(encoding="utf-8"))
    assert data["min_count"] == 1 and data["words"] == vocab.words[4:]
    loaded = Vocabulary.load(path)
    assert loaded == vocab and loaded.encode("un caf\u00e9") == vocab.encode("un caf\u00e9")
    assert Vocabulary.from_dict(vocab.to_dict()) == vocab
    assert [p.name for p in tmp_path.iterdir()] == ["vocab.json"]  # no temp file left behind
    vocab2 = Vocabulary.build(["x y"], min_count=1)
    vocab2.save(path)  # overwrite in place
    assert Vocabulary.load(path) == vocab2


@pytest.mark.parametrize(
    ("content", "expected"),
    [
        ("{not json", "invalid JSON at line 1"),
        ("[1, 2]", "expected a JSON object"),
        ('{"words": "abc", "min_count": 4}', "'words' must be a list"),
        ('{"words": ["a", 3], "min_count": 4}', "'words' must be a list"),
        ('{"words": ["a", "a"], "min_count": 4}', "appears twice"),
        ('{"words": ["<unk>"], "min_count": 4}', "appears twice"),
        ('{"words": ["a"], "min_count": "4"}', "'min_count' must be an integer"),
        ('{"format": "other", "words": ["a"]}', "'format'"),
    ],
)
def test_malformed_vocabulary_file(tmp_path, content: str, expected: str) -> None:
    path = tmp_path / "vocab.json"
    path.write_text(content, encoding="utf-8")
    with pytest.raises(DataError, match=expected) as info:
        Vocabulary.load(path)
    assert str(path) in str(info.value)


def test_missing_vocabulary_file(tmp_path) -> None:
    with pytest.raises(DataError, match="not found"):
        Vocabulary.load(tmp_path / "nope.json")
