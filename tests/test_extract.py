"""Feature extraction: the store format, caching, resume after a crash, bad images, the CLI."""

from __future__ import annotations

import hashlib
import json
import os
import signal
import subprocess
import sys
import threading
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from itmatch import cli
from itmatch.errors import ImageReadError, ItmatchError
from itmatch.features import extract as extract_mod
from itmatch.features import get_backbone
from itmatch.features.backbones import backbone_spec
from itmatch.features.extract import extract_features
from itmatch.features.store import FeatureStore, exclusive, store_path

SIZE = 32  # tiny crops keep the real EfficientNet-Lite0 fast


def _photo(path: Path, seed: int, size: tuple[int, int] = (48, 36)) -> None:
    rng = np.random.default_rng(seed)
    Image.fromarray(rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)).save(path, quality=90)


@pytest.fixture()
def photos(tmp_path: Path) -> tuple[Path, list[str]]:
    root = tmp_path / "images"
    (root / "sub").mkdir(parents=True)
    ids = [f"img{i:02d}.jpg" for i in range(11)] + ["sub/nested.jpg"]
    for k, image_id in enumerate(ids):
        _photo(root / image_id, k)
    return root, ids


@pytest.fixture()
def counter(monkeypatch) -> dict[str, int]:
    """Counts backbone builds and the images that go through the backbone's forward."""
    counts = {"builds": 0, "images": 0}
    real = extract_mod.get_backbone

    def counting(name, weights=None):
        counts["builds"] += 1
        model = real(name, weights)
        model.register_forward_hook(lambda m, inp, out: counts.__setitem__("images", counts["images"] + len(inp[0])))
        return model

    monkeypatch.setattr(extract_mod, "get_backbone", counting)
    return counts


def _extract(root, ids, out, **kw) -> FeatureStore:
    kw.setdefault("num_workers", 0)
    kw.setdefault("batch_size", 4)
    kw.setdefault("num_threads", 1)  # robust timing on a shared 2-core machine
    return extract_features(root, ids, out, image_size=SIZE, **kw)


def test_store_format_and_lookup(photos, tmp_path):
    root, ids = photos
    store = _extract(root, ids + [ids[3]], tmp_path / "feats")  # a duplicate id: one row
    assert store.path == store_path(tmp_path / "feats", image_size=SIZE)
    assert store.path.name.startswith(f"efficientnet_lite0-{SIZE}px-")
    assert store.image_ids == ids and store.complete and not store.cached and store.computed == len(ids)

    array = np.load(store.path / "features.npy", mmap_mode="r")
    assert array.dtype == np.float32 and array.shape == (len(ids), 1280)
    meta = json.loads((store.path / "features.json").read_text())
    assert meta["complete"] and meta["rows"] == len(ids) and meta["image_ids"] == ids
    assert meta["backbone"] == "efficientnet_lite0" and meta["weights"]["identity"].startswith("sha256:")
    assert meta["preprocessing"]["center_crop"] == SIZE and meta["preprocessing"]["normalization"]["std"] == [128.0] * 3
    st = (root / ids[0]).stat()
    assert meta["files"][0] == [st.st_size, st.st_mtime_ns, hashlib.blake2b((root / ids[0]).read_bytes(), digest_size=16).hexdigest()]
    assert not (store.path / "done.npy").exists()

    # Rows equal the backbone applied to the one preprocessing pipeline.
    model = get_backbone("efficientnet_lite0")
    transform = backbone_spec("efficientnet_lite0").transform(SIZE)
    with torch.inference_mode(), extract_mod._threads(1):
        expected = model(torch.stack([transform(root / i) for i in ids[:3]])).numpy()
    picked = ["img02.jpg", "img00.jpg", "img01.jpg"]
    np.testing.assert_allclose(store.lookup(picked), expected[[2, 0, 1]], rtol=1e-4, atol=1e-5)
    assert FeatureStore.open(store.path / "features.json").image_ids == ids
    assert "img05.jpg" in store and "nope.jpg" not in store
    with pytest.raises(KeyError, match="nope.jpg"):
        store.lookup(["img01.jpg", "nope.jpg"])


