"""Data readers: every format on small files written here, every bad-input error, and the real samples."""

from __future__ import annotations

import csv
import json
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import pytest

from itmatch.data import (
    Corpus,
    detect_format,
    load_corpus,
    read_coco_captions,
    read_flickr8k,
    read_karpathy,
    read_precomp,
)
from itmatch.errors import DataError

# --------------------------------------------------------------------------------------------
# helpers


def caps_for(name: str, n: int = 5) -> list[str]:
    return [f"caption {k} of {name}" for k in range(n)]


def touch_images(root: Path, names: list[str]) -> Path:
    for name in names:
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_bytes(b"")
    return root


@contextmanager
def raises(match: str, *fragments: str) -> Iterator[pytest.ExceptionInfo[DataError]]:
    """pytest.raises(DataError) that also checks the message names every fragment (file, line, item)."""
    with pytest.raises(DataError, match=match) as info:
        yield info
    for fragment in fragments:
        assert fragment in str(info.value), (fragment, str(info.value))


# --------------------------------------------------------------------------------------------
# precomp


def write_precomp(folder: Path, split: str, n: int, repeat: int = 1, dim: int = 4) -> np.ndarray:
    feats = np.arange(n * dim, dtype=np.float32).reshape(n, dim)
    np.save(folder / f"{split}_ims.npy", np.repeat(feats, repeat, axis=0))
    lines = [c for i in range(n) for c in caps_for(f"im{i}")]
    (folder / f"{split}_caps.txt").write_text("\n".join(lines) + "\n", encoding="utf-8")
    return feats


def test_precomp_basic(tmp_path: Path) -> None:
    feats = write_precomp(tmp_path, "test", 3)
    corpus = read_precomp(tmp_path, "test")
    assert isinstance(corpus, Corpus) and len(corpus) == 3 and corpus.split == "test"
    assert corpus.image_ids == ["test_0", "test_1", "test_2"] and corpus.image_root is None
    assert isinstance(corpus.features, np.memmap)
    np.testing.assert_array_equal(corpus.features, feats)
    assert corpus.flat_captions()[7] == "caption 2 of im1"  # image 1 owns rows 5..9
    assert corpus.notes == []


def test_precomp_five_rows_per_image(tmp_path: Path) -> None:
    feats = write_precomp(tmp_path, "dev", 4, repeat=5)
    corpus = read_precomp(tmp_path, "dev")
    assert corpus.features.shape == (4, 4)
    np.testing.assert_array_equal(corpus.features, feats)
    assert any("every 5th row" in n for n in corpus.notes)


def test_precomp_five_rows_not_repeated(tmp_path: Path) -> None:
    write_precomp(tmp_path, "dev", 2)
    np.save(tmp_path / "dev_ims.npy", np.random.default_rng(0).random((10, 4), dtype=np.float32))
    with raises("differ", "dev_ims.npy"):
        read_precomp(tmp_path, "dev")


def test_precomp_row_count_mismatch(tmp_path: Path) -> None:
    write_precomp(tmp_path, "dev", 3)
    np.save(tmp_path / "dev_ims.npy", np.zeros((4, 4), np.float32))
    with raises("4 feature rows, expected 3", "dev_ims.npy"):
        read_precomp(tmp_path, "dev")


def test_precomp_caption_errors(tmp_path: Path) -> None:
    write_precomp(tmp_path, "dev", 2)
    caps = tmp_path / "dev_caps.txt"
    lines = caps.read_text().splitlines()
    caps.write_text("\n".join(lines[:-1]) + "\n")
    with raises("multiple of 5", str(caps)):
        read_precomp(tmp_path, "dev")
    lines[6] = "   "
    caps.write_text("\n".join(lines) + "\n")
    with raises("empty caption", str(caps), "line 7"):
        read_precomp(tmp_path, "dev")
    with raises("not found", "train_caps.txt"):
        read_precomp(tmp_path, "train")


# --------------------------------------------------------------------------------------------
# Karpathy JSON


def karpathy_item(
    name: str, split: str, n_caps: int = 5, filepath: str | None = None, imgid: int = 0
) -> dict:
    item = {
        "filename": name,
        "split": split,
        "imgid": imgid,
        "sentences": [{"raw": c, "tokens": c.split(), "imgid": imgid} for c in caps_for(name, n_caps)],
    }
    if filepath is not None:
        item["filepath"] = filepath
    return item


