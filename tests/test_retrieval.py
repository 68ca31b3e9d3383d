"""The search index and queries: exact and FAISS search, the on-disk index (incremental, atomic,
tied to its model), caption files, and the index/search commands."""

from __future__ import annotations

import json
import os
import shutil
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from itmatch.cli import main
from itmatch.errors import ItmatchError
from itmatch.inference import Matcher
from itmatch.retrieval import (
    ExactSearch,
    IndexModelMismatchError,
    PhotoIndex,
    SearchEngine,
    build_index,
    read_captions,
    recall_at_k,
)
from itmatch.retrieval.vectors import import_faiss

from test_retrieval_support import N_INDEXED, search_setup


@pytest.fixture(scope="session")
def setup(tmp_path_factory):
    return search_setup(tmp_path_factory)


def unit_rows(n: int, d: int, seed: int = 0, clusters: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, d, generator=g)
    if clusters:
        centres = torch.randn(clusters, d, generator=g) * 3
        x = x + centres[torch.randint(clusters, (n,), generator=g)]
    return torch.nn.functional.normalize(x, dim=1)


# --- vector search -------------------------------------------------------------------------------


def test_exact_search_in_blocks_equals_a_full_sort():
    db, q = unit_rows(1000, 16, 0), unit_rows(7, 16, 1)
    scores, rows = ExactSearch(db, block_rows=128).search(q, 10)
    full = q @ db.T
    for i in range(len(q)):  # the obvious version: sort every score
        order = torch.argsort(full[i], descending=True)[:10]
        assert rows[i].tolist() == order.tolist()
        assert torch.allclose(scores[i], full[i][order])
    s_all, r_all = ExactSearch(db, block_rows=128).search(q, 5000)  # k > N: everything, sorted
    assert r_all.shape == (7, 1000) and bool((s_all[:, :-1] >= s_all[:, 1:]).all())


@pytest.mark.parametrize("method", ["ivf", "hnsw"])
def test_faiss_index_answers_like_exact_search(method, tmp_path):
    pytest.importorskip("faiss")
    from itmatch.retrieval import FaissSearch

    db, q = unit_rows(3000, 32, 0, clusters=20), unit_rows(20, 32, 1, clusters=20)
    exact = ExactSearch(db).search(q, 10)[1]
    approx = FaissSearch.build(db, method, nprobe=8)
    assert len(approx) == 3000
    assert recall_at_k(approx.search(q, 10)[1], exact) >= 0.9
    if method == "ivf":  # probing every cell is exhaustive: identical to exact search
        approx.set_search_params(nprobe=approx.params["nlist"])
        assert recall_at_k(approx.search(q, 10)[1], exact) == 1.0
    approx.save(tmp_path / "x.faiss")
    again = FaissSearch.load(tmp_path / "x.faiss", approx.params)
    assert torch.equal(again.search(q, 10)[1], approx.search(q, 10)[1])


def test_missing_faiss_names_the_extra(monkeypatch):
    monkeypatch.setitem(sys.modules, "faiss", None)  # import faiss -> ImportError
    with pytest.raises(ItmatchError, match=r"itmatch\[faiss\]"):
        import_faiss()


# --- caption files ---------------------------------------------------------------------------------


def test_caption_files_in_three_formats(tmp_path):
    (tmp_path / "c.txt").write_text("a dog runs\n\n  a cat sleeps  \n")
    assert read_captions(tmp_path / "c.txt") == [("a dog runs", None), ("a cat sleeps", None)]
    (tmp_path / "c.csv").write_text('image,caption\n1.jpg,"a dog, running"\n2.jpg,a cat\n')
    assert read_captions(tmp_path / "c.csv") == [("a dog, running", "1.jpg"), ("a cat", "2.jpg")]
    (tmp_path / "k.json").write_text(json.dumps({"images": [
        {"filename": "1.jpg", "sentences": [{"raw": "one"}, {"raw": "two"}]}]}))  # fmt: skip
    assert read_captions(tmp_path / "k.json") == [("one", "1.jpg"), ("two", "1.jpg")]
    (tmp_path / "bad.csv").write_text("image,text\n1.jpg,x\n")
    with pytest.raises(ItmatchError, match="bad.csv.*'caption' column"):
        read_captions(tmp_path / "bad.csv")
    (tmp_path / "short.csv").write_text("image,caption\n1.jpg,x\n2.jpg\n")
    with pytest.raises(ItmatchError, match="short.csv, line 3"):
        read_captions(tmp_path / "short.csv")