def test_rerun_is_cached_new_ids_appended_changed_file_recomputed(photos, tmp_path, counter):
    root, ids = photos
    out = tmp_path / "feats"
    first = _extract(root, ids[:8], out)
    before = first.lookup(ids[:8])
    assert counter == {"builds": 1, "images": 8}

    again = _extract(root, ids[:8], out)
    assert again.cached and again.computed == 0 and counter == {"builds": 1, "images": 8}  # no model built
    subset = _extract(root, ids[2:5], out)
    assert subset.cached and counter["builds"] == 1

    grown = _extract(root, ids, out)  # 4 new ids: only those are computed, appended after the old rows
    assert counter == {"builds": 2, "images": 12} and grown.computed == 4
    assert grown.image_ids == ids and grown.complete
    np.testing.assert_array_equal(grown.lookup(ids[:8]), before)

    _photo(root / ids[1], seed=99, size=(60, 40))  # a changed file (new size and mtime)
    os.utime(root / ids[1], ns=(1_000_000_000, 1_000_000_000))
    changed = _extract(root, ids, out)
    assert counter == {"builds": 3, "images": 13} and changed.computed == 1
    assert not np.allclose(changed.lookup([ids[1]]), before[1:2])
    np.testing.assert_array_equal(changed.lookup([ids[0]] + ids[2:8]), before[[0, 2, 3, 4, 5, 6, 7]])

    other_size = store_path(out, image_size=SIZE + 8)  # a different cache key: a different folder
    assert other_size != changed.path


def _same_size_other_photo(path: Path, seed: int) -> None:
    """Replace ``path`` by another picture of exactly the same byte length (JPEG ignores what
    follows its end marker, so a shorter encoding is padded)."""
    size = path.stat().st_size
    for quality in (90, 70, 50, 30, 10):
        other = path.with_suffix(".tmp.jpg")
        _photo(other, seed)
        Image.open(other).save(other, quality=quality)
        data = other.read_bytes()
        other.unlink()
        if len(data) <= size:
            path.write_bytes(data + b"\0" * (size - len(data)))
            return
    raise AssertionError("could not encode a photo small enough")


def test_copied_data_set_keeps_its_rows_but_same_size_edits_are_recomputed(photos, tmp_path, counter):
    """New mtimes with the same bytes (a copied or touched data set) keep every row and record the
    new stats; a file of the same size but other bytes is recomputed; a store whose records lack
    the digest (written before it existed) falls back to the stat alone."""
    root, ids = photos
    out = tmp_path / "feats"
    first = _extract(root, ids, out)
    before = first.lookup(ids)
    assert counter["images"] == len(ids)

    for k, image_id in enumerate(ids):  # every file touched: the copy of a data set
        os.utime(root / image_id, ns=(2_000_000_000 + k, 2_000_000_000 + k))
    _same_size_other_photo(root / ids[4], seed=123)
    os.utime(root / ids[4], ns=(3_000_000_000, 3_000_000_000))
    again = _extract(root, ids, out)
    assert again.computed == 1 and counter["images"] == len(ids) + 1
    assert not np.allclose(again.lookup([ids[4]]), before[4:5])
    unchanged = [i for i in ids if i != ids[4]]
    np.testing.assert_array_equal(again.lookup(unchanged), before[[ids.index(i) for i in unchanged]])
    meta = json.loads((again.path / "features.json").read_text())
    for image_id, record in zip(meta["image_ids"], meta["files"], strict=True):
        st = (root / image_id).stat()
        assert record[:2] == [st.st_size, st.st_mtime_ns]  # the new stats are recorded ...
    assert _extract(root, ids, out).cached and counter["images"] == len(ids) + 1  # ... so the next run reads no file

    meta["files"] = [record[:2] for record in meta["files"]]  # a store written before the digest
    (again.path / "features.json").write_text(json.dumps(meta))
    os.utime(root / ids[0], ns=(4_000_000_000, 4_000_000_000))
    old = _extract(root, ids, out)
    assert old.computed == 1 and counter["images"] == len(ids) + 2


