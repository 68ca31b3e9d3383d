"""Recipes: YAML configs with defaults, validation and ``key.path=value`` overrides.

A recipe is plain data: ``data``, ``model``, ``loss``, ``training`` sections and a list of
``stages`` (see :mod:`itmatch.training.schedule`). Named recipes (``vsepp``, ``miie``, ...) ship
inside the package, in ``itmatch/configs/`` (``configs/`` at the repository root links there), so
an installed itmatch finds them too; a path to any YAML file works as well.
"""

from __future__ import annotations

import copy
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import yaml

from itmatch.data.readers import FORMATS
from itmatch.errors import ConfigError
from itmatch.models.joint import MODEL_DEFAULTS
from itmatch.training.schedule import parse_stages
from itmatch.training.schema import Bool, Choice, Field, FilePath, Float, Int, ListOf, Str, check_section
from itmatch.training.step import PRECISIONS

CONFIG_DIR = Path(__file__).resolve().parents[1] / "configs"  # package data (``configs/`` at the repository root links here)

DEFAULTS: dict[str, Any] = {
    "name": "run",
    "seed": 0,
    "data": {
        "format": None,  # precomp | karpathy | coco | flickr8k
        "path": None,
        "image_root": None,
        "train_split": "train",
        "val_split": None,  # None: hold out `val_holdout` training images for model selection
        "val_holdout": 500,
        "holdout_seed": 0,  # fixed across run seeds, so every seed selects on the same images
        "max_train_images": None,
        "features": "auto",  # auto: extract with feature_backbone into the cache; or a features folder
        "feature_backbone": "efficientnet_lite0",
        "feature_weights": None,  # the feature backbone's weights file; None: built-in (efficientnet_lite0)
        "feature_cache": None,  # None: $ITMATCH_CACHE or ~/.cache/itmatch
        "vocab_min_count": 4,
        "image_size": 224,
    },
    "model": dict(MODEL_DEFAULTS),
    # same_image_negatives: other captions of a row's image in the batch count as its negatives
    # (as in the VSE++ reference code) instead of being left out of the loss (the default).
    "loss": {"margin": 0.2, "same_image_negatives": False},
    "training": {
        "batch_size": 128,
        "grad_clip": 2.0,
        "log_every": 50,
        "checkpoint_every": 0,  # steps between mid-epoch checkpoints; 0 = at epoch ends only
        "num_workers": 0,
        "device": "auto",
        "eval_batch_size": 1000,
        "precision": "fp32",  # fp32 | bf16 (autocast, CPU and GPU) | fp16 (autocast + grad scaler, CUDA only)
        "accumulate": 1,  # micro-batches per step (negatives then come from the micro-batch only)
        "threads": None,  # torch intra-op threads; None: torch's default (on a busy CPU, 1 can be faster)
        # Keep freed memory in the process (itmatch.memory.retain_freed_memory; Linux, glibc):
        # auto = on a CPU device when photos go through the CNN in the run's process (a backbone
        # stage, or features extracted into the cache first, or data.features: none).
        "retain_memory": "auto",
        # Recompute the backbone's activations in backward (photo stages): the same gradients at
        # about half the peak memory, for about one more forward pass (docs/training.md).
        "backbone_checkpointing": False,
    },
    "stages": [],
}


# The type and range of every value, checked when a recipe is loaded (so a bad value fails in the
# first second, not after an epoch). One table for all sections; a new key in DEFAULTS or
# MODEL_DEFAULTS gets its line here (tests/test_reliability.py checks that none is missing).
DEVICE_PATTERN = r"auto|cpu|mps|cuda(:\d+)?"
SCHEMA: dict[str, dict[str, Field]] = {
    "": {"name": Str(), "seed": Int(min=0)},
    "data": {
        "format": Choice((None, *FORMATS)),
        "path": FilePath(),
        "image_root": FilePath(),
        "train_split": Str(),
        "val_split": Str(nullable=True),
        "val_holdout": Int(min=1),
        "holdout_seed": Int(min=0),
        "max_train_images": Int(min=1, nullable=True),
        "features": FilePath(nullable=False, keep=("auto", "none")),  # or a features folder
        "feature_backbone": Str(),
        "feature_weights": FilePath(),
        "feature_cache": FilePath(),
        "vocab_min_count": Int(min=1),
        "image_size": Int(min=16),
    },
    "model": {
        "embed_dim": Int(min=1),
        "word_dim": Int(min=1),
        "text_encoder": Choice(("gru", "minilm")),
        "gru_layers": Int(min=1),
        "classifier_hidden": ListOf(Int(min=1), nullable=True, what="a list of positive integers"),
        "classifier_dropout": Float(min=0, max=1, max_open=True),
        "classifier_members": Int(min=1),
        "backbone": Str(nullable=True),
        "backbone_weights": FilePath(),
        "image_pool": Choice(("mean", "gpo")),
        "image_head": Choice(("linear", "mlp")),
        "feature_drop": Float(min=0, max=1, max_open=True),
        "text_pool": Choice((None, "gpo")),
        "text_tune_layers": Int(min=1, nullable=True),
    },
    "loss": {"margin": Float(min=0), "same_image_negatives": Bool()},
    "training": {
        "batch_size": Int(min=2),  # negatives come from the batch
        "grad_clip": Float(min=0),  # 0: no clipping
        "log_every": Int(min=1),
        "checkpoint_every": Int(min=0),
        "num_workers": Int(min=0),
        "device": Str(pattern=DEVICE_PATTERN, what="auto, cpu, mps, cuda or cuda:N"),
        "eval_batch_size": Int(min=1),
        "precision": Choice(tuple(PRECISIONS)),
        "accumulate": Int(min=1),
        "threads": Int(min=1, nullable=True),
        "retain_memory": Choice(("auto", True, False)),
        "backbone_checkpointing": Bool(),
    },
}


