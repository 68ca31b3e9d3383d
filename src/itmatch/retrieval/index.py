"""Building a search index: a photo folder (and optionally a caption file) embedded by one trained run.

The folder's layout and the loaded index are in :mod:`itmatch.retrieval.index_store`; the folder
scan in :mod:`itmatch.retrieval.scan`; caption files in :mod:`itmatch.retrieval.captions`.

Updates are atomic (a reader sees the old generation or the new one, never half of one) and
incremental: a photo whose path, size and modification time are unchanged keeps its vector, and
so does one whose modification time changed but whose bytes did not (a restored or touched folder:
the digest recorded when it was embedded says so, and the new time is recorded); new or changed
photos are embedded; removed photos disappear. A long first build saves a generation
every ``save_every`` embedded photos, so an interrupted build resumes where it stopped.

An index remembers the model that built it: :meth:`PhotoIndex.check_model` refuses any other one,
since vectors of two models live in different spaces.
"""

from __future__ import annotations

import copy
import dataclasses
import os
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch

from itmatch.errors import ImageReadError, ItmatchError
from itmatch.fileio import file_digest, file_sha256, remove_stale_temp_files, same_bytes
from itmatch.retrieval.captions import read_captions
from itmatch.retrieval.index_store import (
    INDEX_FORMAT,
    INDEX_VERSION,
    LOCK_FILE,
    MANIFEST,
    Caption,
    IndexState,
    Photo,
    PhotoIndex,
    check_same_model,
    exclusive,
    now,
    read_manifest,
    write_generation,
)
from itmatch.retrieval.scan import scan_images
from itmatch.retrieval.vectors import APPROXIMATE_METHODS

ProgressCallback = Callable[[int, int], None]


@dataclass
class UpdateSummary:
    """What :func:`build_index` did."""

    index: str
    images_root: str
    photos: int = 0  # in the index now
    embedded: int = 0  # new or changed photos embedded by this update
    reused: int = 0  # unchanged photos whose vectors were kept
    restamped: int = 0  # of those, photos with a new modification time but the same bytes
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


def _previous_state(folder: Path, manifest: dict[str, Any] | None) -> IndexState:
    if manifest is None:
        return IndexState({}, [], torch.zeros(0, 0), 0, {})
    old = PhotoIndex.open(folder, exact=True)
    photos = {p.path: (p, old.photo_vectors[i]) for i, p in enumerate(old.photos)}
    return IndexState(photos, old.captions, old.caption_vectors, int(manifest.get("next_photo_id", 0)),
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
    _check_paths(root, folder)
    identity = dict(matcher.identity)
    root_abs = str(root.resolve())

    with exclusive(folder):
        remove_stale_temp_files(folder)  # a killed writer's; no live one while the lock is held
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
                "created": now(),
            }
        manifest["model"] = {**identity, "embed_dim": int(matcher.embed_dim)}
        manifest["images_root"] = root_abs
        approx_req = _approximate_request(approximate, manifest)
        summary = UpdateSummary(index=str(folder), images_root=root_abs, model=identity)

        # Captions first: they are cheap, so a partial (interrupted) photo build still has them.
        if captions is not None:
            _update_captions(state, read_captions(captions), matcher, summary)
            manifest["captions_source"] = {"path": str(Path(captions).resolve()), "sha256": file_sha256(Path(captions))}
        summary.captions = len(state.captions)

        found, summary.outside = scan_images(root, skip=[folder])
        todo_rel, ids = _plan_photos(root, found, state, summary)

        def checkpoint() -> None:  # a resumable generation, without the approximate index
            write_generation(folder, state, manifest, approx_req, build_approximate=False)

        _embed_photos(matcher, root, found, todo_rel, ids, state, summary, batch_size=batch_size,
                      save_every=save_every, save_every_seconds=save_every_seconds, progress=progress,
                      checkpoint=checkpoint)  # fmt: skip

        summary.photos = len(state.photos)
        if before is not None and _nothing_changed(before, manifest, state, old_captions, approx_req, summary):
            # nothing to write: the index on disk is already this one
            summary.approximate = before.get("approximate")
            summary.seconds = round(time.perf_counter() - start, 3)
            return summary
        summary.approximate = write_generation(folder, state, manifest, approx_req)
        summary.photos = len(state.photos)
        summary.seconds = round(time.perf_counter() - start, 3)
        return summary