def write_karpathy(folder: Path, items: list[dict], dataset: str = "flickr8k", images: bool = True) -> Path:
    path = folder / f"dataset_{dataset}.json"
    path.write_text(json.dumps({"images": items, "dataset": dataset}), encoding="utf-8")
    if images:
        names = [f"{i['filepath']}/{i['filename']}" if "filepath" in i else i["filename"] for i in items]
        touch_images(folder / "images", names)
    return path


def test_karpathy_splits(tmp_path: Path) -> None:
    splits = ["train", "val", "test", "train", "restval", "test"]
    items = [karpathy_item(f"{i}.jpg", s, imgid=i) for i, s in enumerate(splits)]
    path = write_karpathy(tmp_path, items)
    train = read_karpathy(path, tmp_path / "images", "train")
    assert train.image_ids == ["0.jpg", "3.jpg"] and train.name == "flickr8k"
    assert train.captions[1] == caps_for("3.jpg") and train.image_root == tmp_path / "images"
    full = read_karpathy(path, tmp_path / "images", "train", include_restval=True)
    assert full.image_ids == ["0.jpg", "3.jpg", "4.jpg"]
    assert read_karpathy(path, tmp_path / "images", "dev").image_ids == ["1.jpg"]
    assert read_karpathy(path, tmp_path / "images", "test").image_ids == ["2.jpg", "5.jpg"]


def test_karpathy_coco_filepath_and_more_than_five(tmp_path: Path) -> None:
    items = [
        karpathy_item("a.jpg", "test", n_caps=7, filepath="val2014"),
        karpathy_item("b.jpg", "test", filepath="train2014"),
        karpathy_item("c.jpg", "test", n_caps=6, filepath="val2014"),
    ]
    path = write_karpathy(tmp_path, items, dataset="coco")
    corpus = read_karpathy(path, tmp_path / "images", "test")
    assert corpus.image_ids == ["val2014/a.jpg", "train2014/b.jpg", "val2014/c.jpg"]
    assert corpus.captions[0] == caps_for("a.jpg")  # the first 5 of 7
    assert len(corpus.notes) == 1 and corpus.notes[0].startswith("2 image(s) had more than 5 captions")


@pytest.mark.parametrize(
    ("mutate", "match", "item"),
    [
        (lambda items: items[1].pop("sentences"), "missing key 'sentences'", "images[1] ('1.jpg')"),
        (lambda items: items[1]["sentences"].pop(), "has 4 caption", "'1.jpg'"),
        (lambda items: items[2]["sentences"][3].update(raw=" \t "), "empty caption", "images[2] ('2.jpg')"),
        (lambda items: items[2]["sentences"][0].pop("raw"), "no 'raw' text", "sentences[0]"),
        (lambda items: items[2].update(filename="1.jpg"), "listed twice", "'1.jpg'"),
        (lambda items: items[0].update(filename=17), "'filename' must be a non-empty string", "images[0]"),
    ],
)
def test_karpathy_errors(tmp_path: Path, mutate, match: str, item: str) -> None:
    items = [karpathy_item(f"{i}.jpg", "test") for i in range(3)]
    touch_images(tmp_path / "images", ["0.jpg", "1.jpg", "2.jpg"])
    mutate(items)
    path = write_karpathy(tmp_path, items, images=False)
    with raises(match, str(path), item):
        read_karpathy(path, tmp_path / "images", "test")


def test_karpathy_missing_images(tmp_path: Path) -> None:
    items = [karpathy_item(f"{i}.jpg", "val") for i in range(9)]
    path = write_karpathy(tmp_path, items, images=False)
    touch_images(tmp_path / "images", ["0.jpg", "5.jpg"])
    with raises("7 image file", str(path), "'1.jpg'", "'2.jpg'", "and 2 more") as info:
        read_karpathy(path, tmp_path / "images", "val")
    assert "'8.jpg'" not in str(info.value)
    assert len(read_karpathy(path, tmp_path / "images", "val", check_images=False)) == 9
    with raises("image folder", "nowhere"):
        read_karpathy(path, tmp_path / "nowhere", "val")


def test_karpathy_bad_file(tmp_path: Path) -> None:
    path = write_karpathy(tmp_path, [karpathy_item("0.jpg", "test")])
    with raises("no images in split 'train'", str(path), "splits present: test"):
        read_karpathy(path, tmp_path / "images", "train")
    with raises("unknown split 'banana'", str(path)):
        read_karpathy(path, tmp_path / "images", "banana")
    path.write_text('{"images": [', encoding="utf-8")
    with raises("invalid JSON", str(path)):
        read_karpathy(path, tmp_path / "images", "test")
    path.write_text('{"annotations": []}', encoding="utf-8")
    with raises("'images' list", str(path)):
        read_karpathy(path, tmp_path / "images", "test")


