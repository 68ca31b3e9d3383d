"""Grid features + GPO: the grid feature store, the grid image encoder (projection, feature drop,
GPO pooling), GPO over GRU token states, and a training run of the grid encoder."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from itmatch.errors import ConfigError
from itmatch.features import get_backbone
from itmatch.features.backbones import backbone_spec
from itmatch.features.extract import extract_features
from itmatch.features.store import FeatureStore, cache_key, grid_shape, store_path
from itmatch.models import build_model
from itmatch.models.encoders import GridImageEncoder, GRUTextEncoder, drop_set_members, l2_normalize
from itmatch.models.pooling import GPO, descending_order

SIZE = 64  # a 2 x 2 grid: the real EfficientNet-Lite0 stays fast


def _photos(root: Path, n: int) -> list[str]:
    root.mkdir(parents=True, exist_ok=True)
    ids = [f"img{i:02d}.jpg" for i in range(n)]
    for i, image_id in enumerate(ids):
        rng = np.random.default_rng(i)
        Image.fromarray(rng.integers(0, 256, (50, 70, 3), dtype=np.uint8)).save(root / image_id, quality=90)
    return ids


# --------------------------------------------------------------------------------------------
# the grid feature store


def test_grid_store_round_trip_float16_and_its_own_cache_key(tmp_path):
    root = tmp_path / "images"
    ids = _photos(root, 5)
    out = tmp_path / "feats"
    kw = {"image_size": SIZE, "num_workers": 0, "batch_size": 2, "num_threads": 1}
    grid = extract_features(root, ids, out, grid=True, **kw)
    pooled = extract_features(root, ids, out, **kw)

    assert grid.path != pooled.path and grid.path == store_path(out, image_size=SIZE, grid=True)
    # The pooled store keeps the folder and key it had before grid stores existed.
    key = cache_key(image_size=SIZE)
    assert "output" not in key and cache_key(image_size=SIZE, grid=True) == {**key, "output": "grid"}
    digest = hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:12]
    assert pooled.path == out / f"efficientnet_lite0-{SIZE}px-{digest}"

    assert grid.grid == grid_shape("efficientnet_lite0", SIZE) == (2, 2) and pooled.grid is None
    assert grid.array.dtype == np.float16 and grid.array.shape == (5, 4, 1280)
    reopened = FeatureStore.open(grid.path)
    assert reopened.grid == (2, 2) and reopened.complete

    # The stored cells are the backbone's feature map (row-major cells), rounded to float16.
    model = get_backbone("efficientnet_lite0").eval()
    pixels = torch.stack([backbone_spec("efficientnet_lite0").transform(SIZE)(root / i) for i in ids[:2]])
    with torch.no_grad():
        fmap = model.feature_map(pixels)  # 2 x 1280 x 2 x 2
    expected = fmap.flatten(2).transpose(1, 2).numpy()
    # Extraction runs channels-last (another summation order): a float32 difference of an ulp can
    # round to the neighbouring float16, so one float16 step (2^-10 relative) is the tolerance.
    np.testing.assert_allclose(reopened.lookup(ids[:2]), expected, rtol=2**-10, atol=2**-14)
    # The pooled feature is the mean of the cells: float16 rounding (relative 2^-11) is all that differs.
    np.testing.assert_allclose(reopened.lookup_pooled(ids), pooled.lookup(ids), rtol=2e-3, atol=1e-3)
    np.testing.assert_array_equal(pooled.lookup_pooled(ids), pooled.lookup(ids))

    again = extract_features(root, ids, out, grid=True, **kw)
    assert again.cached and again.computed == 0


def test_grid_shape_and_backbones_without_a_grid():
    assert grid_shape("efficientnet_lite0", 224) == (7, 7)
    assert grid_shape("efficientnet_lite0", 240) == (8, 8)
    from itmatch.errors import ItmatchError

    with pytest.raises(ItmatchError, match="grid features"):
        grid_shape("vgg19", 224)


# --------------------------------------------------------------------------------------------
# sorting and pooling


def test_descending_order_sorts_like_torch_sort_with_infinite_padding():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(3, 9, 5, generator=g)
    x[1, 4:] = float("-inf")
    order = descending_order(x)
    torch.testing.assert_close(x.gather(1, order), x.sort(dim=1, descending=True).values)


def test_gpo_module_with_forced_one_hot_or_uniform_weights_is_max_or_mean_pooling():
    torch.manual_seed(0)
    gpo = GPO().double()
    features = torch.randn(3, 6, 4, dtype=torch.float64)
    lengths = torch.tensor([6, 2, 4])
    features[1, 2:] = 50.0  # padding above every real value
    # Zero scores: the softmax over each set's own ranks is uniform, so GPO is mean pooling.
    with torch.no_grad():
        gpo.score.weight.zero_()
    expected_mean = torch.stack([features[b, : int(n)].mean(dim=0) for b, n in enumerate(lengths)])
    torch.testing.assert_close(gpo(features, lengths), expected_mean)
    # Weights one-hot on rank 1 (what a score far above the others gives): max pooling.
    first = torch.zeros(3, 6, dtype=torch.float64)
    first[:, 0] = 1.0
    gpo.rank_weights = lambda lengths_, k: first  # type: ignore[method-assign]
    expected_max = torch.stack([features[b, : int(n)].max(dim=0).values for b, n in enumerate(lengths)])
    torch.testing.assert_close(gpo(features, lengths), expected_max)


# --------------------------------------------------------------------------------------------
# feature drop


def test_feature_drop_keeps_order_never_empties_a_set_and_drops_about_the_rate():
    g = torch.Generator().manual_seed(0)
    values = torch.arange(49, dtype=torch.float32).view(1, 49, 1).expand(4000, 49, 1).contiguous()
    packed, lengths = drop_set_members(values, 0.2, generator=g)
    assert lengths.min() >= 1
    dropped = 1 - lengths.float().mean().item() / 49
    assert abs(dropped - 0.2) < 0.01  # 196,000 draws: the standard error is 0.001
    for b in range(50):
        kept = packed[b, : int(lengths[b]), 0]
        assert torch.all(kept[1:] > kept[:-1])  # a subset, in the original order
    # Dropping nearly everything still leaves one vector in every set.
    _, lengths = drop_set_members(torch.randn(500, 3, 2), 0.999, generator=g)
    assert torch.all(lengths == 1)


def test_feature_drop_acts_in_training_only():
    torch.manual_seed(0)
    enc = GridImageEncoder(12, 8, feature_drop=0.5)
    x = torch.randn(6, 9, 12)
    enc.eval()
    a, b = enc(x), enc(x)
    torch.testing.assert_close(a, b)
    torch.testing.assert_close(a, enc(x, torch.full((6,), 9)))  # eval = every cell used
    enc.train()
    assert not torch.allclose(enc(x), enc(x))
    no_drop = GridImageEncoder(12, 8, feature_drop=0.0).train()
    torch.testing.assert_close(no_drop(x), no_drop(x))


# --------------------------------------------------------------------------------------------
# the grid image encoder


def test_grid_encoder_matches_a_per_image_loop_and_ignores_padding():
    torch.manual_seed(0)
    enc = GridImageEncoder(10, 6, feature_drop=0.0).double().eval()
    with torch.no_grad():  # non-trivial BatchNorm statistics
        enc.mlp[1].running_mean.uniform_(-1, 1)
        enc.mlp[1].running_var.uniform_(0.5, 2)
    x = torch.randn(4, 7, 10, dtype=torch.float64)
    lengths = torch.tensor([7, 3, 1, 5])
    out = enc(x, lengths)
    for b, n in enumerate(lengths.tolist()):
        cells = x[b, :n]
        projected = torch.stack([enc.fc(v) + enc.mlp(v.unsqueeze(0))[0] for v in cells])  # one vector at a time
        alone = l2_normalize(enc.pool(projected.unsqueeze(0), torch.tensor([n])))[0]
        torch.testing.assert_close(out[b], alone)
    garbage = x.clone()
    for b, n in enumerate(lengths.tolist()):
        garbage[b, n:] = 1e4 * torch.randn_like(garbage[b, n:])
    torch.testing.assert_close(enc(garbage, lengths), out)
    # In training mode too: BatchNorm's batch statistics are taken over the real vectors only.
    enc.train()
    torch.testing.assert_close(enc(garbage, lengths), enc(x, lengths))


def test_grid_encoder_reads_float16_grids_and_rejects_pooled_features():
    torch.manual_seed(0)
    enc = GridImageEncoder(8, 4).eval()
    x = torch.randn(3, 5, 8).half()
    torch.testing.assert_close(enc(x), enc(x.float()))
    with pytest.raises(ValueError, match="grid features"):
        enc(torch.randn(3, 8))


# --------------------------------------------------------------------------------------------
# GPO over GRU token states


def test_gru_gpo_pooling_ignores_padding_and_pools_each_caption_alone():
    torch.manual_seed(0)
    enc = GRUTextEncoder(30, 6, 8, pool="gpo").eval()
    tokens = torch.randint(1, 30, (3, 6))
    lengths = torch.tensor([6, 2, 4])
    out = enc(tokens, lengths)
    wider = torch.cat([tokens, torch.randint(1, 30, (3, 3))], dim=1)  # other ids past each length
    torch.testing.assert_close(enc(wider, lengths), out)
    for b, n in enumerate(lengths.tolist()):
        torch.testing.assert_close(enc(tokens[b : b + 1, :n], torch.tensor([n]))[0], out[b])
    # It pools the per-token states: with one-hot weights on rank 1 it is their max over time.
    first = torch.zeros(3, 6)
    first[:, 0] = 1.0
    enc.pool.rank_weights = lambda lengths_, k: first  # type: ignore[method-assign]
    states, _ = enc.gru(enc.embed(tokens))
    expected = l2_normalize(torch.stack([states[b, :n].max(dim=0).values for b, n in enumerate(lengths.tolist())]))
    torch.testing.assert_close(enc(tokens, lengths), expected)
    last = GRUTextEncoder(30, 6, 8).eval()
    assert last.pool is None


def test_model_config_switches_and_errors():
    model = build_model({"image_pool": "gpo", "embed_dim": 8, "word_dim": 4, "text_pool": "gpo"}, 20, 16)
    assert isinstance(model.image_encoder, GridImageEncoder) and model.text_encoder.pool is not None
    default = build_model({"embed_dim": 8, "word_dim": 4}, 20, 16)
    assert not isinstance(default.image_encoder, GridImageEncoder) and default.text_encoder.pool is None
    with pytest.raises(ConfigError, match="model.backbone"):
        build_model({"image_pool": "gpo", "backbone": "efficientnet_lite0", "embed_dim": 8}, 20, 16)
    with pytest.raises(ConfigError, match="text_pool"):
        build_model({"text_pool": "max", "embed_dim": 8}, 20, 16)


# --------------------------------------------------------------------------------------------
# training through the trainer


def _flickr8k(root: Path, n_train: int, n_dev: int) -> Path:
    ids = _photos(root / "images", n_train + n_dev)
    words = "dog cat man woman runs sits red blue grass water ball plays".split()
    lines = ["image,caption"]
    for i, image_id in enumerate(ids):
        for c in range(5):
            lines.append(f"{image_id},a {words[i % len(words)]} {words[(i + c) % len(words)]} here")
    (root / "captions.txt").write_text("\n".join(lines) + "\n")
    (root / "train_images.txt").write_text("\n".join(ids[:n_train]) + "\n")
    (root / "dev_images.txt").write_text("\n".join(ids[n_train:]) + "\n")
    return root


def test_training_the_grid_gpo_encoder_through_the_trainer(tmp_path):
    from itmatch.inference import Matcher
    from itmatch.training.config import load_config
    from itmatch.training.trainer import train

    data = _flickr8k(tmp_path / "f8k", 16, 6)
    cfg = load_config("vsepp", [
        "data.format=flickr8k", f"data.path={data}", f"data.feature_cache={tmp_path / 'cache'}",
        f"data.image_size={SIZE}", "data.val_holdout=4", "data.vocab_min_count=1",
        "model.image_pool=gpo", "model.text_pool=gpo", "model.embed_dim=16", "model.word_dim=8",
        "training.batch_size=16", "training.threads=1", "training.log_every=1",
        "stages=[{name: warmup, epochs: 1, lr: 1.0e-3, train: [image, text], rank: sum}, "
        "{name: hardest, epochs: 1, lr: 1.0e-3, train: [image, text], rank: max_violation}]",
    ])  # fmt: skip
    run = tmp_path / "run"
    train(cfg, run)
    grid_folder = store_path(tmp_path / "cache", image_size=SIZE, grid=True)
    assert FeatureStore.open(grid_folder).grid == (2, 2)  # the trainer extracted and read grids
    records = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines() if x.strip()]
    assert sum("val/rsum" in r for r in records) == 2
    matcher = Matcher.from_run(run, "best")
    assert isinstance(matcher.model.image_encoder, GridImageEncoder)
    state = matcher.model.image_encoder.state_dict()
    assert "pool.gru.weight_ih_l0" in state and "mlp.0.weight" in state
    # Scoring a split reads its grids from the store; photos go through the backbone's feature
    # map: the same embeddings, up to the float16 rounding of the stored cells.
    from itmatch.data import load_corpus

    dev = load_corpus("flickr8k", str(data), "dev")
    im, tx = matcher.embed_corpus(dev)
    assert im.shape == (6, 16) and tx.shape == (30, 16)
    from_photos = matcher.embed_images(dev.image_paths())
    torch.testing.assert_close(from_photos, im, rtol=0, atol=5e-3)


# --------------------------------------------------------------------------------------------
# the pooled image encoder's MLP head (model.image_head: mlp)


def test_mlp_image_head_adds_a_residual_mlp_to_the_linear_projection():
    from itmatch.models.encoders import ImageEncoder

    torch.manual_seed(0)
    enc = ImageEncoder(12, 8, head="mlp").eval()
    x = torch.randn(5, 12)
    lin1, bn, _, lin2 = enc.mlp
    # BatchNorm in eval mode: (h - running_mean) / sqrt(running_var + eps) * weight + bias, by hand
    h = x @ lin1.weight.T + lin1.bias
    h = (h - bn.running_mean) / torch.sqrt(bn.running_var + bn.eps) * bn.weight + bn.bias
    expected = x @ enc.fc.weight.T + enc.fc.bias + (h.clamp_min(0) @ lin2.weight.T + lin2.bias)
    expected = expected / expected.norm(dim=1, keepdim=True)
    torch.testing.assert_close(enc(x), expected)
    # the linear head is VSE++'s projection alone, with the same initial weights for a seed
    torch.manual_seed(0)
    linear = ImageEncoder(12, 8)
    assert linear.mlp is None and not any("mlp" in k for k in linear.state_dict())
    torch.testing.assert_close(linear.fc.weight, enc.fc.weight)
    with pytest.raises(ValueError, match="image head"):
        ImageEncoder(12, 8, head="gpo")


def test_mlp_image_head_builds_from_config_trains_as_part_image_and_rejects_unknown_heads():
    model = build_model({"image_head": "mlp", "embed_dim": 16}, vocab_size=10, feature_dim=12)
    image_ids = {id(p) for p in model.parts()["image"]}
    assert all(id(p) in image_ids for p in model.image_encoder.mlp.parameters())
    model.train()
    out = model.image_encoder(torch.randn(4, 12))
    out.sum().backward()
    assert model.image_encoder.mlp[0].weight.grad is not None
    assert build_model({"embed_dim": 16}, vocab_size=10, feature_dim=12).image_encoder.mlp is None
    with pytest.raises(ConfigError, match="image_head"):
        build_model({"image_head": "deep"}, vocab_size=10, feature_dim=12)