def test_crash_mid_run_resumes_with_only_the_rest(photos, tmp_path, counter):
    root, ids = photos  # 12 images, 3 batches of 4

    class Crash(Exception):
        pass

    def crash_after_two_batches(done: int, total: int) -> None:
        assert total == 12
        if done >= 8:
            raise Crash

    with pytest.raises(Crash):
        _extract(root, ids, tmp_path / "feats", progress=crash_after_two_batches, num_workers=2)
    partial = FeatureStore.open(store_path(tmp_path / "feats", image_size=SIZE))
    assert not partial.complete and ids[7] in partial and ids[8] not in partial
    with pytest.raises(KeyError, match=ids[8]):
        partial.lookup(ids)
    assert counter["images"] == 8

    resumed = _extract(root, ids, tmp_path / "feats", num_workers=2)
    assert counter["images"] == 12 and resumed.computed == 4 and resumed.complete
    clean = _extract(root, ids, tmp_path / "clean", num_workers=2)
    np.testing.assert_array_equal(resumed.lookup(ids), clean.lookup(ids))


_KILL_SCRIPT = f"""
import os, signal, sys
from itmatch.features.extract import extract_features
root, out, ids = sys.argv[1], sys.argv[2], sys.argv[3:]
def die(done, total):
    if done >= 8:
        os.kill(os.getpid(), signal.SIGKILL)
extract_features(root, ids, out, image_size={SIZE}, batch_size=4, num_workers=0, num_threads=1, progress=die)
"""


def test_process_killed_mid_run_resumes(photos, tmp_path, counter):
    root, ids = photos
    proc = subprocess.run([sys.executable, "-c", _KILL_SCRIPT, str(root), str(tmp_path / "feats"), *ids], timeout=120)
    assert proc.returncode == -signal.SIGKILL
    partial = FeatureStore.open(store_path(tmp_path / "feats", image_size=SIZE))
    assert not partial.complete and sum(i in partial for i in ids) == 8
    resumed = _extract(root, ids, tmp_path / "feats")
    assert resumed.complete and resumed.computed == 4 and counter["images"] == 4
    clean = _extract(root, ids, tmp_path / "clean")
    np.testing.assert_array_equal(resumed.lookup(ids), clean.lookup(ids))


