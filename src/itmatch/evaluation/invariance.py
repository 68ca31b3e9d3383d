"""How separable the two modalities are in the joint space (docs/design.md, "Modality-invariance, measured").

Three numbers computed on held-out embeddings (image embeddings N x d, text embeddings M x d,
torch tensors or numpy arrays; M need not equal N):

* :func:`probe_accuracy` - accuracy (%) of a *fresh* linear probe that tells image from text
  embeddings, trained on one half and tested on the other; 50 = indistinguishable.
* :func:`centroid_distance` - Euclidean distance between the two modality means (the "modality gap").
* :func:`mmd` - unbiased squared maximum mean discrepancy with an RBF kernel of a fixed
  bandwidth (:data:`MMD_BANDWIDTH`), so that every model, epoch and table shares one kernel scale.

All are seeded and deterministic for a given seed. scikit-learn is imported only when the probe runs.
"""

from __future__ import annotations

import warnings

import numpy as np
import torch

from itmatch.evaluation.arrays import ArrayLike, as_numpy

DEFAULT_PROBE_SAMPLES = 5000  # per modality; bounds the probe's cost on large test sets
DEFAULT_MMD_SAMPLES = 1000  # per modality; the kernel matrices are (2n)^2
# The RBF bandwidth sigma of every reported MMD. Fixed rather than chosen per call (a median
# heuristic), because a per-call choice puts two models compared in one table on different kernel
# scales, and their MMDs then do not compare. itmatch embeddings are L2-normalised, so pairwise
# distances lie in [0, 2]; sigma = 1 sits in the middle of that range.
MMD_BANDWIDTH = 1.0


def _pair(img: ArrayLike, txt: ArrayLike, min_rows: int) -> tuple[np.ndarray, np.ndarray]:
    a = as_numpy(img, "image embeddings")
    b = as_numpy(txt, "text embeddings")
    if a.shape[1] != b.shape[1]:
        raise ValueError(f"image and text embeddings differ in dimension: {a.shape} vs {b.shape}")
    if len(a) < min_rows or len(b) < min_rows:
        raise ValueError(
            f"need at least {min_rows} embeddings of each modality, got {len(a)} images and {len(b)} texts"
        )
    return a, b


def _subsample(x: np.ndarray, n: int, rng: np.random.Generator) -> np.ndarray:
    if len(x) <= n:
        return x
    return x[np.sort(rng.choice(len(x), size=n, replace=False))]


def probe_accuracy(
    img: ArrayLike, txt: ArrayLike, seed: int = 0, *, max_samples: int | None = DEFAULT_PROBE_SAMPLES
) -> float:
    """Test accuracy (%) of a fresh logistic-regression probe predicting the modality.

    Balanced: the larger modality is randomly subsampled to the size of the smaller (and both to
    at most ``max_samples``), so chance is exactly 50%. Each modality is shuffled and split in
    half; the probe (scikit-learn ``LogisticRegression``, L2 penalty, C = 1, lbfgs) is fit on the
    first halves and scored on the second halves. 50 = invariant, 100 = separable.

    The probe sees the embeddings as given, without standardisation: on L2-normalised embeddings
    (as itmatch produces) C = 1 is a strong enough penalty that a d = 1024 probe trained on a few
    hundred points generalises instead of memorising; standardising first made it markedly worse
    at detecting a shift along one direction.
    """
    a, b = _pair(img, txt, min_rows=4)
    rng = np.random.default_rng(seed)
    n = min(len(a), len(b)) if max_samples is None else min(len(a), len(b), max_samples)
    a = rng.permutation(_subsample(a, n, rng))
    b = rng.permutation(_subsample(b, n, rng))
    half = n // 2
    x_train = np.concatenate([a[:half], b[:half]]).astype(np.float64)
    x_test = np.concatenate([a[half : 2 * half], b[half : 2 * half]]).astype(np.float64)
    y = np.concatenate([np.ones(half), np.zeros(half)])

    from sklearn.exceptions import ConvergenceWarning
    from sklearn.linear_model import LogisticRegression

    probe = LogisticRegression(C=1.0, max_iter=1000)
    with warnings.catch_warnings():
        # the library prints nothing; an unconverged probe after 1000 lbfgs steps is still a probe
        warnings.simplefilter("ignore", ConvergenceWarning)
        probe.fit(x_train, y)
    return 100.0 * float(np.mean(probe.predict(x_test) == y))


def centroid_distance(img: ArrayLike, txt: ArrayLike) -> float:
    """Euclidean distance between the mean image embedding and the mean text embedding."""
    a, b = _pair(img, txt, min_rows=1)
    return float(np.linalg.norm(a.mean(axis=0, dtype=np.float64) - b.mean(axis=0, dtype=np.float64)))


def mmd(
    img: ArrayLike,
    txt: ArrayLike,
    *,
    max_samples: int | None = DEFAULT_MMD_SAMPLES,
    bandwidth: float | None = MMD_BANDWIDTH,
    seed: int = 0,
) -> float:
    """Unbiased MMD^2 between the modalities with the kernel ``exp(-|x - y|^2 / (2 sigma^2))``.

    ``sigma`` (``bandwidth``) defaults to the fixed :data:`MMD_BANDWIDTH`, the same for every call,
    so MMDs of different models compare. ``bandwidth=None`` uses the median heuristic instead
    (the median Euclidean distance between distinct points of the pooled, subsampled sample):
    chosen per call, so not comparable across calls. Each modality is randomly
    subsampled (seeded) to at most ``max_samples`` rows. The unbiased estimate leaves out the
    kernel diagonals, so it is ~0 (and may be slightly negative) for identical distributions.
    """
    a, b = _pair(img, txt, min_rows=2)
    rng = np.random.default_rng(seed)
    if max_samples is not None:
        a, b = _subsample(a, max_samples, rng), _subsample(b, max_samples, rng)
    x = torch.from_numpy(np.asarray(a, dtype=np.float64))
    y = torch.from_numpy(np.asarray(b, dtype=np.float64))
    pooled = torch.cat([x, y])
    d2 = torch.cdist(pooled, pooled).square_()
    n, m = len(x), len(y)
    if bandwidth is None:
        off_diag = d2[~torch.eye(n + m, dtype=torch.bool)]
        sigma2 = float(off_diag.median())
        if sigma2 <= 0.0:
            return 0.0  # every point identical: no discrepancy to measure
    else:
        if bandwidth <= 0:
            raise ValueError(f"bandwidth must be > 0, got {bandwidth}")
        sigma2 = bandwidth**2
    k = torch.exp(-d2 / (2.0 * sigma2))
    kxx, kyy, kxy = k[:n, :n], k[n:, n:], k[:n, n:]
    term_x = (kxx.sum() - kxx.diagonal().sum()) / (n * (n - 1))
    term_y = (kyy.sum() - kyy.diagonal().sum()) / (m * (m - 1))
    return float(term_x + term_y - 2.0 * kxy.mean())


def invariance_metrics(img: ArrayLike, txt: ArrayLike, seed: int = 0) -> dict[str, float]:
    """``{"probe_acc": %, "centroid_dist": ..., "mmd": ..., "mmd_bandwidth": sigma}`` for held-out
    embeddings (see module doc); ``mmd_bandwidth`` says which kernel the MMD used."""
    return {
        "probe_acc": probe_accuracy(img, txt, seed=seed),
        "centroid_dist": centroid_distance(img, txt),
        "mmd": mmd(img, txt, seed=seed, bandwidth=MMD_BANDWIDTH),
        "mmd_bandwidth": MMD_BANDWIDTH,
    }
