"""Writing the generated data set to disk in the Karpathy split format.

Layout of ``out_dir``::

    dataset_synth.json   {"dataset": "synth", "images": [{"filename", "imgid", "split",
                          "sentences": [{"raw", "tokens", "imgid", "sentid"}] * 5, "sentids"}]}
    images/000123.png    one RGB PNG per image, image_size x image_size
    scenes.json          {"format", "version", "image_size", "scenes": [{"imgid", "filename",
                          "split", "background", "objects", "relations"}]}  (see Scene.to_dict)
    synth_params.json    the generation parameters; written last, it marks the folder complete

Image ``imgid`` depends only on ``(seed, imgid)`` (its own seeded generators), so a data set is
reproducible byte for byte, and a bigger data set starts with the same scenes as a smaller one.
Images are ordered train, then val, then test.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from itmatch.data.text import tokenize
from itmatch.fileio import atomic_write_text
from itmatch.synth.captions import describe
from itmatch.synth.render import render_scene
from itmatch.synth.scenes import sample_scene

GENERATOR_VERSION = 1  # bump when scenes, rendering or captions change, so old folders are rebuilt
DATASET_JSON = "dataset_synth.json"
SCENES_JSON = "scenes.json"
PARAMS_JSON = "synth_params.json"
IMAGE_DIR = "images"
_IMAGE_NAME = re.compile(r"^\d{6,}\.png$")


def _is_complete(out: Path, params: dict[str, Any], filenames: list[str]) -> bool:
    try:
        recorded = json.loads((out / PARAMS_JSON).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    if recorded != params or not (out / DATASET_JSON).is_file() or not (out / SCENES_JSON).is_file():
        return False
    return all((out / IMAGE_DIR / name).is_file() for name in filenames)


def caption_tokens(raw: str) -> list[str]:
    """The Karpathy-style ``tokens`` of a caption: the project tokenizer's words, punctuation dropped."""
    return [t for t in tokenize(raw) if t[0].isalnum()]


def generate_dataset(
    out_dir: str | Path,
    n_train: int = 2000,
    n_val: int = 500,
    n_test: int = 500,
    seed: int = 0,
    image_size: int = 128,
    progress: Callable[[int, int], None] | None = None,
) -> Path:
    """Generate (or reuse) the synthetic data set in ``out_dir``; returns the path of its JSON file.

    A folder that already holds a complete data set made with the same parameters (and generator
    version) is reused as it is. Otherwise everything is regenerated; PNG files of an earlier,
    bigger data set are removed from ``out_dir/images``. ``progress(done, total)`` is called after
    each image when given.
    """
    for name, value in (("n_train", n_train), ("n_val", n_val), ("n_test", n_test), ("seed", seed)):
        if not isinstance(value, (int, np.integer)) or value < 0:
            raise ValueError(f"{name} must be a non-negative integer, got {value!r}")
    if n_train + n_val + n_test == 0:
        raise ValueError("n_train + n_val + n_test must be at least 1")
    if not isinstance(image_size, (int, np.integer)) or image_size < 32:
        raise ValueError(f"image_size must be an integer >= 32, got {image_size!r}")

    out = Path(out_dir)
    params = {
        "generator": "itmatch.synth",
        "version": GENERATOR_VERSION,
        "n_train": int(n_train),
        "n_val": int(n_val),
        "n_test": int(n_test),
        "seed": int(seed),
        "image_size": int(image_size),
    }
    splits = ["train"] * n_train + ["val"] * n_val + ["test"] * n_test
    total = len(splits)
    filenames = [f"{imgid:06d}.png" for imgid in range(total)]
    json_path = out / DATASET_JSON
    if _is_complete(out, params, filenames):
        return json_path

    image_dir = out / IMAGE_DIR
    image_dir.mkdir(parents=True, exist_ok=True)
    (out / PARAMS_JSON).unlink(missing_ok=True)

    images: list[dict[str, Any]] = []
    scenes: list[dict[str, Any]] = []
    for imgid, (split, filename) in enumerate(zip(splits, filenames)):
        scene_rng, render_rng, caption_rng = (
            np.random.default_rng(s) for s in np.random.SeedSequence([int(seed), imgid]).spawn(3)
        )
        scene = sample_scene(scene_rng)
        render_scene(scene, int(image_size), render_rng).save(image_dir / filename, format="PNG")
        sentids = list(range(5 * imgid, 5 * imgid + 5))
        sentences = [
            {"raw": raw, "tokens": caption_tokens(raw), "imgid": imgid, "sentid": sentid}
            for raw, sentid in zip(describe(scene, caption_rng), sentids)
        ]
        images.append(
            {"filename": filename, "imgid": imgid, "split": split, "sentences": sentences, "sentids": sentids}
        )
        scenes.append({"imgid": imgid, "filename": filename, "split": split, **scene.to_dict()})
        if progress is not None:
            progress(imgid + 1, total)

    wanted = set(filenames)
    for stale in image_dir.iterdir():
        if _IMAGE_NAME.match(stale.name) and stale.name not in wanted:
            stale.unlink()

    meta = {
        "format": "itmatch-synth-scenes",
        "version": GENERATOR_VERSION,
        "image_size": int(image_size),
        "scenes": scenes,
    }
    atomic_write_text(out / SCENES_JSON, json.dumps(meta))
    atomic_write_text(json_path, json.dumps({"dataset": "synth", "images": images}))
    atomic_write_text(out / PARAMS_JSON, json.dumps(params, indent=1) + "\n")
    return json_path