# --- the built index --------------------------------------------------------------------------------


def test_index_holds_every_readable_photo_and_names_the_unreadable_one(setup):
    s = setup.summary
    assert s["photos"] == N_INDEXED and s["embedded"] == N_INDEXED and s["reused"] == 0
    assert list(s["unreadable"]) == ["broken.jpg"]
    assert s["captions"] == 5 * 32 and s["captions_embedded"] > 0
    index = PhotoIndex.open(setup.index)
    paths = [p.path for p in index.photos]
    assert paths == sorted(paths) and len(set(p.id for p in index.photos)) == N_INDEXED
    assert any(p.startswith("sub/") for p in paths)
    assert not any("hidden" in p or p.endswith((".txt", "broken.jpg")) for p in paths)
    for photo in index.photos:
        st = (setup.photos / photo.path).stat()
        assert (photo.size, photo.mtime_ns) == (st.st_size, st.st_mtime_ns)
    assert index.photo_vectors.dtype == torch.float32 and index.photo_vectors.shape == (N_INDEXED, 32)
    assert torch.allclose(index.photo_vectors.norm(dim=1), torch.ones(N_INDEXED), atol=1e-5)
    raw = np.load(setup.index / index.manifest["generation"] / "photos.npy")
    assert raw.dtype == np.float32
    matcher = Matcher.from_run(setup.run)
    assert index.model["checkpoint_sha256"] == matcher.identity["checkpoint_sha256"]
    # The stored vectors are the model's embeddings of those files.
    files = [str(setup.photos / p) for p in paths[:3]]
    assert torch.allclose(matcher.embed_images(files), index.photo_vectors[:3], atol=1e-5)


def test_unreadable_photo_is_warned_about_by_name(setup, tmp_path, capsys):
    folder = tmp_path / "few"
    folder.mkdir()
    shutil.copy(setup.spare[0], folder / "ok.png")
    (folder / "bad.png").write_bytes(b"\x89PNG truncated")
    assert main(["index", str(setup.run), str(folder), "-o", str(tmp_path / "idx"), "--quiet"]) == 0
    captured = capsys.readouterr()
    assert "warning: skipped unreadable photo bad.png" in captured.err
    assert "1 photos (1 embedded" in captured.out and "1 unreadable skipped" in captured.out


def test_engine_scores_are_cosine_similarities_of_the_model(setup):
    engine = SearchEngine.open(setup.index)
    text = "a red circle above a blue square"
    hits = engine.search_text(text, k=5)
    assert [h.rank for h in hits] == [1, 2, 3, 4, 5] and all(h.kind == "photo" for h in hits)
    scores = (engine.matcher.embed_texts([text]) @ engine.index.photo_vectors.T)[0]
    order = torch.argsort(scores, descending=True)[:5]
    assert [h.path for h in hits] == [engine.index.photos[int(i)].path for i in order]
    assert [round(h.score, 5) for h in hits] == [round(float(scores[i]), 5) for i in order]
    # Photo queries: an indexed file finds itself first; similar_photos leaves the query out.
    first = engine.index.photos[3]
    assert engine.search_image(setup.photos / first.path, k=3)[0].path == first.path
    similar = engine.similar_photos(first.path, k=4)
    assert len(similar) == 4 and first.path not in [h.path for h in similar]
    assert engine.similar_photos(first.id, k=4) == similar
    sentences = engine.describe_image(setup.photos / first.path, k=3)
    assert len(sentences) == 3 and all(h.kind == "sentence" and h.text for h in sentences)
    with pytest.raises(ItmatchError, match="empty"):
        engine.search_text("   ")
    with pytest.raises(ItmatchError, match="limit is 500"):
        engine.search_text("x" * 501)
    with pytest.raises(ItmatchError, match="not in index"):
        engine.similar_photos("nope.jpg")


# --- the index belongs to one model ---------------------------------------------------------------------