# --------------------------------------------------------------------------------------------
# COCO captions JSON


def write_coco(root: Path, image_ids: list[int], caps_per_image: dict[int, int] | None = None) -> Path:
    """COCO-style folder: annotations/captions_val2017.json + images/; lists deliberately unsorted."""
    caps_per_image = caps_per_image or {}
    images = [{"id": i, "file_name": f"{i:012d}.jpg", "height": 10, "width": 20} for i in image_ids]
    annotations = []
    ann_id = 1000
    for i in image_ids:
        for k in range(caps_per_image.get(i, 5)):
            ann_id -= 7  # descending ids: the reader must sort by annotation id
            annotations.append({"image_id": i, "id": ann_id, "caption": f"caption {k} of image {i} "})
    annotations.reverse()
    (root / "annotations").mkdir(parents=True, exist_ok=True)
    path = root / "annotations" / "captions_val2017.json"
    path.write_text(json.dumps({"info": {}, "licenses": [], "images": images, "annotations": annotations}))
    touch_images(root / "images", [im["file_name"] for im in images])
    return path


def test_coco_order_and_cut(tmp_path: Path) -> None:
    path = write_coco(tmp_path, [42, 7, 19], caps_per_image={19: 6})
    corpus = read_coco_captions(path, tmp_path / "images", "val2017")
    assert corpus.image_ids == ["000000000007.jpg", "000000000019.jpg", "000000000042.jpg"]
    assert corpus.split == "val2017" and corpus.name == "coco"
    # within an image, annotation-id order (ids were written descending, so reversed caption order)
    assert corpus.captions[0] == [f"caption {k} of image 7" for k in (4, 3, 2, 1, 0)]
    assert corpus.captions[1] == [f"caption {k} of image 19" for k in (5, 4, 3, 2, 1)]
    assert (
        "1 image(s) had more than 5 captions" in corpus.notes[0] and "'000000000019.jpg'" in corpus.notes[0]
    )


def _coco_data(path: Path) -> dict:
    return json.loads(path.read_text())


@pytest.mark.parametrize(
    ("mutate", "match", "item"),
    [
        (lambda d: d["images"][1].update(id="seven"), "'id' must be an integer", "images[1]"),
        (lambda d: d["images"][0].update(id=1.5), "'id' must be an integer", "images[0]"),
        (lambda d: d["images"][2].pop("file_name"), "'file_name'", "images[2]"),
        (
            lambda d: d["annotations"][3].update(image_id=None),
            "'image_id' must be an integer",
            "annotations[3]",
        ),
        (lambda d: d["annotations"][4].pop("caption"), "'caption'", "annotations[4]"),
        (lambda d: d["annotations"][5].update(caption=""), "empty caption", "annotations[5]"),
        (lambda d: d["annotations"][5].update(image_id=99), "image id 99", "annotations[5]"),
        (
            lambda d: d["annotations"][6].update(id=d["annotations"][0]["id"]),
            "appears twice",
            "annotations[6]",
        ),
        (lambda d: d["annotations"].pop(0), "has 4 caption", "000000000042.jpg"),
        (lambda d: d.pop("annotations"), "'annotations' lists", ""),
    ],
)
def test_coco_errors(tmp_path: Path, mutate, match: str, item: str) -> None:
    path = write_coco(tmp_path, [42, 7, 19])
    data = _coco_data(path)
    data["annotations"].sort(key=lambda a: (a["image_id"] != 42, a["id"]))  # image 42's captions first
    mutate(data)
    path.write_text(json.dumps(data))
    with raises(match, str(path), item):
        read_coco_captions(path, tmp_path / "images", "val2017")


def test_coco_missing_image(tmp_path: Path) -> None:
    path = write_coco(tmp_path, [1, 2])
    (tmp_path / "images" / "000000000002.jpg").unlink()
    with raises("1 image file", str(path), "'000000000002.jpg'"):
        read_coco_captions(path, tmp_path / "images", "val2017")
    assert len(read_coco_captions(path, None, "val2017")) == 2  # no folder given: nothing to check


# --------------------------------------------------------------------------------------------
# Flickr8k


