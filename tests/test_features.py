"""Backbones and preprocessing: EfficientNet-Lite0 weights, the ImageNet check, transforms, registry."""

from __future__ import annotations

import pickle
import sys

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from itmatch.errors import ItmatchError
from itmatch.features import backbones, preprocess
from itmatch.features.backbones import backbone_spec, get_backbone, list_backbones
from itmatch.features.efficientnet_lite import Conv2dSame, EfficientNetLite0, default_lite0_weights
from itmatch.features.preprocess import (
    IMAGENET_NORMALIZATION,
    ImageTransform,
    eval_crop,
    load_rgb,
    random_resized_crop_box,
    to_tensor,
)

LITE0 = backbone_spec("efficientnet_lite0").normalization

# Clear Flickr8k photos, chosen by looking at them (captions: "a cat ...", "a brown dog ...").
CAT_PHOTOS = ["3354075558_3b67eaa502.jpg", "3229898555_16877f5180.jpg"]  # a tabby; a cat batting at a toy
DOG_PHOTOS = ["1117972841_2b9261f95f.jpg", "1119418776_58e4b93eac.jpg"]  # brown dog on sand; dog in a field
IMAGENET_CATS = range(281, 286)  # tabby, tiger cat, Persian, Siamese, Egyptian cat
IMAGENET_DOGS = range(151, 269)


@pytest.fixture(scope="module")
def lite0() -> EfficientNetLite0:
    return get_backbone("efficientnet_lite0")


def test_lite0_loads_packaged_weights_strictly_and_gives_finite_features(lite0):
    state = torch.load(default_lite0_weights(), map_location="cpu", weights_only=True)
    assert set(state) == set(lite0.state_dict())  # strict: every key used, none missing
    assert torch.equal(lite0._blocks[15]._project_conv.weight, state["_blocks.15._project_conv.weight"])
    assert lite0.feature_dim == 1280 and lite0.name == "efficientnet_lite0" and lite0.pretrained
    assert lite0.weights_id.startswith("sha256:")
    rng = np.random.default_rng(0)
    photo = Image.fromarray(rng.integers(0, 256, (180, 240, 3), dtype=np.uint8))
    x = backbone_spec("efficientnet_lite0").transform(224)(photo).unsqueeze(0)
    with torch.inference_mode():
        feats = lite0(x)
        logits = lite0.classify(x)
    assert feats.shape == (1, 1280) and torch.isfinite(feats).all()
    assert (feats >= 0).all() and (feats <= 6).all()  # ReLU6 then average pooling
    assert logits.shape == (1, 1000) and torch.isfinite(logits).all()


def test_lite0_classifies_flickr8k_cats_and_dogs(lite0, shared_data):
    images = shared_data / "flickr8k" / "images"
    transform = backbone_spec("efficientnet_lite0").transform(224)
    names = CAT_PHOTOS + DOG_PHOTOS
    batch = torch.stack([transform(images / name) for name in names])
    with torch.inference_mode():
        top5 = lite0.classify(batch).topk(5, dim=1).indices.tolist()
    for name, classes in zip(names, top5, strict=True):
        expected = IMAGENET_CATS if name in CAT_PHOTOS else IMAGENET_DOGS
        assert classes[0] in expected, f"{name}: top-5 ImageNet classes {classes}"


def test_same_padding_matches_tensorflow():
    # TF "SAME", stride 2, even input: output ceil(n / 2), the one padding pixel at bottom/right.
    conv = Conv2dSame(2, 3, 3, stride=2)
    x = torch.randn(1, 2, 8, 8)
    expected = F.conv2d(F.pad(x, [0, 1, 0, 1]), conv.weight, stride=2)
    assert torch.allclose(conv(x), expected)
    assert conv(torch.randn(1, 2, 7, 7)).shape[-2:] == (4, 4)
    same1 = Conv2dSame(2, 3, 5, stride=1)
    assert torch.allclose(same1(x), F.conv2d(x, same1.weight, padding=2), atol=1e-6)


def test_load_rgb_converts_every_mode(tmp_path):
    rng = np.random.default_rng(1)
    rgb = rng.integers(0, 256, (20, 30, 3), dtype=np.uint8)
    rgba = np.dstack([rgb, np.zeros((20, 30), dtype=np.uint8)])  # fully transparent
    cases = {
        "gray.png": Image.fromarray(rgb[..., 0]),
        "cmyk.jpg": Image.fromarray(rgb).convert("CMYK"),
        "palette.png": Image.fromarray(rgb).convert("P"),
        "clear.png": Image.fromarray(rgba),
        "deep.png": Image.fromarray(rgb[..., 0].astype(np.uint16) * 257),
    }
    for name, img in cases.items():
        img.save(tmp_path / name)
        out = load_rgb(tmp_path / name)
        assert out.mode == "RGB" and out.size == (30, 20), name
    assert np.all(np.asarray(load_rgb(tmp_path / "clear.png")) == 255)  # composited onto white
    deep = np.asarray(load_rgb(tmp_path / "deep.png"))[..., 0]
    assert np.abs(deep.astype(int) - rgb[..., 0]).max() <= 1  # 16-bit rescaled, not clipped


