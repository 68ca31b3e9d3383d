"""Feature extraction: image files -> a feature store (:mod:`itmatch.features.store`).

Work is persisted batch by batch (rows written into the preallocated memmap and flushed, then
the done mask replaced atomically), so a run killed at any point resumes where it stopped; a
changed image file is recomputed. Re-running with the same images and backbone loads no model
and returns at once.
"""

from __future__ import annotations

import contextlib
import errno
import os
import shutil
import sys
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from itmatch.errors import ImageReadError, ItmatchError
from itmatch.features.backbones import backbone_spec, get_backbone, resolve_weights
from itmatch.features.preprocess import ImageTransform
from itmatch.features.store import (
    ARRAY_FILE,
    DONE_FILE,
    FORMAT,
    FORMAT_VERSION,
    SIDECAR_FILE,
    FeatureStore,
    cache_key,
    exclusive,
    folder_name,
    grid_shape,
    read_store,
    save_done,
    write_sidecar,
)
from itmatch.fileio import WRITER_WAIT_S, file_digest, same_bytes

if TYPE_CHECKING:
    from itmatch.data.corpus import Corpus

ProgressCallback = Callable[[int, int], Any]
"""Called after every batch with (images done in this run, images to do in this run)."""


# --------------------------------------------------------------------------------------------
# extraction


class _ImageFiles(Dataset):
    """Decodes images in DataLoader workers; a bad file yields a reason string instead of raising."""

    def __init__(self, paths: list[str], rows: list[int], transform: ImageTransform):
        self.paths = paths
        self.rows = rows
        self.transform = transform

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int, str]:
        try:
            return self.transform(self.paths[i]), self.rows[i], ""
        except Exception as exc:  # any decode error is reported per file, never raised in a worker
            size = self.transform.image_size
            return torch.zeros(3, size, size), self.rows[i], f"{type(exc).__name__}: {exc}"


def extract_features(
    image_root: str | Path,
    image_ids: Sequence[str],
    out_dir: str | Path,
    backbone: str = "efficientnet_lite0",
    weights: str | Path | None = None,
    batch_size: int = 64,
    num_workers: int = 2,
    progress: bool | ProgressCallback = False,
    image_size: int = 224,
    device: str | torch.device = "cpu",
    num_threads: int | None = None,
    grid: bool = False,
    lock_wait_s: float = WRITER_WAIT_S,
) -> FeatureStore:
    """Extract (or reuse) features of ``image_root/<id>`` for every id; returns the store.

    ``grid``: store the backbone's last feature map (float16, one D-vector per grid cell) in its
    own store instead of the pooled vector (see the module docstring).

    Only images without a valid cached row are computed: nothing at all (and no model is
    loaded) when every image is cached and unchanged. ``progress``: False (silent), True (a tqdm
    bar on stderr) or a callback ``(done, total)`` called after each persisted batch.
    ``num_threads``: torch's intra-op threads for the run (restored afterwards); None picks
    the cores left over by the ``num_workers`` decoding processes (see :func:`default_num_threads`).

    Raises :class:`~itmatch.errors.ImageReadError` naming every missing or undecodable image,
    after all the readable ones are computed and saved (so a rerun after fixing the files
    computes only those).

    Another process extracting into the same store (a second training started on the same cache)
    holds its lock: this call waits up to ``lock_wait_s`` seconds for it (saying so on stderr
    when ``progress`` is True), then computes only what the other one left, or raises
    :class:`~itmatch.errors.ItmatchError` naming the holder's PID.
    """
    if batch_size < 1 or num_workers < 0:
        raise ItmatchError(f"batch_size must be >= 1 and num_workers >= 0 (got {batch_size}, {num_workers})")
    spec = backbone_spec(backbone)
    transform = spec.transform(image_size)
    root = Path(image_root)
    ids = list(dict.fromkeys(str(i) for i in image_ids))
    if not ids:
        raise ItmatchError("no image ids to extract features for")
    cells = grid_shape(backbone, image_size) if grid else None
    key = cache_key(backbone, weights, image_size, grid)
    folder = Path(out_dir) / folder_name(backbone, image_size, key)

    stats: dict[str, list[int]] = {}
    failures: dict[str, str] = {}
    for image_id in ids:
        path = root / image_id
        try:
            st = path.stat()
        except OSError as exc:
            failures[str(path)] = f"cannot access the file ({exc.strerror or type(exc).__name__})"
            continue
        if not path.is_file():
            failures[str(path)] = "not a regular file"
            continue
        stats[image_id] = [int(st.st_size), int(st.st_mtime_ns)]

    # Fast path, without the lock: everything requested is cached and unchanged.
    existing = read_store(folder)
    if isinstance(existing, FeatureStore) and existing.meta.get("key") == key and not _stale(existing, stats):
        if failures:
            raise ImageReadError(failures)
        existing.cached = True
        return existing

    def say_waiting(holder: str) -> None:
        if progress is True:
            print(f"waiting for process {holder or '?'} to finish writing {folder}", file=sys.stderr, flush=True)

    with exclusive(folder, lock_wait_s, say_waiting):
        notes: list[str] = []
        existing = read_store(folder)
        if isinstance(existing, str) and (folder / SIDECAR_FILE).exists():
            notes.append(f"discarded an unusable store: {existing}")
        store = existing if isinstance(existing, FeatureStore) else None
        if store is not None and store.meta.get("key") != key:
            notes.append(f"discarded a store with a different cache key in {folder}")
            store = None
        array, done, meta = _prepare(folder, store, ids, stats, key, spec.feature_dim, root, weights, backbone, cells)
        todo = [row for row, image_id in enumerate(meta["image_ids"]) if image_id in stats and not done[row]]
        # Record the stats (and content digests) of the files about to be computed, after their
        # rows are cleared on disk.
        for row in todo:
            image_id = meta["image_ids"][row]
            meta["files"][row] = [*stats[image_id], file_digest(root / image_id)]
        save_done(folder, done)
        write_sidecar(folder, meta)

        computed = 0
        if todo:
            computed, bad = _run(
                array, done, folder, meta, todo, root, transform, backbone, weights,
                batch_size, num_workers, progress, device, num_threads,
            )  # fmt: skip
            failures.update(bad)
        if bool(done.all()):
            meta["complete"] = True
            write_sidecar(folder, meta)
            with contextlib.suppress(FileNotFoundError):
                (folder / DONE_FILE).unlink()
    if failures:
        raise ImageReadError(failures)
    result = FeatureStore.open(folder)
    result.computed = computed
    result.notes = notes
    return result


