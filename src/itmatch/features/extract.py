"""Feature extraction: image files -> a cached, resumable, memory-mappable feature store.

On disk, one folder per cache key (backbone, weights file hash, preprocessing, image size)::

    OUT_DIR/efficientnet_lite0-224px-<key12>/
        features.npy    float32 N x D, NumPy format (``np.load(..., mmap_mode="r")``)
        features.json   sidecar: key, backbone, weights, preprocessing, image ids (row order),
                        per-image [file size, mtime_ns], rows, feature_dim, complete flag
        done.npy        bool N, which rows are computed (only while the store is incomplete)

A *grid* store (``grid=True``) keeps the backbone's last feature map instead of its pooled vector:
``features.npy`` is float16 N x C x D (C = the H x W grid cells in row-major order, D channels),
and the sidecar adds ``"grid": [H, W]``. Its cache key carries ``"output": "grid"``, so it lives in
its own folder (``...-grid-<key12>``) and never collides with the pooled store of the same backbone;
the pooled feature of an image is the mean over its cells (``FeatureStore.lookup_pooled``), up to
float16 rounding.

Rows are the unique image ids in the order first requested; ids requested later are appended.
A row is valid while its image file keeps the size and mtime recorded for it; a changed file is
recomputed. Work is persisted batch by batch (rows written into the preallocated memmap and
flushed, then the done mask replaced atomically), so a run killed at any point resumes where it
stopped. The sidecar is always replaced atomically, and marked complete only when every row is.
Re-running with the same images and backbone loads no model and returns at once.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import json
import os
import shutil
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from itmatch.errors import ImageReadError, ItmatchError
from itmatch.features.backbones import backbone_spec, get_backbone, resolve_weights, weights_identity
from itmatch.features.preprocess import ImageTransform
from itmatch.fileio import atomic_write_bytes, atomic_write_text, exclusive_lock

if TYPE_CHECKING:
    from itmatch.data.corpus import Corpus

FORMAT = "itmatch-features"
FORMAT_VERSION = 1
ARRAY_FILE = "features.npy"
SIDECAR_FILE = "features.json"
DONE_FILE = "done.npy"
LOCK_FILE = ".lock"

ProgressCallback = Callable[[int, int], Any]
"""Called after every batch with (images done in this run, images to do in this run)."""


# --------------------------------------------------------------------------------------------
# cache key and location


def cache_key(
    backbone: str = "efficientnet_lite0", weights: str | Path | None = None, image_size: int = 224, grid: bool = False
) -> dict[str, Any]:
    """Everything the features depend on, as plain data (hashed into the store's folder name)."""
    spec = backbone_spec(backbone)
    key: dict[str, Any] = {
        "format_version": FORMAT_VERSION,
        "backbone": spec.name,
        "weights": weights_identity(backbone, weights),
        "preprocessing": spec.transform(image_size).spec(),
    }
    if grid:  # only grid keys carry the field, so pooled stores keep the folder they always had
        key["output"] = "grid"
    return key


def grid_shape(backbone: str, image_size: int) -> tuple[int, int]:
    """H x W of ``backbone``'s last feature map at ``image_size`` px (stride 32, "same" padding:
    7 x 7 at 224 px); ItmatchError for a backbone without a grid output."""
    backbone_spec(backbone)
    if not backbone.startswith("efficientnet_lite"):
        raise ItmatchError(f"grid features are only available for EfficientNet-Lite backbones, not {backbone!r}")
    side = -(-image_size // 32)
    return side, side


def _folder_name(backbone: str, image_size: int, key: dict[str, Any]) -> str:
    grid = "-grid" if key.get("output") == "grid" else ""
    return f"{backbone}-{image_size}px{grid}-{_key_hash(key)[:12]}"


def _key_hash(key: dict[str, Any]) -> str:
    return hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()


def store_path(
    out_dir: str | Path,
    backbone: str = "efficientnet_lite0",
    weights: str | Path | None = None,
    image_size: int = 224,
    grid: bool = False,
) -> Path:
    """The folder :func:`extract_features` uses for these settings (it may not exist yet)."""
    key = cache_key(backbone, weights, image_size, grid)
    return Path(out_dir) / _folder_name(backbone, image_size, key)


# --------------------------------------------------------------------------------------------
# the store


class FeatureStore:
    """Read access to an extracted feature folder.

    ``array`` is the N x D float32 memmap (rows = ``image_ids``), or for a grid store the
    N x C x D float16 one (``grid`` = (H, W), C = H * W); :meth:`lookup` gathers rows by image id. ``cached`` is True when :func:`extract_features` returned it without computing
    anything, ``computed`` the number of images it computed; ``notes`` lists remarks (e.g. a
    discarded inconsistent store).
    """

    def __init__(self, path: Path, meta: dict[str, Any], array: np.ndarray, done: np.ndarray | None):
        self.path = path
        self.meta = meta
        self.array = array
        self._done = done
        self.image_ids: list[str] = list(meta["image_ids"])
        self._index = {image_id: row for row, image_id in enumerate(self.image_ids)}
        self.cached = False
        self.computed = 0
        self.notes: list[str] = []

    @classmethod
    def open(cls, path: str | Path) -> FeatureStore:
        """Open a store folder (or its ``features.json``); ItmatchError if it is not a valid store."""
        folder = Path(path)
        if folder.name == SIDECAR_FILE:
            folder = folder.parent
        store = _read_store(folder)
        if isinstance(store, str):
            raise ItmatchError(f"{folder} is not a usable feature store: {store}")
        return store

    @property
    def feature_dim(self) -> int:
        return int(self.meta["feature_dim"])

    @property
    def backbone(self) -> str:
        return str(self.meta["backbone"])

    @property
    def grid(self) -> tuple[int, int] | None:
        """(H, W) of a grid store's feature map; None for a pooled store."""
        shape = self.meta.get("grid")
        return None if shape is None else (int(shape[0]), int(shape[1]))

    @property
    def complete(self) -> bool:
        return bool(self.meta["complete"])

    @property
    def array_path(self) -> Path:
        return self.path / ARRAY_FILE

    @property
    def sidecar_path(self) -> Path:
        return self.path / SIDECAR_FILE

    def __len__(self) -> int:
        return len(self.image_ids)

    def __contains__(self, image_id: object) -> bool:
        row = self._index.get(image_id)  # type: ignore[call-overload]
        return row is not None and self._row_done(row)

    def _row_done(self, row: int) -> bool:
        return self._done is None or bool(self._done[row])

    def rows(self, image_ids: Sequence[str]) -> np.ndarray:
        """Row numbers of ``image_ids``; KeyError naming every id that is absent or not computed."""
        rows = [self._index.get(i, -1) for i in image_ids]
        missing = [i for i, r in zip(image_ids, rows, strict=True) if r < 0 or not self._row_done(r)]
        if missing:
            shown = ", ".join(missing[:10]) + (f", ... ({len(missing)} in all)" if len(missing) > 10 else "")
            raise KeyError(f"{len(missing)} image id(s) have no features in {self.path}: {shown}")
        return np.asarray(rows, dtype=np.int64)

    def lookup(self, image_ids: Sequence[str]) -> np.ndarray:
        """Features of ``image_ids`` in that order, as a new float32 len(image_ids) x D array
        (len(image_ids) x C x D for a grid store)."""
        return np.asarray(self.array[self.rows(image_ids)], dtype=np.float32)

    def lookup_pooled(self, image_ids: Sequence[str]) -> np.ndarray:
        """The pooled (global average) feature of ``image_ids``, len x D float32, from either kind
        of store: a grid store averages its cells (in float32), which is what the backbone's
        pooled output is, up to the float16 rounding of the stored cells."""
        features = self.lookup(image_ids)
        return features.mean(axis=1) if self.grid is not None else features

    def __repr__(self) -> str:
        state = "complete" if self.complete else "incomplete"
        return f"FeatureStore({str(self.path)!r}, {len(self)} x {self.feature_dim}, {self.backbone}, {state})"


def _read_store(folder: Path) -> FeatureStore | str:
    """The store in ``folder``, or a string saying why it is absent or unusable."""
    sidecar = folder / SIDECAR_FILE
    if not sidecar.is_file():
        return f"{sidecar} does not exist"
    try:
        meta = json.loads(sidecar.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        return f"{sidecar} is not valid JSON ({exc})"
    if not isinstance(meta, dict) or meta.get("format") != FORMAT or meta.get("version") != FORMAT_VERSION:
        return f"{sidecar} is not an {FORMAT} v{FORMAT_VERSION} sidecar"
    try:
        rows, dim = int(meta["rows"]), int(meta["feature_dim"])
        if len(meta["image_ids"]) != rows or len(meta["files"]) != rows:
            return f"{sidecar}: image_ids/files do not have {rows} entries"
        array = np.load(folder / ARRAY_FILE, mmap_mode="r")
        grid = meta.get("grid")
        shape = (rows, dim) if grid is None else (rows, int(grid[0]) * int(grid[1]), dim)
        dtype = np.dtype(np.float32 if grid is None else np.float16)
        if array.shape != shape or array.dtype != dtype:
            return f"{folder / ARRAY_FILE} is {array.dtype} {array.shape}, the sidecar says {dtype} {shape}"
        done = None
        if not meta["complete"]:
            done = np.load(folder / DONE_FILE)
            if done.shape != (rows,) or done.dtype != np.bool_:
                return f"{folder / DONE_FILE} does not match {rows} rows"
    except (OSError, ValueError, KeyError, TypeError) as exc:
        return f"{folder} is damaged ({type(exc).__name__}: {exc})"
    return FeatureStore(folder, meta, array, done)


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
    folder = Path(out_dir) / _folder_name(backbone, image_size, key)

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
    existing = _read_store(folder)
    if isinstance(existing, FeatureStore) and existing.meta.get("key") == key and not _stale(existing, stats):
        if failures:
            raise ImageReadError(failures)
        existing.cached = True
        return existing

    with _exclusive(folder):
        notes: list[str] = []
        existing = _read_store(folder)
        if isinstance(existing, str) and (folder / SIDECAR_FILE).exists():
            notes.append(f"discarded an unusable store: {existing}")
        store = existing if isinstance(existing, FeatureStore) else None
        if store is not None and store.meta.get("key") != key:
            notes.append(f"discarded a store with a different cache key in {folder}")
            store = None
        array, done, meta = _prepare(folder, store, ids, stats, key, spec.feature_dim, root, weights, backbone, cells)
        todo = [row for row, image_id in enumerate(meta["image_ids"]) if image_id in stats and not done[row]]
        # Record the stats of the files about to be computed, after their rows are cleared on disk.
        for row in todo:
            meta["files"][row] = stats[meta["image_ids"][row]]
        _save_done(folder, done)
        _write_sidecar(folder, meta)

        computed = 0
        if todo:
            computed, bad = _run(
                array, done, folder, meta, todo, root, transform, backbone, weights,
                batch_size, num_workers, progress, device, num_threads,
            )  # fmt: skip
            failures.update(bad)
        if bool(done.all()):
            meta["complete"] = True
            _write_sidecar(folder, meta)
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


def _stale(store: FeatureStore, stats: dict[str, list[int]]) -> bool:
    """True when some requested (existing) image is absent from the store, not done, or changed."""
    files = store.meta["files"]
    for image_id, stat in stats.items():
        row = store._index.get(image_id)
        if row is None or not store._row_done(row) or list(files[row]) != stat:
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
        if image_id in stats and list(meta["files"][row]) != stats[image_id]:
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
    _save_done(folder, done)  # mask first: a crash between the swaps leaves a detectable mismatch
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
                    _save_done(folder, done)
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


def _save_done(folder: Path, done: np.ndarray) -> None:
    atomic_write_bytes(folder / DONE_FILE, lambda fh: np.save(fh, done))


def _write_sidecar(folder: Path, meta: dict[str, Any]) -> None:
    meta = dict(meta, updated=time.strftime("%Y-%m-%dT%H:%M:%S%z"))
    # One line per field: readable header, compact id and file lists.
    text = "{\n" + ",\n".join(f" {json.dumps(k)}: {json.dumps(v)}" for k, v in meta.items()) + "\n}\n"
    atomic_write_text(folder / SIDECAR_FILE, text)


def _exclusive(folder: Path):
    """An exclusive lock on the folder: a second writer gets a clear error instead of waiting."""
    return exclusive_lock(folder / LOCK_FILE, f"{folder} is being written by another extraction; wait for it to finish")
