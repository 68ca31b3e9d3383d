"""A trained run as a matcher: embed sentences and photos into its joint space.

This is what evaluation, the search index and the HTTP service use; it never imports the
training loop.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from itmatch.checkpoints import load_checkpoint
from itmatch.data import Corpus
from itmatch.errors import ItmatchError
from itmatch.fileio import file_sha256
from itmatch.models import JointModel, build_model
from itmatch.models.joint import uses_grid_features
from itmatch.models.text_processing import (
    TextProcessor,
    encode_by_length,
    make_text_processor,
    text_batch_size,
)


def checkpoint_path(run: str | Path, checkpoint: str = "best") -> Path:
    """``run`` is a run folder (then ``checkpoint`` is ``best``/``last`` or a file name) or a file."""
    p = Path(run)
    if p.is_file():
        return p
    if not p.is_dir():
        raise ItmatchError(f"run {p} does not exist (expected a run folder or a checkpoint file)")
    name = checkpoint if checkpoint.endswith(".pt") else f"{checkpoint}.pt"
    path = p / "checkpoints" / name
    if not path.is_file():
        raise ItmatchError(f"run {p} has no checkpoint {name} (looked for {path})")
    return path


class Matcher:
    """A trained model with its text processor, ready to embed sentences, features and photos."""

    def __init__(
        self,
        model: JointModel,
        processor: TextProcessor,
        config: dict[str, Any],
        checkpoint: Path,
        device: torch.device,
        sha256: str,
    ):
        self.model = model.eval()
        self.processor = processor
        self.config = config
        self.checkpoint = checkpoint
        self.device = device
        self.sha256 = sha256
        self._feature_backbone: torch.nn.Module | None = None

    @classmethod
    def from_run(cls, run: str | Path, checkpoint: str = "best", device: str | torch.device = "auto") -> Matcher:
        """``device``: where the model (and any feature extraction for it) runs; ``auto``: cuda,
        then mps, then cpu (see :func:`itmatch.device.pick_device`). ``run`` may also be an
        exported model folder or an installed model's name (see :meth:`from_pretrained`)."""
        from itmatch.data.text import Vocabulary
        from itmatch.device import pick_device
        from itmatch.pretrained import installed_models, model_dir

        if model_dir(run) is not None:
            return cls.from_pretrained(run, device=device)
        if not Path(run).exists():
            raise ItmatchError(f"run {run} does not exist (expected a run folder, a checkpoint file, an exported "
                               f"model folder or an installed model: {', '.join(installed_models()) or 'none'})")  # fmt: skip

        # Absolute: an index records it, and must find it again from any directory.
        path = checkpoint_path(run, checkpoint).absolute()
        state = load_checkpoint(path)
        for key in ("model", "config", "vocab", "feature_dim"):
            if key not in state:
                raise ItmatchError(f"checkpoint {path} is not an itmatch checkpoint (no {key!r})")
        cfg = state["config"]
        vocab = Vocabulary.from_dict(state["vocab"])
        model = build_model(cfg["model"], len(vocab), int(state["feature_dim"]), pretrained_backbone=False)
        model.load_state_dict(state["model"])
        dev = pick_device(device)
        return cls(model.to(dev), make_text_processor(cfg["model"], vocab), cfg, path, dev, file_sha256(path))

    @classmethod
    def from_pretrained(cls, model: str | Path, device: str | torch.device = "auto") -> Matcher:
        """An installed model by name (``itmatch models`` lists them, e.g. ``itmatch-f8k``) or a
        folder written by ``itmatch export``; its backbones' weights must be the ones it was
        trained on (:class:`itmatch.pretrained.BackboneMismatchError` otherwise)."""
        from itmatch.pretrained import load_model

        return load_model(model, device=device)

    @property
    def identity(self) -> dict[str, str]:
        """What identifies the model: an index built with one model refuses queries from another."""
        return {"checkpoint_sha256": self.sha256, "recipe": str(self.config.get("name", "")), "checkpoint": str(self.checkpoint)}

    @property
    def embed_dim(self) -> int:
        return int(self.config["model"]["embed_dim"])

    @torch.no_grad()
    def embed_texts(self, texts: Sequence[str], batch_size: int = 512) -> torch.Tensor:
        """L2-normalised joint-space embeddings of sentences (len(texts) x d, on the CPU), in
        batches of similar length (of at most CPU_TEXT_BATCH on a CPU)."""
        if not texts:
            return torch.zeros(0, self.embed_dim)
        encoded = self.processor.encode(list(texts))
        batch = text_batch_size(batch_size, self.device)
        return encode_by_length(encoded, self.processor.collate, self.model.encode_texts, batch, self.device)

    @torch.no_grad()
    def embed_features(self, features: np.ndarray | torch.Tensor, batch_size: int = 1024) -> torch.Tensor:
        """Embeddings of precomputed CNN features (N x D, or N x cells x D grids for a model with
        ``model.image_pool: gpo``) -> N x d (model without a backbone)."""
        feats = torch.as_tensor(np.asarray(features, dtype=np.float32))
        out = [self.model.encode_images(feats[i : i + batch_size].to(self.device)).cpu() for i in range(0, len(feats), batch_size)]
        return torch.cat(out) if out else torch.zeros(0, self.embed_dim)

    def image_transform(self):
        """The evaluation preprocessing of the model's image backbone (resize, centre crop, normalise)."""
        from itmatch.features.backbones import backbone_spec

        name = self.config["model"].get("backbone") or self.config["data"]["feature_backbone"]
        return backbone_spec(name).transform(int(self.config["data"].get("image_size", 224)), train=False)

    def _pixels_to_features(self, pixels: torch.Tensor) -> torch.Tensor:
        """What the image encoder reads: the pixels themselves when the model has its own
        (fine-tuned) backbone, else the features of the frozen backbone the run was trained on."""
        if self.model.image_encoder.backbone is not None:
            return pixels
        if self._feature_backbone is None:
            from itmatch.features.backbones import get_backbone, require_weights

            name, weights = self.config["data"]["feature_backbone"], self.config["data"].get("feature_weights")
            weights = require_weights(name, weights, "data.feature_weights")
            self._feature_backbone = get_backbone(name, weights).to(self.device).eval()
        if uses_grid_features(self.config["model"]):  # a GPO image encoder reads the grid cells
            return self._feature_backbone.feature_map(pixels).flatten(2).transpose(1, 2)
        return self._feature_backbone(pixels)

    @torch.no_grad()
    def embed_images(self, images: Sequence[str | Path | Any], batch_size: int = 32) -> torch.Tensor:
        """Embeddings of photos (paths or PIL images) -> N x d. Unreadable files raise ImageReadError."""
        from itmatch.errors import ImageReadError

        transform = self.image_transform()
        out = []
        for i in range(0, len(images), batch_size):
            pixels, failures = [], {}
            for image in images[i : i + batch_size]:
                try:
                    pixels.append(transform(image))
                except Exception as exc:  # PIL raises many types for bad files
                    failures[str(image)] = f"{type(exc).__name__}: {exc}"
            if failures:
                raise ImageReadError(failures)
            inputs = self._pixels_to_features(torch.stack(pixels).to(self.device))
            out.append(self.model.encode_images(inputs).cpu())
        return torch.cat(out) if out else torch.zeros(0, self.embed_dim)

    def embed_corpus(self, corpus: Corpus, progress: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
        """Embeddings of a corpus's N images and 5N captions (caption rows in image order).

        A model without a backbone reads the corpus's cached features (extracted once with the
        run's ``data.feature_backbone``); a model with its own (possibly fine-tuned) backbone
        embeds the photos through it and never reads cached features, which would be stale.
        """
        if self.model.image_encoder.backbone is not None:
            from itmatch.features.corpus import check_photos

            images = self.embed_images(check_photos(corpus))
        else:
            from itmatch.features.corpus import corpus_features

            grid = uses_grid_features(self.config.get("model", {}))
            features = corpus_features(corpus, self.config["data"], progress=progress, device=self.device, grid=grid)
            images = self.embed_features(features)
        return images, self.embed_texts(corpus.flat_captions())


def join_embeddings(parts: Sequence[torch.Tensor]) -> torch.Tensor:
    """One ensemble embedding from k models' embeddings of the same rows: each row of each part
    L2-normalised, side by side, scaled by 1/sqrt(k), so that the dot product of two joined rows is
    the mean of the k cosine similarities (:class:`Ensemble`)."""
    if not parts:
        raise ItmatchError("no embeddings to join")
    return torch.cat([torch.nn.functional.normalize(p.float(), dim=1) for p in parts], dim=1) / len(parts) ** 0.5


class Ensemble:
    """Several trained models as one matcher: a sentence-photo pair scores the mean of the
    members' cosine similarities (the model ensembles reported beside single models by SCAN,
    VSRN and VSE-infinity).

    Each embedding is the concatenation of the members' unit vectors scaled by 1/sqrt(k), so it is
    a unit vector whose dot product with another is exactly that mean: recall, the invariance
    metrics and saved embeddings take it as they take one model's (k x d wide). Every member
    embeds the photos through its own backbone or cached features, so members may differ in
    backbone, photo size or encoders; they must share the data they are scored on.
    """

    def __init__(self, members: Sequence[Matcher]):
        if len(members) < 2:
            raise ItmatchError(f"an ensemble needs at least 2 models, got {len(members)}")
        self.members = list(members)

    @classmethod
    def from_runs(cls, runs: Sequence[str | Path], checkpoint: str = "best", device: str | torch.device = "auto") -> Ensemble:
        """Members from run folders, checkpoint files, exported folders or installed model names
        (anything :meth:`Matcher.from_run` reads), each at its ``checkpoint``."""
        return cls([Matcher.from_run(run, checkpoint, device=device) for run in runs])

    @property
    def config(self) -> dict[str, Any]:
        """The first member's config: where :func:`itmatch.evaluation.runs.embed_run` finds the data."""
        return self.members[0].config

    @property
    def identity(self) -> dict[str, Any]:
        """As :attr:`Matcher.identity` (the digest covers the members' checkpoints in order), plus
        ``members``: their checkpoint files, from which a search index reloads the ensemble."""
        digest = hashlib.sha256(" ".join(m.sha256 for m in self.members).encode()).hexdigest()
        return {"checkpoint_sha256": digest, "recipe": "ensemble(" + ", ".join(str(m.config.get("name", "")) for m in self.members) + ")",
                "checkpoint": " + ".join(str(m.checkpoint) for m in self.members),
                "members": [str(m.checkpoint) for m in self.members]}  # fmt: skip

    @property
    def embed_dim(self) -> int:
        return sum(m.embed_dim for m in self.members)

    def embed_texts(self, texts: Sequence[str], batch_size: int = 512) -> torch.Tensor:
        return join_embeddings([m.embed_texts(texts, batch_size) for m in self.members])

    def embed_images(self, images: Sequence[str | Path | Any], batch_size: int = 32) -> torch.Tensor:
        return join_embeddings([m.embed_images(images, batch_size) for m in self.members])

    def embed_corpus(self, corpus: Corpus, progress: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
        pairs = [m.embed_corpus(corpus, progress=progress) for m in self.members]
        return join_embeddings([im for im, _ in pairs]), join_embeddings([tx for _, tx in pairs])