def extract_corpus_features(corpus: Corpus, out_dir: str | Path, **kwargs: Any) -> FeatureStore:
    """:func:`extract_features` for a :class:`~itmatch.data.Corpus` (its image folder and ids)."""
    if corpus.image_root is None:
        raise ItmatchError(f"{corpus.name}/{corpus.split} has no image folder (precomputed features only)")
    return extract_features(corpus.image_root, corpus.image_ids, out_dir, **kwargs)


def _same_stat(record: Sequence[Any], stat: list[int]) -> bool:
    return list(record[:2]) == stat


def _same_file(record: Sequence[Any], stat: list[int], path: Path) -> bool:
    """Whether the file recorded as ``record`` ([size, mtime_ns] or [size, mtime_ns, digest]) is
    unchanged: the same size and mtime, or (a copied or touched data set: new mtimes, same bytes)
    the same size and content digest. Records without a digest (older stores) compare the stat only."""
    return _same_stat(record, stat) or same_bytes(path, stat[0], record[0], record[2] if len(record) > 2 else None)


def _stale(store: FeatureStore, stats: dict[str, list[int]]) -> bool:
    """True when some requested (existing) image is absent from the store, not done, or has a
    stat other than the recorded one (the locked path then compares content digests, keeps the
    rows whose bytes are unchanged and records their new stat)."""
    files = store.meta["files"]
    for image_id, stat in stats.items():
        row = store._index.get(image_id)
        if row is None or not store._row_done(row) or not _same_stat(files[row], stat):
            return True
    return False