def _check_paths(root: Path, folder: Path) -> None:
    if not root.is_dir():
        raise ItmatchError(f"photo folder {root} does not exist or is not a folder")
    if folder.exists() and not folder.is_dir():
        raise ItmatchError(f"index path {folder} exists and is not a folder")
    if folder.is_dir() and not (folder / MANIFEST).exists() and any(p.name != LOCK_FILE for p in folder.iterdir()):
        raise ItmatchError(f"{folder} is a non-empty folder that is not an itmatch index; choose another -o")


def _approximate_request(approximate: str | dict[str, Any] | None, manifest: dict[str, Any]) -> dict[str, Any] | None:
    """What the approximate index should be after this update (None: exact search only)."""
    if isinstance(approximate, str):
        approx_req = None if approximate in ("exact", "none") else {"method": approximate}
    elif approximate is None:
        approx_req = manifest.get("approximate_request")
    else:
        approx_req = dict(approximate)
    if approx_req is not None and approx_req.get("method") not in APPROXIMATE_METHODS:
        raise ItmatchError(f"unknown approximate method {approx_req.get('method')!r}; expected ivf, hnsw or exact")
    return approx_req


def _update_captions(state: IndexState, pairs: list[tuple[str, str | None]], matcher: Any, summary: UpdateSummary) -> None:
    """Index ``pairs`` (text, photo) as the captions; sentences already embedded keep their vectors."""
    known = {c.text: state.caption_vectors[i] for i, c in enumerate(state.captions)}
    todo = sorted({t for t, _ in pairs if t not in known})
    if todo:
        for text, vec in zip(todo, matcher.embed_texts(todo)):
            known[text] = vec
    summary.captions_embedded = len(todo)
    state.captions = [Caption(i, t, ph) for i, (t, ph) in enumerate(pairs)]
    state.caption_vectors = torch.stack([known[t] for t, _ in pairs]) if pairs else torch.zeros(0, matcher.embed_dim)


def _plan_photos(
    root: Path, found: dict[str, os.stat_result], state: IndexState, summary: UpdateSummary
) -> tuple[list[str], dict[str, int]]:
    """Keep the unchanged photos in ``state``; returns the photos to embed and every known photo's id."""
    kept: dict[str, tuple[Photo, torch.Tensor]] = {}
    todo_rel: list[str] = []
    for rel, st in found.items():
        old = state.photos.get(rel)
        if old is not None and old[0].size == st.st_size and old[0].mtime_ns == st.st_mtime_ns:
            kept[rel] = old
            continue
        if old is not None and same_bytes(root / rel, st.st_size, old[0].size, old[0].digest):  # touched, not changed
            kept[rel] = (dataclasses.replace(old[0], mtime_ns=int(st.st_mtime_ns)), old[1])
            summary.restamped += 1
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
    return todo_rel, ids


def _embed_photos(
    matcher: Any,
    root: Path,
    found: dict[str, os.stat_result],
    todo_rel: list[str],
    ids: dict[str, int],
    state: IndexState,
    summary: UpdateSummary,
    *,
    batch_size: int,
    save_every: int,
    save_every_seconds: float,
    progress: ProgressCallback | None,
    checkpoint: Callable[[], None],
) -> None:
    """Embed ``todo_rel`` into ``state`` batch by batch, calling ``checkpoint`` every ``save_every``
    photos or ``save_every_seconds`` (not after the last batch: the caller writes that one)."""
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
            state.photos[rel] = (Photo(pid, rel, int(st.st_size), int(st.st_mtime_ns), file_digest(root / rel)), vec.clone())
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
            checkpoint()  # resumable
            since_save, last_save = 0, time.perf_counter()


def _nothing_changed(
    before: dict[str, Any],
    manifest: dict[str, Any],
    state: IndexState,
    old_captions: list[Caption],
    approx_req: dict[str, Any] | None,
    summary: UpdateSummary,
) -> bool:
    """Whether this update leaves the index on disk (``before``) exactly as it was."""
    return (
        summary.embedded == 0
        and summary.removed == 0
        and summary.restamped == 0
        and state.captions == old_captions
        and summary.captions_embedded == 0
        and state.unreadable == before.get("unreadable")
        and approx_req == before.get("approximate_request")
        and all(manifest.get(key) == before.get(key) for key in ("model", "images_root", "captions_source"))
        and len(state.photos) == before.get("photos")
    )
