"""Recall@K protocol: the fast blocked implementation against slow obvious ones written here."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from itmatch.evaluation.recall import (
    METRIC_KEYS,
    RECALL_KEYS,
    evaluate_embeddings,
    evaluate_similarity,
    metrics_from_ranks,
    ranks_from_embeddings,
    ranks_from_similarity,
    resolve_protocol,
    similarity_matrix,
)

# ---------------------------------------------------------------------------------------------
# Slow references
# ---------------------------------------------------------------------------------------------


def vsepp_ranks(sims: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """VSE++ ``i2t``/``t2i`` verbatim in spirit: full argsort per query, position of the positive.

    Only meaningful on tie-free scores (argsort breaks ties arbitrarily)."""
    n = sims.shape[0]
    i2t = np.zeros(n, dtype=np.int64)
    for i in range(n):
        inds = np.argsort(sims[i])[::-1]
        i2t[i] = min(np.where(inds == c)[0][0] for c in range(5 * i, 5 * i + 5))
    t2i = np.zeros(5 * n, dtype=np.int64)
    for j in range(5 * n):
        inds = np.argsort(sims[:, j])[::-1]
        t2i[j] = np.where(inds == j // 5)[0][0]
    return i2t, t2i


def tie_counting_ranks(sims: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Ties with negatives against the query, counted one candidate at a time.

    The rank of positive p is the number of *negatives* (other images' captions / other images)
    scoring >= score(p); an image's rank is the best (smallest) over its 5 captions."""
    n = sims.shape[0]
    i2t = np.zeros(n, dtype=np.int64)
    for i in range(n):
        best = None
        own = range(5 * i, 5 * i + 5)
        for p in own:
            ahead = sum(1 for c in range(5 * n) if c not in own and sims[i, c] >= sims[i, p])
            best = ahead if best is None else min(best, ahead)
        i2t[i] = best
    t2i = np.zeros(5 * n, dtype=np.int64)
    for j in range(5 * n):
        p = j // 5
        t2i[j] = sum(1 for k in range(n) if k != p and sims[k, j] >= sims[p, j])
    return i2t, t2i


