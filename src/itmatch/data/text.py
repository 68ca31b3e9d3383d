"""Caption text: the one tokenizer of the project and the word vocabulary.

The tokenizer is a regular expression that roughly reproduces what VSE++ gets from
``nltk.word_tokenize(caption.lower())`` without needing nltk or its data files: lower-case,
punctuation split off, clitics split the Penn Treebank way (``dog's`` -> ``dog 's``,
``don't`` -> ``do n't``), hyphenated words and decimal numbers kept whole.
"""

from __future__ import annotations

import json
import re
from collections import Counter
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

from itmatch.errors import DataError

# Typographic apostrophes/quotes normalised before matching.
_NORMALISE = str.maketrans({"\u2019": "'", "\u2018": "'", "\u201c": '"', "\u201d": '"', "\u00b4": "'"})

_TOKEN_RE = re.compile(
    r"""
    \d+(?:[.,:]\d+)+                 # numbers with separators: 3.5, 1,000, 10:30
    | [^\W_]+(?:[-'][^\W_]+)*        # words, with internal hyphens/apostrophes: t-shirt, o'clock
    | '(?:s|re|ve|ll|d|m)\b          # detached clitics as in pre-tokenised text: "dog 's"
    | \.{2,}                         # ellipsis
    | [^\w\s]|_                      # any other single symbol
    """,
    re.VERBOSE,
)
_CLITIC_RE = re.compile(r"^(.+?)('(?:s|re|ve|ll|d|m)|n't)$")


def tokenize(text: str) -> list[str]:
    """Split a caption into lower-case tokens.

    >>> tokenize("A dog's ball, isn't it? 3.5 t-shirts...")
    ['a', 'dog', "'s", 'ball', ',', 'is', "n't", 'it', '?', '3.5', 't-shirts', '...']
    """
    tokens: list[str] = []
    for token in _TOKEN_RE.findall(text.lower().translate(_NORMALISE)):
        match = _CLITIC_RE.match(token) if "'" in token else None
        if match:
            tokens.extend(match.groups())
        else:
            tokens.append(token)
    return tokens


