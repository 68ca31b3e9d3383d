"""Modality-alignment objectives beyond the gradient-reversed classifier (issue 11).

Non-adversarial penalties on a batch of image embeddings ``x`` (N x d) and text embeddings ``y``
(M x d; for :func:`alignment_loss` the rows are pairs, M = N):

* :func:`mmd_penalty` - unbiased squared MMD with an RBF kernel of a fixed bandwidth;
* :func:`coral_penalty` - CORAL: squared Frobenius distance of the two covariance matrices / (4 d^2);
* :func:`centroid_penalty` - squared distance between the two modality means;
* :func:`alignment_loss`, :func:`uniformity_loss` - Wang & Isola (ICML 2020): mean distance^alpha
  of positive pairs, and the log of the mean Gaussian potential between points of one modality.

Adversaries:

* :func:`member_classifier_loss` - the classifier's cross-entropy, label smoothing and an
  ensemble of classifiers (logits N x K) included;
* :func:`critic_loss` and :func:`gradient_penalty` - the Wasserstein critic (WGAN-GP, Gulrajani et
  al. 2017) that replaces the classifier in adversarial mode ``wgan``.

All are means over the batch (the step scales them by the batch size, see itmatch.training.step).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from itmatch.models.classifier import ModalityClassifier

ALIGNMENT_KINDS = ("mmd", "coral", "centroid", "align_uniform")


def mmd_penalty(x: torch.Tensor, y: torch.Tensor, bandwidth: float = 1.0) -> torch.Tensor:
    """Unbiased MMD^2 between the rows of ``x`` and ``y`` with ``exp(-|a - b|^2 / (2 sigma^2))``."""
    if bandwidth <= 0:
        raise ValueError(f"bandwidth must be > 0, got {bandwidth}")
    n, m = x.size(0), y.size(0)
    if n < 2 or m < 2:
        raise ValueError(f"MMD needs at least 2 rows per modality, got {n} and {m}")
    gamma = 1.0 / (2.0 * bandwidth**2)

    def kernel(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        # |a - b|^2 = |a|^2 + |b|^2 - 2 a.b (no sqrt: cdist's gradient is NaN at distance 0)
        d2 = (a.square().sum(1, keepdim=True) + b.square().sum(1) - 2.0 * a @ b.t()).clamp(min=0)
        return torch.exp(-gamma * d2)

    kxx, kyy, kxy = kernel(x, x), kernel(y, y), kernel(x, y)
    term_x = (kxx.sum() - kxx.diagonal().sum()) / (n * (n - 1))
    term_y = (kyy.sum() - kyy.diagonal().sum()) / (m * (m - 1))
    return term_x + term_y - 2.0 * kxy.mean()


def _covariance(x: torch.Tensor) -> torch.Tensor:
    centred = x - x.mean(dim=0, keepdim=True)
    return centred.t() @ centred / (x.size(0) - 1)


def coral_penalty(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """CORAL (Sun & Saenko 2016): ``|C_x - C_y|_F^2 / (4 d^2)``, C the unbiased covariances."""
    if x.size(0) < 2 or y.size(0) < 2:
        raise ValueError(f"CORAL needs at least 2 rows per modality, got {x.size(0)} and {y.size(0)}")
    d = x.size(1)
    return (_covariance(x) - _covariance(y)).square().sum() / (4.0 * d * d)


def centroid_penalty(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Squared Euclidean distance between the mean image and the mean text embedding."""
    return (x.mean(dim=0) - y.mean(dim=0)).square().sum()


def alignment_loss(x: torch.Tensor, y: torch.Tensor, alpha: float = 2.0) -> torch.Tensor:
    """Wang & Isola's alignment: mean ``|x_i - y_i|^alpha`` over the positive pairs (rows i)."""
    if x.shape != y.shape:
        raise ValueError(f"alignment pairs row i of x with row i of y; got shapes {tuple(x.shape)} and {tuple(y.shape)}")
    return (x - y).norm(dim=1).pow(alpha).mean()


def uniformity_loss(x: torch.Tensor, t: float = 2.0) -> torch.Tensor:
    """Wang & Isola's uniformity: ``log mean_{i != j} exp(-t |x_i - x_j|^2)``."""
    n = x.size(0)
    if n < 2:
        raise ValueError(f"uniformity needs at least 2 rows, got {n}")
    d2 = (x.square().sum(1, keepdim=True) + x.square().sum(1) - 2.0 * x @ x.t()).clamp(min=0)
    off = ~torch.eye(n, dtype=torch.bool, device=x.device)
    return torch.logsumexp(-t * d2[off], dim=0) - torch.log(torch.tensor(float(n * (n - 1)), dtype=x.dtype, device=x.device))


