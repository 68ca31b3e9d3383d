"""Ranking losses (VSE0 / VSE++) and the modality-classifier losses."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F


def triplet_ranking_loss(
    image_emb: torch.Tensor,
    text_emb: torch.Tensor,
    margin: float = 0.2,
    max_violation: bool = False,
    image_ids: torch.Tensor | None = None,
) -> torch.Tensor:
    """Bidirectional hinge triplet loss on cosine similarity over a mini-batch.

    Row ``k`` of ``image_emb`` and row ``k`` of ``text_emb`` are a positive pair; every other
    row is a negative, except rows that show the same image (``image_ids`` equal), which are
    neither positive nor negative. With ``max_violation`` only the hardest negative of each
    query counts (VSE++); otherwise all violating negatives are summed (VSE0).

    Like VSE++ the loss is *summed* over the batch (not averaged): the published learning rates
    (2e-4) assume that, so the effective step size grows with the batch size.
    """
    scores = image_emb @ text_emb.t()
    diagonal = scores.diagonal().view(-1, 1)
    cost_text = (margin + scores - diagonal).clamp(min=0)  # image k as query, texts as candidates
    cost_image = (margin + scores - diagonal.t()).clamp(min=0)  # text k as query, images as candidates
    if image_ids is None:
        not_negative = torch.eye(scores.size(0), dtype=torch.bool, device=scores.device)
    else:
        not_negative = image_ids.view(-1, 1) == image_ids.view(1, -1)
    cost_text = cost_text.masked_fill(not_negative, 0)
    cost_image = cost_image.masked_fill(not_negative, 0)
    if max_violation:
        return cost_text.max(dim=1).values.sum() + cost_image.max(dim=0).values.sum()
    return cost_text.sum() + cost_image.sum()


def modality_logits_and_labels(
    classifier: torch.nn.Module, image_emb: torch.Tensor, text_emb: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """Classifier logits for images then texts, with labels ``ModalityClassifier.IMAGE`` (1) and ``TEXT`` (0)."""
    from itmatch.losses_alignment import modality_labels

    return classifier(torch.cat([image_emb, text_emb], dim=0)), modality_labels(image_emb, text_emb)


# The classifier losses are summed over the embeddings, like the ranking loss: one pair in the
# batch contributes two hinge terms (i2t, t2i) and two cross-entropy terms (its image and its
# text), so lambda weighs the two objectives per pair, whatever the batch size.


def classifier_loss(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Binary cross-entropy of the modality classifier, summed over the embeddings."""
    return F.binary_cross_entropy_with_logits(logits, labels, reduction="sum")


def confusion_loss(logits: torch.Tensor, labels: torch.Tensor, objective: str = "uniform") -> torch.Tensor:
    """What the encoders minimise in alternating adversarial training (summed over embeddings).

    ``uniform``: cross-entropy to 0.5 for every embedding (the classifier is maximally unsure);
    ``flip``: cross-entropy to the wrong label (the GAN generator objective).
    """
    if objective == "uniform":
        target = torch.full_like(labels, 0.5)
    elif objective == "flip":
        target = 1.0 - labels
    else:
        raise ValueError(f"unknown confusion objective {objective!r}; known: 'uniform', 'flip'")
    return F.binary_cross_entropy_with_logits(logits, target, reduction="sum")


def classifier_accuracy(logits: torch.Tensor, labels: torch.Tensor) -> float:
    return float(((logits > 0).float() == labels).float().mean()) * 100.0


def dann_lambda(progress: float, lambda_max: float, gamma: float = 10.0) -> float:
    """DANN schedule: ``lambda_max * (2 / (1 + exp(-gamma p)) - 1)`` for progress p in [0, 1]."""
    p = min(max(float(progress), 0.0), 1.0)
    return lambda_max * (2.0 / (1.0 + math.exp(-gamma * p)) - 1.0)
