"""Image and text encoders into the joint space (L2-normalised)."""

from __future__ import annotations

import math

import torch
from torch import nn
from torch.nn.utils.rnn import pack_padded_sequence


def l2_normalize(x: torch.Tensor, eps: float = 1e-8) -> torch.Tensor:
    return x / x.norm(dim=-1, keepdim=True).clamp_min(eps)


class ImageEncoder(nn.Module):
    """Global CNN feature -> linear projection -> L2 norm.

    With ``backbone=None`` the input is a precomputed feature (N x feature_dim); with a backbone
    module (see :mod:`itmatch.features.backbones`) the input is a normalised image batch and the
    backbone is part of the model (fine-tuned in stages that unfreeze it). A model with a
    backbone also reads that backbone's own precomputed features (a 2-D input skips it): the
    trainer feeds cached features while the backbone is frozen and still pretrained.
    """

    def __init__(self, feature_dim: int, embed_dim: int, backbone: nn.Module | None = None):
        super().__init__()
        self.backbone = backbone
        self.fc = nn.Linear(feature_dim, embed_dim)
        # VSE++ init: uniform Xavier on the projection, zero bias.
        r = math.sqrt(6.0) / math.sqrt(feature_dim + embed_dim)
        nn.init.uniform_(self.fc.weight, -r, r)
        nn.init.zeros_(self.fc.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.backbone is not None and x.dim() != 2:
            x = self.backbone(x)
        return l2_normalize(self.fc(x))


class GRUTextEncoder(nn.Module):
    """Word embedding (300-d) -> GRU (hidden = joint dim) -> last valid state -> L2 norm."""

    def __init__(self, vocab_size: int, word_dim: int = 300, embed_dim: int = 1024, num_layers: int = 1):
        super().__init__()
        self.embed = nn.Embedding(vocab_size, word_dim, padding_idx=0)
        self.gru = nn.GRU(word_dim, embed_dim, num_layers=num_layers, batch_first=True)
        nn.init.uniform_(self.embed.weight, -0.1, 0.1)

    def forward(self, tokens: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        """``tokens``: B x T padded ids; ``lengths``: B valid lengths (any order)."""
        x = self.embed(tokens)
        packed = pack_padded_sequence(x, lengths.cpu(), batch_first=True, enforce_sorted=False)
        _, h = self.gru(packed)  # h: layers x B x H, already in the input order
        return l2_normalize(h[-1])
