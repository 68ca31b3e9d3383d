"""Readers for the caption data formats users bring; each returns one :class:`Corpus` split.

Common rules (all formats): every image needs at least 5 captions; an image with more keeps the
first 5 and the corpus ``notes`` say how many images were cut. Captions are stripped of
surrounding whitespace; an empty caption, a missing image file, a row or id that does not parse
raise :class:`DataError` naming the file, the line (text formats) or the item, and what was expected.
"""

from __future__ import annotations

import csv
import json
import re
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import numpy as np

from itmatch.data.corpus import CAPTIONS_PER_IMAGE, Corpus
from itmatch.errors import DataError

FORMATS = ("precomp", "karpathy", "coco", "flickr8k")
KARPATHY_SPLITS = ("train", "val", "test", "restval")
_SHOW_MISSING = 5  # missing image files listed by name in an error; the rest are counted


# --------------------------------------------------------------------------------------------
# shared helpers


def _read_lines(path: Path) -> list[str]:
    """Lines of a UTF-8 text file (BOM and CR/LF tolerated), as a DataError-raising reader."""
    if not path.is_file():
        raise DataError(f"{path}: file not found")
    try:
        return path.read_text(encoding="utf-8-sig").splitlines()
    except UnicodeDecodeError as exc:
        raise DataError(f"{path}: not UTF-8 text ({exc.reason} at byte {exc.start})") from None


def _read_json(path: Path) -> Any:
    if not path.is_file():
        raise DataError(f"{path}: file not found")
    try:
        with open(path, encoding="utf-8-sig") as f:
            return json.load(f)
    except json.JSONDecodeError as exc:
        raise DataError(f"{path}: invalid JSON at line {exc.lineno}, column {exc.colno}: {exc.msg}") from None
    except UnicodeDecodeError as exc:
        raise DataError(f"{path}: not UTF-8 text ({exc.reason} at byte {exc.start})") from None


def read_text_lines(path: str | Path) -> list[str]:
    """Lines of a UTF-8 text file; a missing file or other bytes raise :class:`DataError`."""
    return _read_lines(Path(path))


def read_json_file(path: str | Path) -> Any:
    """A UTF-8 JSON file; a missing file, bad JSON or other bytes raise :class:`DataError`."""
    return _read_json(Path(path))


def read_csv_table(path: str | Path) -> tuple[list[str], list[tuple[int, list[str]]]]:
    """The header (the first non-empty row, lower-cased) and the rows, each with the line it
    starts on, of a UTF-8 CSV file. Strict: a row with another number of fields than the header,
    a quote left open, or a field running over several lines (a quote opened and closed lines
    later, which would swallow the rows between) raise :class:`DataError` naming the line."""
    path = Path(path)
    _read_lines(path)  # a missing file or non-UTF-8 bytes: the same errors as every reader
    header: list[str] | None = None
    rows: list[tuple[int, list[str]]] = []
    fields = "image,caption"
    with open(path, encoding="utf-8-sig", newline="") as f:
        reader = csv.reader(f, strict=True)
        start = 1
        try:
            for row in reader:
                line_no, start = start, reader.line_num + 1
                if not row:
                    continue
                if reader.line_num != line_no:
                    raise DataError(
                        f"{path}, line {line_no}: a quoted field runs over lines {line_no}-{reader.line_num} "
                        "(a quote left open?); expected one row per line"
                    )
                if header is None:
                    header = [h.strip().lower() for h in row]
                    fields = ",".join(header)
                    continue
                if len(row) != len(header):
                    raise DataError(
                        f"{path}, line {line_no}: expected {len(header)} fields '{fields}', got {len(row)}: {row!r:.120}"
                    )
                rows.append((line_no, row))
        except csv.Error as exc:
            raise DataError(f"{path}, line {start}: bad CSV row ({exc}); expected '{fields}'") from None
    return header or [], rows