def align_uniform_penalty(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Alignment of the pairs plus the mean uniformity of the two modalities (alpha = 2, t = 2)."""
    return alignment_loss(x, y) + 0.5 * (uniformity_loss(x) + uniformity_loss(y))


def alignment_penalty(kind: str, x: torch.Tensor, y: torch.Tensor, bandwidth: float = 1.0) -> torch.Tensor:
    """The penalty named ``kind`` (one of :data:`ALIGNMENT_KINDS`)."""
    if kind == "mmd":
        return mmd_penalty(x, y, bandwidth)
    if kind == "coral":
        return coral_penalty(x, y)
    if kind == "centroid":
        return centroid_penalty(x, y)
    if kind == "align_uniform":
        return align_uniform_penalty(x, y)
    raise ValueError(f"unknown alignment penalty {kind!r}; known: {list(ALIGNMENT_KINDS)}")


def smoothed_labels(labels: torch.Tensor, smoothing: float) -> torch.Tensor:
    """Binary label smoothing: 1 -> 1 - s/2, 0 -> s/2 (s = 1 would be the uniform target)."""
    if not 0.0 <= smoothing < 1.0:
        raise ValueError(f"label smoothing must be in [0, 1), got {smoothing}")
    return labels * (1.0 - smoothing) + 0.5 * smoothing


def member_classifier_loss(logits: torch.Tensor, labels: torch.Tensor, smoothing: float = 0.0) -> torch.Tensor:
    """Binary cross-entropy summed over the embeddings and averaged over ensemble members.

    ``logits`` is (rows,) for one classifier or (rows, K) for an ensemble of K; ``labels`` (rows,).
    With one member and no smoothing this is :func:`itmatch.losses.classifier_loss`.
    """
    target = smoothed_labels(labels, smoothing) if smoothing else labels
    if logits.dim() == 2:
        target = target.unsqueeze(1).expand_as(logits)
        return F.binary_cross_entropy_with_logits(logits, target, reduction="sum") / logits.size(1)
    return F.binary_cross_entropy_with_logits(logits, target, reduction="sum")


def critic_loss(critic_images: torch.Tensor, critic_texts: torch.Tensor) -> torch.Tensor:
    """What the Wasserstein critic minimises: ``mean f(text) - mean f(image)`` (it scores images
    high, texts low); the encoders minimise its negative, the estimated W1 distance."""
    return critic_texts.mean() - critic_images.mean()


def gradient_penalty(
    critic: torch.nn.Module, x: torch.Tensor, y: torch.Tensor, alpha: torch.Tensor | None = None
) -> torch.Tensor:
    """WGAN-GP: ``mean (|grad f(x_hat)| - 1)^2`` at ``x_hat = a x + (1 - a) y``, one ``a ~ U(0, 1)``
    per row (rows of ``x`` and ``y`` paired; ``alpha`` (rows,) may be given, for tests). The graph
    is kept, so the penalty trains the critic."""
    if x.shape != y.shape:
        raise ValueError(f"gradient penalty interpolates row i of x and y; got shapes {tuple(x.shape)} and {tuple(y.shape)}")
    if alpha is None:
        alpha = torch.rand(x.size(0), device=x.device, dtype=x.dtype)
    a = alpha.view(-1, 1)
    x_hat = (a * x.detach() + (1.0 - a) * y.detach()).requires_grad_(True)
    scores = critic(x_hat)
    (grad,) = torch.autograd.grad(scores.sum(), x_hat, create_graph=True)
    return (grad.norm(dim=1) - 1.0).square().mean()


def modality_labels(image_emb: torch.Tensor, text_emb: torch.Tensor) -> torch.Tensor:
    """The labels of ``cat([image_emb, text_emb])``: :attr:`ModalityClassifier.IMAGE` then ``TEXT``."""
    return torch.cat([
        image_emb.new_full((image_emb.size(0),), ModalityClassifier.IMAGE),
        text_emb.new_full((text_emb.size(0),), ModalityClassifier.TEXT),
    ])  # fmt: skip
