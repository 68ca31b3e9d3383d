"""GPO (generalized pooling): the sorted weighted pool against slow loops, max / mean as special
cases, padding never counting, variable lengths."""

from __future__ import annotations

import torch

from itmatch.models.pooling import GPO, sorted_weighted_pool


def slow_pool(features: torch.Tensor, lengths: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    out = torch.zeros(features.shape[0], features.shape[2], dtype=features.dtype)
    for b in range(features.shape[0]):
        n = int(lengths[b])
        for d in range(features.shape[2]):
            values = sorted((float(v) for v in features[b, :n, d]), reverse=True)
            out[b, d] = sum(float(weights[b, k]) * values[k] for k in range(n))
    return out


def batch(seed: int = 0, b: int = 4, k: int = 7, d: int = 5):
    g = torch.Generator().manual_seed(seed)
    features = torch.randn(b, k, d, generator=g, dtype=torch.float64)
    lengths = torch.tensor([7, 3, 1, 5][:b])
    return features, lengths


def test_one_hot_first_rank_is_max_pooling_and_uniform_weights_are_mean_pooling():
    features, lengths = batch()
    features[1, 3:] = 100.0  # padding larger than every real value must still not count
    k = features.shape[1]
    first = torch.zeros(len(lengths), k, dtype=torch.float64)
    first[:, 0] = 1.0
    expected_max = torch.stack([features[b, : int(n)].max(dim=0).values for b, n in enumerate(lengths)])
    torch.testing.assert_close(sorted_weighted_pool(features, lengths, first), expected_max)
    uniform = torch.stack([(torch.arange(k) < n).double() / n for n in lengths])
    expected_mean = torch.stack([features[b, : int(n)].mean(dim=0) for b, n in enumerate(lengths)])
    torch.testing.assert_close(sorted_weighted_pool(features, lengths, uniform), expected_mean)


def test_sorted_weighted_pool_matches_a_loop_over_dimensions():
    features, lengths = batch(seed=1)
    weights = torch.rand(
        len(lengths), features.shape[1], generator=torch.Generator().manual_seed(2), dtype=torch.float64
    )
    torch.testing.assert_close(
        sorted_weighted_pool(features, lengths, weights), slow_pool(features, lengths, weights)
    )


def test_gpo_weights_are_a_distribution_over_each_sets_own_ranks():
    torch.manual_seed(0)
    gpo = GPO()
    lengths = torch.tensor([7, 3, 1, 5])
    w = gpo.rank_weights(lengths, 7)
    torch.testing.assert_close(w.sum(dim=1), torch.ones(4))
    for b, n in enumerate(lengths):
        assert torch.all(w[b, int(n) :] == 0)
        assert torch.all(w[b, : int(n)] > 0)
    # The weight of rank k depends on the set's length (the GRU reads every rank), not on padding.
    torch.testing.assert_close(gpo.rank_weights(torch.tensor([3]), 3)[0], w[1, :3])


def test_gpo_ignores_padding_and_pools_variable_lengths_as_each_set_alone():
    torch.manual_seed(0)
    gpo = GPO().double()
    features, lengths = batch(seed=3)
    pooled = gpo(features, lengths)
    garbage = features.clone()
    for b, n in enumerate(lengths):
        garbage[b, int(n) :] = 1e6 * torch.randn_like(garbage[b, int(n) :])
    torch.testing.assert_close(gpo(garbage, lengths), pooled)
    wider = torch.cat([features, torch.full((4, 3, features.shape[2]), 7.0, dtype=torch.float64)], dim=1)
    torch.testing.assert_close(gpo(wider, lengths), pooled)
    for b, n in enumerate(lengths):
        alone = gpo(features[b : b + 1, : int(n)], lengths[b : b + 1])
        torch.testing.assert_close(alone[0], pooled[b])


def test_no_gradient_reaches_padded_positions_and_the_weight_generator_learns():
    torch.manual_seed(0)
    gpo = GPO()
    features = torch.randn(2, 6, 4, requires_grad=True)
    lengths = torch.tensor([6, 2])
    gpo(features, lengths).pow(2).sum().backward()
    assert torch.all(features.grad[1, 2:] == 0)
    assert torch.any(features.grad[1, :2] != 0)
    assert all(p.grad is not None and torch.any(p.grad != 0) for p in gpo.parameters())
