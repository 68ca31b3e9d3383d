"""The joint image-text model and its construction from a plain config dictionary."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
from torch import nn

from itmatch.errors import ConfigError
from itmatch.models.classifier import ModalityClassifier
from itmatch.models.encoders import IMAGE_HEADS, GridImageEncoder, GRUTextEncoder, ImageEncoder

MODEL_DEFAULTS: dict[str, Any] = {
    "embed_dim": 1024,
    "word_dim": 300,
    "text_encoder": "gru",
    "gru_layers": 1,
    "classifier_hidden": None,  # None -> [d/2, d/4]
    "classifier_dropout": 0.0,
    "classifier_members": 1,  # > 1: an ensemble of that many classifiers (the adversary fights them all)
    "backbone": None,  # None: precomputed features; a backbone name: raw images, backbone in the model
    "backbone_weights": None,  # the backbone's weights file; None: built-in (efficientnet_lite0 only)
    # mean: the backbone's pooled feature, one linear projection (VSE++); gpo: its grid features,
    # every cell projected and pooled by GPO (VSE-infinity), read from a grid feature store
    "image_pool": "mean",
    # image_pool mean: linear (VSE++'s one projection) or mlp (plus a residual MLP, D -> d/2 -> d,
    # as VSE-infinity projects precomputed features); the grid encoder always has both
    "image_head": "linear",
    "feature_drop": 0.2,  # image_pool gpo: fraction of grid vectors left out per image in training
    # null: the text encoder's own pooling (GRU: its last state; MiniLM: the mean of its token
    # states); gpo: GPO over the per-token states (GRU outputs, or MiniLM token states projected)
    "text_pool": None,
    # MiniLM: how many of its top transformer layers form the part text_backbone (null: all of
    # it); its embeddings and the layers below form the part text_base, frozen unless a stage
    # trains it. Fine-tuning only the top layers costs less, and a model exported from such a run
    # ships only those layers (itmatch.pretrained).
    "text_tune_layers": None,
}


def uses_grid_features(model_cfg: Mapping[str, Any]) -> bool:
    """Whether a model config's image encoder reads grid features (B x cells x D) rather than pooled ones."""
    return model_cfg.get("image_pool", "mean") == "gpo"


