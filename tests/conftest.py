"""Shared test fixtures.

Real data lives beside the project in ``../shared/data`` (or ``$ITMATCH_SHARED_DATA``); tests that
need it skip when it is absent. Everything else uses data the tests make themselves.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

REPO_ROOT = Path(__file__).resolve().parents[1]
SHARED_DATA = Path(os.environ.get("ITMATCH_SHARED_DATA", REPO_ROOT.parent / "shared" / "data"))

# One intra-op thread: on a shared 2-core machine two threads contend and tiny ops slow ~10x.
torch.set_num_threads(1)


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Tests marked ``cuda`` skip on a machine without a CUDA device."""
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA device")
    for item in items:
        if "cuda" in item.keywords:
            item.add_marker(skip)


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """Path to ``../shared/data``; skips the test when it is absent."""
    if not SHARED_DATA.is_dir():
        pytest.skip(f"real data folder {SHARED_DATA} is absent")
    return SHARED_DATA


WORDS = [f"w{i}" for i in range(40)]


def write_precomp(folder: Path, splits: dict[str, int], dim: int = 32, seed: int = 0) -> Path:
    """A learnable VSE++ "precomp" data set: each image shows 3 of 40 concepts; its features are
    the sum of the concepts' random vectors plus noise, and its 5 captions name the concepts in
    varying order with filler words. Recall far above chance is reachable in a few epochs."""
    import numpy as np

    rng = np.random.default_rng(seed)
    concept_vectors = rng.normal(size=(len(WORDS), dim))
    folder.mkdir(parents=True, exist_ok=True)
    for split, n in splits.items():
        feats, lines = [], []
        for _ in range(n):
            concepts = rng.choice(len(WORDS), size=3, replace=False)
            feats.append(concept_vectors[concepts].sum(0) + 0.3 * rng.normal(size=dim))
            for _ in range(5):
                order = rng.permutation(concepts)
                lines.append(" ".join(["a", "photo", "of"] + [WORDS[c] for c in order]))
        np.save(folder / f"{split}_ims.npy", np.asarray(feats, dtype=np.float32))
        (folder / f"{split}_caps.txt").write_text("\n".join(lines) + "\n")
    return folder


@pytest.fixture()
def precomp_data(tmp_path: Path) -> Path:
    return write_precomp(tmp_path / "precomp", {"train": 200, "dev": 60, "test": 60})


TINY_MODEL = ["model.embed_dim=32", "model.word_dim=16", "training.batch_size=32", "training.log_every=1",
              "data.vocab_min_count=1"]  # fmt: skip


def tiny_overrides(data: Path, *extra: str) -> list[str]:
    return ["data.format=precomp", f"data.path={data}", "data.val_split=dev", *TINY_MODEL, *extra]


@pytest.fixture(scope="session")
def built_wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """itmatch's wheel, built once per test session from a copy of the sources (building writes
    build/ and egg-info next to them); the tests that read it share it."""
    import shutil
    import subprocess
    import sys

    pytest.importorskip("setuptools")
    root = Path(__file__).resolve().parents[1]
    tmp = tmp_path_factory.mktemp("wheel")
    source = tmp / "source"
    shutil.copytree(root / "src", source / "src", ignore=shutil.ignore_patterns("__pycache__", "*.egg-info"))
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(root / name, source / name)
    cmd = [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", str(source), "-w", str(tmp)]
    subprocess.run(cmd, check=True, capture_output=True, cwd=tmp)
    (wheel,) = tmp.glob("itmatch-*.whl")
    return wheel
