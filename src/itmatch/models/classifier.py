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
    """MLP that reads one embedding and predicts image (logit > 0) or text (logit < 0).

    ``hidden`` lists the hidden widths (``[]``: a linear classifier). ``members`` > 1 makes an
    ensemble of independently initialised MLPs of that shape: ``forward`` returns their mean
    logit, ``forward(emb, all_members=True)`` every member's logit (rows x members), which the
    adversarial step trains and fights member by member.
    """

    IMAGE = 1.0  # the label of an image embedding (logit > 0)
    TEXT = 0.0

    def __init__(self, embed_dim: int, hidden: Sequence[int] | None = None, dropout: float = 0.0, members: int = 1):
        super().__init__()
        if members < 1:
            raise ValueError(f"members must be >= 1, got {members}")
        self.hidden = list(hidden) if hidden is not None else [embed_dim // 2, embed_dim // 4]
        self.net = self._mlp(embed_dim, self.hidden, dropout)
        # Member 0 stays at ``net`` so that one-member checkpoints keep their parameter names.
        self.others = nn.ModuleList(self._mlp(embed_dim, self.hidden, dropout) for _ in range(members - 1))

    @staticmethod
    def _mlp(embed_dim: int, hidden: Sequence[int], dropout: float) -> nn.Sequential:
        layers: list[nn.Module] = []
        width = embed_dim
        for h in hidden:
            layers += [nn.Linear(width, h), nn.ReLU(inplace=True)]
            if dropout > 0:
                layers.append(nn.Dropout(dropout))
            width = h
        layers.append(nn.Linear(width, 1))
        return nn.Sequential(*layers)

    @property
    def members(self) -> int:
        return 1 + len(self.others)

    def reset_parameters(self) -> None:
        """Draw fresh weights for every member (torch's default initialisation, from the global RNG)."""
        for module in self.modules():
            if isinstance(module, nn.Linear):
                module.reset_parameters()

    def forward(self, emb: torch.Tensor, all_members: bool = False) -> torch.Tensor:
        logits = torch.cat([self.net(emb)] + [m(emb) for m in self.others], dim=-1)  # rows x members
        if all_members:
            return logits
        return logits.mean(dim=-1)