def test_index_refuses_a_run_it_was_not_built_with(setup, tmp_path, capsys):
    with pytest.raises(IndexModelMismatchError, match="built with a different model"):
        SearchEngine.open(setup.index, run=setup.other_run)
    assert main(["search", str(setup.index), "--text", "a dog", "--run", str(setup.other_run)]) == 1
    err = capsys.readouterr().err
    assert "different model" in err and "--rebuild" in err
    # Updating the index with another run is refused too, and leaves it untouched ...
    copy = tmp_path / "index"
    shutil.copytree(setup.index, copy)
    before = (copy / "index.json").read_text()
    assert main(["index", str(setup.other_run), str(setup.photos), "-o", str(copy), "--quiet"]) == 1
    assert "different model" in capsys.readouterr().err
    assert (copy / "index.json").read_text() == before
    # ... and the index of another folder is not silently replaced.
    assert main(["index", str(setup.run), str(tmp_path), "-o", str(copy), "--quiet"]) == 1
    assert "covers" in capsys.readouterr().err


def test_index_will_not_write_into_a_folder_that_is_not_an_index(setup, tmp_path, capsys):
    (tmp_path / "mine.txt").write_text("precious")
    assert main(["index", str(setup.run), str(setup.photos), "-o", str(tmp_path), "--quiet"]) == 1
    assert "not an itmatch index" in capsys.readouterr().err
    assert main(["search", str(tmp_path / "nothing"), "--text", "x"]) == 1
    assert "does not exist" in capsys.readouterr().err


# --- incremental and atomic updates ----------------------------------------------------------------------


class CountingMatcher:
    """A Matcher whose embed_images records every file it is asked to embed."""

    def __init__(self, run: Path):
        self.inner = Matcher.from_run(run)
        self.files: list[str] = []

    def __getattr__(self, name):
        return getattr(self.inner, name)

    def embed_images(self, images, batch_size: int = 32):
        self.files.extend(Path(str(i)).name for i in images)
        return self.inner.embed_images(images, batch_size=batch_size)


def test_incremental_update_embeds_only_new_and_changed_photos(setup, tmp_path):
    folder, index = tmp_path / "photos", tmp_path / "index"
    folder.mkdir()
    spare = setup.spare
    for src in spare[:4]:
        shutil.copy(src, folder / src.name)
    (folder / "broken.jpg").write_bytes(b"nope")
    m = CountingMatcher(setup.run)
    first = build_index(m, folder, index)
    assert first.embedded == 4 and set(first.unreadable) == {"broken.jpg"}
    ids = {p.path: p.id for p in PhotoIndex.open(index).photos}

    m.files.clear()
    generation = json.loads((index / "index.json").read_text())["generation"]
    again = build_index(m, folder, index)
    assert m.files == [] and (again.embedded, again.reused, again.removed) == (0, 4, 0)
    assert json.loads((index / "index.json").read_text())["generation"] == generation  # nothing rewritten
    assert set(again.unreadable) == {"broken.jpg"}  # still reported, not retried

    shutil.copy(spare[4], folder / spare[4].name)  # new
    (folder / "deep").mkdir()
    shutil.copy(spare[5], folder / "deep" / spare[5].name)  # new, in a sub-folder
    os.remove(folder / spare[0].name)  # removed
    shutil.copy(spare[6], folder / spare[1].name)  # changed content under an old name
    os.utime(folder / spare[1].name, ns=(1, 1))
    m.files.clear()
    third = build_index(m, folder, index)
    assert sorted(m.files) == sorted([spare[4].name, spare[5].name, spare[1].name])
    assert (third.embedded, third.reused, third.removed, third.photos) == (3, 2, 1, 5)

    idx = PhotoIndex.open(index)
    paths = {p.path for p in idx.photos}
    assert spare[0].name not in paths and f"deep/{spare[5].name}" in paths
    assert idx.photo(spare[1].name).id == ids[spare[1].name]  # a changed photo keeps its id
    assert idx.photo(spare[2].name).id == ids[spare[2].name]
    engine = SearchEngine(idx, m.inner)
    every = engine.search_text("a shape", k=100)
    assert len(every) == 5 and spare[0].name not in [h.path for h in every]
    # The changed photo's vector is the new content's.
    assert torch.allclose(idx.photo_vectors[idx.photo_row(idx.photo(spare[1].name))],
                          m.inner.embed_images([str(spare[6])])[0], atol=1e-5)  # fmt: skip


def _bmp(path: Path, colour: tuple[int, int, int]) -> Path:
    from PIL import Image

    Image.new("RGB", (40, 30), colour).save(path)  # an uncompressed BMP: its size does not depend on the colour
    return path


