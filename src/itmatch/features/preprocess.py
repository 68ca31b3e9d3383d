"""Image preprocessing: the one place where a photo file becomes a normalised CHW float tensor.

Pure PIL + torch (no torchvision). Three steps, each a function so callers can mix them:

1. :func:`load_rgb`: open any image file as 8-bit RGB (EXIF orientation applied; grayscale,
   palette, CMYK, 16-bit converted; transparency composited onto white).
2. A geometric transform: :func:`eval_crop` (resize the shorter side to ``round(size / 0.875)``,
   centre crop ``size``) or :func:`random_resized_crop` + horizontal flip for training.
3. :func:`to_tensor` with the backbone's own :class:`Normalization`.

:class:`ImageTransform` bundles the three for a data loader; its :meth:`ImageTransform.spec` is
the plain-data description that keys the feature cache.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image, ImageOps

EVAL_CROP_FRACTION = 0.875  # 224 / 256, the standard ImageNet evaluation crop
DEFAULT_SCALE = (0.08, 1.0)
DEFAULT_RATIO = (3.0 / 4.0, 4.0 / 3.0)

_RESAMPLE = {"bilinear": Image.Resampling.BILINEAR, "bicubic": Image.Resampling.BICUBIC}


@dataclass(frozen=True)
class Normalization:
    """Per-channel normalisation a backbone expects: ``(pixel * pixel_scale - mean) / std``.

    ``pixel`` is in 0..1. EfficientNet-Lite: ``pixel_scale=255, mean=127, std=128``; torchvision
    ImageNet models: ``pixel_scale=1`` with the ImageNet mean/std (:data:`IMAGENET_NORMALIZATION`).
    """

    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    pixel_scale: float = 1.0

    def apply(self, pixels01: torch.Tensor) -> torch.Tensor:
        """Normalise a ... x 3 x H x W tensor of 0..1 pixels."""
        mean = torch.tensor(self.mean, dtype=pixels01.dtype).view(3, 1, 1)
        std = torch.tensor(self.std, dtype=pixels01.dtype).view(3, 1, 1)
        return (pixels01 * self.pixel_scale - mean) / std

    def to_dict(self) -> dict[str, Any]:
        return {"mean": list(self.mean), "std": list(self.std), "pixel_scale": self.pixel_scale}


IMAGENET_NORMALIZATION = Normalization(mean=(0.485, 0.456, 0.406), std=(0.229, 0.224, 0.225), pixel_scale=1.0)


def load_rgb(path: str | Path) -> Image.Image:
    """Open an image file fully decoded as 8-bit RGB.

    Raises the underlying error (``FileNotFoundError``, ``PIL.UnidentifiedImageError``,
    ``OSError`` for a truncated file) so callers can report it per file.
    """
    with Image.open(path) as img:
        img.load()  # decode now: a truncated file fails here, not later
        img = ImageOps.exif_transpose(img)
        return _to_rgb(img)


def _to_rgb(img: Image.Image) -> Image.Image:
    if img.mode == "RGB":
        return img
    if img.mode == "P":
        img = img.convert("RGBA" if "transparency" in img.info else "RGB")
    if img.mode in ("RGBA", "LA", "PA", "RGBa", "La"):
        rgba = img.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(background, rgba).convert("RGB")
    if img.mode in ("I;16", "I;16B", "I;16L", "I", "F"):
        # 16-bit / 32-bit grayscale: rescale to 8 bit instead of clipping at 255.
        arr = np.asarray(img, dtype=np.float64)
        hi = 65535.0 if img.mode.startswith("I;16") else max(float(arr.max()), 1.0)
        img = Image.fromarray(np.clip(arr / hi * 255.0 + 0.5, 0, 255).astype(np.uint8))  # mode L
    return img.convert("RGB")  # L, 1, CMYK, YCbCr, LAB, HSV


def eval_resize_size(size: int) -> int:
    """Shorter-side length before the evaluation centre crop: ``round(size / 0.875)`` (256 for 224)."""
    return int(round(size / EVAL_CROP_FRACTION))


def eval_crop(img: Image.Image, size: int, resample: str = "bilinear") -> Image.Image:
    """Resize the shorter side to ``round(size / 0.875)``, then centre crop ``size`` x ``size``."""
    short = eval_resize_size(size)
    w, h = img.size
    if w <= h:
        new_w, new_h = short, max(1, int(round(h * short / w)))
    else:
        new_w, new_h = max(1, int(round(w * short / h))), short
    img = img.resize((new_w, new_h), _RESAMPLE[resample])
    left = int(round((new_w - size) / 2.0))
    top = int(round((new_h - size) / 2.0))
    return img.crop((left, top, left + size, top + size))


def random_resized_crop_box(
    width: int,
    height: int,
    scale: tuple[float, float] = DEFAULT_SCALE,
    ratio: tuple[float, float] = DEFAULT_RATIO,
    generator: torch.Generator | None = None,
) -> tuple[int, int, int, int]:
    """A random crop box ``(left, top, w, h)``: area fraction in ``scale``, aspect ratio in ``ratio``.

    The algorithm of torchvision's ``RandomResizedCrop`` (10 tries, then a centre crop with the
    aspect ratio clamped to ``ratio``). Random numbers come from ``generator``, or from torch's
    global RNG when None (which a ``DataLoader`` seeds differently in every worker).
    """
    area = width * height
    log_ratio = (math.log(ratio[0]), math.log(ratio[1]))
    for _ in range(10):
        target_area = area * float(torch.empty(1).uniform_(scale[0], scale[1], generator=generator))
        aspect = math.exp(float(torch.empty(1).uniform_(log_ratio[0], log_ratio[1], generator=generator)))
        w = int(round(math.sqrt(target_area * aspect)))
        h = int(round(math.sqrt(target_area / aspect)))
        if 0 < w <= width and 0 < h <= height:
            top = int(torch.randint(0, height - h + 1, (1,), generator=generator))
            left = int(torch.randint(0, width - w + 1, (1,), generator=generator))
            return left, top, w, h
    in_ratio = width / height
    if in_ratio < min(ratio):
        w, h = width, int(round(width / min(ratio)))
    elif in_ratio > max(ratio):
        w, h = int(round(height * max(ratio))), height
    else:
        w, h = width, height
    return (width - w) // 2, (height - h) // 2, w, h


def random_resized_crop(
    img: Image.Image,
    size: int,
    scale: tuple[float, float] = DEFAULT_SCALE,
    ratio: tuple[float, float] = DEFAULT_RATIO,
    hflip: bool = True,
    generator: torch.Generator | None = None,
    resample: str = "bilinear",
) -> Image.Image:
    """Training crop: a random resized crop to ``size`` x ``size``, then a horizontal flip with p = 0.5."""
    left, top, w, h = random_resized_crop_box(img.width, img.height, scale, ratio, generator)
    img = img.resize((size, size), _RESAMPLE[resample], box=(left, top, left + w, top + h))
    if hflip and float(torch.rand(1, generator=generator)) < 0.5:
        img = img.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
    return img


def to_tensor(img: Image.Image, normalization: Normalization) -> torch.Tensor:
    """8-bit RGB PIL image -> normalised float32 3 x H x W tensor."""
    arr = np.asarray(img, dtype=np.uint8)
    pixels = torch.from_numpy(arr.copy()).permute(2, 0, 1).to(torch.float32).div_(255.0)
    return normalization.apply(pixels)


@dataclass(frozen=True)
class ImageTransform:
    """File path or PIL image -> normalised CHW tensor, for evaluation or training.

    ``train=False``: :func:`eval_crop`; ``train=True``: :func:`random_resized_crop` with ``scale``
    and ``ratio`` plus a horizontal flip. Training randomness comes from torch's global RNG (seeded
    per worker by the ``DataLoader``), or from ``generator`` passed to :meth:`__call__`.
    Picklable, so it can travel to ``DataLoader`` worker processes.
    """

    normalization: Normalization
    image_size: int = 224
    train: bool = False
    scale: tuple[float, float] = DEFAULT_SCALE
    ratio: tuple[float, float] = DEFAULT_RATIO
    hflip: bool = True
    resample: str = "bilinear"

    def __post_init__(self) -> None:
        if self.resample not in _RESAMPLE:
            raise ValueError(f"resample must be one of {sorted(_RESAMPLE)}, got {self.resample!r}")
        if self.image_size < 1:
            raise ValueError(f"image_size must be positive, got {self.image_size}")
        if not 0.0 < self.scale[0] <= self.scale[1] <= 1.0:
            raise ValueError(f"scale must satisfy 0 < min <= max <= 1, got {self.scale}")

    def __call__(self, image: str | Path | Image.Image, generator: torch.Generator | None = None) -> torch.Tensor:
        img = load_rgb(image) if isinstance(image, (str, Path)) else _to_rgb(image)
        if self.train:
            img = random_resized_crop(
                img, self.image_size, self.scale, self.ratio, self.hflip, generator, self.resample
            )
        else:
            img = eval_crop(img, self.image_size, self.resample)
        return to_tensor(img, self.normalization)

    def spec(self) -> dict[str, Any]:
        """Plain-data description (JSON-able); evaluation specs key the feature cache."""
        out: dict[str, Any] = {
            "image_size": self.image_size,
            "resample": self.resample,
            "normalization": self.normalization.to_dict(),
        }
        if self.train:
            out.update(train=True, scale=list(self.scale), ratio=list(self.ratio), hflip=self.hflip)
        else:
            out.update(train=False, resize_shorter_side=eval_resize_size(self.image_size), center_crop=self.image_size)
        return out

    def evaluation(self) -> ImageTransform:
        """The same transform with augmentation off."""
        return ImageTransform(self.normalization, self.image_size, False, self.scale, self.ratio, self.hflip, self.resample)


def normalization_from_dict(data: dict[str, Any]) -> Normalization:
    """Inverse of :meth:`Normalization.to_dict` (for configs and checkpoints)."""
    return Normalization(
        mean=tuple(float(v) for v in data["mean"]),  # type: ignore[arg-type]
        std=tuple(float(v) for v in data["std"]),  # type: ignore[arg-type]
        pixel_scale=float(data.get("pixel_scale", 1.0)),
    )


__all__ = [
    "DEFAULT_RATIO",
    "DEFAULT_SCALE",
    "IMAGENET_NORMALIZATION",
    "ImageTransform",
    "Normalization",
    "eval_crop",
    "eval_resize_size",
    "load_rgb",
    "normalization_from_dict",
    "random_resized_crop",
    "random_resized_crop_box",
    "to_tensor",
]
