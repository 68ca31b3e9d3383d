"""Nearest-neighbour search over L2-normalised vectors by inner product (= cosine similarity).

Two backends behind one interface (:class:`VectorSearch`): ``search(queries, k) -> (scores, rows)``.

* :class:`ExactSearch` (default): torch matmul + top-k, in blocks of database rows so memory stays
  bounded for millions of vectors (measured against FAISS's flat index: benchmarks/results/).
* :class:`FaissSearch`: FAISS IVF-Flat or HNSW-Flat for approximate search over very large
  collections. FAISS is the optional extra ``faiss-cpu`` (``pip install 'itmatch[faiss]'``) and is
  imported only when an approximate index is built or loaded.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import torch

from itmatch.errors import ItmatchError

APPROXIMATE_METHODS = ("ivf", "hnsw")


class VectorSearch(Protocol):
    """Top-k rows of a fixed set of vectors by inner product with each query."""

    def __len__(self) -> int: ...

    def search(self, queries: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
        """``queries``: m x d -> (scores m x k', rows m x k'), best first, k' = min(k, len(self))."""
        ...


def _as_matrix(vectors: np.ndarray | torch.Tensor) -> torch.Tensor:
    t = torch.as_tensor(vectors)
    if t.ndim != 2:
        raise ValueError(f"expected an N x d matrix of vectors, got shape {tuple(t.shape)}")
    return t.to(torch.float32).contiguous()


def _queries_and_k(queries: np.ndarray | torch.Tensor, k: int, dim: int, size: int) -> tuple[torch.Tensor, int]:
    """Queries as an m x ``dim`` float32 matrix (a ValueError when their dimension is not the
    index's), and ``k`` capped at the ``size`` vectors there are."""
    q = _as_matrix(queries)
    if q.shape[1] != dim:
        raise ValueError(f"query dimension {q.shape[1]} != index dimension {dim}")
    return q, min(int(k), size)


def _no_results(n_queries: int) -> tuple[torch.Tensor, torch.Tensor]:
    return torch.zeros(n_queries, 0), torch.zeros(n_queries, 0, dtype=torch.long)