def test_eval_crop_resizes_shorter_side_then_centre_crops():
    # A 300 x 200 image whose left half is black and right half white: centred crop keeps symmetry.
    arr = np.zeros((200, 300, 3), dtype=np.uint8)
    arr[:, 150:] = 255
    out = eval_crop(Image.fromarray(arr), 224)
    assert out.size == (224, 224)
    grey = np.asarray(out)[..., 0].astype(float)
    assert abs(grey[:, :112].mean() + grey[:, 112:].mean() - 255) < 2 and grey[:, :100].max() == 0
    assert preprocess.eval_resize_size(224) == 256


def test_normalizations():
    white = Image.new("RGB", (4, 4), (255, 255, 255))
    black = Image.new("RGB", (4, 4), (0, 0, 0))
    assert torch.allclose(to_tensor(white, LITE0), torch.full((3, 4, 4), 1.0))
    assert torch.allclose(to_tensor(black, LITE0), torch.full((3, 4, 4), -127 / 128))
    t = to_tensor(white, IMAGENET_NORMALIZATION)
    assert t.dtype == torch.float32 and t.shape == (3, 4, 4)
    assert t[0, 0, 0].item() == pytest.approx((1 - 0.485) / 0.229, rel=1e-6)
    assert backbone_spec("resnet152").normalization == IMAGENET_NORMALIZATION


def test_random_resized_crop_box_respects_scale_and_ratio():
    g = torch.Generator().manual_seed(0)
    for width, height in [(224, 224), (500, 333), (60, 400)]:
        for _ in range(200):
            left, top, w, h = random_resized_crop_box(width, height, (0.08, 1.0), (3 / 4, 4 / 3), g)
            assert 0 <= left and left + w <= width and 0 <= top and top + h <= height and w > 0 and h > 0
    # When a box fits, area and aspect follow the ranges (up to rounding).
    for _ in range(200):
        _, _, w, h = random_resized_crop_box(400, 400, (0.3, 0.5), (0.8, 1.25), g)
        assert 0.3 * 0.95 <= w * h / 160000 <= 0.5 * 1.05 and 0.75 <= w / h <= 1.33


def test_train_transform_is_random_but_seedable_and_eval_is_deterministic():
    rng = np.random.default_rng(2)
    photo = Image.fromarray(rng.integers(0, 256, (90, 120, 3), dtype=np.uint8))
    train = ImageTransform(LITE0, 32, train=True)
    a = train(photo, torch.Generator().manual_seed(5))
    b = train(photo, torch.Generator().manual_seed(5))
    c = train(photo, torch.Generator().manual_seed(6))
    assert a.shape == (3, 32, 32) and torch.equal(a, b) and not torch.equal(a, c)
    flips = [train(photo, torch.Generator().manual_seed(s)) for s in range(20)]
    assert len({tuple(x.flatten()[:8].tolist()) for x in flips}) == 20
    ev = train.evaluation()
    assert not ev.train and torch.equal(ev(photo), ev(photo))
    assert ev.spec()["train"] is False and train.spec()["train"] is True
    assert pickle.loads(pickle.dumps(train)) == train  # travels to DataLoader workers
    hflip_only = ImageTransform(LITE0, 32, train=True, scale=(1.0, 1.0), ratio=(1.0, 1.0))
    square = photo.resize((64, 64))
    outs = {tuple(hflip_only(square, torch.Generator().manual_seed(s))[0, 0, :3].tolist()) for s in range(16)}
    assert len(outs) == 2  # full crop: only the flip varies


def test_registry_and_missing_torchvision(monkeypatch):
    assert list_backbones() == ["efficientnet_lite0", "efficientnet_lite1", "efficientnet_lite2", "resnet152", "vgg19"]
    assert backbone_spec("vgg19").feature_dim == 4096 and backbone_spec("resnet152").feature_dim == 2048
    with pytest.raises(ItmatchError, match="unknown backbone 'alexnet'.*efficientnet_lite0"):
        get_backbone("alexnet")
    monkeypatch.setitem(sys.modules, "torchvision", None)  # behaves as not installed
    for name in ("resnet152", "vgg19"):
        with pytest.raises(ItmatchError, match=r"pip install 'itmatch\[torchvision\]'"):
            get_backbone(name)
        with pytest.raises(ItmatchError, match="needs torchvision"):
            backbones.ensure_available(name)


def test_explicit_weights_file_and_bad_weights(tmp_path, lite0):
    good = tmp_path / "lite0.pth"
    torch.save(lite0.state_dict(), good)
    model = get_backbone("efficientnet_lite0", weights=good)
    assert model.weights_id.startswith("sha256:") and torch.equal(model._fc.bias, lite0._fc.bias)
    partial = {k: v for k, v in lite0.state_dict().items() if not k.startswith("_fc.")}
    torch.save(partial, tmp_path / "partial.pth")
    with pytest.raises(ItmatchError, match=r"partial\.pth does not fit EfficientNetLite0: missing: _fc\.weight"):
        get_backbone("efficientnet_lite0", weights=tmp_path / "partial.pth")
    (tmp_path / "junk.pth").write_text("not a checkpoint")
    with pytest.raises(ItmatchError, match=r"junk\.pth could not be loaded"):
        get_backbone("efficientnet_lite0", weights=tmp_path / "junk.pth")
    with pytest.raises(ItmatchError, match=r"nowhere\.pth .*does not exist"):
        get_backbone("efficientnet_lite0", weights=tmp_path / "nowhere.pth")