def _clean_caption(raw: Any, where: str) -> str:
    if not isinstance(raw, str):
        raise DataError(f"{where}: expected a caption string, got {type(raw).__name__}")
    caption = raw.strip()
    if not caption:
        raise DataError(f"{where}: empty caption (expected non-blank text)")
    return caption


def _as_int(value: Any, where: str, what: str) -> int:
    # bool is an int subclass and floats like 3.0 are not ids: accept ints and digit strings only.
    if isinstance(value, int) and not isinstance(value, bool):
        return value
    if isinstance(value, str) and re.fullmatch(r"\s*-?\d+\s*", value):
        return int(value)
    raise DataError(f"{where}: {what} must be an integer, got {value!r}")


def _take_five(
    path: Path, image_ids: list[str], groups: list[list[str]], notes: list[str], unit: str = "image"
) -> list[list[str]]:
    """Check each group has >= 5 captions, cut to the first 5 and note how many were cut."""
    cut: list[tuple[str, int]] = []
    out: list[list[str]] = []
    for image_id, caps in zip(image_ids, groups, strict=True):
        if len(caps) < CAPTIONS_PER_IMAGE:
            raise DataError(
                f"{path}: {unit} {image_id!r} has {len(caps)} caption(s), expected at least {CAPTIONS_PER_IMAGE}"
            )
        if len(caps) > CAPTIONS_PER_IMAGE:
            cut.append((image_id, len(caps)))
        out.append(caps[:CAPTIONS_PER_IMAGE])
    if cut:
        examples = ", ".join(f"{i!r} had {n}" for i, n in cut[:3])
        notes.append(
            f"{len(cut)} image(s) had more than {CAPTIONS_PER_IMAGE} captions; kept the first "
            f"{CAPTIONS_PER_IMAGE} of each (e.g. {examples})"
        )
    return out


def _check_unique(path: Path, image_ids: list[str], where: Callable[[int], str]) -> None:
    first: dict[str, int] = {}
    for k, image_id in enumerate(image_ids):
        if image_id in first:
            raise DataError(
                f"{path}: image {image_id!r} listed twice ({where(first[image_id])} and {where(k)}); "
                "expected each image once per split"
            )
        first[image_id] = k


def _check_images(source: Path, image_root: Path, image_ids: Iterable[str]) -> None:
    if not image_root.is_dir():
        raise DataError(
            f"{source}: image folder {image_root} not found (pass image_root, or check_images=False)"
        )
    missing = [i for i in image_ids if not (image_root / i).is_file()]
    if missing:
        shown = ", ".join(repr(m) for m in missing[:_SHOW_MISSING])
        more = f" and {len(missing) - _SHOW_MISSING} more" if len(missing) > _SHOW_MISSING else ""
        raise DataError(
            f"{source}: {len(missing)} image file(s) missing under {image_root}: {shown}{more} "
            "(expected every listed image to exist; pass check_images=False to skip this check)"
        )


def _root(image_root: str | Path | None) -> Path | None:
    return None if image_root is None else Path(image_root)


# --------------------------------------------------------------------------------------------
# VSE++ precomp