def argsort_tie_ranks(sims: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The argsort version with ties made explicit: sort each query's candidates by score,
    descending, and among equal scores put the negatives first (ties count against the query);
    the rank is the position of the first positive in that order."""
    n = sims.shape[0]
    i2t = np.zeros(n, dtype=np.int64)
    for i in range(n):
        is_pos = np.zeros(5 * n, dtype=np.int64)
        is_pos[5 * i : 5 * i + 5] = 1
        order = np.lexsort((is_pos, -sims[i]))  # last key first: score desc, then negatives
        i2t[i] = int(np.flatnonzero(is_pos[order])[0])
    t2i = np.zeros(5 * n, dtype=np.int64)
    for j in range(5 * n):
        is_pos = (np.arange(n) == j // 5).astype(np.int64)
        order = np.lexsort((is_pos, -sims[:, j]))
        t2i[j] = int(np.flatnonzero(is_pos[order])[0])
    return i2t, t2i


def random_embeddings(n: int, d: int, seed: int, dtype=torch.float32, signal: float = 1.0):
    g = torch.Generator().manual_seed(seed)
    img = torch.randn(n, d, generator=g, dtype=torch.float64)
    txt = img.repeat_interleave(5, dim=0) * signal + torch.randn(5 * n, d, generator=g, dtype=torch.float64)
    img = torch.nn.functional.normalize(img, dim=1).to(dtype)
    txt = torch.nn.functional.normalize(txt, dim=1).to(dtype)
    return img, txt


def assert_ranks_equal(got, want) -> None:
    np.testing.assert_array_equal(got[0], want[0])
    np.testing.assert_array_equal(got[1], want[1])


# ---------------------------------------------------------------------------------------------
# Ranks
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("chunk_size", [1, 4, 7, 23, 1000])
def test_tie_free_scores_match_vsepp_argsort(chunk_size):
    rng = np.random.default_rng(0)
    sims = rng.standard_normal((23, 115))
    want = vsepp_ranks(sims)
    assert_ranks_equal(tie_counting_ranks(sims), want)  # the two references agree without ties
    assert_ranks_equal(ranks_from_similarity(sims, chunk_size=chunk_size), want)
    assert_ranks_equal(ranks_from_similarity(torch.from_numpy(sims).float(), chunk_size=chunk_size), want)


@pytest.mark.parametrize("chunk_size", [3, 10, 1000])
@pytest.mark.parametrize("levels", [2, 5, 40])
def test_quantised_scores_count_ties_against_the_query(chunk_size, levels):
    rng = np.random.default_rng(levels)
    sims = np.floor(rng.random((20, 100)) * levels) / levels  # many exact ties
    want = tie_counting_ranks(sims)
    assert_ranks_equal(ranks_from_similarity(sims, chunk_size=chunk_size), want)
    assert_ranks_equal(ranks_from_similarity(sims.astype(np.float32), chunk_size=chunk_size), want)
    assert_ranks_equal(ranks_from_similarity((sims * levels).astype(np.int64), chunk_size=chunk_size), want)


@pytest.mark.parametrize("chunk_size", [3, 7, 1000])
@pytest.mark.parametrize("levels", [2, 3, 10])
def test_duplicate_captions_and_coarse_scores_match_the_argsort_reference(chunk_size, levels):
    rng = np.random.default_rng(100 + levels)
    n = 17
    g = torch.Generator().manual_seed(levels)
    img = torch.nn.functional.normalize(torch.randn(n, 6, generator=g, dtype=torch.float64), dim=1)
    txt = img.repeat_interleave(5, dim=0) + 0.8 * torch.randn(5 * n, 6, generator=g, dtype=torch.float64)
    # duplicate captions: in about half of the images, caption 1 (and for some also 3) is caption 0
    for i in range(n):
        if rng.random() < 0.5:
            txt[5 * i + 1] = txt[5 * i]
            if rng.random() < 0.5:
                txt[5 * i + 3] = txt[5 * i]
    txt = torch.nn.functional.normalize(txt, dim=1)
    sims = (img @ txt.T).numpy()
    coarse = np.round(sims * levels) / levels  # few distinct values: ties everywhere
    for scores in (sims, coarse):
        want = argsort_tie_ranks(scores)
        assert_ranks_equal(tie_counting_ranks(scores), want)  # the two references agree
        assert_ranks_equal(ranks_from_similarity(scores, chunk_size=chunk_size), want)
    # on the embeddings themselves (exact dot products of the duplicates tie bit for bit)
    assert_ranks_equal(ranks_from_embeddings(img, txt, chunk_size=chunk_size), argsort_tie_ranks(sims))
    # the duplicates do tie with the best positive somewhere, or the test would not test it
    dup_rows = [i for i in range(n) if (coarse[i, 5 * i : 5 * i + 5] == coarse[i, 5 * i : 5 * i + 5].max()).sum() > 1]
    assert len(dup_rows) >= 3


def test_own_captions_tying_with_the_best_cost_no_rank():
    # image 0's captions 0 and 1 are duplicates scoring 0.9; nothing else reaches 0.9 -> rank 0
    # (an older version counted caption 1 against it: rank 1). Image 1's best (0.7, caption 5)
    # ties with caption 2, a negative: rank 1.
    sims = np.zeros((2, 10))
    sims[0, :5] = [0.9, 0.9, 0.3, 0.1, 0.1]
    sims[0, 5:] = [0.2, 0.2, 0.2, 0.2, 0.2]
    sims[1, :5] = [0.0, 0.0, 0.7, 0.0, 0.0]
    sims[1, 5:] = [0.7, 0.7, 0.7, 0.1, 0.1]
    i2t, _ = ranks_from_similarity(sims)
    np.testing.assert_array_equal(i2t, [0, 1])


def test_ties_count_against_the_query_by_hand():
    # 2 images; image 0's best caption (col 0) ties with image 1's caption 5: rank 1, not 0.
    sims = np.zeros((2, 10))
    sims[0, :5] = [0.9, 0.1, 0.1, 0.1, 0.1]
    sims[0, 5:] = [0.9, 0.2, 0.2, 0.2, 0.2]
    sims[1, :5] = [0.5, 0.5, 0.0, 0.0, 0.0]
    sims[1, 5:] = [0.5, 0.6, 0.0, 0.0, 0.0]
    i2t, t2i = ranks_from_similarity(sims)
    # image 1: best positive 0.6 (col 6); nothing else >= 0.6 -> rank 0
    np.testing.assert_array_equal(i2t, [1, 0])
    # caption 0: image 0 scores 0.9, image 1 0.5 -> 0; caption 5: image 1 scores 0.5 < 0.9 -> 1;
    # captions 2-4: image 1 ties at 0.0 < 0.1 -> 0; captions 7-9: image 0 scores 0.2 > 0.0 -> 1;
    # caption 1: 0.1 < 0.5 -> 1; caption 6: 0.6 > 0.2 -> 0
    np.testing.assert_array_equal(t2i, [0, 1, 0, 0, 0, 1, 0, 1, 1, 1])


def test_all_equal_scores_give_zero_recall():
    n = 30
    metrics = evaluate_similarity(np.full((n, 5 * n), 0.25, dtype=np.float32))
    assert all(metrics[k] == 0.0 for k in RECALL_KEYS)
    assert metrics["rsum"] == 0.0
    # every negative ties with the best positive: rank 5n-5 (its own 4 other captions do not count)
    assert metrics["i2t_medr"] == metrics["i2t_meanr"] == 5 * n - 4
    assert metrics["t2i_medr"] == metrics["t2i_meanr"] == n


@pytest.mark.parametrize("d", [7, 1024])
@pytest.mark.parametrize("n, chunk_size", [(7, 1000), (130, 50), (40, 20)])
def test_collapsed_embeddings_give_zero_recall(d, n, chunk_size):
    # Identical vectors must get bit-identical scores in every block for the ties to count; with
    # MKL that needs products of >= MIN_BLOCK_ROWS rows (7 images alone would not get them).
    v = torch.nn.functional.normalize(torch.randn(d, generator=torch.Generator().manual_seed(d)), dim=0)
    img, txt = v.repeat(n, 1), v.repeat(5 * n, 1)
    i2t, t2i = ranks_from_embeddings(img, txt, chunk_size=chunk_size)
    assert (i2t == 5 * n - 5).all() and (t2i == n - 1).all()
    # half collapsed: identical images / identical captions tie in one direction only
    other_img, other_txt = random_embeddings(n, d, seed=1)
    _, t2i = ranks_from_embeddings(img, other_txt, chunk_size=chunk_size)
    assert (t2i == n - 1).all()
    i2t, _ = ranks_from_embeddings(other_img, txt, chunk_size=chunk_size)
    assert (i2t == 5 * n - 5).all()


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("chunk_size", [14, 21, 1000])  # 3 ragged blocks of 14, 2 of 21, 1 of 41
def test_embeddings_match_the_slow_reference(dtype, chunk_size):
    img, txt = random_embeddings(41, 24, seed=3, dtype=dtype, signal=0.6)
    sims = (img.double() @ txt.double().T).numpy()
    got = ranks_from_embeddings(img, txt, chunk_size=chunk_size)
    assert_ranks_equal(got, vsepp_ranks(sims))
    # the saved matrix is computed exactly as the ranks are: same ranks, any block size
    assert_ranks_equal(ranks_from_similarity(similarity_matrix(img, txt, chunk_size=chunk_size)), got)
    assert_ranks_equal(ranks_from_embeddings(img.numpy(), txt.numpy(), chunk_size=chunk_size), got)


def test_quantised_embeddings_tie_exactly():
    # small integer coordinates: every dot product is exact in float32, so ties are real ties
    g = torch.Generator().manual_seed(5)
    img = torch.randint(-2, 3, (40, 6), generator=g).float()
    txt = torch.randint(-2, 3, (200, 6), generator=g).float()
    want = tie_counting_ranks((img @ txt.T).numpy())
    for chunk_size in (7, 40):
        assert_ranks_equal(ranks_from_embeddings(img, txt, chunk_size=chunk_size), want)


def test_similarity_matrix_into_a_memmap(tmp_path):
    img, txt = random_embeddings(60, 16, seed=4)
    mm = np.lib.format.open_memmap(tmp_path / "sims.npy", mode="w+", dtype=np.float32, shape=(60, 300))
    similarity_matrix(img, txt, out=mm, chunk_size=25)
    mm.flush()
    ro = np.load(tmp_path / "sims.npy", mmap_mode="r")
    np.testing.assert_allclose(ro, (img @ txt.T).numpy(), rtol=0, atol=1e-6)
    assert evaluate_similarity(ro, chunk_size=25) == evaluate_embeddings(img, txt, chunk_size=25)
    assert evaluate_similarity(ro, "5fold", chunk_size=7) == evaluate_embeddings(
        img, txt, "5fold", chunk_size=7
    )


# ---------------------------------------------------------------------------------------------
# Metrics and protocols
# ---------------------------------------------------------------------------------------------


def test_metrics_from_ranks_definitions():
    i2t = np.array([0, 0, 4, 9, 10, 3])
    t2i = np.array([0, 1, 2, 3, 4, 5, 6, 7, 8, 9] * 3)
    m = metrics_from_ranks(i2t, t2i)
    assert list(m) == list(METRIC_KEYS)
    assert m["i2t_r1"] == pytest.approx(100 * 2 / 6)
    assert m["i2t_r5"] == pytest.approx(100 * 4 / 6)
    assert m["i2t_r10"] == pytest.approx(100 * 5 / 6)
    assert m["i2t_medr"] == 4.0  # median 3.5 -> floor 3 -> +1
    assert m["i2t_meanr"] == pytest.approx(np.mean(i2t) + 1)
    assert m["t2i_r1"] == pytest.approx(10.0) and m["t2i_r5"] == pytest.approx(50.0)
    assert m["t2i_r10"] == pytest.approx(100.0)
    assert m["t2i_medr"] == 5.0 and m["t2i_meanr"] == pytest.approx(5.5)
    assert m["rsum"] == pytest.approx(sum(m[k] for k in RECALL_KEYS))
    with pytest.raises(ValueError, match="5 captions per image"):
        metrics_from_ranks(i2t, t2i[:29])


def test_five_fold_is_the_mean_of_the_folds():
    img, txt = random_embeddings(60, 12, seed=7, signal=0.5)
    result = evaluate_embeddings(img, txt, protocol="5fold", chunk_size=5)
    folds = [evaluate_embeddings(img[12 * k : 12 * (k + 1)], txt[60 * k : 60 * (k + 1)]) for k in range(5)]
    assert result["folds"] == folds
    for key in METRIC_KEYS:
        assert result[key] == pytest.approx(np.mean([f[key] for f in folds]))
    # the summary rsum is the mean of the fold rsums AND the sum of the mean recalls (vsepp got it wrong)
    assert result["rsum"] == pytest.approx(np.mean([f["rsum"] for f in folds]))
    assert result["rsum"] == pytest.approx(sum(result[k] for k in RECALL_KEYS))
    # and the folds are not the whole: scoring all 60 at once is harder
    assert evaluate_embeddings(img, txt)["rsum"] < result["rsum"]


def test_protocol_names_and_aliases():
    img, txt = random_embeddings(20, 8, seed=8)
    everything = evaluate_embeddings(img, txt, protocol="all")
    assert "folds" not in everything and set(everything) == set(METRIC_KEYS)
    assert evaluate_embeddings(img, txt) == everything  # "all" is the default
    folds = evaluate_embeddings(img, txt, protocol=" 5Fold ")
    first_fold = evaluate_embeddings(img[:4], txt[:20], protocol="all")
    assert folds["folds"][0] == first_fold  # fold 0 is images 0..3 and their 20 captions
    assert resolve_protocol("5fold1k", 5000) == 5
    assert resolve_protocol("1k", 1000) == resolve_protocol("5k", 5000) == resolve_protocol("ALL", 7) == 1


def test_1k_and_5k_only_on_the_size_they_name():
    img, txt = random_embeddings(20, 8, seed=8)
    # a 20-image set scored under "1k" would carry a label that says 1,000 images
    with pytest.raises(ValueError, match=r"'1k' scores exactly 1,000 test images .* got 20 images: use 'all'.*'5k'.*'5fold1k'"):
        evaluate_embeddings(img, txt, protocol="1k")
    with pytest.raises(ValueError, match=r"'5K' scores exactly 5,000 test images .* got 20 images: use 'all'.*'1k'.*'5fold1k'"):
        evaluate_embeddings(img, txt, protocol="5K")
    # a 5,000-image COCO test set is not "1k"
    with pytest.raises(ValueError, match="got 5,000 images"):
        resolve_protocol("1k", 5000)
    with pytest.raises(ValueError, match="got 1,000 images"):
        resolve_protocol("5k", 1000)
    with pytest.raises(ValueError, match="1,000"):
        evaluate_similarity(np.zeros((20, 100)), protocol="1k")


def test_bad_inputs_give_clear_errors():
    img, txt = random_embeddings(12, 8, seed=9)
    with pytest.raises(ValueError, match=r"60 captions, got 59 .*\(12, 8\).*\(59, 8\)"):
        evaluate_embeddings(img, txt[:59])
    with pytest.raises(ValueError, match="divisible by 5; got 12"):
        evaluate_embeddings(img, txt, protocol="5fold")
    with pytest.raises(ValueError, match="needs 5,000 images; got 12"):
        evaluate_embeddings(img, txt, protocol="5fold1k")
    with pytest.raises(ValueError, match="unknown protocol 'coco'"):
        evaluate_embeddings(img, txt, protocol="coco")
    with pytest.raises(ValueError, match="dimensions differ"):
        evaluate_embeddings(img, txt[:, :4])
    with pytest.raises(ValueError, match="no images"):
        evaluate_embeddings(img[:0], txt[:0])
    bad = txt.clone()
    bad[7, 3] = float("nan")
    with pytest.raises(ValueError, match="image 1 and its caption 7 is nan"):
        evaluate_embeddings(img, bad)
    bad = img.clone()
    bad[11, 0] = float("inf")
    with pytest.raises(ValueError, match=r"image 11 and its caption 55 is (-?inf|nan)"):
        evaluate_embeddings(bad, txt, chunk_size=5)
    with pytest.raises(ValueError, match=r"shape \(12, 61\)"):
        evaluate_similarity(np.zeros((12, 61)))
    sims = np.zeros((12, 60))
    sims[3, 40] = np.inf
    with pytest.raises(ValueError, match="NaN or infinite"):
        evaluate_similarity(sims, chunk_size=5)
    with pytest.raises(ValueError, match="chunk_size must be >= 1"):
        evaluate_embeddings(img, txt, chunk_size=0)