class ExactSearch:
    """Brute force: every query against every vector, ``block_rows`` database rows at a time."""

    def __init__(self, vectors: np.ndarray | torch.Tensor, block_rows: int = 262_144):
        self.vectors = _as_matrix(vectors)
        self.block_rows = int(block_rows)

    def __len__(self) -> int:
        return int(self.vectors.shape[0])

    @property
    def dim(self) -> int:
        return int(self.vectors.shape[1])

    @torch.no_grad()
    def search(self, queries: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
        q, k = _queries_and_k(queries, k, self.dim, len(self))
        if k <= 0:
            return _no_results(q.shape[0])
        if len(self) <= self.block_rows:
            return torch.topk(q @ self.vectors.T, k, dim=1)
        best_scores, best_rows = None, None
        for start in range(0, len(self), self.block_rows):
            block = self.vectors[start : start + self.block_rows]
            scores, rows = torch.topk(q @ block.T, min(k, block.shape[0]), dim=1)
            rows = rows + start
            if best_scores is None:
                best_scores, best_rows = scores, rows
                continue
            merged_scores = torch.cat([best_scores, scores], dim=1)
            merged_rows = torch.cat([best_rows, rows], dim=1)
            best_scores, pick = torch.topk(merged_scores, min(k, merged_scores.shape[1]), dim=1)
            best_rows = torch.gather(merged_rows, 1, pick)
        return best_scores, best_rows


def import_faiss() -> Any:
    """The ``faiss`` module, or an error that names the optional extra to install."""
    try:
        import faiss
    except ImportError as exc:
        raise ItmatchError(
            "approximate search needs FAISS, which is not installed: "
            "pip install 'itmatch[faiss]' (or pip install faiss-cpu)"
        ) from exc
    return faiss


def default_nlist(n: int) -> int:
    """IVF cells: about 4 * sqrt(N), a power of two, at least 1 and at most N / 39 (FAISS's
    minimum of 39 training points per centroid)."""
    if n < 39:
        return 1
    target = 4 * math.sqrt(n)
    nlist = 2 ** round(math.log2(target))
    return int(max(1, min(nlist, n // 39)))


class FaissSearch:
    """An approximate FAISS index (inner product) with the same ``search`` as :class:`ExactSearch`."""

    def __init__(self, index: Any, params: dict[str, Any]):
        self.index = index
        self.params = dict(params)

    def __len__(self) -> int:
        return int(self.index.ntotal)

    @property
    def dim(self) -> int:
        return int(self.index.d)

    @classmethod
    def build(
        cls,
        vectors: np.ndarray | torch.Tensor,
        method: str = "ivf",
        *,
        nlist: int | None = None,
        nprobe: int = 16,
        train_size: int = 100_000,
        hnsw_m: int = 32,
        ef_construction: int = 80,
        ef_search: int = 64,
        seed: int = 0,
    ) -> FaissSearch:
        """IVF-Flat (k-means cells, ``nprobe`` cells searched) or HNSW-Flat (graph, ``ef_search``)."""
        faiss = import_faiss()
        x = np.ascontiguousarray(_as_matrix(vectors).numpy())
        n, d = x.shape
        if method == "ivf":
            nlist = int(nlist or default_nlist(n))
            quantizer = faiss.IndexFlatIP(d)
            index = faiss.IndexIVFFlat(quantizer, d, nlist, faiss.METRIC_INNER_PRODUCT)
            sample = x
            if n > train_size:
                pick = np.random.default_rng(seed).choice(n, size=train_size, replace=False)
                sample = x[np.sort(pick)]
            index.cp.seed = seed
            index.cp.niter = 10
            index.train(sample)
            index.add(x)
            index.nprobe = min(int(nprobe), nlist)
            params = {"method": "ivf", "nlist": nlist, "nprobe": int(index.nprobe), "train_size": int(len(sample))}
        elif method == "hnsw":
            index = faiss.IndexHNSWFlat(d, int(hnsw_m), faiss.METRIC_INNER_PRODUCT)
            index.hnsw.efConstruction = int(ef_construction)
            index.hnsw.efSearch = int(ef_search)
            index.add(x)
            params = {"method": "hnsw", "m": int(hnsw_m), "ef_construction": int(ef_construction),
                      "ef_search": int(ef_search)}  # fmt: skip
        else:
            raise ItmatchError(f"unknown approximate method {method!r}; expected one of {', '.join(APPROXIMATE_METHODS)}")
        return cls(index, params)

    def set_search_params(self, *, nprobe: int | None = None, ef_search: int | None = None) -> None:
        """Trade speed for recall at query time (IVF: cells probed; HNSW: candidate list size)."""
        if nprobe is not None and self.params["method"] == "ivf":
            self.index.nprobe = min(int(nprobe), int(self.index.nlist))
            self.params["nprobe"] = int(self.index.nprobe)
        if ef_search is not None and self.params["method"] == "hnsw":
            self.index.hnsw.efSearch = int(ef_search)
            self.params["ef_search"] = int(ef_search)

    def search(self, queries: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
        q, k = _queries_and_k(queries, k, self.dim, len(self))
        if k <= 0:
            return _no_results(q.shape[0])
        scores, rows = self.index.search(np.ascontiguousarray(q.numpy()), k)
        # FAISS pads with row -1 when fewer than k candidates were visited; callers drop those.
        return torch.from_numpy(scores), torch.from_numpy(rows.astype(np.int64))

    def save(self, path: str | Path) -> None:
        import_faiss().write_index(self.index, str(path))

    @classmethod
    def load(cls, path: str | Path, params: dict[str, Any]) -> FaissSearch:
        faiss = import_faiss()
        try:
            index = faiss.read_index(str(path))
        except RuntimeError as exc:
            raise ItmatchError(f"{path}: not a readable FAISS index ({exc})") from exc
        out = cls(index, params)
        out.set_search_params(nprobe=params.get("nprobe"), ef_search=params.get("ef_search"))
        return out


def recall_at_k(approx_rows: torch.Tensor, exact_rows: torch.Tensor) -> float:
    """Mean fraction of the exact top-k rows that the approximate top-k also returned."""
    if exact_rows.numel() == 0:
        return 1.0
    k = exact_rows.shape[1]
    hits = [len(set(a.tolist()) & set(e.tolist())) / k for a, e in zip(approx_rows, exact_rows)]
    return float(np.mean(hits))
