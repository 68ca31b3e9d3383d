"""The modality classifier D and the gradient-reversal layer."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn


class _GradReverse(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x: torch.Tensor, lambd: float) -> torch.Tensor:  # type: ignore[override]
        ctx.lambd = lambd
        return x.view_as(x)

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> tuple[torch.Tensor, None]:  # type: ignore[override]
        return -ctx.lambd * grad, None


def grad_reverse(x: torch.Tensor, lambd: float = 1.0) -> torch.Tensor:
    """Identity in the forward pass; multiplies the gradient by ``-lambd`` in the backward pass."""
    return _GradReverse.apply(x, float(lambd))


class ModalityClassifier(nn.Module):
    """MLP that reads one embedding and predicts image (logit > 0) or text (logit < 0)."""

    IMAGE = 1.0
    TEXT = 0.0

    def __init__(self, embed_dim: int, hidden: Sequence[int] | None = None, dropout: float = 0.0):
        super().__init__()
        hidden = list(hidden) if hidden is not None else [embed_dim // 2, embed_dim // 4]
        layers: list[nn.Module] = []
        width = embed_dim
        for h in hidden:
            layers += [nn.Linear(width, h), nn.ReLU(inplace=True)]
            if dropout > 0:
                layers.append(nn.Dropout(dropout))
            width = h
        layers.append(nn.Linear(width, 1))
        self.net = nn.Sequential(*layers)

    def forward(self, emb: torch.Tensor) -> torch.Tensor:
        return self.net(emb).squeeze(-1)