def validate_values(cfg: dict[str, Any]) -> dict[str, Any]:
    """Every value of a merged config checked against :data:`SCHEMA` (type and range), cleaned."""
    out = check_section(cfg, SCHEMA[""], "")
    for section, fields in SCHEMA.items():
        if section and isinstance(out.get(section), dict):
            out[section] = check_section(out[section], fields, section)
    t = out["training"]
    if t["batch_size"] < 2 * t["accumulate"]:  # every micro-batch needs two pairs: negatives come from it
        raise ConfigError(
            f"training.accumulate: expected at most training.batch_size / 2 ({t['batch_size'] // 2}), got {t['accumulate']}"
        )
    return out


def resolve_config_path(name_or_path: str | Path) -> Path:
    """A recipe name (``vsepp``) -> ``configs/vsepp.yaml``; a path is returned as is."""
    p = Path(name_or_path)
    if p.suffix in (".yaml", ".yml") or p.exists():
        if not p.is_file():
            raise ConfigError(f"config file {p} does not exist")
        return p
    candidate = CONFIG_DIR / f"{name_or_path}.yaml"
    if candidate.is_file():
        return candidate
    known = sorted(q.stem for q in CONFIG_DIR.glob("*.yaml")) if CONFIG_DIR.is_dir() else []
    raise ConfigError(f"unknown recipe {name_or_path!r}: not a file and not one of {known} in {CONFIG_DIR}")


def _merge(base: dict[str, Any], update: Mapping[str, Any], where: str) -> dict[str, Any]:
    out = copy.deepcopy(base)
    for key, value in update.items():
        if key not in out:
            raise ConfigError(f"{where}: unknown key {key!r}; known: {sorted(out)}")
        if isinstance(out[key], dict) and isinstance(value, Mapping):
            out[key] = _merge(out[key], value, f"{where}.{key}")
        else:
            out[key] = copy.deepcopy(value)
    return out


def parse_override(text: str) -> tuple[list[str], Any]:
    """``training.batch_size=64`` -> (["training", "batch_size"], 64); the value is parsed as YAML."""
    if "=" not in text:
        raise ConfigError(f"override {text!r}: expected KEY.PATH=VALUE")
    key, value = text.split("=", 1)
    return key.strip().split("."), yaml.safe_load(value)


def apply_overrides(cfg: dict[str, Any], overrides: Iterable[str], skip_missing_stages: bool = False) -> dict[str, Any]:
    """Apply ``KEY.PATH=VALUE`` overrides. In the ``stages`` list an element is addressed by index
    (``stages.1.epochs=3``), by stage name (``stages.hardest.epochs=3``) or all at once
    (``stages.*.lr=1e-3``). With ``skip_missing_stages`` an override naming a stage the recipe
    does not have is ignored (the comparison runner applies one set of overrides to several recipes).
    """
    cfg = copy.deepcopy(cfg)
    for text in overrides:
        keys, value = parse_override(text)
        _set(cfg, keys, value, text, 0, skip_missing_stages)
    return cfg


def _set(node: Any, keys: list[str], value: Any, text: str, depth: int, skip_missing_stages: bool) -> None:
    key, last = keys[depth], depth == len(keys) - 1
    where = ".".join(keys[: depth + 1])
    if isinstance(node, list):
        if key == "*":
            targets = list(range(len(node)))
        elif key.isdigit() and int(key) < len(node):
            targets = [int(key)]
        else:
            targets = [i for i, item in enumerate(node) if isinstance(item, dict) and item.get("name") == key]
            if not targets:
                if skip_missing_stages and keys[0] == "stages":
                    return
                raise ConfigError(f"override {text!r}: {where!r} is neither a valid index nor a stage name")
        for i in targets:
            if last:
                node[i] = value
            else:
                _set(node[i], keys, value, text, depth + 1, skip_missing_stages)
    elif isinstance(node, dict):
        if last:
            if key not in node and not _stage_key(keys):
                raise ConfigError(f"override {text!r}: no key {where!r}")
            node[key] = value
        elif key in node:
            _set(node[key], keys, value, text, depth + 1, skip_missing_stages)
        else:
            raise ConfigError(f"override {text!r}: no key {where!r}")
    else:
        raise ConfigError(f"override {text!r}: {'.'.join(keys[:depth])!r} is not a section")


