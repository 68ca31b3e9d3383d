"""A search index: a photo folder (and optionally a caption file) embedded by one trained run.

Layout of an index folder::

    index.json            manifest: format, the model's identity (checkpoint sha256), the photo
                          folder, counts, unreadable files, the current generation
    gen-000003/           one generation, written in full before index.json points at it
      photos.npy          N x d float32, L2-normalised, rows in photos.json order
      photos.json         {"ids", "paths" (relative, POSIX), "sizes", "mtimes_ns"} columns
      captions.npy        M x d float32 (when captions were indexed)
      captions.json       {"texts", "photos" (relative path of the described photo, or null)}
      photos.faiss        the approximate index (when built with ``approximate="ivf"|"hnsw"``)
    .lock                 held while an update runs

Updates are atomic (a reader sees the old generation or the new one, never half of one) and
incremental: a photo whose path, size and modification time are unchanged keeps its vector; new
or changed photos are embedded; removed photos disappear. A long first build saves a generation
every ``save_every`` embedded photos, so an interrupted build resumes where it stopped.

An index remembers the model that built it: :meth:`PhotoIndex.check_model` refuses any other one,
since vectors of two models live in different spaces.
"""

from __future__ import annotations

import copy
import hashlib
import json
import os
import shutil
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from itmatch.errors import ImageReadError, ItmatchError
from itmatch.fileio import exclusive_lock, os_error_about
from itmatch.retrieval.vectors import APPROXIMATE_METHODS, ExactSearch, FaissSearch, VectorSearch

INDEX_FORMAT = "itmatch-photo-index"
INDEX_VERSION = 1
MANIFEST = "index.json"
LOCK_FILE = ".lock"
IMAGE_EXTENSIONS = frozenset({".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff"})

ProgressCallback = Callable[[int, int], None]


class IndexModelMismatchError(ItmatchError):
    """A query (or an update) came from a different model than the one that built the index."""


@dataclass(frozen=True)
class Photo:
    id: int  # stable across updates
    path: str  # relative to the indexed folder, POSIX separators
    size: int
    mtime_ns: int


@dataclass(frozen=True)
class Caption:
    id: int  # row in the caption file
    text: str
    photo: str | None  # relative path of the photo it describes, when the file says so


@dataclass
class UpdateSummary:
    """What :func:`build_index` did."""

    index: str
    images_root: str
    photos: int = 0  # in the index now
    embedded: int = 0  # new or changed photos embedded by this update
    reused: int = 0  # unchanged photos whose vectors were kept
    removed: int = 0  # photos gone from the folder (or now unreadable)
    unreadable: dict[str, str] = field(default_factory=dict)  # relative path -> reason (skipped)
    outside: list[str] = field(default_factory=list)  # links pointing outside the folder (skipped)
    captions: int = 0
    captions_embedded: int = 0
    approximate: dict[str, Any] | None = None
    seconds: float = 0.0
    model: dict[str, str] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


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
            photos = [Photo(int(i), str(p), int(s), int(m))
                      for i, p, s, m in zip(cols["ids"], cols["paths"], cols["sizes"], cols["mtimes_ns"], strict=True)]  # fmt: skip
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


# --- scanning the folder and the caption file --------------------------------------------------------


def scan_images(root: Path, skip: Sequence[Path] = ()) -> tuple[dict[str, os.stat_result], list[str]]:
    """Image files under ``root`` (recursive; hidden files and folders skipped) by relative path,
    with their ``stat``; and the links that point outside ``root`` (skipped)."""
    root_real = root.resolve()
    skip_real = [p.resolve() for p in skip]
    found: dict[str, os.stat_result] = {}
    outside: list[str] = []
    for dirpath, dirnames, filenames in os.walk(root):
        here = Path(dirpath)
        dirnames[:] = sorted(d for d in dirnames if not d.startswith(".") and (here / d).resolve() not in skip_real)
        for name in sorted(filenames):
            if name.startswith(".") or Path(name).suffix.lower() not in IMAGE_EXTENSIONS:
                continue
            path = here / name
            rel = path.relative_to(root).as_posix()
            try:
                real = path.resolve(strict=True)
                st = real.stat()
            except (OSError, RuntimeError):
                continue  # a dangling link
            if not real.is_relative_to(root_real):
                outside.append(rel)
                continue
            found[rel] = st
    return found, outside


