"""On-disk cache of a frozen sentence encoder's outputs (MiniLM sentence embeddings).

A frozen MiniLM gives a caption the same 384-d vector in every epoch and every run, so the one
transformer pass over a data set's captions (minutes on a CPU) is paid once per machine rather
than once per run: :func:`prime_sentence_cache` looks the captions up in the cache, encodes only
the missing ones, stores them, and fills the encoder's in-memory memo with all of them.

Layout: ``CACHE/sentences/minilm-<weights digest>.npz`` (NumPy arrays only, read with
``allow_pickle=False``): ``tokens`` (the concatenated word-piece ids of every sentence),
``offsets`` (sentence ``i`` is ``tokens[offsets[i]:offsets[i + 1]]``) and ``vectors``
(float32, one row per sentence). An encoder that pools token states itself (``text_pool: gpo``)
caches those instead, in ``minilm-tokens-<weights digest>.npz``: ``vectors`` there holds one
float16 row per token, sentence ``i``'s rows being ``vectors[offsets[i]:offsets[i + 1]]``.
The key is a digest of the transformer's weights, like the image feature cache's key, so a
fine-tuned transformer never reads a pretrained one's vectors; the tokenizer's truncation is part
of the token ids themselves. Writes are atomic under an exclusive lock; a cache file that cannot
be read is rebuilt.
"""

from __future__ import annotations

import hashlib
import io
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import torch

from itmatch.fileio import WRITER_WAIT_S, atomic_write_bytes, exclusive_lock
from itmatch.models.minilm import MiniLMTextEncoder

ENCODE_BATCH = 256  # sentences per transformer pass (all of one length: no padding)


def weights_digest(module: torch.nn.Module) -> str:
    """A digest of ``module``'s state (names, shapes, dtypes, values): the cache key."""
    h = hashlib.sha256()
    for name, tensor in sorted(module.state_dict().items()):
        t = tensor.detach().cpu().contiguous()
        h.update(f"{name}:{tuple(t.shape)}:{t.dtype}".encode())
        h.update(t.view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return h.hexdigest()[:16]


def per_token(encoder: MiniLMTextEncoder) -> bool:
    """Whether ``encoder`` memoises token states (GPO pooling) rather than sentence embeddings."""
    return encoder.pool is not None


def cache_file(cache_dir: str | Path, encoder: MiniLMTextEncoder) -> Path:
    kind = "minilm-tokens" if per_token(encoder) else "minilm"
    return Path(cache_dir) / "sentences" / f"{kind}-{weights_digest(encoder.backbone)}.npz"


def _read(path: Path, tokens_each: bool) -> dict[bytes, np.ndarray]:
    if not path.is_file():
        return {}
    try:
        with np.load(path, allow_pickle=False) as z:
            tokens, offsets, vectors = z["tokens"], z["offsets"], z["vectors"]
    except (OSError, ValueError, KeyError):
        return {}  # torn or foreign file: rebuilt by the next write
    n = len(offsets) - 1
    if len(vectors) != (offsets[-1] if tokens_each else n):
        return {}  # not this layout: rebuilt by the next write
    return {
        tokens[offsets[i] : offsets[i + 1]].astype(np.int64).tobytes(): (
            vectors[offsets[i] : offsets[i + 1]] if tokens_each else vectors[i]
        )
        for i in range(n)
    }


def _write(path: Path, entries: dict[bytes, np.ndarray], tokens_each: bool) -> None:
    seqs = [np.frombuffer(k, dtype=np.int64) for k in entries]
    offsets = np.zeros(len(seqs) + 1, dtype=np.int64)
    offsets[1:] = np.cumsum([len(s) for s in seqs])
    tokens = np.concatenate(seqs).astype(np.int32) if seqs else np.zeros(0, dtype=np.int32)
    dtype = np.float16 if tokens_each else np.float32
    if not entries:
        vectors = np.zeros((0, 0), dtype)
    elif tokens_each:
        vectors = np.concatenate(list(entries.values())).astype(dtype)
    else:
        vectors = np.stack(list(entries.values())).astype(dtype)
    buf = io.BytesIO()
    np.savez(buf, tokens=tokens, offsets=offsets, vectors=vectors)
    atomic_write_bytes(path, lambda f: f.write(buf.getvalue()))


def prime_sentence_cache(
    encoder: MiniLMTextEncoder,
    sentences: Sequence[Sequence[int]],
    cache_dir: str | Path,
    progress: Callable[[int, int], None] | None = None,
) -> dict[str, int]:
    """Fill ``encoder``'s memo with the sentence embeddings of ``sentences`` (word-piece ids as made
    by :class:`~itmatch.models.minilm.MiniLMTextProcessor`), computing and caching the missing ones.

    Only for a frozen transformer (the memo is only used then); returns counts
    ``{"sentences", "cached", "computed"}``. ``progress(done, total)`` is called per encoded batch.
    """
    if not encoder.backbone_frozen():
        raise ValueError("prime_sentence_cache: the transformer trains, so its outputs change every step")
    keys = list(dict.fromkeys(np.asarray(s, dtype=np.int64).tobytes() for s in sentences))
    path = cache_file(cache_dir, encoder)
    tokens_each = per_token(encoder)
    stored = _read(path, tokens_each)
    missing = [k for k in keys if k not in stored]
    if missing:
        with exclusive_lock(  # a second run started on the same cache waits for the first one's pass
            path.with_suffix(".lock"), f"{path} is still being written by another run", wait_s=WRITER_WAIT_S
        ):
            stored = _read(path, tokens_each)  # another run may have written them meanwhile
            missing = [k for k in keys if k not in stored]
            fresh = _encode(encoder, missing, progress)
            if fresh:
                stored.update(fresh)
                _write(path, stored, tokens_each)
    encoder.prime_memo({k: encoder.memo_value(torch.from_numpy(np.array(stored[k]))) for k in keys})
    return {"sentences": len(keys), "cached": len(keys) - len(missing), "computed": len(missing)}


def _encode(
    encoder: MiniLMTextEncoder, keys: list[bytes], progress: Callable[[int, int], None] | None
) -> dict[bytes, np.ndarray]:
    by_length: dict[int, list[bytes]] = {}
    for k in keys:
        by_length.setdefault(len(k) // 8, []).append(k)
    device = next(encoder.backbone.parameters()).device
    out: dict[bytes, np.ndarray] = {}
    was_training = encoder.backbone.training
    encoder.backbone.eval()
    try:
        with torch.no_grad():
            for _, group in sorted(by_length.items()):
                for i in range(0, len(group), ENCODE_BATCH):
                    chunk = group[i : i + ENCODE_BATCH]
                    ids = torch.from_numpy(np.stack([np.frombuffer(k, dtype=np.int64) for k in chunk])).to(
                        device
                    )
                    encoded = encoder.memo_value(encoder.encode_unpadded(ids).cpu())
                    out.update(zip(chunk, encoded.numpy()))
                    if progress is not None:
                        progress(len(out), len(keys))
    finally:
        encoder.backbone.train(was_training)
    return out