def _stage_key(keys: list[str]) -> bool:
    # Stage dictionaries may omit optional keys, so an override may add one.
    return len(keys) >= 3 and keys[0] == "stages"


def resolve_config(raw: Mapping[str, Any], where: str = "config") -> dict[str, Any]:
    """Fill defaults, reject unknown keys, validate the stages. Returns a plain dict."""
    if not isinstance(raw, Mapping):
        raise ConfigError(f"{where}: expected a mapping at the top level")
    cfg = validate_values(_merge(DEFAULTS, raw, where))
    if not cfg["stages"]:
        raise ConfigError("no stages; a recipe needs at least one stage")
    cfg["stages"] = [s.to_dict() for s in parse_stages(cfg["stages"], where="stages")]
    return cfg


def load_config(
    name_or_path: str | Path, overrides: Iterable[str] = (), skip_missing_stages: bool = False
) -> dict[str, Any]:
    path = resolve_config_path(name_or_path)
    try:
        raw = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: not valid YAML: {exc}") from exc
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}: expected a mapping at the top level")
    merged = _merge(DEFAULTS, raw, str(path))
    overrides = list(overrides)
    try:
        return resolve_config(apply_overrides(merged, overrides, skip_missing_stages), where=str(path))
    except ConfigError as exc:
        # A fault of the file itself is reported with the file's name; one that an override
        # brought in, with the key alone (the user typed it: --set training.batch_size=abc).
        if overrides:
            try:
                resolve_config(merged, where=str(path))
            except ConfigError as alone:
                if str(alone) == str(exc):
                    raise ConfigError(f"{path}: {exc}") from None
            raise
        raise ConfigError(f"{path}: {exc}") from None


# What a resumed run may change: how it runs, not what it computes. Everything else (data, model,
# loss, batch size, learning rates, precision, the stages already run) would make the resumed run
# a different run than its checkpoints, so it is refused.
RESUMABLE_KEYS = frozenset({
    "training.device", "training.threads", "training.num_workers", "training.eval_batch_size", "training.retain_memory",
    "training.backbone_checkpointing", "training.log_every", "training.checkpoint_every", "data.feature_cache",
})  # fmt: skip


def _flat(cfg: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in cfg.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping) and key != "lr_parts":
            out.update(_flat(value, name + "."))
        else:
            out[name] = value
    return out


def resume_config(
    saved: Mapping[str, Any], requested: Mapping[str, Any], progress: Mapping[str, int], where: str = "run"
) -> dict[str, Any]:
    """The config a resumed run continues with: ``saved`` (the run's own) with the changes of
    ``requested`` that a resume allows: :data:`RESUMABLE_KEYS`, and the ``epochs`` of a stage not
    yet finished (not below what it has already run). ``progress`` is the checkpoint's
    (``stage``, ``epoch``, ``step``). Any other difference raises :class:`ConfigError` naming every key.
    """
    saved, requested = copy.deepcopy(dict(saved)), copy.deepcopy(dict(requested))
    stage_now, epochs_done = int(progress.get("stage", 0)), int(progress.get("epoch", 0))
    mid_epoch = int(progress.get("step", 0)) > 0
    saved_stages, wanted_stages = saved.get("stages") or [], requested.get("stages") or []
    refused: list[str] = []
    if [s.get("name") for s in saved_stages] != [s.get("name") for s in wanted_stages]:
        refused.append("stages (their number or names)")
    else:
        for i, (old, new) in enumerate(zip(saved_stages, wanted_stages)):
            for key in sorted(set(old) | set(new)):
                if old.get(key) == new.get(key):
                    continue
                finished = i < stage_now
                least = epochs_done + (1 if mid_epoch else 0) if i == stage_now else 0
                if key == "epochs" and not finished and isinstance(new.get(key), int) and new[key] >= least:
                    old[key] = new[key]
                else:
                    refused.append(f"stages.{old.get('name', i)}.{key}")
    # Keys a newer itmatch added take their default in an older run's config.
    old_flat = {**_flat({k: v for k, v in DEFAULTS.items() if k != "stages"}), **_flat(_without_stages(saved))}
    new_flat = _flat(_without_stages(requested))
    for key in sorted(set(old_flat) | set(new_flat)):
        if old_flat.get(key) == new_flat.get(key):
            continue
        if key not in RESUMABLE_KEYS:
            refused.append(key)
            continue
        section, name = key.split(".", 1)
        saved.setdefault(section, {})[name] = new_flat.get(key)
    if refused:
        allowed = ", ".join(sorted(RESUMABLE_KEYS)) + ", and the epochs of stages not yet finished"
        raise ConfigError(
            f"{where}: --resume cannot change {', '.join(refused)} (a resumed run must compute what its "
            f"checkpoints started; a resume may change only {allowed}); start a new run with another --out instead"
        )
    return saved


def _without_stages(cfg: Mapping[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in cfg.items() if k != "stages"}
