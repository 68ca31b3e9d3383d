"""Chance level of the recall protocol: what a random ranking scores."""

from __future__ import annotations

import math
from collections.abc import Sequence


def chance_recall(n_images: int, ks: Sequence[int] = (1, 5, 10)) -> dict[str, float]:
    """Expected Recall@K (%) of a random ranking of ``n_images`` images and their 5N captions.

    i2t: an image's rank is the best of its 5 captions among 5N, so R@K = 1 - C(5N-5, K) / C(5N, K);
    t2i: one right image among N, so R@K = K / N. ``rsum`` is their sum.
    """
    if n_images < 1:
        raise ValueError(f"n_images must be >= 1, got {n_images}")
    n_caps = 5 * n_images
    out: dict[str, float] = {}
    for k in ks:
        k_i2t = min(k, n_caps)
        miss = math.comb(n_caps - 5, k_i2t) / math.comb(n_caps, k_i2t) if n_caps - 5 >= k_i2t else 0.0
        out[f"i2t_r{k}"] = 100.0 * (1.0 - miss)
        out[f"t2i_r{k}"] = 100.0 * min(k, n_images) / n_images
    out["rsum"] = sum(out.values())
    out["probe_acc"] = 50.0
    return out
