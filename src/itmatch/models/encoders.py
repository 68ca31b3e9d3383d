"""Image and text encoders into the joint space (L2-normalised).

- :class:`ImageEncoder`: one pooled CNN feature per image -> linear projection (VSE++), or that
  projection plus a small residual MLP (``head="mlp"``, VSE-infinity's head for pooled features).
- :class:`GridImageEncoder`: the CNN's last feature map as a set of grid vectors (B x C x D) ->
  every vector projected (linear + a small residual MLP) -> pooled with GPO
  (:mod:`itmatch.models.pooling`), the image side of VSE-infinity (Chen et al., CVPR 2021).
- :class:`GRUTextEncoder`: word embedding -> GRU -> its last state, or GPO over its per-token states.
"""

from __future__ import annotations

import math

import torch
from torch import nn
from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence

from itmatch.models.pooling import GPO


def l2_normalize(x: torch.Tensor, eps: float = 1e-8) -> torch.Tensor:
    return x / x.norm(dim=-1, keepdim=True).clamp_min(eps)


def residual_mlp(feature_dim: int, embed_dim: int) -> nn.Sequential:
    """VSE-infinity's projection MLP (D -> d/2 -> d, BatchNorm and ReLU between), added to a
    linear projection of the same input."""
    hidden = max(1, embed_dim // 2)
    return nn.Sequential(
        nn.Linear(feature_dim, hidden), nn.BatchNorm1d(hidden), nn.ReLU(inplace=True), nn.Linear(hidden, embed_dim)
    )


def _vsepp_init(fc: nn.Linear) -> None:
    """VSE++ init: uniform Xavier on the projection, zero bias."""
    r = math.sqrt(6.0) / math.sqrt(fc.in_features + fc.out_features)
    nn.init.uniform_(fc.weight, -r, r)
    nn.init.zeros_(fc.bias)


IMAGE_HEADS = ("linear", "mlp")


class ImageEncoder(nn.Module):
    """Global CNN feature -> projection -> L2 norm.

    ``head``: ``linear`` (VSE++: one linear projection) or ``mlp`` (that projection plus
    :func:`residual_mlp` of the same feature, as VSE-infinity projects precomputed features).

    With ``backbone=None`` the input is a precomputed feature (N x feature_dim); with a backbone
    module (see :mod:`itmatch.features.backbones`) the input is a normalised image batch and the
    backbone is part of the model (fine-tuned in stages that unfreeze it). A model with a
    backbone also reads that backbone's own precomputed features (a 2-D input skips it): the
    trainer feeds cached features while the backbone is frozen and still pretrained.
    """

    def __init__(self, feature_dim: int, embed_dim: int, backbone: nn.Module | None = None, head: str = "linear"):
        super().__init__()
        if head not in IMAGE_HEADS:
            raise ValueError(f"image head must be one of {IMAGE_HEADS}, got {head!r}")
        self.backbone = backbone
        self.fc = nn.Linear(feature_dim, embed_dim)
        _vsepp_init(self.fc)
        self.mlp = residual_mlp(feature_dim, embed_dim) if head == "mlp" else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.backbone is not None and x.dim() != 2:
            x = self.backbone(x)
        projected = self.fc(x)
        if self.mlp is not None:
            projected = projected + self.mlp(x)
        return l2_normalize(projected)


def drop_set_members(
    features: torch.Tensor, rate: float, generator: torch.Generator | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """VSE-infinity's feature drop: each of the C vectors of every set (B x C x D) is dropped
    with probability ``rate``; the kept ones move to the front, in their order, and the rest
    is padding. Returns (B x C' x D, lengths B), C' = the longest kept set. A set never loses
    all its vectors: if every one was drawn for dropping, one drawn at random is kept.
    """
    b, c, _ = features.shape
    device = features.device
    keep = torch.rand(b, c, generator=generator, device=device) >= rate
    empty = ~keep.any(dim=1)
    if bool(empty.any()):
        rescue = torch.randint(0, c, (b,), generator=generator, device=device)
        keep[empty, rescue[empty]] = True
    lengths = keep.sum(dim=1)
    # Kept positions first, in their original order (a stable sort of "dropped" flags).
    order = torch.sort((~keep).to(torch.int8), dim=1, stable=True).indices
    width = int(lengths.max())
    order = order[:, :width]
    packed = features.gather(1, order.unsqueeze(-1).expand(-1, -1, features.shape[2]))
    return packed, lengths


class GridImageEncoder(nn.Module):
    """Grid features (B x C x D, e.g. C = 7 x 7 cells of 1280 channels) -> B x embed_dim, L2-normalised.

    Every grid vector is projected by a linear layer plus a small MLP (D -> d/2 -> d, BatchNorm
    and ReLU between), their sum is pooled over the cells with :class:`GPO`, and the result
    L2-normalised: VSE-infinity's image encoder for precomputed features. During training a
    random ``feature_drop`` fraction of each image's vectors is left out (its augmentation);
    in evaluation mode every vector is used. The MLP (and its BatchNorm statistics) sees only
    real vectors, so padding of a shorter set never changes anything.

    ``forward(x)`` takes the full grid (B x C x D, any float dtype: the feature store keeps
    float16) or a padded set with ``lengths``.
    """

    backbone = None  # reads precomputed grids only (JointModel.parts looks for a backbone)

    def __init__(self, feature_dim: int, embed_dim: int, feature_drop: float = 0.2):
        super().__init__()
        if not 0.0 <= feature_drop < 1.0:
            raise ValueError(f"feature_drop must be in [0, 1), got {feature_drop}")
        self.feature_drop = float(feature_drop)
        self.fc = nn.Linear(feature_dim, embed_dim)
        self.mlp = residual_mlp(feature_dim, embed_dim)
        self.pool = GPO()
        _vsepp_init(self.fc)

    def forward(self, x: torch.Tensor, lengths: torch.Tensor | None = None) -> torch.Tensor:
        if x.dim() != 3:
            raise ValueError(f"GridImageEncoder expects B x cells x {self.fc.in_features} grid features, got {tuple(x.shape)}")
        x = x.to(self.fc.weight.dtype)
        b, c, _ = x.shape
        if lengths is None:
            if self.training and self.feature_drop > 0:
                x, lengths = drop_set_members(x, self.feature_drop)
            else:
                lengths = torch.full((b,), c, dtype=torch.long, device=x.device)
        lengths = lengths.to(x.device)
        valid = torch.arange(x.shape[1], device=x.device).unsqueeze(0) < lengths.unsqueeze(1)
        vectors = x[valid]  # M x D, the real vectors only
        projected = self.fc(vectors) + self.mlp(vectors)
        sets = projected.new_zeros(b, x.shape[1], projected.shape[1])
        sets[valid] = projected
        return l2_normalize(self.pool(sets, lengths))


class GRUTextEncoder(nn.Module):
    """Word embedding (300-d) -> GRU (hidden = joint dim) -> pooled -> L2 norm.

    ``pool``: ``last`` (VSE++: the last valid state) or ``gpo`` (VSE-infinity: GPO over the
    per-token states, :mod:`itmatch.models.pooling`).
    """

    def __init__(
        self, vocab_size: int, word_dim: int = 300, embed_dim: int = 1024, num_layers: int = 1, pool: str = "last"
    ):
        super().__init__()
        if pool not in ("last", "gpo"):
            raise ValueError(f"pool must be 'last' or 'gpo', got {pool!r}")
        self.embed = nn.Embedding(vocab_size, word_dim, padding_idx=0)
        self.gru = nn.GRU(word_dim, embed_dim, num_layers=num_layers, batch_first=True)
        nn.init.uniform_(self.embed.weight, -0.1, 0.1)
        self.pool = GPO() if pool == "gpo" else None

    def forward(self, tokens: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        """``tokens``: B x T padded ids; ``lengths``: B valid lengths (any order)."""
        x = self.embed(tokens)
        packed = pack_padded_sequence(x, lengths.cpu(), batch_first=True, enforce_sorted=False)
        states, h = self.gru(packed)  # h: layers x B x H, already in the input order
        if self.pool is None:
            return l2_normalize(h[-1])
        # Per-token outputs in the input order; rows past a caption's length are zeros, never ranked.
        out, _ = pad_packed_sequence(states, batch_first=True, total_length=tokens.shape[1])
        return l2_normalize(self.pool(out, lengths))