def _prepare(
    folder: Path,
    store: FeatureStore | None,
    ids: list[str],
    stats: dict[str, list[int]],
    key: dict[str, Any],
    dim: int,
    root: Path,
    weights: str | Path | None,
    backbone: str,
    cells: tuple[int, int] | None = None,
) -> tuple[np.memmap, np.ndarray, dict[str, Any]]:
    """Open (or create, or grow) the store's array and done mask; invalidates changed rows."""
    old_ids = store.image_ids if store is not None else []
    known = set(old_ids)
    new_ids = [i for i in ids if i not in known]
    weights_path = resolve_weights(backbone, weights)
    meta: dict[str, Any] = {
        "format": FORMAT,
        "version": FORMAT_VERSION,
        "key": key,
        "backbone": key["backbone"],
        "feature_dim": dim,
        "dtype": "float32" if cells is None else "float16",
        "weights": {"identity": key["weights"], "path": None if weights_path is None else str(weights_path)},
        "preprocessing": key["preprocessing"],
        "image_root": str(root.resolve()),
        "rows": len(old_ids) + len(new_ids),
        "image_ids": old_ids + new_ids,
        "files": (list(store.meta["files"]) if store is not None else []) + [[-1, -1]] * len(new_ids),
        "complete": False,
    }
    if cells is not None:
        meta["grid"] = list(cells)
    if store is not None:
        done = np.ones(len(old_ids), dtype=bool) if store._done is None else np.array(store._done, dtype=bool)
    else:
        done = np.zeros(0, dtype=bool)
    done = np.concatenate([done, np.zeros(len(new_ids), dtype=bool)])
    for row, image_id in enumerate(meta["image_ids"]):
        record = meta["files"][row]
        if image_id not in stats or _same_stat(record, stats[image_id]):
            continue
        if done[row] and _same_file(record, stats[image_id], root / image_id):
            meta["files"][row] = [*stats[image_id], record[2]]  # same bytes, new stat: keep the row
        else:
            done[row] = False

    folder.mkdir(parents=True, exist_ok=True)
    if store is not None and not new_ids:
        array = np.load(folder / ARRAY_FILE, mmap_mode="r+")
        return array, done, meta
    # Create (or grow) the array in a temporary file, then swap it in.
    tmp = folder / (ARRAY_FILE + ".tmp")
    if cells is None:
        array = np.lib.format.open_memmap(tmp, mode="w+", dtype=np.float32, shape=(meta["rows"], dim))
    else:
        shape = (meta["rows"], cells[0] * cells[1], dim)
        array = np.lib.format.open_memmap(tmp, mode="w+", dtype=np.float16, shape=shape)
    _reserve(tmp)
    if store is not None:
        for start in range(0, len(old_ids), 65536):
            stop = min(start + 65536, len(old_ids))
            array[start:stop] = store.array[start:stop]
    array.flush()
    save_done(folder, done)  # mask first: a crash between the swaps leaves a detectable mismatch
    del array
    os.replace(tmp, folder / ARRAY_FILE)
    return np.load(folder / ARRAY_FILE, mmap_mode="r+"), done, meta


def _run(
    array: np.memmap,
    done: np.ndarray,
    folder: Path,
    meta: dict[str, Any],
    todo: list[int],
    root: Path,
    transform: ImageTransform,
    backbone: str,
    weights: str | Path | None,
    batch_size: int,
    num_workers: int,
    progress: bool | ProgressCallback,
    device: str | torch.device,
    num_threads: int | None,
) -> tuple[int, dict[str, str]]:
    """Compute rows ``todo`` batch by batch, persisting each batch; returns (computed, failures)."""
    ids = meta["image_ids"]
    dataset = _ImageFiles([str(root / ids[r]) for r in todo], todo, transform)
    device = torch.device(device)
    loader = DataLoader(
        dataset,
        batch_size=batch_size,
        shuffle=False,
        num_workers=num_workers,
        pin_memory=device.type == "cuda",
    )
    failures: dict[str, str] = {}
    computed = 0
    if num_threads is None and device.type == "cpu":
        num_threads = default_num_threads(num_workers)
    with _threads(num_threads), _progress(progress, len(todo)) as report:
        model = get_backbone(backbone, weights).to(device).eval()
        forward = _grid_forward(model) if meta.get("grid") is not None else model
        chunk = batch_size
        if device.type == "cpu":
            model = model.to(memory_format=torch.channels_last)
            chunk = _cpu_chunk(transform.image_size)
        seen = 0
        with torch.inference_mode():
            for images, rows, reasons in loader:
                good = torch.tensor([not r for r in reasons], dtype=torch.bool)
                for row, reason in zip(rows.tolist(), reasons, strict=True):
                    if reason:
                        failures[str(root / ids[row])] = reason
                if bool(good.any()):
                    batch = _good_rows_on(images, good, device)
                    if device.type == "cpu":
                        batch = batch.contiguous(memory_format=torch.channels_last)
                    feats = torch.cat([forward(part) for part in batch.split(chunk)]).float().cpu().numpy()
                    good_rows = rows[good].numpy()
                    array[good_rows] = feats
                    array.flush()
                    done[good_rows] = True
                    save_done(folder, done)
                    computed += len(good_rows)
                seen += len(rows)
                report(seen, len(todo))
    return computed, failures


