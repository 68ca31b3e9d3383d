"""A search engine: an index plus the model that built it, answering sentence and photo queries.

    engine = SearchEngine.open("flickr-index")            # loads the run recorded in the index
    engine.search_text("a dog runs on the beach", k=10)   # sentence -> photos
    engine.search_image("query.jpg", k=10)                # photo -> similar photos
    engine.describe_image("query.jpg", k=5)               # photo -> sentences (captions indexed)
    engine.similar_photos("dogs/1.jpg", k=10)             # indexed photo -> similar photos

Every answer is a list of :class:`Hit` (rank, cosine score, and the photo or sentence).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch

from itmatch.errors import ItmatchError
from itmatch.retrieval.index_store import Caption, Photo, PhotoIndex

DEFAULT_MAX_QUERY_CHARS = 500


@dataclass(frozen=True)
class Hit:
    """One result: a photo (``path`` relative to the indexed folder) or a sentence (``text``, and
    ``path`` of the photo it describes when known)."""

    rank: int  # 1-based
    score: float  # cosine similarity
    kind: str  # "photo" | "sentence"
    id: int
    path: str | None
    text: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def photo_hits(results: list[tuple[Photo, float]]) -> list[Hit]:
    return [Hit(rank=i + 1, score=s, kind="photo", id=p.id, path=p.path) for i, (p, s) in enumerate(results)]


def sentence_hits(results: list[tuple[Caption, float]]) -> list[Hit]:
    return [Hit(rank=i + 1, score=s, kind="sentence", id=c.id, path=c.photo, text=c.text) for i, (c, s) in enumerate(results)]


def clean_query(text: str, max_chars: int = DEFAULT_MAX_QUERY_CHARS) -> str:
    """The query stripped of surrounding whitespace; an error when empty or longer than ``max_chars``."""
    if not isinstance(text, str):
        raise ItmatchError(f"a text query must be a string, got {type(text).__name__}")
    q = text.strip()
    if not q:
        raise ItmatchError("the text query is empty")
    if len(q) > max_chars:
        raise ItmatchError(f"the text query has {len(q)} characters; the limit is {max_chars}")
    return q


class SearchEngine:
    """Answers queries against a :class:`PhotoIndex` with the :class:`~itmatch.inference.Matcher`
    that built it; any other model is refused at construction."""

    def __init__(self, index: PhotoIndex, matcher: Any, max_query_chars: int = DEFAULT_MAX_QUERY_CHARS):
        index.check_model(matcher.identity)
        self.index = index
        self.matcher = matcher
        self.max_query_chars = int(max_query_chars)

    @classmethod
    def open(
        cls,
        index_dir: str | Path,
        run: str | Path | None = None,
        *,
        checkpoint: str = "best",
        device: str = "auto",
        exact: bool = False,
        max_query_chars: int = DEFAULT_MAX_QUERY_CHARS,
    ) -> SearchEngine:
        """Load an index and its model: ``run`` (a run folder or checkpoint file), by default the
        checkpoint recorded in the index when it was built (the members' checkpoints for an index
        built by an :class:`~itmatch.inference.Ensemble`). ``exact`` ignores an approximate index."""
        from itmatch.inference import Ensemble, Matcher

        index = PhotoIndex.open(index_dir, exact=exact)
        members = index.model.get("members")
        if run is not None:
            matcher: Matcher | Ensemble = Matcher.from_run(run, checkpoint=checkpoint, device=device)
        elif members:
            gone = [m for m in members if not Path(m).is_file()]
            if gone:
                raise ItmatchError(f"index {index_dir} was built by an ensemble of {len(members)} models, and the "
                                   f"checkpoint(s) {', '.join(gone)} are no longer there")  # fmt: skip
            matcher = Ensemble.from_runs(members, device=device)
        else:
            recorded = index.model.get("checkpoint")
            if not recorded or not Path(recorded).is_file():
                raise ItmatchError(
                    f"the checkpoint that built index {index_dir} ({recorded}) is no longer there; "
                    "name the run with --run RUN (it must be the same model)"
                )
            matcher = Matcher.from_run(recorded, device=device)
        return cls(index, matcher, max_query_chars=max_query_chars)

    # --- embedding ---

    def embed_text(self, text: str) -> torch.Tensor:
        """1 x d: the query sentence in the joint space (tokenise + encode)."""
        return self.matcher.embed_texts([clean_query(text, self.max_query_chars)])

    def embed_image(self, image: Any) -> torch.Tensor:
        """1 x d: a photo (path or PIL image) in the joint space. Unreadable -> ImageReadError."""
        return self.matcher.embed_images([image])

    def warm_up(self) -> None:
        """Build everything a first query would (text encoder, image backbone), so it is not slow."""
        from PIL import Image

        self.matcher.embed_texts(["warm up"])
        self.matcher.embed_images([Image.new("RGB", (32, 32))])

    # --- queries ---

    def search_text(self, text: str, k: int = 10) -> list[Hit]:
        """Sentence -> the photos it describes best."""
        return photo_hits(self.index.search_photos(self.embed_text(text), k)[0])

    def search_image(self, image: Any, k: int = 10) -> list[Hit]:
        """Photo (path or PIL image) -> the most similar indexed photos."""
        return photo_hits(self.index.search_photos(self.embed_image(image), k)[0])

    def describe_image(self, image: Any, k: int = 10) -> list[Hit]:
        """Photo -> the indexed sentences that describe it best (needs captions in the index)."""
        self._need_captions()
        return sentence_hits(self.index.search_captions(self.embed_image(image), k)[0])

    def search_sentences(self, text: str, k: int = 10) -> list[Hit]:
        """Sentence -> the closest indexed sentences (needs captions in the index)."""
        self._need_captions()
        return sentence_hits(self.index.search_captions(self.embed_text(text), k)[0])

    def similar_photos(self, photo: int | str, k: int = 10) -> list[Hit]:
        """Indexed photo (id or relative path) -> the most similar other indexed photos."""
        found = self.index.photo(photo)
        if found is None:
            raise ItmatchError(f"photo {photo!r} is not in index {self.index.folder}")
        query = self.index.photo_vectors[self.index.photo_row(found)].unsqueeze(0)
        results = [(p, s) for p, s in self.index.search_photos(query, k + 1)[0] if p.id != found.id][:k]
        return photo_hits(results)

    def _need_captions(self) -> None:
        if not self.index.has_captions:
            raise ItmatchError(
                f"index {self.index.folder} has no sentences; index a caption file with "
                "itmatch index RUN IMAGES_DIR -o INDEX --captions FILE"
            )