def read_precomp(folder: str | Path, split: str) -> Corpus:
    """VSE++ precomputed features: ``{split}_ims.npy`` (N x D, memory-mapped) + ``{split}_caps.txt`` (5N lines).

    Files that store every image 5 times (5N feature rows) are accepted: every 5th row is kept (a
    strided memory-map view) and a note says so. Image ids are ``"{split}_{i}"``; no image folder.
    """
    folder = Path(folder)
    ims_path, caps_path = folder / f"{split}_ims.npy", folder / f"{split}_caps.txt"
    lines = _read_lines(caps_path)
    while lines and not lines[-1].strip():  # trailing blank lines at EOF carry no caption
        lines.pop()
    captions = [_clean_caption(line, f"{caps_path}, line {n}") for n, line in enumerate(lines, 1)]
    if not captions:
        raise DataError(f"{caps_path}: no captions (expected 5 lines per image)")
    if len(captions) % CAPTIONS_PER_IMAGE:
        raise DataError(
            f"{caps_path}: {len(captions)} caption lines, expected a multiple of {CAPTIONS_PER_IMAGE} "
            "(5 consecutive lines per image)"
        )
    n_images = len(captions) // CAPTIONS_PER_IMAGE
    if not ims_path.is_file():
        raise DataError(f"{ims_path}: file not found")
    try:
        ims = np.load(ims_path, mmap_mode="r", allow_pickle=False)
    except (ValueError, OSError) as exc:
        raise DataError(f"{ims_path}: not a readable .npy array ({exc})") from None
    if ims.ndim != 2:
        raise DataError(f"{ims_path}: feature array has shape {ims.shape}, expected 2-D (N x D)")
    notes: list[str] = []
    if len(ims) == CAPTIONS_PER_IMAGE * n_images and n_images > 0 and len(ims) != n_images:
        # Sample a few groups: a 5N array whose rows are not repeated is not this layout.
        for i in sorted({0, n_images // 2, n_images - 1}):
            group = np.asarray(ims[CAPTIONS_PER_IMAGE * i : CAPTIONS_PER_IMAGE * (i + 1)])
            if not (group == group[0]).all():
                raise DataError(
                    f"{ims_path}: {len(ims)} feature rows for {n_images} images, but rows "
                    f"{CAPTIONS_PER_IMAGE * i}..{CAPTIONS_PER_IMAGE * i + 4} differ (expected N rows, "
                    "or 5N rows with each image repeated 5 times)"
                )
        ims = ims[::CAPTIONS_PER_IMAGE]
        notes.append(f"{ims_path.name} stores each image {CAPTIONS_PER_IMAGE} times; kept every 5th row")
    elif len(ims) != n_images:
        raise DataError(
            f"{ims_path}: {len(ims)} feature rows, expected {n_images} (or {CAPTIONS_PER_IMAGE * n_images}) "
            f"for the {len(captions)} captions in {caps_path.name}"
        )
    groups = [captions[CAPTIONS_PER_IMAGE * i : CAPTIONS_PER_IMAGE * (i + 1)] for i in range(n_images)]
    return Corpus(
        name=folder.resolve().name,
        split=split,
        image_ids=[f"{split}_{i}" for i in range(n_images)],
        captions=groups,
        image_root=None,
        features=ims,
        notes=notes,
    )


# --------------------------------------------------------------------------------------------
# Karpathy split JSON


def read_karpathy(
    json_path: str | Path,
    image_root: str | Path | None,
    split: str,
    include_restval: bool = False,
    check_images: bool = True,
) -> Corpus:
    """Karpathy split JSON (``dataset_{flickr8k,flickr30k,coco}.json``): the images of one split.

    ``split`` is ``train``, ``val`` (alias ``dev``), ``test`` or ``restval``; ``include_restval``
    adds the ``restval`` images to ``train`` (the usual MSCOCO training set). Images keep the JSON
    order; image id = ``filepath/filename`` when ``filepath`` is present (COCO), else ``filename``;
    captions are the ``raw`` sentences. Image files are checked under ``image_root`` unless
    ``check_images=False`` or ``image_root`` is None.
    """
    path = Path(json_path)
    wanted = {"dev": "val"}.get(split, split)
    if wanted not in KARPATHY_SPLITS:
        raise DataError(
            f"{path}: unknown split {split!r}, expected one of {', '.join(KARPATHY_SPLITS)} (or dev)"
        )
    accept = {wanted, "restval"} if wanted == "train" and include_restval else {wanted}
    data = _read_json(path)
    if not isinstance(data, dict) or not isinstance(data.get("images"), list):
        raise DataError(f"{path}: expected a JSON object with an 'images' list (Karpathy split format)")

    image_ids: list[str] = []
    positions: list[int] = []
    groups: list[list[str]] = []
    seen_splits: set[str] = set()
    for k, item in enumerate(data["images"]):
        where = f"{path}: images[{k}]"
        if not isinstance(item, dict):
            raise DataError(f"{where}: expected an object, got {type(item).__name__}")
        name = item.get("filename")
        if isinstance(name, str) and name:
            where = f"{where} ({name!r})"
        for key in ("filename", "split", "sentences"):
            if key not in item:
                raise DataError(f"{where}: missing key {key!r} (expected filename, split, sentences)")
        if not isinstance(name, str) or not name.strip():
            raise DataError(f"{where}: 'filename' must be a non-empty string, got {name!r}")
        item_split = item["split"]
        if not isinstance(item_split, str):
            raise DataError(f"{where}: 'split' must be a string, got {item_split!r}")
        seen_splits.add(item_split)
        if item_split not in accept:
            continue
        filepath = item.get("filepath")
        if filepath is not None and not isinstance(filepath, str):
            raise DataError(f"{where}: 'filepath' must be a string, got {filepath!r}")
        image_id = f"{filepath}/{name}" if filepath else name
        sentences = item["sentences"]
        if not isinstance(sentences, list):
            raise DataError(f"{where}: 'sentences' must be a list, got {type(sentences).__name__}")
        caps = []
        for j, sentence in enumerate(sentences):
            if not isinstance(sentence, dict) or "raw" not in sentence:
                raise DataError(
                    f"{where}: sentences[{j}] has no 'raw' text (expected {{'raw': ..., 'tokens': ...}})"
                )
            caps.append(_clean_caption(sentence["raw"], f"{where}: sentences[{j}]"))
        image_ids.append(image_id)
        positions.append(k)
        groups.append(caps)

    if not image_ids:
        raise DataError(
            f"{path}: no images in split {split!r}; splits present: {', '.join(sorted(seen_splits)) or 'none'}"
        )
    _check_unique(path, image_ids, lambda k: f"images[{positions[k]}]")
    notes: list[str] = []
    groups = _take_five(path, image_ids, groups, notes)
    root = _root(image_root)
    if check_images and root is not None:
        _check_images(path, root, image_ids)
    if include_restval and wanted == "train":
        notes.append("train includes the 'restval' images")
    name = data.get("dataset") if isinstance(data.get("dataset"), str) else path.stem.removeprefix("dataset_")
    return Corpus(name=name, split=split, image_ids=image_ids, captions=groups, image_root=root, notes=notes)


# --------------------------------------------------------------------------------------------
# MSCOCO captions JSON


def read_coco_captions(
    json_path: str | Path,
    image_root: str | Path | None,
    split_name: str,
    check_images: bool = True,
) -> Corpus:
    """MSCOCO captions JSON (``captions_val2017.json``): all its images, labelled ``split_name``.

    Images are ordered by image id, each image's captions by annotation id; image ids are the
    ``file_name`` values. Image files are checked under ``image_root`` unless ``check_images=False``
    or ``image_root`` is None.
    """
    path = Path(json_path)
    data = _read_json(path)
    if (
        not isinstance(data, dict)
        or not isinstance(data.get("images"), list)
        or not isinstance(data.get("annotations"), list)
    ):
        raise DataError(
            f"{path}: expected a JSON object with 'images' and 'annotations' lists (COCO captions format)"
        )

    files: dict[int, str] = {}
    for k, item in enumerate(data["images"]):
        where = f"{path}: images[{k}]"
        if not isinstance(item, dict) or "id" not in item or "file_name" not in item:
            raise DataError(f"{where}: expected an object with 'id' and 'file_name', got {item!r:.120}")
        image_id = _as_int(item["id"], where, "'id'")
        name = item["file_name"]
        if not isinstance(name, str) or not name.strip():
            raise DataError(f"{where} (id {image_id}): 'file_name' must be a non-empty string, got {name!r}")
        if image_id in files:
            raise DataError(f"{where}: image id {image_id} appears twice (expected unique image ids)")
        files[image_id] = name
    if not files:
        raise DataError(f"{path}: 'images' is empty")

    by_image: dict[int, list[tuple[int, str]]] = {i: [] for i in files}
    seen_ann: set[int] = set()
    for k, ann in enumerate(data["annotations"]):
        where = f"{path}: annotations[{k}]"
        if not isinstance(ann, dict) or not {"image_id", "id", "caption"} <= ann.keys():
            raise DataError(f"{where}: expected an object with 'image_id', 'id', 'caption', got {ann!r:.120}")
        ann_id = _as_int(ann["id"], where, "'id'")
        where = f"{where} (annotation id {ann_id})"
        image_id = _as_int(ann["image_id"], where, "'image_id'")
        if ann_id in seen_ann:
            raise DataError(f"{where}: annotation id appears twice (expected unique annotation ids)")
        seen_ann.add(ann_id)
        if image_id not in by_image:
            raise DataError(f"{where}: refers to image id {image_id}, which is not in 'images'")
        by_image[image_id].append((ann_id, _clean_caption(ann["caption"], where)))

    order = sorted(files)
    image_ids = [files[i] for i in order]
    _check_unique(path, image_ids, lambda k: f"image id {order[k]}")
    groups = [[c for _, c in sorted(by_image[i])] for i in order]
    notes: list[str] = []
    groups = _take_five(path, image_ids, groups, notes)
    root = _root(image_root)
    if check_images and root is not None:
        _check_images(path, root, image_ids)
    return Corpus(
        name="coco", split=split_name, image_ids=image_ids, captions=groups, image_root=root, notes=notes
    )


# --------------------------------------------------------------------------------------------
# Flickr8k


_TOKEN_LINE = re.compile(r"^(?P<name>[^\t#]+?)#(?P<k>\d+)\t(?P<caption>.*)$")


def _is_csv_header(line: str) -> bool:
    return [c.strip().lower() for c in line.split(",")] == ["image", "caption"]


def _read_flickr_captions(path: Path) -> dict[str, list[str]]:
    """image name -> captions, from ``Flickr8k.token.txt`` or the ``image,caption`` CSV."""
    lines = _read_lines(path)
    first = next((line for line in lines if line.strip()), "")
    captions: dict[str, list[str]] = {}
    if _is_csv_header(first):
        header, rows = read_csv_table(path)
        for line_no, row in rows:
            where = f"{path}, line {line_no}"
            name = row[0].strip()
            if not name:
                raise DataError(f"{where}: empty image name (expected 'image,caption')")
            captions.setdefault(name, []).append(_clean_caption(row[1], f"{where} (image {name!r})"))
        return captions

    indexed: dict[str, dict[int, str]] = {}
    for line_no, line in enumerate(lines, 1):
        if not line.strip():
            continue
        where = f"{path}, line {line_no}"
        m = _TOKEN_LINE.match(line)
        if not m:
            raise DataError(
                f"{where}: expected 'IMAGE.jpg#K<TAB>caption' (Flickr8k.token.txt) or an 'image,caption' CSV "
                f"header, got {line!r:.120}"
            )
        name, k = m["name"].strip(), int(m["k"])
        caption = _clean_caption(m["caption"], f"{where} (image {name!r})")
        slots = indexed.setdefault(name, {})
        if k in slots:
            raise DataError(f"{where}: caption #{k} of image {name!r} appears twice (expected each #K once)")
        slots[k] = caption
    for name, slots in indexed.items():
        captions[name] = [slots[k] for k in sorted(slots)]
    return captions


def read_flickr8k(
    captions_file: str | Path,
    split_file: str | Path,
    image_root: str | Path | None,
    check_images: bool = True,
) -> Corpus:
    """Flickr8k: captions (``Flickr8k.token.txt`` or ``image,caption`` CSV) + a split list.

    The split list (e.g. ``Flickr_8k.trainImages.txt``) names one image per line; images keep its
    order. Token-file captions are ordered by their ``#K`` index, CSV captions by row. Image files
    are checked under ``image_root`` unless ``check_images=False`` or ``image_root`` is None.
    """
    captions_path, split_path = Path(captions_file), Path(split_file)
    names: list[str] = []
    line_of: list[int] = []
    for line_no, line in enumerate(_read_lines(split_path), 1):
        if line.strip():
            names.append(line.strip())
            line_of.append(line_no)
    if not names:
        raise DataError(f"{split_path}: no image names (expected one image file name per line)")
    _check_unique(split_path, names, lambda k: f"line {line_of[k]}")
    by_name = _read_flickr_captions(captions_path)
    groups = [by_name.get(name, []) for name in names]
    notes: list[str] = []
    groups = _take_five(captions_path, names, groups, notes)
    root = _root(image_root)
    if check_images and root is not None:
        _check_images(split_path, root, names)
    split = _flickr_split_name(split_path)
    return Corpus(
        name="flickr8k", split=split, image_ids=names, captions=groups, image_root=root, notes=notes
    )


def _flickr_split_name(split_path: Path) -> str:
    name = split_path.name
    m = re.fullmatch(r"Flickr_8k\.(\w+?)Images\.txt", name) or re.fullmatch(r"(\w+?)_images\.txt", name)
    return m[1] if m else split_path.stem


# --------------------------------------------------------------------------------------------
# dispatcher


def _first_existing(candidates: Iterable[Path], kind: str = "any") -> Path | None:
    for c in candidates:
        if (
            (kind == "dir" and c.is_dir())
            or (kind == "file" and c.is_file())
            or (kind == "any" and c.exists())
        ):
            return c
    return None


def _flickr8k_paths(
    path: Path, split: str, image_root: Path | None, options: dict[str, Any]
) -> tuple[Path, Path, Path | None]:
    folder = path if path.is_dir() else path.parent
    if path.is_dir():
        captions = _first_existing([folder / "captions.txt", folder / "Flickr8k.token.txt"], "file")
        if captions is None:
            raise DataError(
                f"{folder}: no captions.txt or Flickr8k.token.txt found (expected a Flickr8k folder)"
            )
    else:
        captions = path
    split_file = options.pop("split_file", None)
    if split_file is None:
        names = [split, *{"val": ["dev"], "dev": ["val"]}.get(split, [])]
        candidates = [folder / f"{s}_images.txt" for s in names]
        candidates += [folder / f"Flickr_8k.{s}Images.txt" for s in names]
        split_file = _first_existing(candidates, "file")
        if split_file is None:
            raise DataError(
                f"{folder}: no split list for {split!r} (looked for {', '.join(c.name for c in candidates)})"
            )
    if image_root is None:
        image_root = _first_existing(
            [folder / "images", folder / "Flicker8k_Dataset", folder / "Flickr8k_Dataset"], "dir"
        )
        if image_root is None and options.get("check_images", True):
            raise DataError(
                f"{folder}: no image folder (looked for images/, Flicker8k_Dataset/); "
                "pass image_root, or check_images=False"
            )
    return captions, Path(split_file), image_root


def _coco_json(path: Path, split: str) -> Path:
    if path.is_file():
        return path
    found = sorted(path.glob("annotations/captions_*.json")) + sorted(path.glob("captions_*.json"))
    exact = [p for p in found if p.stem == f"captions_{split}"]
    if exact:
        return exact[0]
    if len(found) == 1:
        return found[0]
    listed = ", ".join(p.name for p in found) or "none"
    raise DataError(f"{path}: cannot choose a COCO captions JSON for split {split!r} (found: {listed})")


def _coco_image_root(json_path: Path) -> Path | None:
    folder = json_path.parent
    base = folder.parent if folder.name == "annotations" else folder
    subset = json_path.stem.removeprefix("captions_")  # e.g. val2017
    return _first_existing([base / "images" / subset, base / subset, base / "images"], "dir")


def load_corpus(
    format: str, path: str | Path, split: str, image_root: str | Path | None = None, **options: Any
) -> Corpus:
    """Read one split of a data set in any supported format (see :data:`FORMATS`, or ``"auto"``).

    - ``precomp``: ``path`` = folder with ``{split}_ims.npy`` / ``{split}_caps.txt``.
    - ``karpathy``: ``path`` = the JSON; ``image_root`` defaults to ``<json folder>/images``.
      Options: ``include_restval``, ``check_images``.
    - ``coco``: ``path`` = the captions JSON (or a folder holding ``annotations/captions_*.json``);
      ``image_root`` defaults to ``images/<val2017>``, ``<val2017>`` or ``images`` beside ``annotations/``.
      Option: ``check_images``.
    - ``flickr8k``: ``path`` = the folder (finds ``captions.txt`` / ``Flickr8k.token.txt`` and
      ``{split}_images.txt`` / ``Flickr_8k.{split}Images.txt``; ``val`` and ``dev`` are aliases) or the
      captions file. ``image_root`` defaults to ``images/`` or ``Flicker8k_Dataset/`` there.
      Options: ``split_file``, ``check_images``.
    """
    path = Path(path)
    fmt = format.strip().lower()
    if fmt == "auto":
        fmt = detect_format(path)
    if not path.exists():
        raise DataError(f"{path}: not found")
    root = _root(image_root)
    options = dict(options)
    if fmt == "precomp":
        options.pop("check_images", None)  # no image files to check
        corpus = read_precomp(path if path.is_dir() else path.parent, split, **options)
        if root is not None:
            corpus.notes.append(f"image_root {root} ignored: precomp data carries features, not images")
        return corpus
    if fmt == "karpathy":
        if root is None:
            root = path.parent / "images"
        return read_karpathy(path, root, split, **options)
    if fmt == "coco":
        json_path = _coco_json(path, split)
        if root is None:
            root = _coco_image_root(json_path)
            if root is None and options.get("check_images", True):
                raise DataError(
                    f"{json_path}: no image folder found beside it; pass image_root, or check_images=False"
                )
        return read_coco_captions(json_path, root, split, **options)
    if fmt == "flickr8k":
        captions, split_file, root = _flickr8k_paths(path, split, root, options)
        corpus = read_flickr8k(captions, split_file, root, **options)
        corpus.split = split
        return corpus
    raise DataError(f"unknown data format {format!r}; known formats: {', '.join(FORMATS)} (or auto)")


def detect_format(path: str | Path) -> str:
    """Best-effort guess of the format of ``path`` (a file or folder); :class:`DataError` when unsure."""
    path = Path(path)
    if path.is_dir():
        if any(path.glob("*_ims.npy")) and any(path.glob("*_caps.txt")):
            return "precomp"
        if (path / "captions.txt").is_file() or (path / "Flickr8k.token.txt").is_file():
            return "flickr8k"
        if any(path.glob("dataset_*.json")):
            raise DataError(f"{path}: holds a Karpathy split JSON; pass the dataset_*.json file itself")
        if any(path.glob("annotations/captions_*.json")) or any(path.glob("captions_*.json")):
            return "coco"
    elif path.is_file():
        name, suffix = path.name, path.suffix.lower()
        if suffix == ".npy" or name.endswith("_caps.txt"):
            return "precomp"
        if suffix == ".json":
            if name.startswith("dataset_"):
                return "karpathy"
            if name.startswith("captions_"):
                return "coco"
            with open(path, encoding="utf-8", errors="replace") as f:
                head = f.read(1 << 16)
            if '"sentences"' in head:
                return "karpathy"
            if '"annotations"' in head or '"file_name"' in head:
                return "coco"
        if suffix in (".txt", ".csv", ".token"):
            with open(path, encoding="utf-8-sig", errors="replace") as f:
                first = f.readline()
            if _is_csv_header(first.rstrip("\r\n")) or _TOKEN_LINE.match(first.rstrip("\r\n")):
                return "flickr8k"
    else:
        raise DataError(f"{path}: not found")
    raise DataError(f"{path}: cannot tell its data format; pass one of {', '.join(FORMATS)}")
