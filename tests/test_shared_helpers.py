"""The helpers each fact now lives in once: the atomic writer, file_sha256, the embedding checks,
the query checks of both search backends, and the load-embed-score path."""

from __future__ import annotations

import hashlib
import os
import stat

import numpy as np
import pytest
import torch

from itmatch.evaluation.arrays import as_numpy
from itmatch.fileio import atomic_write_bytes, atomic_write_text, file_sha256, remove_stale_temp_files


@pytest.fixture
def umask_022():
    old = os.umask(0o022)
    try:
        yield
    finally:
        os.umask(old)


def test_atomic_write_gives_the_usual_permissions_and_leaves_no_temp_file(tmp_path, umask_022):
    path = atomic_write_text(tmp_path / "sub" / "report.md", "one\n")
    assert path == tmp_path / "sub" / "report.md" and path.read_text() == "one\n"
    # what open() would give under umask 022 (mkstemp's 0600 would hide a shared report)
    assert stat.S_IMODE(path.stat().st_mode) == 0o644
    atomic_write_text(path, "two\n")
    assert path.read_text() == "two\n"
    assert sorted(p.name for p in path.parent.iterdir()) == ["report.md"]


def test_a_failed_atomic_write_keeps_the_old_file_and_removes_its_temp(tmp_path):
    path = tmp_path / "index.json"
    atomic_write_text(path, "old")

    def fail(f):
        f.write(b"half of the new")
        raise RuntimeError("killed")

    with pytest.raises(RuntimeError):
        atomic_write_bytes(path, fail)
    assert path.read_text() == "old" and sorted(tmp_path.iterdir()) == [path]


def test_stale_temp_files_of_a_killed_writer_are_removed(tmp_path):
    kept = atomic_write_text(tmp_path / "a.json", "{}")
    stale = tmp_path / ".a.json.0123456789ab.tmp"
    stale.write_text("torn")
    assert remove_stale_temp_files(tmp_path) == [stale]
    assert sorted(tmp_path.iterdir()) == [kept]


def test_file_sha256_is_the_digest_of_the_bytes_and_follows_changes(tmp_path):
    path = tmp_path / "captions.txt"
    path.write_bytes(b"a dog runs\n")
    assert file_sha256(path) == hashlib.sha256(b"a dog runs\n").hexdigest()
    path.write_bytes(b"a cat sits on a mat\n")  # another size: not the memoised digest
    assert file_sha256(path) == hashlib.sha256(b"a cat sits on a mat\n").hexdigest()


@pytest.mark.parametrize(
    ("value", "message"),
    [
        (np.zeros(4), r"image embeddings: expected a 2-D array \(rows x dims\), got shape \(4,\)"),
        (np.zeros((0, 3)), r"image embeddings: expected at least 1 row\(s\), got shape \(0, 3\)"),
        (np.array([["a", "b"]]), "image embeddings: expected real numbers, got dtype <U1"),
        (np.array([[1.0, np.nan]]), "image embeddings: holds NaN or infinite values"),
    ],
)
def test_embedding_checks_name_what_is_wrong(value, message):
    with pytest.raises(ValueError, match=message):
        as_numpy(value, "image embeddings", min_rows=1)


def test_embedding_checks_keep_the_values_and_dtype():
    x = torch.arange(6, dtype=torch.float32).reshape(3, 2)
    out = as_numpy(x, "x")
    assert out.dtype == np.float32 and np.array_equal(out, x.numpy())
    assert as_numpy(np.zeros((0, 2)), "x").shape == (0, 2)  # min_rows defaults to 0


def test_metrics_and_plots_apply_the_same_checks():
    from itmatch.evaluation.invariance import centroid_distance
    from itmatch.evaluation.plots import tsne_coordinates

    bad = np.array([[0.0, np.inf], [1.0, 0.0]])
    good = np.eye(2)
    for call in (lambda: centroid_distance(bad, good), lambda: tsne_coordinates(bad, good)):
        with pytest.raises(ValueError, match="image embeddings: holds NaN or infinite values"):
            call()


def _backends(vectors: torch.Tensor):
    from itmatch.retrieval.vectors import ExactSearch, FaissSearch

    yield ExactSearch(vectors)
    yield ExactSearch(vectors, block_rows=3)  # the blocked path
    try:
        yield FaissSearch.build(vectors, "hnsw")
    except Exception as exc:  # FAISS is an optional extra
        if "FAISS" not in str(exc):
            raise


def test_both_search_backends_check_queries_and_cap_k_alike():
    g = torch.Generator().manual_seed(0)
    vectors = torch.nn.functional.normalize(torch.randn(8, 4, generator=g), dim=1)
    queries = vectors[:2]
    for search in _backends(vectors):
        with pytest.raises(ValueError, match="query dimension 3 != index dimension 4"):
            search.search(torch.zeros(2, 3), 5)
        scores, rows = search.search(queries, 0)
        assert scores.shape == (2, 0) and rows.shape == (2, 0) and rows.dtype == torch.long
        scores, rows = search.search(queries, 50)  # k capped at the 8 vectors there are
        assert rows.shape == (2, 8)
        assert rows[:, 0].tolist() == [0, 1]  # each query's own row first (inner product 1)
        expected = torch.sort(queries @ vectors.T, dim=1, descending=True).values
        assert torch.allclose(scores, expected, atol=1e-5)


def test_score_embeddings_is_recall_plus_invariance():
    from itmatch.evaluation.invariance import invariance_metrics
    from itmatch.evaluation.recall import evaluate_embeddings
    from itmatch.evaluation.runs import score_embeddings

    g = torch.Generator().manual_seed(1)
    img = torch.nn.functional.normalize(torch.randn(50, 8, generator=g), dim=1)
    txt = torch.nn.functional.normalize(img.repeat_interleave(5, 0) + 0.5 * torch.randn(250, 8, generator=g), dim=1)
    recall = evaluate_embeddings(img, txt, protocol="5fold")
    both = score_embeddings(img, txt, protocol="5fold", seed=3)
    assert both == {**recall, **invariance_metrics(img, txt, seed=3)}
    scalars = score_embeddings(img, txt, protocol="5fold", seed=3, folds=False, invariance=False)
    assert scalars == {k: v for k, v in recall.items() if k != "folds"}