def read_captions(path: str | Path) -> list[tuple[str, str | None]]:
    """Sentences to index, with the photo each describes when the file says so.

    ``.txt``: one sentence per line. ``.csv``: a header with a ``caption`` column and optionally
    an ``image`` column (the Flickr8k ``captions.txt`` is such a CSV). ``.json``: Karpathy split
    JSON (every image's ``sentences[].raw``, photo = ``filepath/filename``).
    """
    from itmatch.data.readers import read_csv_table, read_json_file, read_text_lines

    p = Path(path)
    if not p.is_file():
        raise ItmatchError(f"caption file {p} does not exist")
    lines = read_text_lines(p)  # non-UTF-8 bytes: an error naming the file and the byte
    first = next((line for line in lines if line.strip()), "").strip().lower()
    if p.suffix.lower() == ".json":
        data = read_json_file(p)
        try:
            out = []
            for image in data["images"]:
                photo = "/".join(x for x in (image.get("filepath"), image["filename"]) if x)
                out.extend((str(s["raw"]).strip(), photo) for s in image["sentences"])
            return out
        except (KeyError, TypeError) as exc:
            raise ItmatchError(f"{p}: expected Karpathy split JSON (images[].filename, images[].sentences[].raw): {exc}") from exc
    if p.suffix.lower() == ".csv" or first.startswith(("image,caption", "caption")):
        header, rows = read_csv_table(p)
        if "caption" not in header:
            raise ItmatchError(f"{p}: a CSV caption file needs a header with a 'caption' column, got {header}")
        ci, ii = header.index("caption"), header.index("image") if "image" in header else None
        out = [(row[ci].strip(), row[ii].strip() if ii is not None else None) for _, row in rows]
        return [(t, ph) for t, ph in out if t]
    return [(line.strip(), None) for line in lines if line.strip()]


# --- writing ------------------------------------------------------------------------------------------


def _exclusive(folder: Path):
    """An exclusive lock on the folder: a second writer gets a clear error instead of waiting."""
    return exclusive_lock(folder / LOCK_FILE, f"index {folder} is being updated by another itmatch index; wait for it to finish")


def _write_file(path: Path, write: Callable[[Any], None]) -> None:
    try:
        with open(path, "wb") as fh:
            write(fh)
            fh.flush()
            os.fsync(fh.fileno())
    except OSError as exc:  # a full or read-only disk: name the file, and how much it needed
        raise os_error_about(exc, path, path.stat().st_size if path.exists() else 0) from exc


def _write_json(path: Path, data: Any) -> None:
    _write_file(path, lambda fh: fh.write(json.dumps(data, separators=(",", ":")).encode("utf-8")))


def _now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S%z")


def _file_sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


@dataclass
class _State:
    """Everything one generation holds."""

    photos: dict[str, tuple[Photo, torch.Tensor]]  # relative path -> (photo, vector)
    captions: list[Caption]
    caption_vectors: torch.Tensor
    next_id: int
    unreadable: dict[str, dict[str, Any]]


def _write_generation(
    folder: Path,
    state: _State,
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
    _write_file(gen / "photos.npy", lambda fh: np.save(fh, vectors.numpy().astype(np.float32)))
    _write_json(gen / "photos.json", {"ids": [p.id for p in photos], "paths": paths,
                                      "sizes": [p.size for p in photos], "mtimes_ns": [p.mtime_ns for p in photos]})  # fmt: skip
    if state.captions:
        _write_file(gen / "captions.npy", lambda fh: np.save(fh, state.caption_vectors.numpy().astype(np.float32)))
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
        updated=_now(),
    )
    tmp = folder / (MANIFEST + ".tmp")
    _write_json(tmp, manifest)
    os.replace(tmp, folder / MANIFEST)  # the commit point
    for old in folder.glob("gen-*"):
        if old.name != name and old.is_dir():
            shutil.rmtree(old, ignore_errors=True)
    return params