def test_bad_images_are_all_reported_and_good_ones_kept(photos, tmp_path, counter):
    root, ids = photos
    good = root / ids[0]
    (root / "truncated.jpg").write_bytes(good.read_bytes()[: good.stat().st_size // 2])
    (root / "notes.jpg").write_text("this is a text file, not a JPEG\n")
    bad = ["truncated.jpg", "notes.jpg", "missing.jpg"]
    request = ids[:5] + bad

    with pytest.raises(ImageReadError) as info:
        _extract(root, request, tmp_path / "feats", num_workers=2)
    failures = info.value.failures
    assert set(failures) == {str(root / b) for b in bad}
    assert "truncated" in failures[str(root / "truncated.jpg")]
    assert "UnidentifiedImageError" in failures[str(root / "notes.jpg")]
    assert "cannot access the file" in failures[str(root / "missing.jpg")]
    message = str(info.value)
    assert all(b in message for b in bad) and message.startswith("3 image(s) could not be read")

    partial = FeatureStore.open(store_path(tmp_path / "feats", image_size=SIZE))
    assert all(i in partial for i in ids[:5]) and counter["images"] == 5

    for k, name in enumerate(bad):  # fix the files: the rerun computes only them
        _photo(root / name, seed=50 + k)
    fixed = _extract(root, request, tmp_path / "feats", num_workers=2)
    assert fixed.complete and fixed.computed == 3 and counter["images"] == 8


def test_locked_and_damaged_stores(photos, tmp_path):
    root, ids = photos
    folder = store_path(tmp_path / "feats", image_size=SIZE)
    with exclusive(folder):
        with pytest.raises(ItmatchError, match=r"being written by another extraction; .* \(held by PID \d+\)"):
            _extract(root, ids[:2], tmp_path / "feats", lock_wait_s=0)
    _extract(root, ids[:2], tmp_path / "feats")
    (folder / "features.json").write_text("{ not json")
    with pytest.raises(ItmatchError, match="not a usable feature store"):
        FeatureStore.open(folder)
    rebuilt = _extract(root, ids[:2], tmp_path / "feats")
    assert rebuilt.complete and rebuilt.computed == 2 and any("discarded" in n for n in rebuilt.notes)


def test_a_second_extraction_waits_for_the_first_and_reuses_its_rows(photos, tmp_path, capsys):
    """Two trainings started on one cache: the second waits on the store's lock (saying so) and
    then computes only what the first did not."""
    root, ids = photos
    folder = store_path(tmp_path / "feats", image_size=SIZE)
    result: dict[str, FeatureStore] = {}
    waiter = threading.Thread(
        target=lambda: result.setdefault("store", _extract(root, ids[:4], tmp_path / "feats", progress=True))
    )
    first = _extract(root, ids[:3], tmp_path / "feats")
    with exclusive(folder):  # held through another file description: to flock, another holder
        waiter.start()
        waiter.join(timeout=1.0)
        assert waiter.is_alive() and "store" not in result  # still waiting on the lock
    waiter.join(timeout=120)
    assert not waiter.is_alive()
    assert first.computed == 3 and result["store"].complete and result["store"].computed == 1
    assert f"to finish writing {folder}" in capsys.readouterr().err


def _flickr8k_folder(tmp_path: Path, n: int = 6) -> Path:
    folder = tmp_path / "flickr8k"
    (folder / "images").mkdir(parents=True)
    names = [f"{1000 + i}_abc.jpg" for i in range(n)]
    lines = ["image,caption"]
    for i, name in enumerate(names):
        _photo(folder / "images" / name, seed=i)
        lines += [f"{name},a photo number {i} caption {c} ." for c in range(5)]
    (folder / "captions.txt").write_text("\n".join(lines) + "\n")
    (folder / "dev_images.txt").write_text("\n".join(names) + "\n")
    return folder


def test_cli_extract_then_cached(tmp_path, capsys):
    data = _flickr8k_folder(tmp_path)
    argv = ["extract", "--format", "flickr8k", "--data", str(data), "--split", "dev", "--out", str(tmp_path / "f"),
            "--image-size", str(SIZE), "--workers", "0", "--batch-size", "4", "--threads", "1", "--quiet", "--json"]  # fmt: skip
    assert cli.main(argv) == 0
    first = json.loads(capsys.readouterr().out)
    assert first["images"] == 6 and first["computed"] == 6 and not first["cached"] and first["feature_dim"] == 1280
    assert np.load(first["features"], mmap_mode="r").shape == (6, 1280)
    assert cli.main(argv) == 0
    second = json.loads(capsys.readouterr().out)
    assert second["cached"] and second["computed"] == 0 and second["features"] == first["features"]

    assert cli.main(argv[:-1]) == 0  # the human-readable summary
    assert "all cached, nothing computed" in capsys.readouterr().out


def test_cli_reports_bad_images_and_missing_extra(tmp_path, capsys, monkeypatch):
    data = _flickr8k_folder(tmp_path, n=3)
    bad = data / "images" / "1001_abc.jpg"
    bad.write_text("not an image")
    base = ["extract", "--format", "flickr8k", "--data", str(data), "--split", "dev", "--out", str(tmp_path / "f"),
            "--image-size", str(SIZE), "--workers", "0", "--threads", "1", "--quiet"]  # fmt: skip
    assert cli.main(base) == 1
    err = capsys.readouterr().err
    assert "itmatch extract: error: 1 image(s) could not be read" in err and str(bad) in err

    monkeypatch.setitem(sys.modules, "torchvision", None)
    assert cli.main(base + ["--backbone", "resnet152"]) == 1
    assert "pip install 'itmatch[torchvision]'" in capsys.readouterr().err