class Vocabulary:
    """Word <-> index mapping with the special tokens ``<pad>``=0, ``<start>``=1, ``<end>``=2, ``<unk>``=3.

    Build it with :meth:`build` from the captions of the **training split only**: building it over
    validation or test captions leaks their words into the model (a known trap in peer code).
    Persist it with :meth:`save` (plain JSON, never pickle).
    """

    PAD, START, END, UNK = 0, 1, 2, 3
    SPECIALS: tuple[str, ...] = ("<pad>", "<start>", "<end>", "<unk>")
    FORMAT = "itmatch-vocabulary"
    VERSION = 1

    def __init__(self, words: Sequence[str], min_count: int | None = None) -> None:
        """``words``: the ordinary words (specials excluded) in index order, starting at index 4."""
        self.words: list[str] = [*self.SPECIALS, *words]
        self.min_count = min_count
        self._index = {w: i for i, w in enumerate(self.words)}
        if len(self._index) != len(self.words):
            dup = next(w for w, c in Counter(self.words).items() if c > 1)
            raise ValueError(f"vocabulary word {dup!r} appears twice (or collides with a special token)")

    @classmethod
    def build(cls, captions: Iterable[str], min_count: int = 4) -> Vocabulary:
        """Vocabulary of the words seen at least ``min_count`` times in ``captions``.

        Pass the training captions only. Order: descending count, ties alphabetical (deterministic).
        """
        if min_count < 1:
            raise ValueError(f"min_count must be >= 1, got {min_count}")
        counts: Counter[str] = Counter()
        for caption in captions:
            counts.update(tokenize(caption))
        kept = [w for w, c in counts.items() if c >= min_count and w not in cls.SPECIALS]
        kept.sort(key=lambda w: (-counts[w], w))
        return cls(kept, min_count=min_count)

    def __len__(self) -> int:
        return len(self.words)

    def __contains__(self, word: object) -> bool:
        return word in self._index

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Vocabulary):
            return NotImplemented
        return self.words == other.words and self.min_count == other.min_count

    def __repr__(self) -> str:
        return f"Vocabulary({len(self)} entries, min_count={self.min_count})"

    def index(self, word: str) -> int:
        """Index of ``word``; ``<unk>``'s index when it is not in the vocabulary."""
        return self._index.get(word, self.UNK)

    def encode(self, text: str) -> list[int]:
        """Token indices of ``text`` wrapped in ``<start>`` ... ``<end>``; unknown words -> ``<unk>``."""
        return [self.START, *(self._index.get(t, self.UNK) for t in tokenize(text)), self.END]

    def decode(self, indices: Iterable[int], skip_special: bool = True) -> str:
        """Space-joined words of ``indices``; drops ``<pad>``/``<start>``/``<end>`` unless ``skip_special=False``."""
        skip = {self.PAD, self.START, self.END} if skip_special else set()
        return " ".join(self.words[int(i)] for i in indices if int(i) not in skip)

    def to_dict(self) -> dict[str, Any]:
        """Plain-data form (JSON-serialisable)."""
        return {
            "format": self.FORMAT,
            "version": self.VERSION,
            "specials": list(self.SPECIALS),
            "min_count": self.min_count,
            "words": self.words[len(self.SPECIALS) :],
        }

    @classmethod
    def from_dict(cls, data: Any, source: str = "vocabulary") -> Vocabulary:
        """Inverse of :meth:`to_dict`; raises :class:`DataError` naming ``source`` when malformed."""
        if not isinstance(data, dict):
            raise DataError(
                f"{source}: expected a JSON object with 'words' and 'min_count', got {type(data).__name__}"
            )
        if data.get("format", cls.FORMAT) != cls.FORMAT:
            raise DataError(f"{source}: 'format' is {data.get('format')!r}, expected {cls.FORMAT!r}")
        if data.get("specials", list(cls.SPECIALS)) != list(cls.SPECIALS):
            raise DataError(
                f"{source}: 'specials' is {data.get('specials')!r}, expected {list(cls.SPECIALS)!r}"
            )
        words = data.get("words")
        if not isinstance(words, list) or not all(isinstance(w, str) and w for w in words):
            raise DataError(f"{source}: 'words' must be a list of non-empty strings")
        min_count = data.get("min_count")
        if min_count is not None and (isinstance(min_count, bool) or not isinstance(min_count, int)):
            raise DataError(f"{source}: 'min_count' must be an integer or null, got {min_count!r}")
        try:
            return cls(words, min_count=min_count)
        except ValueError as exc:
            raise DataError(f"{source}: {exc}") from None

    def save(self, path: str | Path) -> None:
        """Write the vocabulary as JSON, atomically (temp file in the same folder, then ``os.replace``)."""
        from itmatch.fileio import atomic_write_text

        atomic_write_text(Path(path), json.dumps(self.to_dict(), ensure_ascii=False, indent=1) + "\n")

    @classmethod
    def load(cls, path: str | Path) -> Vocabulary:
        """Read a vocabulary written by :meth:`save`; :class:`DataError` naming the file when it is malformed."""
        path = Path(path)
        try:
            text = path.read_text(encoding="utf-8")
        except FileNotFoundError:
            raise DataError(f"{path}: vocabulary file not found") from None
        except UnicodeDecodeError as exc:
            raise DataError(f"{path}: not UTF-8 text ({exc.reason} at byte {exc.start})") from None
        try:
            data = json.loads(text)
        except json.JSONDecodeError as exc:
            raise DataError(
                f"{path}: invalid JSON at line {exc.lineno}, column {exc.colno}: {exc.msg}"
            ) from None
        return cls.from_dict(data, source=str(path))
