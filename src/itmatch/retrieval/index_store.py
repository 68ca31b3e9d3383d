"""An index folder on disk: its layout, manifest and generations, and the in-memory
:class:`PhotoIndex` loaded from it.

Layout of an index folder::

    index.json            manifest: format, the model's identity (checkpoint sha256), the photo
                          folder, counts, unreadable files, the current generation
    gen-000003/           one generation, written in full before index.json points at it
      photos.npy          N x d float32, L2-normalised, rows in photos.json order
      photos.json         {"ids", "paths" (relative, POSIX), "sizes", "mtimes_ns", "digests"}
                          columns (digests: BLAKE2b of each file's bytes; absent in indexes
                          written before they were recorded, null for a photo without one)
      captions.npy        M x d float32 (when captions were indexed)
      captions.json       {"texts", "photos" (relative path of the described photo, or null)}
      photos.faiss        the approximate index (when built with ``approximate="ivf"|"hnsw"``)
    .lock                 held while an update runs

A generation is written in full, then ``index.json`` is replaced atomically to point at it (the
commit point), then older generations are deleted: a reader sees the old index or the new one.
"""

from __future__ import annotations

import json
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from itmatch.errors import ItmatchError
from itmatch.fileio import atomic_write_bytes, exclusive_lock
from itmatch.retrieval.vectors import ExactSearch, FaissSearch, VectorSearch

INDEX_FORMAT = "itmatch-photo-index"
INDEX_VERSION = 1
MANIFEST = "index.json"
LOCK_FILE = ".lock"

class IndexModelMismatchError(ItmatchError):
    """A query (or an update) came from a different model than the one that built the index."""


@dataclass(frozen=True)
class Photo:
    id: int  # stable across updates
    path: str  # relative to the indexed folder, POSIX separators
    size: int
    mtime_ns: int
    digest: str | None = None  # of the file's bytes when it was embedded (fileio.file_digest)


@dataclass(frozen=True)
class Caption:
    id: int  # row in the caption file
    text: str
    photo: str | None  # relative path of the photo it describes, when the file says so


# --- reading --------------------------------------------------------------------------------------


def _read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ItmatchError(f"{path} is missing: the index folder is incomplete (re-run itmatch index)") from None
    except (OSError, ValueError) as exc:
        raise ItmatchError(f"{path}: not readable JSON ({exc})") from exc


def _load_matrix(path: Path, rows: int, where: str) -> torch.Tensor:
    try:
        arr = np.load(path)
    except FileNotFoundError:
        raise ItmatchError(f"{path} is missing: the index folder is incomplete (re-run itmatch index)") from None
    except (OSError, ValueError) as exc:
        raise ItmatchError(f"{path}: not a .npy array ({exc})") from exc
    if arr.ndim != 2 or arr.shape[0] != rows:
        raise ItmatchError(f"{path}: expected {rows} rows of {where}, got shape {arr.shape}")
    return torch.from_numpy(np.ascontiguousarray(arr, dtype=np.float32))


def read_manifest(index_dir: str | Path) -> dict[str, Any]:
    """The manifest of an index folder; a clear error when the folder is not an index."""
    folder = Path(index_dir)
    path = folder / MANIFEST
    if not folder.is_dir():
        raise ItmatchError(f"index {folder} does not exist (build it with: itmatch index RUN IMAGES_DIR -o {folder})")
    if not path.is_file():
        raise ItmatchError(f"{folder} is not an itmatch index (no {MANIFEST}; build one with itmatch index)")
    manifest = _read_json(path)
    if not isinstance(manifest, dict) or manifest.get("format") != INDEX_FORMAT:
        raise ItmatchError(f"{path}: not an itmatch index manifest (expected format {INDEX_FORMAT!r})")
    if manifest.get("version") != INDEX_VERSION:
        raise ItmatchError(
            f"{path}: index format version {manifest.get('version')} is not supported (this itmatch reads "
            f"version {INDEX_VERSION}); rebuild it with itmatch index --rebuild"
        )
    return manifest


