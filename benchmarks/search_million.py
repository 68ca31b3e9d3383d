"""Exact torch search vs FAISS IVF over a synthetic collection of 1,000,000 x 1024 vectors.

    .venv/bin/python benchmarks/search_million.py [--n 1000000] [--dim 1024] [--nlist 1024]

The collection is L2-normalised float32 vectors drawn around 2,000 random centres (a clustered
collection, like real embeddings; uniform random vectors in 1024-d have no neighbours worth the
name and make every approximate index look bad). Queries are fresh draws from the same
distribution. Reports, for one query at a time: p50/p99 latency of ExactSearch (torch matmul +
top-k) and of FaissSearch IVF-Flat at several nprobe, the IVF build time (k-means training +
adding), and recall@10 of IVF against the exact top 10. Writes
benchmarks/results/search_million.json.
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import torch

from itmatch.retrieval import ExactSearch, FaissSearch, recall_at_k

from _common import current_rss_mb, load_average, peak_rss_mb, write_result


def clustered(n: int, d: int, centres: torch.Tensor, g: torch.Generator, spread: float, chunk: int = 100_000) -> torch.Tensor:
    out = torch.empty(n, d)
    for s in range(0, n, chunk):
        m = min(chunk, n - s)
        pick = torch.randint(len(centres), (m,), generator=g)
        block = centres[pick] + spread * torch.randn(m, d, generator=g)
        out[s : s + m] = torch.nn.functional.normalize(block, dim=1)
    return out


def latencies(fn, queries: torch.Tensor, k: int) -> tuple[dict, torch.Tensor]:
    rows, ms = [], []
    fn(queries[:1], k)  # warm-up
    for i in range(len(queries)):
        t = time.perf_counter()
        _, r = fn(queries[i : i + 1], k)
        ms.append((time.perf_counter() - t) * 1000)
        rows.append(r)
    a = np.asarray(ms)
    stats = {"n": len(ms), "p50_ms": round(float(np.percentile(a, 50)), 3), "p99_ms": round(float(np.percentile(a, 99)), 3),
             "mean_ms": round(float(a.mean()), 3)}  # fmt: skip
    return stats, torch.cat(rows)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--n", type=int, default=1_000_000)
    ap.add_argument("--dim", type=int, default=1024)
    ap.add_argument("--centres", type=int, default=2000)
    ap.add_argument("--spread", type=float, default=0.06, help="noise std per coordinate around a centre")
    ap.add_argument("--queries", type=int, default=100)
    ap.add_argument("--exact-queries", type=int, default=30, help="single queries timed for exact search")
    ap.add_argument("--nlist", type=int, default=1024)
    ap.add_argument("--nprobe", type=int, nargs="+", default=[8, 16, 32, 64])
    ap.add_argument("--train-size", type=int, default=50_000)
    ap.add_argument("--k", type=int, default=10)
    ap.add_argument("--hnsw-n", type=int, default=50_000,
                    help="HNSW is built on the first N vectors only (0: skip); its insertion cost on 2 cores "
                         "rules out the full collection within this benchmark's time budget")
    ap.add_argument("--threads", type=int, help="torch and FAISS threads (default: torch's)")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    result: dict = {"load_average_at_start": load_average(), "torch_threads": torch.get_num_threads()}

    g = torch.Generator().manual_seed(0)
    centres = torch.nn.functional.normalize(torch.randn(args.centres, args.dim, generator=g), dim=1)
    t = time.perf_counter()
    db = clustered(args.n, args.dim, centres, g, args.spread)
    queries = clustered(args.queries, args.dim, centres, g, args.spread)
    result["collection"] = {
        "vectors": args.n, "dim": args.dim, "dtype": "float32", "gib": round(db.numel() * 4 / 2**30, 2),
        "distribution": f"L2-normalised draws around {args.centres} random unit centres, noise std {args.spread} "
                        "per coordinate; queries are fresh draws",
        "generate_seconds": round(time.perf_counter() - t, 1),
    }  # fmt: skip

    exact = ExactSearch(db)
    stats, _ = latencies(exact.search, queries[: args.exact_queries], args.k)
    t = time.perf_counter()
    _, truth = exact.search(queries, args.k)  # all queries at once: the ground truth
    batch_s = time.perf_counter() - t
    result["exact_torch"] = {"single_query": stats,
                             "batch": {"queries": len(queries), "seconds": round(batch_s, 3),
                                       "ms_per_query": round(1000 * batch_s / len(queries), 3)}}  # fmt: skip
    print(f"exact: p50 {stats['p50_ms']} ms, p99 {stats['p99_ms']} ms; batch of {len(queries)}: {batch_s:.2f} s", flush=True)

    t = time.perf_counter()
    ivf = FaissSearch.build(db, "ivf", nlist=args.nlist, train_size=args.train_size, nprobe=args.nprobe[0])
    build_s = time.perf_counter() - t
    result["faiss_ivf"] = {"build": {"seconds": round(build_s, 1), "nlist": args.nlist, "train_size": args.train_size,
                                     "kmeans_iterations": 10, "index": "IndexIVFFlat, inner product"},
                           "rss_mb_after_build": current_rss_mb(), "by_nprobe": {}}  # fmt: skip
    print(f"IVF build {build_s:.1f} s", flush=True)
    import faiss

    faiss.omp_set_num_threads(torch.get_num_threads())
    for nprobe in args.nprobe:
        ivf.set_search_params(nprobe=nprobe)
        stats, rows = latencies(ivf.search, queries, args.k)
        recall = recall_at_k(rows, truth)
        result["faiss_ivf"]["by_nprobe"][str(nprobe)] = {**stats, "recall_at_10_vs_exact": round(recall, 4)}
        print(f"IVF nprobe {nprobe}: p50 {stats['p50_ms']} ms, p99 {stats['p99_ms']} ms, recall@10 {recall:.4f}", flush=True)
    del ivf
    if args.hnsw_n:
        sub = db[: args.hnsw_n]
        _, sub_truth = ExactSearch(sub).search(queries, args.k)
        t = time.perf_counter()
        hnsw = FaissSearch.build(sub, "hnsw")
        hnsw_s = time.perf_counter() - t
        stats, rows = latencies(hnsw.search, queries, args.k)
        recall = recall_at_k(rows, sub_truth)
        result["faiss_hnsw_subset"] = {
            "vectors": args.hnsw_n, "build_seconds": round(hnsw_s, 1), "params": hnsw.params, **stats,
            "recall_at_10_vs_exact": round(recall, 4),
            "note": "built on the first vectors of the collection only, recall against exact search over that subset",
        }  # fmt: skip
        print(f"HNSW on {args.hnsw_n}: build {hnsw_s:.1f} s, p50 {stats['p50_ms']} ms, recall@10 {recall:.4f}", flush=True)
    result["peak_rss_mb"] = peak_rss_mb()
    path = write_result("search_million", result)
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