def test_a_touched_photo_keeps_its_vector_and_a_same_size_edit_does_not(setup, tmp_path):
    folder, index = tmp_path / "photos", tmp_path / "index"
    folder.mkdir()
    for name, colour in (("red.bmp", (200, 30, 30)), ("green.bmp", (30, 200, 30)), ("blue.bmp", (30, 30, 200))):
        _bmp(folder / name, colour)
    m = CountingMatcher(setup.run)
    build_index(m, folder, index)
    before = PhotoIndex.open(index)
    vectors = {p.path: before.photo_vectors[before.photo_row(p)].clone() for p in before.photos}
    assert all(p.digest for p in before.photos)

    # A restored or touched folder: every mtime new, every byte the same. Nothing is embedded, and
    # the new times are recorded (a new generation), so the next update reads no file at all.
    for name in vectors:
        os.utime(folder / name, ns=(10**18, 10**18))
    m.files.clear()
    touched = build_index(m, folder, index)
    assert m.files == [] and (touched.embedded, touched.reused, touched.restamped) == (0, 3, 3)
    after = PhotoIndex.open(index)
    assert {p.mtime_ns for p in after.photos} == {10**18}
    for p in after.photos:
        assert torch.equal(after.photo_vectors[after.photo_row(p)], vectors[p.path])
    generation = json.loads((index / "index.json").read_text())["generation"]
    again = build_index(m, folder, index)
    assert (again.restamped, again.embedded) == (0, 0)
    assert json.loads((index / "index.json").read_text())["generation"] == generation

    # Other bytes of the same size under a new mtime: embedded again, with the new content's vector.
    size = (folder / "red.bmp").stat().st_size
    _bmp(folder / "red.bmp", (250, 250, 250))
    assert (folder / "red.bmp").stat().st_size == size
    os.utime(folder / "red.bmp", ns=(2 * 10**18, 2 * 10**18))
    m.files.clear()
    edited = build_index(m, folder, index)
    assert m.files == ["red.bmp"] and (edited.embedded, edited.restamped) == (1, 0)
    idx = PhotoIndex.open(index)
    assert torch.allclose(idx.photo_vectors[idx.photo_row(idx.photo("red.bmp"))],
                          m.inner.embed_images([str(folder / "red.bmp")])[0], atol=1e-5)  # fmt: skip


def test_an_index_without_digests_falls_back_to_the_file_stat(setup, tmp_path):
    folder, index = tmp_path / "photos", tmp_path / "index"
    folder.mkdir()
    _bmp(folder / "a.bmp", (10, 120, 240))
    m = CountingMatcher(setup.run)
    build_index(m, folder, index)
    gen = index / json.loads((index / "index.json").read_text())["generation"]
    cols = json.loads((gen / "photos.json").read_text())
    del cols["digests"]  # as an index written before digests were recorded
    (gen / "photos.json").write_text(json.dumps(cols))
    assert PhotoIndex.open(index).photos[0].digest is None

    os.utime(folder / "a.bmp", ns=(10**18, 10**18))
    m.files.clear()
    update = build_index(m, folder, index)
    assert m.files == ["a.bmp"] and (update.embedded, update.restamped) == (1, 0)  # no digest: the stat decides
    assert PhotoIndex.open(index).photos[0].digest is not None  # recorded from now on

def test_an_interrupted_update_leaves_a_usable_index(setup, tmp_path):
    folder, index = tmp_path / "photos", tmp_path / "index"
    folder.mkdir()
    for src in setup.spare[:6]:
        shutil.copy(src, folder / src.name)
    m = CountingMatcher(setup.run)
    build_index(m, folder, index, batch_size=2)

    for src in setup.spare[6:12]:
        shutil.copy(src, folder / src.name)

    class Crash(Exception):
        pass

    calls = {"n": 0}
    real = m.embed_images

    def crash_on_third_batch(images, batch_size=32):
        calls["n"] += 1
        if calls["n"] == 3:
            raise Crash
        return real(images, batch_size)

    m.embed_images = crash_on_third_batch
    with pytest.raises(Crash):
        build_index(m, folder, index, batch_size=2, save_every=2)
    # The last complete generation is readable and holds the old photos plus what was saved.
    idx = PhotoIndex.open(index)
    assert 6 <= len(idx) < 12 and len(list(index.glob("gen-*"))) == 1
    m.embed_images = real
    m.files.clear()
    resumed = build_index(m, folder, index, batch_size=2)
    assert resumed.photos == 12 and resumed.embedded == 12 - len(idx) and len(m.files) == 12 - len(idx)