class JointModel(nn.Module):
    """Image encoder + text encoder into one L2-normalised space, plus the modality classifier."""

    def __init__(
        self, image_encoder: ImageEncoder | GridImageEncoder, text_encoder: nn.Module, classifier: ModalityClassifier
    ):
        super().__init__()
        self.image_encoder = image_encoder
        self.text_encoder = text_encoder
        self.classifier = classifier

    def encode_images(self, images: torch.Tensor) -> torch.Tensor:
        return self.image_encoder(images)

    def encode_texts(self, text: Mapping[str, torch.Tensor]) -> torch.Tensor:
        """``text`` is the batch dictionary made by the model's text processor."""
        return self.text_encoder(**text)

    def forward(self, images: torch.Tensor, text: Mapping[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        return self.encode_images(images), self.encode_texts(text)

    def encoders(self) -> EncoderPair:
        """The two encoders without the classifier, as one module (what DDP wraps in training)."""
        return EncoderPair(self.image_encoder, self.text_encoder)

    def parts(self) -> dict[str, list[nn.Parameter]]:
        """Parameters by trainable part (every parameter belongs to exactly one part).

        ``backbone``: the image CNN when the model has one; ``text_backbone``: a pretrained text
        encoder's transformer (MiniLM), so its projection (part ``text``) can train alone, or
        with ``model.text_tune_layers: k`` its top k layers only, the rest being ``text_base``.
        """
        backbone = self.image_encoder.backbone
        backbone_ids = {id(p) for p in backbone.parameters()} if backbone is not None else set()
        text_backbone = getattr(self.text_encoder, "backbone", None)
        text_backbone_ids = {id(p) for p in text_backbone.parameters()} if text_backbone is not None else set()
        tuned, base = self.text_encoder.backbone_parts() if text_backbone is not None else ([], [])
        return {
            "image": [p for p in self.image_encoder.parameters() if id(p) not in backbone_ids],
            "backbone": list(backbone.parameters()) if backbone is not None else [],
            "text": [p for p in self.text_encoder.parameters() if id(p) not in text_backbone_ids],
            "text_backbone": tuned,
            "text_base": base,
            "classifier": list(self.classifier.parameters()),
        }


class EncoderPair(nn.Module):
    """The image and text encoders of a :class:`JointModel` (shared, not copied)."""

    def __init__(self, image_encoder: nn.Module, text_encoder: nn.Module):
        super().__init__()
        self.image_encoder = image_encoder
        self.text_encoder = text_encoder

    def forward(self, images: torch.Tensor, text: Mapping[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        return self.image_encoder(images), self.text_encoder(**text)


def resolve_model_config(cfg: Mapping[str, Any] | None) -> dict[str, Any]:
    cfg = dict(cfg or {})
    unknown = set(cfg) - set(MODEL_DEFAULTS)
    if unknown:
        raise ConfigError(f"model: unknown key(s) {sorted(unknown)}; known: {sorted(MODEL_DEFAULTS)}")
    return {**MODEL_DEFAULTS, **cfg}


def build_model(
    cfg: Mapping[str, Any], vocab_size: int, feature_dim: int | None = None, pretrained_backbone: bool = True
) -> JointModel:
    """Build a :class:`JointModel` from a model config (see ``MODEL_DEFAULTS``).

    ``feature_dim`` is the precomputed feature size; it is ignored when ``cfg["backbone"]`` names a
    backbone (the backbone's own output size is used). The backbone loads its built-in weights or
    ``cfg["backbone_weights"]``; ``pretrained_backbone=False`` skips that (for a model whose
    checkpoint is loaded next, which holds the backbone, so the weights file need not exist).
    """
    cfg = resolve_model_config(cfg)
    d = int(cfg["embed_dim"])
    backbone = None
    if cfg["image_pool"] not in ("mean", "gpo"):
        raise ConfigError(f"model.image_pool: unknown pooling {cfg['image_pool']!r}; known: 'mean', 'gpo'")
    if cfg["image_head"] not in IMAGE_HEADS:
        raise ConfigError(f"model.image_head: unknown head {cfg['image_head']!r}; known: {', '.join(map(repr, IMAGE_HEADS))}")
    if cfg["text_pool"] not in (None, "gpo"):
        raise ConfigError(f"model.text_pool: unknown pooling {cfg['text_pool']!r}; known: null, 'gpo'")
    if uses_grid_features(cfg) and cfg["backbone"]:
        raise ConfigError(
            "model.image_pool: gpo reads precomputed grid features; it cannot be combined with model.backbone "
            f"({cfg['backbone']!r}) yet: set model.backbone: null"
        )
    if cfg["backbone"]:
        from itmatch.features.backbones import get_backbone, require_weights

        name = cfg["backbone"]
        # Without pretrained_backbone: built-in weights or a seeded random init, both overwritten next.
        weights = require_weights(name, cfg["backbone_weights"], "model.backbone_weights") if pretrained_backbone else None
        backbone = get_backbone(name, weights)
        feature_dim = int(backbone.feature_dim)
    if feature_dim is None:
        raise ConfigError("build_model: feature_dim is required when model.backbone is not set")
    if uses_grid_features(cfg):
        image_encoder: ImageEncoder | GridImageEncoder = GridImageEncoder(feature_dim, d, float(cfg["feature_drop"]))
    else:
        image_encoder = ImageEncoder(feature_dim, d, backbone=backbone, head=cfg["image_head"])
    kind = cfg["text_encoder"]
    if kind == "gru":
        text_encoder: nn.Module = GRUTextEncoder(
            vocab_size, cfg["word_dim"], d, cfg["gru_layers"], cfg["text_pool"] or "last"
        )
    elif kind == "minilm":
        from itmatch.models.minilm import MiniLMTextEncoder

        text_encoder = MiniLMTextEncoder(
            embed_dim=d, tune_layers=cfg["text_tune_layers"], pool=cfg["text_pool"] or "mean"
        )
    else:
        raise ConfigError(f"model.text_encoder: unknown encoder {kind!r}; known: 'gru', 'minilm'")
    if cfg["text_tune_layers"] is not None and kind != "minilm":
        raise ConfigError("model.text_tune_layers: only the MiniLM text encoder has transformer layers (text_encoder: minilm)")
    classifier = ModalityClassifier(d, cfg["classifier_hidden"], cfg["classifier_dropout"], int(cfg["classifier_members"]))
    return JointModel(image_encoder, text_encoder, classifier)