def write_flickr(
    folder: Path, names: list[str], style: str = "csv", n_caps: dict[str, int] | None = None
) -> Path:
    n_caps = n_caps or {}
    if style == "csv":
        path = folder / "captions.txt"
        with open(path, "w", encoding="utf-8", newline="") as f:
            writer = csv.writer(f, lineterminator="\r\n")  # CRLF, as in the real file
            writer.writerow(["image", "caption"])
            for name in names:
                for cap in caps_for(name, n_caps.get(name, 5)):
                    writer.writerow([name, cap.replace("caption", "a caption, with comma")])
    else:
        path = folder / "Flickr8k.token.txt"
        lines = [
            f"{name}#{k}\t{cap}"
            for name in names
            for k, cap in enumerate(caps_for(name, n_caps.get(name, 5)))
        ]
        path.write_text("\n".join(reversed(lines)) + "\n", encoding="utf-8")  # reader orders by #k
    touch_images(folder / "images", names)
    return path


def write_split(folder: Path, filename: str, names: list[str]) -> Path:
    path = folder / filename
    path.write_text("\n".join(names) + "\n", encoding="utf-8")
    return path


@pytest.mark.parametrize("style", ["csv", "token"])
def test_flickr8k(tmp_path: Path, style: str) -> None:
    names = [f"{i}_abc.jpg" for i in range(6)]
    captions = write_flickr(tmp_path, names, style, n_caps={"4_abc.jpg": 6})
    split = write_split(tmp_path, "Flickr_8k.devImages.txt", ["4_abc.jpg", "1_abc.jpg", "2_abc.jpg"])
    corpus = read_flickr8k(captions, split, tmp_path / "images")
    assert corpus.image_ids == ["4_abc.jpg", "1_abc.jpg", "2_abc.jpg"] and corpus.split == "dev"
    expected = caps_for("1_abc.jpg")
    if style == "csv":
        expected = [c.replace("caption", "a caption, with comma") for c in expected]
    assert corpus.captions[1] == expected
    assert len(corpus.notes) == 1 and "'4_abc.jpg' had 6" in corpus.notes[0]


def test_flickr8k_csv_errors(tmp_path: Path) -> None:
    captions = write_flickr(tmp_path, ["a.jpg", "b.jpg"])
    split = write_split(tmp_path, "test_images.txt", ["a.jpg", "b.jpg"])
    good = captions.read_text(encoding="utf-8").splitlines()

    def check(line_no: int, replacement: str, match: str) -> None:
        lines = list(good)
        lines[line_no - 1] = replacement
        captions.write_text("\n".join(lines) + "\n", encoding="utf-8")
        with raises(match, str(captions), f"line {line_no}"):
            read_flickr8k(captions, split, tmp_path / "images")

    check(4, "a.jpg,one,two", "expected 2 fields")
    check(5, "a.jpg", "expected 2 fields")
    check(6, 'b.jpg,"unterminated', "bad CSV row")
    check(7, 'b.jpg,"x"y', "bad CSV row")
    check(8, "b.jpg,   ", "empty caption")
    check(9, ",a caption", "empty image name")


def test_flickr8k_token_errors(tmp_path: Path) -> None:
    captions = write_flickr(tmp_path, ["a.jpg", "b.jpg"], style="token")
    split = write_split(tmp_path, "test_images.txt", ["a.jpg", "b.jpg"])
    good = captions.read_text(encoding="utf-8").splitlines()
    for replacement, match in [
        ("a.jpg#2 no tab here", "expected 'IMAGE.jpg#K<TAB>caption'"),
        ("a.jpg\tno index", "expected 'IMAGE.jpg#K<TAB>caption'"),
        ("a.jpg#x\tbad index", "expected 'IMAGE.jpg#K<TAB>caption'"),
        ("b.jpg#3\t  ", "empty caption"),
        (good[0].replace("#4", "#3"), "appears twice"),
    ]:
        lines = list(good)
        lines[2] = replacement
        captions.write_text("\n".join(lines) + "\n", encoding="utf-8")
        with raises(match, str(captions), "line 3"):
            read_flickr8k(captions, split, tmp_path / "images")