def test_approximate_index_through_the_command_line(setup, tmp_path, capsys):
    pytest.importorskip("faiss")
    copy = tmp_path / "index"
    shutil.copytree(setup.index, copy)
    assert main(["index", str(setup.run), str(setup.photos), "-o", str(copy), "--approximate", "hnsw", "--json"]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["embedded"] == 0 and summary["approximate"]["method"] == "hnsw"
    assert main(["search", str(copy), "--text", "a green star", "-k", "5", "--json"]) == 0
    approx = json.loads(capsys.readouterr().out)["photos"]
    assert main(["search", str(copy), "--text", "a green star", "-k", "5", "--json", "--exact"]) == 0
    exact = json.loads(capsys.readouterr().out)["photos"]
    assert len({h["path"] for h in approx} & {h["path"] for h in exact}) >= 4
    # Back to exact: the FAISS file goes away.
    assert main(["index", str(setup.run), str(setup.photos), "-o", str(copy), "--approximate", "exact", "--quiet"]) == 0
    assert not list(copy.glob("gen-*/photos.faiss"))


# --- the search command ---------------------------------------------------------------------------------


def test_search_command_prints_a_table_and_json(setup, capsys):
    assert main(["search", str(setup.index), "--text", "two red squares", "-k", "3"]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[0] == "photos" and out[1].split() == ["rank", "score", "id", "photo"]
    assert [line.split()[0] for line in out[2:5]] == ["1", "2", "3"] and len(out) == 5

    assert main(["search", str(setup.index), "--text", "two red squares", "-k", "3", "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    scores = [h["score"] for h in data["photos"]]
    assert len(scores) == 3 and scores == sorted(scores, reverse=True)
    assert data["query"] == {"text": "two red squares"} and data["images_root"] == str(setup.photos.resolve())

    query = setup.photos / "sub" / PhotoIndex.open(setup.index).photos[-1].path.split("/")[-1]
    assert main(["search", str(setup.index), "--image", str(query), "-k", "2", "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert data["photos"][0]["path"].endswith(query.name) and data["photos"][0]["score"] == pytest.approx(1, abs=1e-4)
    assert len(data["sentences"]) == 2 and all(h["text"] for h in data["sentences"])

    assert main(["search", str(setup.index), "--similar", data["photos"][0]["path"], "-k", "2"]) == 0
    assert len(capsys.readouterr().out.splitlines()) == 4

    assert main(["search", str(setup.index), "--image", str(setup.photos / "broken.jpg")]) == 1
    assert "broken.jpg" in capsys.readouterr().err
    assert main(["search", str(setup.index), "--text", "   "]) == 1
    assert "empty" in capsys.readouterr().err


def test_an_index_built_by_an_ensemble_reopens_with_it(setup, tmp_path):
    from itmatch.inference import Ensemble

    pair = Ensemble.from_runs([setup.run, setup.other_run])
    index = tmp_path / "ensemble-index"
    build_index(pair, setup.photos, index)
    engine = SearchEngine.open(index)  # the members recorded in the index, no run given
    assert [str(m.checkpoint) for m in engine.matcher.members] == [str(m.checkpoint) for m in pair.members]
    text = "a red circle above a blue square"
    # a photo's score is the mean of the two models' cosines, computed here model by model
    photos = [setup.photos / p.path for p in engine.index.photos]
    by_hand = sum(m.embed_texts([text]) @ m.embed_images(photos).T for m in pair.members)[0] / 2
    hits = engine.search_text(text, k=3)
    top = torch.argsort(by_hand, descending=True)[:3]
    assert [h.path for h in hits] == [engine.index.photos[int(i)].path for i in top]
    assert [h.score for h in hits] == pytest.approx([float(by_hand[i]) for i in top], abs=1e-5)
    with pytest.raises(IndexModelMismatchError):  # one member alone is another model
        SearchEngine.open(index, run=setup.run)
    moved = tmp_path / "moved"
    shutil.copytree(index, moved)
    manifest = json.loads((moved / "index.json").read_text())
    manifest["model"]["members"][1] = str(tmp_path / "gone.pt")
    (moved / "index.json").write_text(json.dumps(manifest))
    with pytest.raises(ItmatchError, match=r"ensemble of 2 models, and the checkpoint\(s\) .*gone.pt are no longer there"):
        SearchEngine.open(moved)