class PhotoIndex:
    """An index loaded in memory: photo and caption vectors with their metadata and searchers."""

    def __init__(
        self,
        folder: Path,
        manifest: dict[str, Any],
        photos: list[Photo],
        photo_vectors: torch.Tensor,
        captions: list[Caption],
        caption_vectors: torch.Tensor,
        photo_search: VectorSearch,
    ):
        self.folder = folder
        self.manifest = manifest
        self.photos = photos
        self.photo_vectors = photo_vectors
        self.captions = captions
        self.caption_vectors = caption_vectors
        self.photo_search = photo_search
        self.caption_search = ExactSearch(caption_vectors)
        self._row_by_path = {p.path: i for i, p in enumerate(photos)}
        self._row_by_id = {p.id: i for i, p in enumerate(photos)}

    @classmethod
    def open(cls, index_dir: str | Path, exact: bool = False) -> PhotoIndex:
        """Load an index. ``exact=True`` ignores a stored approximate index (brute force instead)."""
        folder = Path(index_dir)
        manifest = read_manifest(folder)
        gen = folder / str(manifest["generation"])
        cols = _read_json(gen / "photos.json")
        try:
            digests = cols.get("digests") or [None] * len(cols["ids"])
            photos = [Photo(int(i), str(p), int(s), int(m), None if h is None else str(h))
                      for i, p, s, m, h in zip(cols["ids"], cols["paths"], cols["sizes"], cols["mtimes_ns"], digests, strict=True)]  # fmt: skip
        except (KeyError, TypeError, ValueError) as exc:
            raise ItmatchError(f"{gen / 'photos.json'}: malformed photo table ({exc})") from exc
        d = int(manifest["model"]["embed_dim"])
        photo_vectors = _load_matrix(gen / "photos.npy", len(photos), "photo vectors") if photos else torch.zeros(0, d)
        captions: list[Caption] = []
        caption_vectors = torch.zeros(0, d)
        if (gen / "captions.json").is_file():
            ccols = _read_json(gen / "captions.json")
            captions = [Caption(i, str(t), p) for i, (t, p) in enumerate(zip(ccols["texts"], ccols["photos"]))]
            caption_vectors = _load_matrix(gen / "captions.npy", len(captions), "caption vectors")
        search: VectorSearch = ExactSearch(photo_vectors)
        approx = manifest.get("approximate")
        if approx and not exact:
            try:
                search = FaissSearch.load(gen / "photos.faiss", approx)
            except ItmatchError as exc:
                raise ItmatchError(f"index {folder} has an approximate ({approx['method']}) index: {exc}; "
                                   "or search it exactly (itmatch search/serve --exact)") from exc  # fmt: skip
        return cls(folder, manifest, photos, photo_vectors, captions, caption_vectors, search)

    # --- facts ---

    @property
    def images_root(self) -> Path:
        return Path(self.manifest["images_root"])

    @property
    def model(self) -> dict[str, Any]:
        """The identity of the model that built the index (checkpoint sha256, recipe, paths)."""
        return dict(self.manifest["model"])

    @property
    def embed_dim(self) -> int:
        return int(self.manifest["model"]["embed_dim"])

    @property
    def has_captions(self) -> bool:
        return len(self.captions) > 0

    def __len__(self) -> int:
        return len(self.photos)

    def photo(self, key: int | str) -> Photo | None:
        """A photo by id (int) or relative path (str); None when not indexed."""
        row = self._row_by_id.get(key) if isinstance(key, int) else self._row_by_path.get(str(key))
        return None if row is None else self.photos[row]

    def photo_row(self, photo: Photo) -> int:
        return self._row_by_id[photo.id]

    def check_model(self, identity: dict[str, Any]) -> None:
        """Raise :class:`IndexModelMismatchError` unless ``identity`` is the model that built the index."""
        check_same_model(self.manifest, identity, self.folder)

    # --- search ---

    def search_photos(self, queries: torch.Tensor, k: int) -> list[list[tuple[Photo, float]]]:
        scores, rows = self.photo_search.search(queries, k)
        return [[(self.photos[int(r)], float(s)) for s, r in zip(sr, rr) if int(r) >= 0] for sr, rr in zip(scores, rows)]

    def search_captions(self, queries: torch.Tensor, k: int) -> list[list[tuple[Caption, float]]]:
        scores, rows = self.caption_search.search(queries, k)
        return [[(self.captions[int(r)], float(s)) for s, r in zip(sr, rr)] for sr, rr in zip(scores, rows)]