def test_flickr8k_split_errors(tmp_path: Path) -> None:
    captions = write_flickr(tmp_path, ["a.jpg", "b.jpg"], n_caps={"b.jpg": 3})
    split = write_split(tmp_path, "train_images.txt", ["a.jpg", "", "a.jpg"])
    with raises("listed twice", str(split), "'a.jpg'", "line 1", "line 3"):
        read_flickr8k(captions, split, tmp_path / "images")
    split = write_split(tmp_path, "train_images.txt", ["a.jpg", "b.jpg"])
    with raises("has 3 caption", str(captions), "'b.jpg'"):
        read_flickr8k(captions, split, tmp_path / "images")
    split = write_split(tmp_path, "train_images.txt", ["a.jpg", "zzz.jpg"])
    with raises("has 0 caption", "'zzz.jpg'"):
        read_flickr8k(captions, split, tmp_path / "images")
    split = write_split(tmp_path, "train_images.txt", ["a.jpg"])
    (tmp_path / "images" / "a.jpg").unlink()
    with raises("1 image file", str(split), "'a.jpg'"):
        read_flickr8k(captions, split, tmp_path / "images")
    split.write_text("\n\n")
    with raises("no image names", str(split)):
        read_flickr8k(captions, split, tmp_path / "images")


# --------------------------------------------------------------------------------------------
# dispatcher


def test_load_corpus_dispatch(tmp_path: Path) -> None:
    (tmp_path / "p").mkdir()
    write_precomp(tmp_path / "p", "test", 2)
    assert load_corpus("precomp", tmp_path / "p", "test").image_ids == ["test_0", "test_1"]
    assert detect_format(tmp_path / "p") == "precomp"

    (tmp_path / "k").mkdir()
    kpath = write_karpathy(tmp_path / "k", [karpathy_item("x.jpg", "test")])
    corpus = load_corpus("karpathy", kpath, "test")
    assert corpus.image_root == tmp_path / "k" / "images" and corpus.image_ids == ["x.jpg"]
    assert detect_format(kpath) == "karpathy"

    cpath = write_coco(tmp_path / "c", [3, 1])
    for path in (cpath, tmp_path / "c"):
        corpus = load_corpus("coco", path, "val2017")
        assert corpus.image_root == tmp_path / "c" / "images" and len(corpus) == 2
    assert detect_format(cpath) == "coco" and detect_format(tmp_path / "c") == "coco"

    (tmp_path / "f").mkdir()
    write_flickr(tmp_path / "f", ["a.jpg", "b.jpg"], style="token")
    write_split(tmp_path / "f", "Flickr_8k.devImages.txt", ["b.jpg"])
    for split in ("dev", "val"):
        corpus = load_corpus("flickr8k", tmp_path / "f", split)
        assert corpus.image_ids == ["b.jpg"] and corpus.split == split
        assert corpus.image_root == tmp_path / "f" / "images"
    assert load_corpus("auto", tmp_path / "f", "dev").image_ids == ["b.jpg"]
    with raises("no split list for 'train'", str(tmp_path / "f")):
        load_corpus("flickr8k", tmp_path / "f", "train")

    with raises("unknown data format 'tsv'", "precomp", "karpathy", "coco", "flickr8k"):
        load_corpus("tsv", tmp_path / "p", "test")
    (tmp_path / "empty").mkdir()
    with raises("cannot tell its data format", "empty"):
        detect_format(tmp_path / "empty")


# --------------------------------------------------------------------------------------------
# real samples in ../shared/data


def test_real_flickr8k(shared_data: Path) -> None:
    folder = shared_data / "flickr8k"
    train = load_corpus("flickr8k", folder, "train")
    dev = load_corpus("flickr8k", folder, "dev")
    assert (len(train), len(dev)) == (6000, 1000)
    assert train.num_captions == 30000 and all(len(c) == 5 for c in train.captions)
    assert not set(train.image_ids) & set(dev.image_ids)
    first_name = (folder / "train_images.txt").read_text().split()[0]
    assert train.image_ids[0] == first_name
    with open(folder / "captions.txt", encoding="utf-8", newline="") as f:
        first_caption = next(row[1] for row in csv.reader(f) if row[0] == first_name)
    assert train.captions[0][0] == first_caption.strip()
    assert train.notes == [] and train.image_root == folder / "images"


def test_real_coco_mini(shared_data: Path) -> None:
    path = shared_data / "coco_mini" / "annotations" / "captions_val2017.json"
    corpus = load_corpus("coco", path, "val2017")
    assert len(corpus) == 25 and corpus.num_captions == 125
    assert corpus.image_ids == sorted(corpus.image_ids)  # zero-padded ids: name order = id order
    paths = corpus.image_paths()
    assert all(p.is_file() for p in paths)
    from PIL import Image

    sizes = set()
    for p in paths:
        with Image.open(p) as im:
            sizes.add(im.size)
    assert len(sizes) > 1  # mixed sizes
