"""Evaluation speed: the 1K and 5K Recall@K protocols on random unit vectors (d = 1024).

    .venv/bin/python benchmarks/eval_speed.py [--repeats 7] [--protocols 1k,5k,5fold1k]

For each protocol a fresh subprocess builds random L2-normalised float32 embeddings (N images,
5N captions), resets its peak-RSS counter, runs ``itmatch.evaluation.evaluate_embeddings`` once
cold (peak extra memory = VmHWM after - VmRSS before; this is what torch/MKL allocate, which
tracemalloc cannot see), then ``--repeats`` more times for the wall time (median, min, max). It
also times the block matrix products alone (same shapes, no counting): the floor set by matmul.

Targets (issue 2): under 0.1 s for 1K and under 3 s for 5K on the 2-core dev machine. Writes
benchmarks/results/eval_speed.json (see ``_common.write_result``).
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from _common import current_rss_mb, load_average, peak_rss_mb, reset_peak_rss, write_result

# protocol -> (images, itmatch protocol name, target seconds or None)
PROTOCOLS: dict[str, tuple[int, str, float | None]] = {
    "1k": (1000, "1k", 0.1),
    "5k": (5000, "5k", 3.0),
    "5fold1k": (5000, "5fold1k", None),
}


def _embeddings(n: int, d: int, seed: int):
    import torch

    g = torch.Generator().manual_seed(seed)
    img = torch.randn(n, d, generator=g)
    txt = torch.randn(5 * n, d, generator=g)
    # in place, so building the inputs leaves no temporary behind to inflate the memory baseline
    img.div_(img.norm(dim=1, keepdim=True))
    txt.div_(txt.norm(dim=1, keepdim=True))
    return img, txt


def _matmul_floor(folds: list[tuple[Any, Any]], chunk_size: int, repeats: int) -> tuple[float, float]:
    """Median time and FLOPs of the evaluation's block products alone (same shapes, no counting)."""
    import torch

    from itmatch.evaluation.recall import _block_layout

    times = []
    flops = 0.0
    for rep in range(repeats):
        t = time.perf_counter()
        for img, txt in folds:
            n_blocks, rows = _block_layout(len(img), chunk_size)
            out = torch.empty(rows, 5 * rows)
            for r in range(n_blocks):
                for q in range(n_blocks):
                    a, b = img[r * rows : (r + 1) * rows], txt[5 * q * rows : 5 * (q + 1) * rows]
                    if len(a) == rows and len(b) == 5 * rows:  # full blocks only: a floor
                        torch.mm(a, b.T, out=out)
                        flops += 0.0 if rep else 2.0 * rows * 5 * rows * img.shape[1]
        times.append(time.perf_counter() - t)
    return statistics.median(times), flops


def worker(protocol: str, d: int, repeats: int, chunk_size: int, seed: int) -> dict[str, Any]:
    import torch

    from itmatch.evaluation.recall import evaluate_embeddings, resolve_protocol

    n, name, target = PROTOCOLS[protocol]
    img, txt = _embeddings(n, d, seed)
    rss_before = current_rss_mb()
    hwm_reset = reset_peak_rss()
    hwm_before = peak_rss_mb()
    t = time.perf_counter()
    first = evaluate_embeddings(img, txt, protocol=name, chunk_size=chunk_size)
    cold_s = time.perf_counter() - t
    hwm_after = peak_rss_mb()
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        again = evaluate_embeddings(img, txt, protocol=name, chunk_size=chunk_size)
        times.append(time.perf_counter() - t)
        assert again == first
    base = rss_before if hwm_reset else hwm_before
    n_folds = resolve_protocol(name, n)
    size = n // n_folds
    folds = [(img[k * size : (k + 1) * size], txt[5 * k * size : 5 * (k + 1) * size]) for k in range(n_folds)]
    matmul_s, flops = _matmul_floor(folds, chunk_size, max(3, repeats // 2))
    median = statistics.median(times)
    return {
        "images": n,
        "captions": 5 * n,
        "dim": d,
        "chunk_size": chunk_size,
        "repeats": repeats,
        "median_s": round(median, 4),
        "min_s": round(min(times), 4),
        "max_s": round(max(times), 4),
        "first_call_s": round(cold_s, 4),
        "target_s": target,
        "meets_target": (median < target) if target is not None else None,
        "matmul_only_median_s": round(matmul_s, 4),
        "matmul_gflops": round(flops / matmul_s / 1e9, 1),
        "peak_extra_mb": round(hwm_after - base, 1) if hwm_after is not None and base is not None else None,
        "peak_measure": "VmHWM after first call - VmRSS before (peak counter reset)"
        if hwm_reset
        else "VmHWM after first call - VmHWM before (reset refused; may under-report)",
        "inputs_mb": round((img.numel() + txt.numel()) * 4 / 2**20, 1),
        "full_similarity_matrix_mb": round(n * 5 * n * 4 / 2**20, 1),
        "torch_threads": torch.get_num_threads(),
        "rsum_random": round(first["rsum"], 3),
    }


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--protocols", default="1k,5k,5fold1k")
    ap.add_argument("--repeats", type=int, default=7)
    ap.add_argument("--dim", type=int, default=1024)
    ap.add_argument("--chunk-size", type=int, default=None, help="default: the library's")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--worker", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)

    from itmatch.evaluation.recall import DEFAULT_CHUNK_SIZE

    chunk = args.chunk_size or DEFAULT_CHUNK_SIZE
    if args.worker:
        print(json.dumps(worker(args.worker, args.dim, args.repeats, chunk, args.seed)))
        return

    results: dict[str, Any] = {}
    load_before = load_average()
    for protocol in args.protocols.split(","):
        if protocol not in PROTOCOLS:
            raise SystemExit(f"unknown protocol {protocol!r}; expected one of {', '.join(PROTOCOLS)}")
        cmd = [sys.executable, str(Path(__file__).resolve()), "--worker", protocol, "--repeats", str(args.repeats),
               "--dim", str(args.dim), "--chunk-size", str(chunk), "--seed", str(args.seed)]  # fmt: skip
        out = subprocess.run(cmd, capture_output=True, text=True, check=True)
        results[protocol] = json.loads(out.stdout.strip().splitlines()[-1])
        r = results[protocol]
        print(
            f"{protocol}: {r['images']} x {r['captions']}  median {r['median_s']:.3f} s "
            f"(min {r['min_s']:.3f}, first {r['first_call_s']:.3f}; matmul alone {r['matmul_only_median_s']:.3f} s, "
            f"{r['matmul_gflops']} GFLOP/s)  peak extra {r['peak_extra_mb']} MB",
            flush=True,
        )
    load_after = load_average()
    write_result(
        "eval_speed",
        {
            "what": "itmatch.evaluation.evaluate_embeddings on random unit vectors, float32, CPU",
            "results": results,
            "load_average_before": load_before,
            "load_average_after": load_after,
            "note": (
                "Shared machine: other sessions may have been running on the same 2 cores during this "
                "benchmark (see the load averages; above 2 means contention), so times are upper bounds "
                "and noisy. Each protocol ran in a fresh subprocess; peak_extra_mb is that process's "
                "peak RSS growth during the first (cold) evaluation."
            ),
        },
    )


if __name__ == "__main__":
    main()