def check_same_model(manifest: dict[str, Any], identity: dict[str, Any], folder: Path | str) -> None:
    built = manifest.get("model", {})
    if built.get("checkpoint_sha256") == identity.get("checkpoint_sha256"):
        return
    raise IndexModelMismatchError(
        f"index {folder} was built with a different model: checkpoint sha256 "
        f"{str(built.get('checkpoint_sha256'))[:16]}... (recipe {built.get('recipe')!r}, {built.get('checkpoint')}), "
        f"but this model is {str(identity.get('checkpoint_sha256'))[:16]}... (recipe {identity.get('recipe')!r}, "
        f"{identity.get('checkpoint')}). Vectors of two models are not comparable: query with the run that "
        f"built the index, or rebuild it with this run (itmatch index RUN IMAGES_DIR -o {folder} --rebuild)"
    )


# --- writing ------------------------------------------------------------------------------------------


def exclusive(folder: Path):
    """An exclusive lock on the folder: a second writer gets a clear error instead of waiting."""
    return exclusive_lock(folder / LOCK_FILE, f"index {folder} is being updated by another itmatch index; wait for it to finish")


def _write_json(path: Path, data: Any) -> None:
    atomic_write_bytes(path, lambda fh: fh.write(json.dumps(data, separators=(",", ":")).encode("utf-8")))


def now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S%z")


@dataclass
class IndexState:
    """Everything one generation holds."""

    photos: dict[str, tuple[Photo, torch.Tensor]]  # relative path -> (photo, vector)
    captions: list[Caption]
    caption_vectors: torch.Tensor
    next_id: int
    unreadable: dict[str, dict[str, Any]]


def write_generation(
    folder: Path,
    state: IndexState,
    manifest: dict[str, Any],
    approximate: dict[str, Any] | None,
    build_approximate: bool = True,
) -> dict[str, Any] | None:
    """Write a new generation, point index.json at it, delete older ones. Returns the approximate
    index's parameters (None when exact, or when ``build_approximate`` is False: a checkpoint)."""
    previous = manifest.get("generation")
    number = int(str(previous).rsplit("-", 1)[-1]) + 1 if previous else 1
    name = f"gen-{number:06d}"
    gen = folder / name
    if gen.exists():
        shutil.rmtree(gen)
    gen.mkdir(parents=True)
    paths = sorted(state.photos)
    photos = [state.photos[p][0] for p in paths]
    d = int(manifest["model"]["embed_dim"])
    vectors = torch.stack([state.photos[p][1] for p in paths]) if paths else torch.zeros(0, d)
    atomic_write_bytes(gen / "photos.npy", lambda fh: np.save(fh, vectors.numpy().astype(np.float32)))
    _write_json(gen / "photos.json", {"ids": [p.id for p in photos], "paths": paths,
                                      "sizes": [p.size for p in photos], "mtimes_ns": [p.mtime_ns for p in photos],
                                      "digests": [p.digest for p in photos]})  # fmt: skip
    if state.captions:
        atomic_write_bytes(gen / "captions.npy", lambda fh: np.save(fh, state.caption_vectors.numpy().astype(np.float32)))
        _write_json(gen / "captions.json", {"texts": [c.text for c in state.captions],
                                            "photos": [c.photo for c in state.captions]})  # fmt: skip
    params = None
    if approximate and build_approximate and len(paths) > 0:
        options = {k: v for k, v in approximate.items() if k != "method"}
        searcher = FaissSearch.build(vectors, approximate["method"], **options)
        searcher.save(gen / "photos.faiss")
        params = searcher.params
    manifest.update(
        generation=name,
        photos=len(paths),
        captions=len(state.captions),
        next_photo_id=state.next_id,
        unreadable=state.unreadable,
        approximate=params,
        approximate_request=approximate,
        updated=now(),
    )
    _write_json(folder / MANIFEST, manifest)  # the commit point (atomic)
    for old in folder.glob("gen-*"):
        if old.name != name and old.is_dir():
            shutil.rmtree(old, ignore_errors=True)
    return params


