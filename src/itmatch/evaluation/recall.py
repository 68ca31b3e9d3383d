"""Recall@K for image-sentence matching: the standard protocol, exact and vectorised.

The protocol (docs/design.md, "Evaluation protocol"):

* N test images, 5 captions each; image ``i`` owns caption rows ``5i .. 5i+4``.
* Ranks are 0-based, and a negative candidate scoring **equal** to the positive is ranked ahead
  of it (ties with negatives count against the query). With ``s`` the N x 5N similarity matrix:

  - image annotation (i2t), query image ``i``: ``best = max(s[i, 5i:5i+5])`` and
    ``rank_i = #{negative captions c (not 5i..5i+4) : s[i, c] >= best}``: the best rank of its own
    captions, so only other images' captions can be ahead of it. A tie between two of its own
    captions (Flickr8k has images with duplicate captions) costs nothing; a tie with a negative
    costs a rank;
  - image search (t2i), query caption ``j``: ``pos = s[j // 5, j]`` and
    ``rank_j = #{images k : s[k, j] >= pos} - 1``.

  On tie-free scores this is exactly VSE++ ``i2t``/``t2i``: there ``rank_i`` is the smallest
  position of image ``i``'s captions in ``argsort(s[i])[::-1]``, i.e. the number of captions
  scoring strictly above the best positive; likewise for t2i. With ties, a collapsed model that
  gives every input the same vector gets rank 5N-5 (i2t: every negative) and N-1 (t2i)
  everywhere, so every R@K is 0 once N > 10.
* ``R@K = 100 * mean(rank < K)`` for K = 1, 5, 10; ``medr = floor(median(rank)) + 1``;
  ``meanr = mean(rank) + 1``; ``rsum`` = the sum of the six recalls.
* Protocols: ``"all"`` (the default) scores all N images at once; ``"1k"`` / ``"5k"`` are the
  same on exactly 1,000 (Flickr "1K") / 5,000 (MSCOCO "5K") test images and refuse any other N,
  so a label always says what was computed; ``"5fold"`` splits the images into 5 equal
  consecutive folds (with their captions), scores each, and reports the mean of every named
  value over the folds; ``"5fold1k"`` is that on exactly 5,000 images (MSCOCO "1K"). ``rsum`` of a 5-fold summary is the mean of the fold rsums, which equals
  the sum of the mean recalls.

How it is computed: similarities are produced block by block (at most ``chunk_size`` images by
``5 * chunk_size`` captions at a time; block sizes are balanced, ``ceil(N / blocks)`` images
each) and ranks are *counted*, never sorted: ``rank = (scores >= threshold).sum()`` less the
positives that reach the threshold. Each similarity is computed exactly once; the blocks
holding the positives (the "diagonal" blocks) are computed first so that every threshold is known
before the other blocks are counted. Peak extra memory is two ``chunk_size x 5*chunk_size``
buffers (the block and the comparison result; 2 x 20 MB for the default 1,000) plus the ranks.

Floating-point note (embedding path): ties are decided by exact comparison of the float32 (or
float64) scores the matrix multiply produces. A BLAS may give *identical* input vectors scores
that differ in the last bit when they sit in differently shaped products or in tiny ones (MKL
2024.2 on AVX-512 does for products of 1, 7 or 10 rows; none of 16..259 rows did in our sweep).
So every block product here has the same shape, and at least ``MIN_BLOCK_ROWS`` image rows: a
short or ragged block is zero-padded and the padding is left out of the view that is counted.
This keeps a collapsed model at R@K = 0 for any ``chunk_size``; it is an empirical property of
the BLAS, not a guarantee (other BLAS libraries or GPUs are not covered by the tests). Scores
read from a precomputed similarity matrix are compared exactly as stored.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import torch

from itmatch.data.corpus import CAPTIONS_PER_IMAGE

RECALL_KS = (1, 5, 10)
METRIC_KEYS = (
    "i2t_r1",
    "i2t_r5",
    "i2t_r10",
    "i2t_medr",
    "i2t_meanr",
    "t2i_r1",
    "t2i_r5",
    "t2i_r10",
    "t2i_medr",
    "t2i_meanr",
    "rsum",
)
RECALL_KEYS = tuple(f"{d}_r{k}" for d in ("i2t", "t2i") for k in RECALL_KS)
DEFAULT_CHUNK_SIZE = 1000
MIN_BLOCK_ROWS = 32  # block products are padded to at least this many image rows (module docstring)

# protocol name -> number of folds. "1k" and "5k" are the names papers use for scoring all test
# images at once on exactly 1,000 (Flickr) or 5,000 (MSCOCO 5K) images; a result labelled with
# them must be what the name says, so they accept only that N ("all" takes any N). "5fold1k" is
# MSCOCO 1K: 5 folds of 1,000.
PROTOCOLS: dict[str, int] = {"all": 1, "1k": 1, "5k": 1, "5fold": 5, "5fold1k": 5}
_FOLD_SIZE = {"5fold1k": 1000}
_EXACT_IMAGES = {"1k": 1000, "5k": 5000}  # single-fold names that promise a test-set size
DEFAULT_PROTOCOL = "all"

ArrayLike = torch.Tensor | np.ndarray

BlockFn = Callable[[int, int], torch.Tensor]


# --------------------------------------------------------------------------------------------
# Input checks
# --------------------------------------------------------------------------------------------


def _check_counts(n_images: int, n_texts: int, what: str, shapes: str) -> None:
    if n_images == 0:
        raise ValueError(f"{what}: no images to evaluate ({shapes})")
    if n_texts != CAPTIONS_PER_IMAGE * n_images:
        raise ValueError(
            f"{what}: expected exactly {CAPTIONS_PER_IMAGE} captions per image (caption rows "
            f"5i..5i+4 belong to image i): {n_images} images need {CAPTIONS_PER_IMAGE * n_images} "
            f"captions, got {n_texts} ({shapes})"
        )


def _shapes(img: torch.Tensor, txt: torch.Tensor) -> str:
    return f"image embeddings {tuple(img.shape)}, text embeddings {tuple(txt.shape)}"


def _as_float_tensor(x: ArrayLike, name: str) -> torch.Tensor:
    if isinstance(x, np.ndarray):
        x = torch.from_numpy(np.array(x, copy=True)) if not x.flags.writeable else torch.from_numpy(x)
    elif not isinstance(x, torch.Tensor):
        raise TypeError(f"{name}: expected a torch.Tensor or numpy array, got {type(x).__name__}")
    if x.ndim != 2:
        raise ValueError(f"{name}: expected a 2-D array (rows x dims), got shape {tuple(x.shape)}")
    if not (
        x.is_floating_point() or x.dtype in (torch.int8, torch.int16, torch.int32, torch.int64, torch.uint8)
    ):
        raise ValueError(f"{name}: expected real numbers, got dtype {x.dtype}")
    return x.detach()


def _common_float_dtype(a: torch.Tensor, b: torch.Tensor) -> torch.dtype:
    dtype = torch.promote_types(a.dtype, b.dtype)
    # float64 stays float64; everything else (half, bfloat16, ints) is scored in float32.
    return torch.float64 if dtype == torch.float64 else torch.float32


def _check_similarity(sims: Any) -> None:
    if not isinstance(sims, (np.ndarray, torch.Tensor)):
        raise TypeError(
            f"similarity matrix: expected a torch.Tensor or numpy array, got {type(sims).__name__}"
        )
    if sims.ndim != 2:
        raise ValueError(
            f"similarity matrix: expected 2-D (images x captions), got shape {tuple(sims.shape)}"
        )
    if sims.dtype in (np.bool_, torch.bool) or (
        isinstance(sims, np.ndarray) and sims.dtype.kind not in "fiu"
    ):
        raise ValueError(f"similarity matrix: expected real numbers, got dtype {sims.dtype}")
    n_img, n_txt = sims.shape
    _check_counts(n_img, n_txt, "similarity matrix", f"shape {tuple(sims.shape)}, images x captions")


def resolve_protocol(protocol: str, n_images: int) -> int:
    """Number of folds for a protocol name; raises ValueError for unknown names or a bad N.

    Names: ``"all"`` (all N images at once, any N), ``"1k"`` / ``"5k"`` (the same computation, but
    only on exactly 1,000 / 5,000 images, so the label says what was scored), ``"5fold"`` (5 equal
    folds) and ``"5fold1k"`` (5 folds of 1,000: requires N = 5,000). Case-insensitive.
    """
    key = protocol.strip().lower()
    if key not in PROTOCOLS:
        raise ValueError(f"unknown protocol {protocol!r}; expected one of {', '.join(PROTOCOLS)}")
    n_folds = PROTOCOLS[key]
    if key in _EXACT_IMAGES and n_images != _EXACT_IMAGES[key]:
        raise ValueError(
            f"protocol {protocol!r} scores exactly {_EXACT_IMAGES[key]:,} test images at once; got "
            f"{n_images:,} images: use 'all' (any number of images at once), "
            + ("'5k' (5,000 at once)" if key == "1k" else "'1k' (1,000 at once)")
            + " or '5fold1k' (MSCOCO 1K: 5 folds of 1,000)"
        )
    if key in _FOLD_SIZE and n_images != n_folds * _FOLD_SIZE[key]:
        raise ValueError(
            f"protocol {protocol!r} is {n_folds} folds of {_FOLD_SIZE[key]:,} images and needs "
            f"{n_folds * _FOLD_SIZE[key]:,} images; got {n_images:,} (use '5fold' for {n_folds} equal "
            f"folds of any size, or 'all')"
        )
    if n_images % n_folds:
        raise ValueError(
            f"protocol {protocol!r} splits the images into {n_folds} equal folds, so the number of "
            f"images must be divisible by {n_folds}; got {n_images:,}"
        )
    return n_folds


# --------------------------------------------------------------------------------------------
# Blocked similarities
# --------------------------------------------------------------------------------------------


def _bounds(n: int, n_blocks: int, block: int) -> list[tuple[int, int]]:
    return [(r * block, min(n, (r + 1) * block)) for r in range(n_blocks)]


def _block_layout(n_images: int, chunk_size: int) -> tuple[int, int]:
    """(number of blocks, images per block): balanced, at most ``chunk_size`` images per block."""
    if chunk_size < 1:
        raise ValueError(f"chunk_size must be >= 1, got {chunk_size}")
    n_blocks = math.ceil(n_images / chunk_size)
    return n_blocks, math.ceil(n_images / n_blocks)


class _EmbeddingBlocks:
    """Similarity blocks ``image rows r x caption rows q`` from embeddings, all one GEMM shape.

    Image block ``r`` holds images ``[r*b, (r+1)*b)``; caption block ``q`` holds captions
    ``[5*q*b, 5*(q+1)*b)`` (any caption count, for :func:`similarity_matrix`). A ragged or short
    block is zero-padded, so every matrix multiply has shape ``(B x d) @ (d x 5B)`` with
    ``B = max(b, MIN_BLOCK_ROWS)``; the returned block is a view of its valid part.
    """

    def __init__(self, image_emb: torch.Tensor, text_emb: torch.Tensor, chunk_size: int):
        dtype = _common_float_dtype(image_emb, text_emb)
        self.img = image_emb.to(dtype).contiguous()
        self.txt = text_emb.to(dtype).contiguous()
        n_img, n_txt = len(self.img), len(self.txt)
        self.n_blocks, rows = _block_layout(n_img, chunk_size)
        cols = CAPTIONS_PER_IMAGE * rows
        self.row_bounds = _bounds(n_img, self.n_blocks, rows)
        self.col_bounds = _bounds(n_txt, max(1, math.ceil(n_txt / cols)), cols)
        # every product is (rows_alloc x d) @ (d x cols_alloc): one shape, never tiny
        self.rows_alloc = max(rows, MIN_BLOCK_ROWS)
        self.cols_alloc = CAPTIONS_PER_IMAGE * self.rows_alloc
        self._padded: dict[str, tuple[int, torch.Tensor]] = {}  # one padded block per side, reused
        self.buf = torch.empty(self.rows_alloc, self.cols_alloc, dtype=dtype, device=self.img.device)

    def _part(self, which: str, x: torch.Tensor, lo: int, hi: int, size: int) -> torch.Tensor:
        if hi - lo == size:
            return x[lo:hi]
        cached = self._padded.get(which)
        if cached is not None and cached[0] == lo:
            return cached[1]
        padded = (
            cached[1] if cached is not None else torch.empty(size, x.shape[1], dtype=x.dtype, device=x.device)
        )
        padded[: hi - lo] = x[lo:hi]
        padded[hi - lo :] = 0
        self._padded[which] = (lo, padded)
        return padded

    def __call__(self, r: int, q: int) -> torch.Tensor:
        r_lo, r_hi = self.row_bounds[r]
        c_lo, c_hi = self.col_bounds[q]
        a = self._part("img", self.img, r_lo, r_hi, self.rows_alloc)
        b = self._part("txt", self.txt, c_lo, c_hi, self.cols_alloc)
        torch.mm(a, b.T, out=self.buf)
        return self.buf[: r_hi - r_lo, : c_hi - c_lo]


class _MatrixBlocks:
    """Blocks of a precomputed N x 5N similarity matrix (tensor, numpy array or np.memmap)."""

    def __init__(self, sims: ArrayLike, chunk_size: int):
        self.sims = sims
        n_img = sims.shape[0]
        self.n_blocks, self.rows = _block_layout(n_img, chunk_size)
        self.row_bounds = _bounds(n_img, self.n_blocks, self.rows)

    def __call__(self, r: int, q: int) -> torch.Tensor:
        r_lo, r_hi = self.row_bounds[r]
        c_lo, c_hi = (CAPTIONS_PER_IMAGE * b for b in self.row_bounds[q])
        part = self.sims[r_lo:r_hi, c_lo:c_hi]
        if isinstance(part, np.ndarray):
            # A copy: reads a memmap block once and gives torch a writeable array.
            part = torch.from_numpy(np.array(part, copy=True))
        if part.dtype in (torch.float16, torch.bfloat16):
            part = part.float()  # exact; CPU half comparisons are slow
        # abs().amax() is NaN or inf exactly when the block holds one (2 passes, not isfinite's 5)
        if part.is_floating_point() and part.numel() and not math.isfinite(float(part.abs().amax())):
            raise ValueError(
                f"similarity matrix: block rows {r_lo}..{r_hi - 1}, columns {c_lo}..{c_hi - 1} "
                "holds a NaN or infinite value"
            )
        return part


# --------------------------------------------------------------------------------------------
# Rank counting
# --------------------------------------------------------------------------------------------


def _count_ranks(
    n_images: int, n_blocks: int, row_bounds: Sequence[tuple[int, int]], block: BlockFn
) -> tuple[np.ndarray, np.ndarray]:
    cpi = CAPTIONS_PER_IMAGE
    i2t_count = np.zeros(n_images, dtype=np.int64)
    t2i_count = np.zeros(cpi * n_images, dtype=np.int64)
    i2t_thr: list[torch.Tensor | None] = [None] * n_blocks
    t2i_thr: list[torch.Tensor | None] = [None] * n_blocks
    # One reused float32 buffer for the 0/1 comparison results: `ge` into float32 and a float sum
    # is several times faster than summing a bool tensor, and reuse avoids page faults per block.
    hits: list[torch.Tensor] = []

    def count(r: int, q: int, s: torch.Tensor) -> None:
        if not hits or hits[0].numel() < s.numel() or hits[0].device != s.device:
            hits[:] = [torch.empty(s.numel(), dtype=torch.float32, device=s.device)]
        out = hits[0][: s.numel()].view(s.shape)
        r_lo, r_hi = row_bounds[r]
        q_lo, q_hi = row_bounds[q]
        # float32 sums of 0/1 are exact below 2**24, far above any block dimension
        row_hits = torch.ge(s, i2t_thr[r][:, None], out=out).sum(dim=1)
        i2t_count[r_lo:r_hi] += row_hits.to(torch.int64).cpu().numpy()
        col_hits = torch.ge(s, t2i_thr[q][None, :], out=out).sum(dim=0)
        t2i_count[cpi * q_lo : cpi * q_hi] += col_hits.to(torch.int64).cpu().numpy()

    with torch.inference_mode():
        # Diagonal blocks first: they hold every positive, so all thresholds are known before the
        # off-diagonal blocks are counted, and each similarity is computed once.
        for r in range(n_blocks):
            s = block(r, r)
            m = s.shape[0]
            # s[k, 5k+t] for k < m, t < 5, in caption order: a strided view of the diagonal, copied
            step = (s.stride(0) + cpi * s.stride(1), s.stride(1))
            positives = s.as_strided((m, cpi), step, s.storage_offset()).reshape(-1).clone()
            if positives.is_floating_point() and not bool(torch.isfinite(positives).all()):
                # every input row takes part in a positive pair, so NaN/inf anywhere shows up here
                k = int((~torch.isfinite(positives)).nonzero()[0, 0])
                j = row_bounds[r][0] * cpi + k
                raise ValueError(
                    f"the similarity of image {j // cpi} and its caption {j} is {float(positives[k])}: "
                    "NaN or infinite values in the inputs"
                )
            t2i_thr[r] = positives
            best = positives.view(m, cpi).amax(dim=1)
            i2t_thr[r] = best
            count(r, r, s)
            # i2t counts negatives only: the image's own captions that reach its best positive
            # (the best itself, and any duplicate caption tying with it) are not ahead of it.
            own_hits = (positives.view(m, cpi) >= best[:, None]).sum(dim=1)
            r_lo, r_hi = row_bounds[r]
            i2t_count[r_lo:r_hi] -= own_hits.to(torch.int64).cpu().numpy()
        for r in range(n_blocks):
            for q in range(n_blocks):
                if q != r:
                    count(r, q, block(r, q))
    # i2t: the positives were subtracted above. t2i: -1, the threshold is itself one of the
    # scores counted (the query's own image).
    return i2t_count, t2i_count - 1


def ranks_from_embeddings(
    image_emb: ArrayLike, text_emb: ArrayLike, *, chunk_size: int = DEFAULT_CHUNK_SIZE
) -> tuple[np.ndarray, np.ndarray]:
    """0-based i2t ranks (N,) and t2i ranks (5N,) from L2-normalised embeddings (cosine = dot).

    ``image_emb``: N x d; ``text_emb``: 5N x d, caption rows ``5i..5i+4`` belonging to image ``i``.
    Torch tensors (any device) or numpy arrays (np.memmap too). Scores are dot products in
    float32 (float64 if either input is float64). Ties count against the query (module docstring).
    """
    img = _as_float_tensor(image_emb, "image embeddings")
    txt = _as_float_tensor(text_emb, "text embeddings")
    _check_counts(len(img), len(txt), "embeddings", _shapes(img, txt))
    if img.shape[1] != txt.shape[1]:
        raise ValueError(
            f"embeddings: image and text dimensions differ: {tuple(img.shape)} vs {tuple(txt.shape)}"
        )
    if img.device != txt.device:
        raise ValueError(f"embeddings: images are on {img.device}, texts on {txt.device}")
    blocks = _EmbeddingBlocks(img, txt, chunk_size)
    return _count_ranks(len(img), blocks.n_blocks, blocks.row_bounds, blocks)


def ranks_from_similarity(
    sims: ArrayLike, *, chunk_size: int = DEFAULT_CHUNK_SIZE
) -> tuple[np.ndarray, np.ndarray]:
    """0-based i2t ranks (N,) and t2i ranks (5N,) from an N x 5N similarity matrix.

    ``sims[i, j]`` scores image ``i`` against caption ``j``. Any real dtype; a torch tensor, numpy
    array or np.memmap (read in ``chunk_size x 5*chunk_size`` blocks). Values are compared exactly
    as stored; ties count against the query.
    """
    _check_similarity(sims)
    if isinstance(sims, torch.Tensor):
        sims = sims.detach()
    blocks = _MatrixBlocks(sims, chunk_size)
    return _count_ranks(sims.shape[0], blocks.n_blocks, blocks.row_bounds, blocks)


def similarity_matrix(
    image_emb: ArrayLike,
    text_emb: ArrayLike,
    *,
    out: np.ndarray | None = None,
    chunk_size: int = DEFAULT_CHUNK_SIZE,
) -> np.ndarray:
    """The N x M matrix of dot products, written block by block (into ``out`` when given).

    ``out`` may be an ``np.memmap`` so that a 5,000 x 25,000 matrix never sits in memory; its
    dtype must be float32 or float64. The blocks are computed exactly as :func:`ranks_from_embeddings`
    computes them, so ranking the returned matrix gives the same ranks as ranking the embeddings.
    Useful to save, to average over models (ensembles), or to score under several protocols.
    """
    img = _as_float_tensor(image_emb, "image embeddings")
    txt = _as_float_tensor(text_emb, "text embeddings")
    if img.shape[1] != txt.shape[1]:
        raise ValueError(
            f"embeddings: image and text dimensions differ: {tuple(img.shape)} vs {tuple(txt.shape)}"
        )
    if len(img) == 0:
        raise ValueError(f"embeddings: no images (shape {tuple(img.shape)})")
    shape = (len(img), len(txt))
    blocks = _EmbeddingBlocks(img, txt, chunk_size)
    if out is None:
        out = np.empty(shape, dtype=np.float64 if blocks.buf.dtype == torch.float64 else np.float32)
    elif tuple(out.shape) != shape or out.dtype not in (np.float32, np.float64):
        raise ValueError(
            f"out: expected a float32/float64 array of shape {shape}, got {out.dtype} {tuple(out.shape)}"
        )
    with torch.inference_mode():
        for r, (r_lo, r_hi) in enumerate(blocks.row_bounds):
            for q, (c_lo, c_hi) in enumerate(blocks.col_bounds):
                out[r_lo:r_hi, c_lo:c_hi] = blocks(r, q).cpu().numpy()
    return out


# --------------------------------------------------------------------------------------------
# Metrics and protocols
# --------------------------------------------------------------------------------------------


def _direction_metrics(prefix: str, ranks: np.ndarray) -> dict[str, float]:
    out = {f"{prefix}_r{k}": 100.0 * float(np.mean(ranks < k)) for k in RECALL_KS}
    out[f"{prefix}_medr"] = float(np.floor(np.median(ranks)) + 1)
    out[f"{prefix}_meanr"] = float(np.mean(ranks) + 1)
    return out


def metrics_from_ranks(i2t_ranks: np.ndarray, t2i_ranks: np.ndarray) -> dict[str, float]:
    """The named metrics (:data:`METRIC_KEYS`) from 0-based i2t (N,) and t2i (5N,) ranks."""
    i2t_ranks = np.asarray(i2t_ranks)
    t2i_ranks = np.asarray(t2i_ranks)
    _check_counts(
        len(i2t_ranks), len(t2i_ranks), "ranks", f"i2t ranks {i2t_ranks.shape}, t2i ranks {t2i_ranks.shape}"
    )
    out = {**_direction_metrics("i2t", i2t_ranks), **_direction_metrics("t2i", t2i_ranks)}
    out["rsum"] = sum(out[k] for k in RECALL_KEYS)
    return {k: out[k] for k in METRIC_KEYS}


def _score_folds(
    n_img: int, protocol: str, rank: Callable[[tuple[slice, slice] | None], tuple[np.ndarray, np.ndarray]]
) -> dict[str, Any]:
    """The metrics of ``protocol`` on ``n_img`` images. ``rank(fold)`` returns the i2t and t2i
    ranks of the images and captions ``fold = (image_rows, caption_rows)``, or of all of them for
    ``None``; a 5-fold result is the mean of its folds, with the per-fold dicts under ``"folds"``."""
    n_folds = resolve_protocol(protocol, n_img)
    if n_folds == 1:
        return metrics_from_ranks(*rank(None))
    size = n_img // n_folds
    cpi = CAPTIONS_PER_IMAGE
    folds = [
        metrics_from_ranks(*rank((slice(k * size, (k + 1) * size), slice(cpi * k * size, cpi * (k + 1) * size))))
        for k in range(n_folds)
    ]
    summary: dict[str, Any] = {k: float(np.mean([f[k] for f in folds])) for k in METRIC_KEYS}
    summary["folds"] = folds
    return summary


def evaluate_embeddings(
    image_emb: ArrayLike,
    text_emb: ArrayLike,
    protocol: str = DEFAULT_PROTOCOL,
    *,
    chunk_size: int = DEFAULT_CHUNK_SIZE,
) -> dict[str, Any]:
    """Recall@1/5/10, medr, meanr (both directions) and rsum of N images and their 5N captions.

    ``protocol``: ``"all"``, ``"1k"`` (N = 1,000), ``"5k"`` (N = 5,000), ``"5fold"`` or
    ``"5fold1k"`` (N = 5,000), see :func:`resolve_protocol`. Returns the :data:`METRIC_KEYS` as floats; a 5-fold result also
    has ``"folds"``, the list of per-fold dicts, and its named values are the fold means.
    """
    img = _as_float_tensor(image_emb, "image embeddings")
    txt = _as_float_tensor(text_emb, "text embeddings")
    n_img = len(img)
    _check_counts(n_img, len(txt), "embeddings", _shapes(img, txt))
    def rank(fold: tuple[slice, slice] | None) -> tuple[np.ndarray, np.ndarray]:
        im, tx = (img, txt) if fold is None else (img[fold[0]], txt[fold[1]])
        return ranks_from_embeddings(im, tx, chunk_size=chunk_size)

    return _score_folds(n_img, protocol, rank)


def evaluate_similarity(
    sims: ArrayLike, protocol: str = DEFAULT_PROTOCOL, *, chunk_size: int = DEFAULT_CHUNK_SIZE
) -> dict[str, Any]:
    """:func:`evaluate_embeddings` for a precomputed N x 5N similarity matrix (tensor, array, memmap).

    Under ``"5fold"`` only the diagonal fold blocks of the matrix are read.
    """
    _check_similarity(sims)
    n_img = sims.shape[0]
    def rank(fold: tuple[slice, slice] | None) -> tuple[np.ndarray, np.ndarray]:
        return ranks_from_similarity(sims if fold is None else sims[fold], chunk_size=chunk_size)

    return _score_folds(n_img, protocol, rank)
