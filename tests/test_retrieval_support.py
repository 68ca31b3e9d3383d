"""Shared set-up of the search tests (imported by test_retrieval*, test_serve*, test_browser*).

``search_setup(tmp_path_factory)`` makes, once per test session whichever module asks first:
a tiny generated image-caption data set, a tiny run trained on it (2 epochs, embed_dim 32, the
feature cache in a temporary folder), a second run that is a different model (the first one's
weights, perturbed), a photo folder (sub-folder, one corrupt file, a non-image, a hidden folder)
and an index of that folder with the data set's sentences.
"""

from __future__ import annotations

import json
import shutil
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch

from itmatch.cli import main

N_INDEXED = 20  # photos in the indexed folder
_CACHE: dict[str, SearchSetup] = {}


@dataclass(frozen=True)
class SearchSetup:
    root: Path
    dataset_json: Path
    spare: list[Path]  # generated photos that are not in the indexed folder
    run: Path
    other_run: Path  # a different model
    photos: Path
    index: Path
    summary: dict


def _train(root: Path, dataset_json: Path) -> Path:
    run = root / "run"
    rc = main([
        "train", "--config", "vsepp", "--format", "karpathy", "--data", str(dataset_json), "--out", str(run),
        "--set", f"data.feature_cache={root / 'feature-cache'}", "--set", "data.val_split=val",
        "--set", "model.embed_dim=32", "--set", "model.word_dim=16", "--set", "training.batch_size=16",
        "--set", "data.vocab_min_count=1", "--set", "training.log_every=1000", "--set", "stages.1.epochs=1",
        "--quiet",
    ])  # fmt: skip
    assert rc == 0
    return run


def _other_model(run: Path, out: Path) -> Path:
    """A run folder holding a different model: the same architecture with perturbed weights."""
    shutil.copytree(run, out)
    state = torch.load(out / "checkpoints" / "best.pt", weights_only=True)
    g = torch.Generator().manual_seed(1)
    state["model"] = {k: v + 0.05 * torch.randn(v.shape, generator=g) if v.is_floating_point() else v
                      for k, v in state["model"].items()}  # fmt: skip
    torch.save(state, out / "checkpoints" / "best.pt")
    return out


def write_photo_folder(folder: Path, images: list[Path]) -> None:
    """``images`` split over ``folder`` and ``folder/sub``, plus files the index must skip."""
    (folder / "sub").mkdir(parents=True)
    (folder / ".hidden").mkdir()
    for i, src in enumerate(images):
        shutil.copy(src, (folder / "sub" if i % 3 == 2 else folder) / src.name)
    (folder / "broken.jpg").write_bytes(b"this is not a JPEG at all")
    (folder / "notes.txt").write_text("not a photo\n")
    shutil.copy(images[0], folder / ".hidden" / "hidden.png")


def search_setup(tmp_path_factory: pytest.TempPathFactory) -> SearchSetup:
    if "setup" in _CACHE:
        return _CACHE["setup"]
    from itmatch.synth import generate_dataset

    root = tmp_path_factory.mktemp("search")
    dataset_json = generate_dataset(root / "synth", n_train=24, n_val=8, n_test=0, seed=0, image_size=64)
    images = sorted((root / "synth" / "images").glob("*.png"))
    run = _train(root, dataset_json)
    other = _other_model(run, root / "other-run")
    photos = root / "photos"
    write_photo_folder(photos, images[:N_INDEXED])
    index = root / "index"
    import contextlib
    import io

    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        rc = main(["index", str(run), str(photos), "-o", str(index), "--captions", str(dataset_json), "--json"])
    assert rc == 0
    summary = json.loads(out.getvalue())
    setup = SearchSetup(root, dataset_json, images[N_INDEXED:], run, other, photos, index, summary)
    _CACHE["setup"] = setup
    return setup
