"""The ranking identity behind `evaluate --center`: a candidate-side shift leaves every ranking
unchanged, a query-side shift reorders candidates by the c . t term; centering itself."""

from __future__ import annotations

import torch

from itmatch.evaluation.centering import center_modalities
from itmatch.evaluation.recall import evaluate_embeddings


def ranking(scores: torch.Tensor) -> torch.Tensor:
    return scores.argsort(dim=1, descending=True, stable=True)


def embeddings(seed: int = 0, n: int = 40, d: int = 8):
    g = torch.Generator().manual_seed(seed)
    im = torch.nn.functional.normalize(torch.randn(n, d, generator=g, dtype=torch.float64), dim=1)
    tx = torch.nn.functional.normalize(
        im.repeat_interleave(5, 0) + 0.8 * torch.randn(5 * n, d, generator=g, dtype=torch.float64), dim=1
    )
    c = 0.7 * torch.randn(d, generator=g, dtype=torch.float64)
    return im, tx, c


def test_shifting_every_candidate_by_one_vector_changes_no_ranking():
    im, tx, c = embeddings()
    before = im @ tx.T
    after = im @ (tx + c).T  # every text candidate moved by c, not renormalised
    torch.testing.assert_close(
        after - before, (im @ c).unsqueeze(1).expand_as(before)
    )  # + q . c per query row
    assert torch.equal(ranking(after), ranking(before))
    # and the same for texts querying images
    assert torch.equal(ranking(tx @ (im + c).T), ranking(tx @ im.T))


def test_shifting_the_query_reorders_candidates_by_the_c_dot_t_term():
    im, tx, c = embeddings(seed=1)
    before = im @ tx.T
    after = (im - c) @ tx.T
    torch.testing.assert_close(after, before - (tx @ c).unsqueeze(0))  # exactly the -c . t term
    assert not torch.equal(ranking(after), ranking(before))  # it does reorder
    assert torch.equal(ranking(after), ranking(before - (tx @ c).unsqueeze(0)))


def test_center_modalities_removes_each_mean_and_renormalises():
    im, tx, c = embeddings(seed=2)
    im_c, tx_c = center_modalities(im + c, tx - c)  # a gap of 2c between the modalities
    assert im_c.dtype == torch.float64
    torch.testing.assert_close(im_c.norm(dim=1), torch.ones(len(im), dtype=torch.float64))
    torch.testing.assert_close(tx_c.norm(dim=1), torch.ones(len(tx), dtype=torch.float64))
    # direction of each centred vector = the vector minus its modality's mean (slow, per row)
    mean_im = (im + c).mean(0)
    for i in range(0, len(im), 7):
        expected = (im[i] + c - mean_im) / (im[i] + c - mean_im).norm()
        torch.testing.assert_close(im_c[i], expected)
    # the added gap is gone: centring the shifted and the unshifted data gives the same vectors
    im_0, tx_0 = center_modalities(im, tx)
    torch.testing.assert_close(im_c, im_0)
    torch.testing.assert_close(tx_c, tx_0)
    assert (
        evaluate_embeddings(im_c, tx_c, protocol="all")["rsum"]
        == evaluate_embeddings(im_0, tx_0, protocol="all")["rsum"]
    )
