"""The feature store: a cached, resumable, memory-mappable folder of image features.

On disk, one folder per cache key (backbone, weights file hash, preprocessing, image size)::


    OUT_DIR/efficientnet_lite0-224px-<key12>/
        features.npy    float32 N x D, NumPy format (``np.load(..., mmap_mode="r")``)
        features.json   sidecar: key, backbone, weights, preprocessing, image ids (row order),
                        per-image [file size, mtime_ns, content digest], rows, feature_dim,
                        complete flag
        done.npy        bool N, which rows are computed (only while the store is incomplete)

A *grid* store (``grid=True``) keeps the backbone's last feature map instead of its pooled vector:
``features.npy`` is float16 N x C x D (C = the H x W grid cells in row-major order, D channels),
and the sidecar adds ``"grid": [H, W]``. Its cache key carries ``"output": "grid"``, so it lives in
its own folder (``...-grid-<key12>``) and never collides with the pooled store of the same backbone;
the pooled feature of an image is the mean over its cells (``FeatureStore.lookup_pooled``), up to
float16 rounding.

Rows are the unique image ids in the order first requested; ids requested later are appended.
A row is valid while its image file keeps the size and mtime recorded for it, or, when the mtime
changed (a data set copied or touched), the same size and content digest (BLAKE2b of the bytes;
the new mtime is then recorded, and the row is kept). The sidecar is
always replaced atomically, and marked complete only when every row is. This module is the
format (key, location, reading, the writer's primitives); :mod:`itmatch.features.extract` fills
a store from image files.
"""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from itmatch.errors import ItmatchError
from itmatch.features.backbones import backbone_spec, weights_identity
from itmatch.fileio import atomic_write_bytes, atomic_write_text, exclusive_lock

FORMAT = "itmatch-features"
FORMAT_VERSION = 1
ARRAY_FILE = "features.npy"
SIDECAR_FILE = "features.json"
DONE_FILE = "done.npy"
LOCK_FILE = ".lock"


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


def folder_name(backbone: str, image_size: int, key: dict[str, Any]) -> str:
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
    return Path(out_dir) / folder_name(backbone, image_size, key)


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
        store = read_store(folder)
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


def read_store(folder: Path) -> FeatureStore | str:
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
# writing (used by the extraction)


def save_done(folder: Path, done: np.ndarray) -> None:
    """Replace the done mask (which rows are computed) atomically."""
    atomic_write_bytes(folder / DONE_FILE, lambda fh: np.save(fh, done))


def write_sidecar(folder: Path, meta: dict[str, Any]) -> None:
    """Replace the sidecar atomically, stamped with the time of the update."""
    meta = dict(meta, updated=time.strftime("%Y-%m-%dT%H:%M:%S%z"))
    # One line per field: readable header, compact id and file lists.
    text = "{\n" + ",\n".join(f" {json.dumps(k)}: {json.dumps(v)}" for k, v in meta.items()) + "\n}\n"
    atomic_write_text(folder / SIDECAR_FILE, text)


def exclusive(folder: Path, wait_s: float = 0.0, on_wait: Callable[[str], None] | None = None):
    """An exclusive lock on the folder; a second writer waits up to ``wait_s`` seconds for it,
    then gets a clear error."""
    return exclusive_lock(
        folder / LOCK_FILE, f"{folder} is being written by another extraction; wait for it to finish", wait_s, on_wait
    )