def _previous_state(folder: Path, manifest: dict[str, Any] | None) -> _State:
    if manifest is None:
        return _State({}, [], torch.zeros(0, 0), 0, {})
    old = PhotoIndex.open(folder, exact=True)
    photos = {p.path: (p, old.photo_vectors[i]) for i, p in enumerate(old.photos)}
    return _State(photos, old.captions, old.caption_vectors, int(manifest.get("next_photo_id", 0)),
                  dict(manifest.get("unreadable") or {}))  # fmt: skip


def _embed_files(matcher: Any, root: Path, rels: list[str], batch_size: int) -> tuple[list[str], torch.Tensor, dict[str, str]]:
    """Embed ``rels``; an unreadable file is left out (and reported), the rest of its batch kept."""
    files = [str(root / r) for r in rels]
    try:
        return rels, matcher.embed_images(files, batch_size=batch_size), {}
    except ImageReadError as exc:
        bad = {rel: exc.failures[f] for rel, f in zip(rels, files) if f in exc.failures}
    good = [r for r in rels if r not in bad]
    if not good:
        return [], torch.zeros(0, matcher.embed_dim), bad
    return good, matcher.embed_images([str(root / r) for r in good], batch_size=batch_size), bad


def build_index(
    matcher: Any,
    images_dir: str | Path,
    index_dir: str | Path,
    *,
    captions: str | Path | None = None,
    approximate: str | dict[str, Any] | None = None,
    rebuild: bool = False,
    batch_size: int = 32,
    save_every: int = 2048,
    save_every_seconds: float = 60.0,
    progress: ProgressCallback | None = None,
) -> UpdateSummary:
    """Create or update the index of ``images_dir`` in ``index_dir`` with ``matcher`` (an
    :class:`itmatch.inference.Matcher`); returns what was done.

    ``captions``: a caption file (see :func:`read_captions`) to index as well; None keeps the
    captions an earlier update indexed. ``approximate``: ``"ivf"``/``"hnsw"`` (or a dict with
    ``method`` and :meth:`FaissSearch.build` options) to also build a FAISS index, ``"exact"`` to drop
    it, None to keep what the index had. An existing index built with another model or another
    folder is refused unless ``rebuild=True``. Progress is saved (a generation an interrupted
    build resumes from) every ``save_every`` embedded photos or ``save_every_seconds``, whichever
    comes first, so a slow build of a few photos keeps its work too.
    """
    start = time.perf_counter()
    root = Path(images_dir)
    folder = Path(index_dir)
    if not root.is_dir():
        raise ItmatchError(f"photo folder {root} does not exist or is not a folder")
    if folder.exists() and not folder.is_dir():
        raise ItmatchError(f"index path {folder} exists and is not a folder")
    if folder.is_dir() and not (folder / MANIFEST).exists() and any(p.name != LOCK_FILE for p in folder.iterdir()):
        raise ItmatchError(f"{folder} is a non-empty folder that is not an itmatch index; choose another -o")
    identity = dict(matcher.identity)
    root_abs = str(root.resolve())

    with _exclusive(folder):
        manifest = read_manifest(folder) if (folder / MANIFEST).exists() else None
        if manifest is not None and not rebuild:
            check_same_model(manifest, identity, folder)
            if manifest["images_root"] != root_abs:
                raise ItmatchError(
                    f"index {folder} covers {manifest['images_root']}, not {root_abs}; use another -o, "
                    "or --rebuild to replace it"
                )
        state = _previous_state(folder, None if rebuild else manifest)
        before = None if rebuild or manifest is None else copy.deepcopy(manifest)
        old_captions = list(state.captions)
        if manifest is None or rebuild:
            manifest = {
                "format": INDEX_FORMAT,
                "version": INDEX_VERSION,
                "generation": manifest.get("generation") if manifest else None,
                "created": _now(),
            }
        manifest["model"] = {**identity, "embed_dim": int(matcher.embed_dim)}
        manifest["images_root"] = root_abs
        if isinstance(approximate, str):
            approx_req = None if approximate in ("exact", "none") else {"method": approximate}
        elif approximate is None:
            approx_req = manifest.get("approximate_request")
        else:
            approx_req = dict(approximate)
        if approx_req is not None and approx_req.get("method") not in APPROXIMATE_METHODS:
            raise ItmatchError(f"unknown approximate method {approx_req.get('method')!r}; expected ivf, hnsw or exact")
        summary = UpdateSummary(index=str(folder), images_root=root_abs, model=identity)

        # Captions first: they are cheap, so a partial (interrupted) photo build still has them.
        if captions is not None:
            pairs = read_captions(captions)
            known = {c.text: state.caption_vectors[i] for i, c in enumerate(state.captions)}
            todo = sorted({t for t, _ in pairs if t not in known})
            if todo:
                for text, vec in zip(todo, matcher.embed_texts(todo)):
                    known[text] = vec
            summary.captions_embedded = len(todo)
            state.captions = [Caption(i, t, ph) for i, (t, ph) in enumerate(pairs)]
            state.caption_vectors = torch.stack([known[t] for t, _ in pairs]) if pairs else torch.zeros(0, matcher.embed_dim)
            manifest["captions_source"] = {"path": str(Path(captions).resolve()), "sha256": _file_sha256(Path(captions))}
        summary.captions = len(state.captions)

        found, summary.outside = scan_images(root, skip=[folder])
        kept: dict[str, tuple[Photo, torch.Tensor]] = {}
        todo_rel: list[str] = []
        for rel, st in found.items():
            old = state.photos.get(rel)
            if old is not None and old[0].size == st.st_size and old[0].mtime_ns == st.st_mtime_ns:
                kept[rel] = old
                continue
            bad = state.unreadable.get(rel)
            if bad is not None and bad["size"] == st.st_size and bad["mtime_ns"] == st.st_mtime_ns:
                summary.unreadable[rel] = bad["reason"]  # unchanged since it failed: not retried
                continue
            todo_rel.append(rel)
        summary.removed = len(set(state.photos) - set(kept) - set(todo_rel))
        summary.reused = len(kept)
        ids = {rel: ph.id for rel, (ph, _) in state.photos.items()}
        state.photos = kept
        state.unreadable = {rel: v for rel, v in state.unreadable.items() if rel in summary.unreadable}

        done = 0
        since_save = 0
        last_save = time.perf_counter()
        if progress:
            progress(0, len(todo_rel))
        for i in range(0, len(todo_rel), batch_size):
            batch = todo_rel[i : i + batch_size]
            good, vectors, bad = _embed_files(matcher, root, batch, batch_size)
            for rel, vec in zip(good, vectors):
                st = found[rel]
                pid = ids.get(rel)
                if pid is None:
                    pid = state.next_id
                    state.next_id += 1
                state.photos[rel] = (Photo(pid, rel, int(st.st_size), int(st.st_mtime_ns)), vec.clone())
            for rel, reason in bad.items():
                summary.unreadable[rel] = reason
                state.unreadable[rel] = {"reason": reason, "size": int(found[rel].st_size), "mtime_ns": int(found[rel].st_mtime_ns)}
            summary.embedded += len(good)
            done += len(batch)
            since_save += len(batch)
            if progress:
                progress(done, len(todo_rel))
            due = (save_every and since_save >= save_every) or (
                save_every_seconds and time.perf_counter() - last_save >= save_every_seconds
            )
            if due and since_save and done < len(todo_rel):
                _write_generation(folder, state, manifest, approx_req, build_approximate=False)  # resumable
                since_save, last_save = 0, time.perf_counter()

        summary.photos = len(state.photos)
        unchanged = (
            before is not None
            and summary.embedded == 0
            and summary.removed == 0
            and state.captions == old_captions
            and summary.captions_embedded == 0
            and state.unreadable == before.get("unreadable")
            and approx_req == before.get("approximate_request")
            and all(manifest.get(key) == before.get(key) for key in ("model", "images_root", "captions_source"))
            and len(state.photos) == before.get("photos")
        )
        if unchanged:  # nothing to write: the index on disk is already this one
            summary.approximate = before.get("approximate")
            summary.seconds = round(time.perf_counter() - start, 3)
            return summary
        summary.approximate = _write_generation(folder, state, manifest, approx_req)
        summary.photos = len(state.photos)
        summary.seconds = round(time.perf_counter() - start, 3)
        return summary