def _grid_forward(model: torch.nn.Module) -> Callable[[torch.Tensor], torch.Tensor]:
    """N x C x D cells (row-major over H x W) of the backbone's last feature map."""

    def forward(x: torch.Tensor) -> torch.Tensor:
        fmap = model.feature_map(x)  # type: ignore[operator]  # N x D x H x W
        return fmap.flatten(2).transpose(1, 2)

    return forward


def _good_rows_on(images: torch.Tensor, good: torch.Tensor, device: torch.device) -> torch.Tensor:
    """The decodable rows of a loader batch on ``device``. The batch itself is what moves (the
    loader pinned it for a GPU, so the copy is asynchronous); a host-side ``images[good]`` would
    be a fresh, unpinned tensor, so ``non_blocking`` would do nothing. Failed rows (rare) are
    dropped after the copy, on the device."""
    moved = images.to(device, non_blocking=True)
    if bool(good.all()):
        return moved
    return moved[good.to(device, non_blocking=True)]


def _cpu_chunk(image_size: int) -> int:
    """Images per forward pass on CPU: small enough that the largest activation stays < ~24 MB.

    glibc serves bigger allocations with a fresh mmap each time, so every forward pass page-faults
    its activations in again (mostly system time); at 224 px EfficientNet-Lite0's largest
    activation is 96 x 112 x 112 floats per image, so a pass of 64 images is far past that limit
    and several times slower per image than passes of 4 (extraction speeds measured on the
    development machine: ``benchmarks/results/``).
    """
    per_image = 96 * (image_size // 2 + 1) ** 2 * 4
    return max(1, int(24e6 // per_image))


def default_num_threads(num_workers: int) -> int:
    """CPU threads for the forward pass: the cores not taken by decoding workers, at least 1.

    Oversubscribing cores is very costly for torch's OpenMP thread pool: on a 2-core machine,
    2 threads next to 2 decoding workers extracted several times slower than 1 thread (figures
    for the development machine: ``benchmarks/results/``). Never more than torch's current setting.
    """
    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        cores = os.cpu_count() or 1
    return max(1, min(torch.get_num_threads(), cores - num_workers))


@contextlib.contextmanager
def _threads(num_threads: int | None) -> Iterator[None]:
    if num_threads is None:
        yield
        return
    before = torch.get_num_threads()
    torch.set_num_threads(max(1, int(num_threads)))
    try:
        yield
    finally:
        torch.set_num_threads(before)


@contextlib.contextmanager
def _progress(progress: bool | ProgressCallback, total: int) -> Iterator[ProgressCallback]:
    if callable(progress):
        yield progress
    elif progress:
        from tqdm import tqdm

        with tqdm(total=total, unit="img", file=sys.stderr, desc="extracting") as bar:

            def update(done: int, _total: int) -> None:
                bar.update(done - bar.n)

            yield update
    else:
        yield lambda done, total: None


def _reserve(path: Path) -> None:
    """Allocate the (sparse) memmap file's blocks now: on a full disk, writing rows into a memory
    map later would kill the process (SIGBUS) instead of raising an error that names the file."""
    size = path.stat().st_size
    try:
        with open(path, "r+b") as fh:
            os.posix_fallocate(fh.fileno(), 0, size)
    except AttributeError:  # no posix_fallocate (macOS, Windows): a best-effort check instead
        if shutil.disk_usage(path.parent).free < size:
            _no_space(path, size)
    except OSError as exc:
        if exc.errno == errno.ENOSPC:
            _no_space(path, size)
        if exc.errno not in (errno.EOPNOTSUPP, errno.EINVAL):  # a file system without fallocate
            raise


def _no_space(path: Path, size: int) -> None:
    path.unlink(missing_ok=True)
    err = OSError(errno.ENOSPC, "No space left on device", str(path.with_suffix("")))
    err.needed_bytes = size  # type: ignore[attr-defined]
    raise err
