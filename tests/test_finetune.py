"""Raw-image training: augmentation, the backbone's stages, BatchNorm, the feature cache, resume.

Tiny photos (40 x 32) and a 32 px input keep the real EfficientNet-Lite0 cheap on a CPU.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from PIL import Image

import itmatch.features.corpus as features_corpus
import itmatch.features.extract as extract_mod
import itmatch.training.data as data_mod
from itmatch.cli import main
from itmatch.data import load_corpus
from itmatch.errors import ItmatchError
from itmatch.features.backbones import backbone_spec, get_backbone
from itmatch.inference import Matcher
from itmatch.training.config import load_config
from itmatch.training.data import train_val_corpora, training_data
from itmatch.training.photos import TRAIN_CROP_SCALE
from itmatch.training.trainer import train

from conftest import tiny_overrides

SIZE = 32
COLOURS = ["red", "green", "blue", "yellow"]


def write_flickr8k(folder: Path, n_train: int = 12, n_dev: int = 4, seed: int = 0) -> Path:
    """A flickr8k-format folder: photos filled with one of four colours plus noise, captions name it."""
    rng = np.random.default_rng(seed)
    rgb = {"red": (220, 30, 30), "green": (30, 200, 40), "blue": (30, 40, 220), "yellow": (230, 220, 30)}
    (folder / "images").mkdir(parents=True)
    lines, names = ["image,caption"], []
    for i in range(n_train + n_dev):
        colour = COLOURS[i % len(COLOURS)]
        pixels = np.clip(np.array(rgb[colour]) + rng.normal(0, 40, (32, 40, 3)), 0, 255).astype(np.uint8)
        name = f"{1000 + i}_abc.jpg"
        Image.fromarray(pixels).save(folder / "images" / name, quality=90)
        names.append(name)
        lines += [f"{name},a {colour} picture number {c} ." for c in range(5)]
    (folder / "captions.txt").write_text("\n".join(lines) + "\n")
    (folder / "train_images.txt").write_text("\n".join(names[:n_train]) + "\n")
    (folder / "dev_images.txt").write_text("\n".join(names[n_train:]) + "\n")
    return folder


@pytest.fixture(autouse=True)
def one_thread():
    # Tiny convolutions: a second OpenMP thread only adds synchronisation, and on a loaded 2-core
    # machine spinning threads made one of these tests 15x slower.
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture()
def photos(tmp_path: Path) -> Path:
    return write_flickr8k(tmp_path / "flickr8k")


def overrides(data: Path, cache: Path, *extra: str) -> list[str]:
    return [
        "data.format=flickr8k", f"data.path={data}", "data.val_split=dev", f"data.image_size={SIZE}",
        f"data.feature_cache={cache}", "data.vocab_min_count=1", "model.embed_dim=16", "model.word_dim=8",
        "training.batch_size=20", "training.log_every=1", "training.num_workers=0", *extra,
    ]  # fmt: skip


def recipe(tmp_path: Path, stages: list[dict], backbone: str | None = "efficientnet_lite0") -> Path:
    path = tmp_path / "recipe.yaml"
    path.write_text(yaml.safe_dump({"name": "ft", "model": {"backbone": backbone}, "stages": stages}))
    return path


FROZEN = {"epochs": 1, "lr": 1e-3, "train": ["image", "text"], "rank": "sum"}
FINETUNE = {
    "epochs": 1,
    "lr": 1e-3,
    "lr_parts": {"backbone": 1e-3},
    "train": ["image", "backbone", "text"],
    "rank": "sum",
}


def test_training_photos_are_augmented_and_validation_photos_are_not(tmp_path, photos):
    cfg = load_config(
        recipe(tmp_path, [dict(FINETUNE, name="ft")]),
        overrides(photos, tmp_path / "cache", "data.features=none"),
    )
    train_corpus, val_corpus = train_val_corpora(cfg["data"])
    from itmatch.models.text_processing import make_text_processor

    data = training_data(
        cfg, train_corpus, val_corpus, make_text_processor(cfg["model"], _vocab(train_corpus))
    )
    photos_ds = data.pairs.photos
    assert photos_ds.transform.train and photos_ds.transform.scale == TRAIN_CROP_SCALE
    assert not data.val_images.transform.train

    # Training: random crop + flip, seeded per (epoch seed, caption row): resume-exact.
    first = photos_ds[(0, 1)][0]
    assert first.shape == (3, SIZE, SIZE)
    assert torch.equal(first, photos_ds[(0, 1)][0])
    assert any(not torch.equal(first, photos_ds[(0, s)][0]) for s in range(2, 8))
    # Evaluation: the deterministic resize + centre crop of the backbone's own preprocessing.
    eval_transform = backbone_spec("efficientnet_lite0").transform(SIZE, train=False)
    val = data.val_images[0:2]
    assert torch.equal(val, data.val_images[0:2])
    assert torch.equal(val[0], eval_transform(val_corpus.image_paths()[0]))
    train_eval = eval_transform(train_corpus.image_paths()[0])
    assert any(not torch.equal(train_eval, photos_ds[(0, s)][0]) for s in range(1, 8))

    # Batches: the PairBatches order and shapes; a resumed epoch gives the same later batches.
    full = list(data.pairs.epoch(seed=7))
    assert [step for step, _ in full] == list(range(len(data.pairs))) == [0, 1, 2]
    step, batch = full[0]
    assert batch["images"].shape == (20, 3, SIZE, SIZE) and batch["text"]["tokens"].shape[0] == 20
    order = data.pairs.order(7)
    assert torch.equal(batch["image_ids"], order[:20] // 5)
    resumed = list(data.pairs.epoch(seed=7, start_step=1))
    assert [s for s, _ in resumed] == [1, 2]
    assert torch.equal(resumed[0][1]["images"], full[1][1]["images"])
    # Two ranks split every global batch into contiguous shards.
    shards = [next(iter(data.pairs.epoch(seed=7, rank=r, world_size=2)))[1] for r in (0, 1)]
    assert torch.equal(torch.cat([s["images"] for s in shards]), batch["images"])


def _vocab(corpus):
    from itmatch.data.text import Vocabulary

    return Vocabulary.build(corpus.flat_captions(), min_count=1)


def test_backbone_trains_only_where_unfrozen_with_frozen_batchnorm_and_fresh_cache_only(
    tmp_path, photos, monkeypatch
):
    stages = [dict(FROZEN, name="frozen"), dict(FINETUNE, name="finetune"), dict(FROZEN, name="after")]
    cfg = load_config(recipe(tmp_path, stages), overrides(photos, tmp_path / "cache"))
    import itmatch.training.trainer as trainer_module

    real_step, real_features = trainer_module.train_step, data_mod.corpus_features
    snapshots: dict[str, dict[str, torch.Tensor]] = {}
    inputs: dict[str, set[int]] = {}
    feature_reads: list[str] = []
    current = {"stage": None}

    def spy_step(model, batch, stage, optimizers, *args):
        if stage.name != current["stage"]:
            snapshots[stage.name] = {k: v.clone() for k, v in model.state_dict().items()}
            current["stage"] = stage.name
        inputs.setdefault(stage.name, set()).add(batch["images"].dim())
        return real_step(model, batch, stage, optimizers, *args)

    def spy_features(corpus, data_cfg, progress=False, device=None):
        feature_reads.append(f"{current['stage']}:{corpus.split}")
        return real_features(corpus, data_cfg, progress=progress, device=device)

    monkeypatch.setattr(trainer_module, "train_step", spy_step)
    monkeypatch.setattr(data_mod, "corpus_features", spy_features)
    run = tmp_path / "run"
    train(cfg, run)
    final = torch.load(run / "checkpoints" / "last.pt", weights_only=True)["model"]

    # Cached features (2-D) only while the backbone is frozen and pretrained; photos (4-D) after.
    assert inputs == {"frozen": {2}, "finetune": {4}, "after": {4}}
    # Read once (train before the first step, dev at the first validation), never after fine-tuning.
    assert feature_reads == ["None:train", "frozen:dev"]

    def moved(a, b, key_filter):
        keys = [k for k in a if key_filter(k)]
        assert keys
        return {k for k in keys if not torch.equal(a[k], b[k])}

    backbone = lambda k: k.startswith("image_encoder.backbone.")  # noqa: E731
    bn_stats = lambda k: backbone(k) and k.endswith(("running_mean", "running_var", "num_batches_tracked"))  # noqa: E731
    bn_affine = lambda k: backbone(k) and "_bn" in k and k.endswith((".weight", ".bias"))  # noqa: E731
    assert not moved(snapshots["frozen"], snapshots["finetune"], backbone)
    assert moved(snapshots["finetune"], snapshots["after"], backbone)
    assert moved(snapshots["finetune"], snapshots["after"], bn_affine)
    assert not moved(snapshots["after"], final, backbone)
    assert not moved(snapshots["frozen"], final, bn_stats)  # BatchNorm statistics stay pretrained
    for name in ("frozen", "finetune", "after"):  # the projection and the GRU train in every stage
        nxt = {"frozen": snapshots["finetune"], "finetune": snapshots["after"], "after": final}[name]
        assert moved(snapshots[name], nxt, lambda k: k.startswith("image_encoder.fc."))

    # The fine-tuned model embeds photos through its own backbone, never cached features.
    monkeypatch.setattr(features_corpus, "corpus_features", lambda *a, **k: pytest.fail("read cached features"))
    matcher = Matcher.from_run(run, "last")
    dev = load_corpus("flickr8k", str(photos), "dev")
    im, tx = matcher.embed_corpus(dev)
    assert im.shape == (4, 16) and tx.shape == (20, 16)
    # Expected by hand: each photo opened here, put through the backbone's evaluation transform
    # and the fine-tuned model one at a time (a batch of 1, not the matcher's batches).
    transform = backbone_spec("efficientnet_lite0").transform(SIZE, train=False)
    with torch.no_grad():
        matcher.model.eval()
        by_hand = torch.cat([
            matcher.model.encode_images(transform(Image.open(p).convert("RGB")).unsqueeze(0)) for p in dev.image_paths()
        ])  # fmt: skip
        torch.testing.assert_close(im, by_hand)
        # and it is the fine-tuned backbone that made them: the same model with the pretrained
        # backbone put back (everything else as trained) gives other vectors
        import copy

        pretrained = copy.deepcopy(matcher.model)
        pretrained.load_state_dict({k: snapshots["frozen"][k] if backbone(k) else v for k, v in final.items()})
        pretrained.eval()
        before = torch.cat([pretrained.encode_images(transform(Image.open(p).convert("RGB")).unsqueeze(0)) for p in dev.image_paths()])
    assert (before - im).abs().max() > 1e-3
    assert (run / "vocab.json").is_file() and torch.load(run / "checkpoints" / "last.pt", weights_only=True)[
        "feature_dim"
    ] == 1280


def test_feature_cache_is_never_re_extracted_and_untouched_by_full_fine_tuning(tmp_path, photos, monkeypatch):
    cache = tmp_path / "cache"
    runs = {"n": 0}
    real_run = extract_mod._run

    def counting_run(*args, **kwargs):
        runs["n"] += 1
        return real_run(*args, **kwargs)

    monkeypatch.setattr(extract_mod, "_run", counting_run)
    features_cfg = load_config(
        recipe(tmp_path, [dict(FROZEN, name="a")], backbone=None), overrides(photos, cache)
    )
    train(features_cfg, tmp_path / "features1")
    assert runs["n"] == 2  # train and dev images, extracted once
    train(features_cfg, tmp_path / "features2")
    frozen_cfg = load_config(recipe(tmp_path, [dict(FROZEN, name="a")]), overrides(photos, cache))
    train(frozen_cfg, tmp_path / "frozen-backbone")  # same backbone and size: the same cache entries
    assert runs["n"] == 2

    # Every stage trains the backbone: the cache is neither read nor written.
    monkeypatch.setattr(data_mod, "corpus_features", lambda *a, **k: pytest.fail("touched the feature cache"))
    fresh_cache = tmp_path / "fresh-cache"
    ft_cfg = load_config(recipe(tmp_path, [dict(FINETUNE, name="ft")]), overrides(photos, fresh_cache))
    train(ft_cfg, tmp_path / "finetuned")
    assert not fresh_cache.exists()


def test_resume_mid_fine_tuning_continues_exactly(tmp_path, photos):
    stages = [dict(FINETUNE, name="ft", epochs=2)]
    cfg = load_config(
        recipe(tmp_path, stages), overrides(photos, tmp_path / "cache", "training.checkpoint_every=2")
    )
    clean = tmp_path / "clean"
    train(cfg, clean)

    class Crash(Exception):
        pass

    def crash(record):
        if record.get("global_step") == 5 and "train/loss" in record:
            raise Crash

    crashed = tmp_path / "crashed"
    with pytest.raises(Crash):
        train(cfg, crashed, log=crash)
    assert (
        torch.load(crashed / "checkpoints" / "last.pt", weights_only=True)["progress"]["step"] == 1
    )  # mid-epoch 2
    train(None, crashed, resume=True)
    a = torch.load(clean / "checkpoints" / "last.pt", weights_only=True)["model"]
    b = torch.load(crashed / "checkpoints" / "last.pt", weights_only=True)["model"]
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=0, atol=0, msg=k)


def test_shipped_fine_tuning_recipe_runs_end_to_end(tmp_path, photos):
    run = tmp_path / "run"
    sets = overrides(photos, tmp_path / "cache", "stages.*.epochs=1", "stages.hardest.epochs=0")[3:]
    argv = ["train", "--config", "vsepp_finetune", "--out", str(run), "--format", "flickr8k", "--data", str(photos),
            "--val-split", "dev", "--quiet", *sum((["--set", o] for o in sets), [])]  # fmt: skip
    assert main(argv) == 0
    from itmatch.evaluation.recall import evaluate_embeddings

    # best.pt is the checkpoint the trainer selected: embedded again by the inference path, its dev
    # split scores the validation rsum the trainer recorded for it.
    best = json.loads((run / "summary.json").read_text())["best"]
    assert best["best"] is True and best["val/rsum"] > 0
    im, tx = Matcher.from_run(run, "best").embed_corpus(load_corpus("flickr8k", str(photos), "dev"))
    assert evaluate_embeddings(im, tx, protocol="all")["rsum"] == pytest.approx(best["val/rsum"], abs=1e-9)


def test_optional_backbone_that_is_not_installed_names_the_extra(tmp_path, photos, monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "torchvision", None)  # behaves as not installed
    cfg = load_config(
        recipe(tmp_path, [dict(FINETUNE, name="ft")], backbone="resnet152"), overrides(photos, tmp_path / "c")
    )
    with pytest.raises(
        ItmatchError, match=r"'resnet152' needs torchvision.*pip install 'itmatch\[torchvision\]'"
    ):
        train(cfg, tmp_path / "run")
    argv = ["train", "--config", "vsepp_finetune", "--out", str(tmp_path / "run2"), "--format", "flickr8k",
            "--data", str(photos), "--val-split", "dev", "--quiet", "--set", "model.backbone=vgg19"]  # fmt: skip
    assert main(argv) == 1
    assert "pip install 'itmatch[torchvision]'" in capsys.readouterr().err


def test_backbone_weights_file_feeds_the_model_and_its_feature_cache(tmp_path, photos):
    from itmatch.features.backbones import get_backbone
    from itmatch.features.store import FeatureStore
    from itmatch.fileio import file_sha256
    from itmatch.models import build_model

    # Weights that differ from the built-in ones: the packaged ImageNet weights, head conv halved.
    state = get_backbone("efficientnet_lite0").state_dict()
    head = next(k for k in state if k.startswith("_conv_head"))
    state[head] = state[head] * 0.5
    weights = tmp_path / "lite0-custom.pt"
    torch.save(state, weights)

    cache = tmp_path / "cache"
    stages = [dict(FROZEN, name="frozen")]
    cfg = load_config(recipe(tmp_path, stages), overrides(photos, cache, f"model.backbone_weights={weights}"))
    run = tmp_path / "run"
    train(cfg, run)
    final = torch.load(run / "checkpoints" / "last.pt", weights_only=True)["model"]
    torch.testing.assert_close(final[f"image_encoder.backbone.{head}"], state[head])  # frozen: still the file's
    # The frozen epoch read cached features, and they are those of the file's weights.
    stores = [FeatureStore.open(d) for d in cache.iterdir() if d.is_dir()]
    assert stores and {s.meta["key"]["weights"] for s in stores} == {f"sha256:{file_sha256(weights)}"}

    # A checkpoint holds its backbone: the run still loads once the weights file is gone.
    reference = Matcher.from_run(run, "last").embed_images(load_corpus("flickr8k", str(photos), "dev").image_paths())
    weights.unlink()
    matcher = Matcher.from_run(run, "last")
    torch.testing.assert_close(matcher.embed_images(load_corpus("flickr8k", str(photos), "dev").image_paths()), reference)

    # No built-in weights and no file: a clear error naming the setting (nothing is downloaded).
    with pytest.raises(ItmatchError, match=r"model.backbone_weights: backbone 'resnet152' has no built-in weights"):
        build_model({"backbone": "resnet152", "embed_dim": 16}, vocab_size=10)
    features_cfg = load_config(recipe(tmp_path, stages, backbone=None),
                               overrides(photos, cache, "data.feature_backbone=vgg19"))  # fmt: skip
    with pytest.raises(ItmatchError, match=r"data.feature_weights: backbone 'vgg19' has no built-in weights"):
        train(features_cfg, tmp_path / "run2")
    with pytest.raises(ItmatchError, match=r"weights file .*missing.pt for backbone 'efficientnet_lite0' does not exist"):
        build_model({"backbone": "efficientnet_lite0", "backbone_weights": str(tmp_path / "missing.pt")}, 10)


def test_photo_runs_need_photos_and_a_matching_feature_folder(tmp_path, precomp_data, photos):
    from itmatch.errors import ConfigError

    cfg = load_config(recipe(tmp_path, [dict(FINETUNE, name="ft")]),
                      ["data.format=precomp", f"data.path={precomp_data}", "data.val_split=dev"])  # fmt: skip
    with pytest.raises(ConfigError, match="needs photos.*precomputed features only"):
        train(cfg, tmp_path / "run")
    cfg = load_config(recipe(tmp_path, [dict(FROZEN, name="a")], backbone=None),
                      overrides(photos, tmp_path / "cache", "data.features=none"))  # fmt: skip
    with pytest.raises(ConfigError, match="data.features: none"):
        train(cfg, tmp_path / "run2")


def test_backbone_checkpointing_trains_the_same_weights(tmp_path, photos):
    stages = [dict(FINETUNE, name="ft")]
    runs = {}
    for flag in ("false", "true"):
        cfg = load_config(recipe(tmp_path, stages), overrides(photos, tmp_path / "cache", f"training.backbone_checkpointing={flag}"))
        train(cfg, tmp_path / flag)
        runs[flag] = torch.load(tmp_path / flag / "checkpoints" / "last.pt", weights_only=True)["model"]
    assert runs["true"].keys() == runs["false"].keys()
    for k, v in runs["false"].items():
        torch.testing.assert_close(runs["true"][k], v, rtol=0, atol=0, msg=k)
    # ... and the backbone did train (drop-connect on: the recomputed forward replayed its masks).
    pretrained = get_backbone("efficientnet_lite0").state_dict()
    prefix = "image_encoder.backbone."
    moved = [k for k, v in runs["true"].items() if k.startswith(prefix) and v.is_floating_point()
             and not torch.equal(v, pretrained[k[len(prefix):]])]  # fmt: skip
    assert len(moved) > 100, len(moved)


def test_backbone_checkpointing_needs_a_backbone(tmp_path, precomp_data):
    cfg = load_config("vsepp", tiny_overrides(precomp_data, "stages.0.epochs=1", "stages.1.epochs=0", "training.backbone_checkpointing=true"))
    with pytest.raises(ItmatchError, match=r"training.backbone_checkpointing: the model has no backbone"):
        train(cfg, tmp_path / "run")
