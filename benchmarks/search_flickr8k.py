"""Search over the 7,000 Flickr8k photos: index build time, then the end-to-end latency of a text
query (tokenise + encode + exact search) and of a photo query, on the CPU.

    .venv/bin/python benchmarks/search_flickr8k.py --run RUN [--index DIR] [--queries 300]

RUN is any trained run (e.g. ``itmatch train --config vsepp --format flickr8k --data
../shared/data/flickr8k --out RUN``). The index (photos + the 35,000 captions of captions.txt) is
built in --index (default /tmp/itmatch-search-bench/index-f8k) unless it is already there and
--rebuild is not given; a second, incremental run over the unchanged folder is timed too. Queries
are dev-split captions (sentences the model did not train on), each searched over all 7,000
photos; "found@10" is the share whose own photo is among the top 10 (a sanity check that the
results are real, not a recall protocol). Writes benchmarks/results/search_flickr8k.json.
"""

from __future__ import annotations

import argparse
import csv
import random
import shutil
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch

from itmatch.inference import Matcher
from itmatch.retrieval import PhotoIndex, SearchEngine, build_index, read_manifest

from _common import REPO_ROOT, load_average, peak_rss_mb, write_result

DATA = REPO_ROOT.parent / "shared" / "data" / "flickr8k"


def percentiles(ms: list[float]) -> dict[str, float]:
    a = np.asarray(ms)
    return {"n": len(ms), "p50_ms": round(float(np.percentile(a, 50)), 3), "p90_ms": round(float(np.percentile(a, 90)), 3),
            "p99_ms": round(float(np.percentile(a, 99)), 3), "mean_ms": round(float(a.mean()), 3),
            "max_ms": round(float(a.max()), 3)}  # fmt: skip


def timed(call: Callable[[Any], Any], items: list[Any]) -> tuple[list[float], list[Any]]:
    """``call`` on each item, one at a time: the wall time of each call in ms, and what it returned."""
    ms, out = [], []
    for item in items:
        t0 = time.perf_counter()
        out.append(call(item))
        ms.append((time.perf_counter() - t0) * 1000)
    return ms, out


def image_query_latency(engine: SearchEngine, photos: list[Path]) -> dict[str, Any]:
    """End-to-end latency of a photo query (the top 10), one photo at a time."""
    ms, _ = timed(lambda p: engine.search_image(p, 10), photos)
    return {"k": 10, "end_to_end": percentiles(ms), "note": "decode + resize + backbone + projection + search, one photo at a time"}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--run", required=True)
    ap.add_argument("--data", default=str(DATA))
    ap.add_argument("--index", default="/tmp/itmatch-search-bench/index-f8k")
    ap.add_argument("--rebuild", action="store_true")
    ap.add_argument("--queries", type=int, default=300)
    ap.add_argument("--image-queries", type=int, default=50)
    ap.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    ap.add_argument("--note", help="free text stored in the result (e.g. how an earlier attempt went)")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    data = Path(args.data)
    images = data / "images"
    index_dir = Path(args.index)

    result: dict = {"what": "itmatch search over the Flickr8k photos, CPU, exact search (torch matmul + top-k)",
                    "load_average_at_start": load_average()}  # fmt: skip
    matcher = Matcher.from_run(args.run)
    result["model"] = {**matcher.identity, "embed_dim": matcher.embed_dim,
                       "text_encoder": matcher.config["model"].get("text_encoder")}  # fmt: skip

    if args.rebuild and index_dir.exists():
        shutil.rmtree(index_dir)
    cold = not index_dir.exists()
    already = read_manifest(index_dir)["photos"] if (index_dir / "index.json").exists() else 0
    t = time.perf_counter()
    first = build_index(matcher, images, index_dir, captions=data / "captions.txt")
    build_s = time.perf_counter() - t
    t = time.perf_counter()
    again = build_index(matcher, images, index_dir, captions=data / "captions.txt")
    again_s = time.perf_counter() - t
    result["index_build"] = {
        "cold": cold,
        "photos_already_indexed_at_start": already,
        "photos": first.photos,
        "photos_embedded": first.embedded,
        "captions": first.captions,
        "captions_embedded": first.captions_embedded,
        "unreadable": first.unreadable,
        "seconds": round(build_s, 2),
        "photos_per_second": round(first.embedded / build_s, 2) if first.embedded else None,
        "note": "photos decoded and embedded through the run's EfficientNet-Lite0 backbone + projection, batch 32, "
                "in this process (no worker processes); includes the 35,000 captions and writing the index",
    }  # fmt: skip
    result["index_incremental_noop"] = {"seconds": round(again_s, 3), "photos_embedded": again.embedded,
                                        "captions_embedded": again.captions_embedded}  # fmt: skip

    t = time.perf_counter()
    engine = SearchEngine(PhotoIndex.open(index_dir), matcher)
    engine.warm_up()
    result["engine_load_seconds"] = round(time.perf_counter() - t, 3)

    dev = set((data / "dev_images.txt").read_text().split())
    with open(data / "captions.txt", newline="", encoding="utf-8") as fh:
        rows = [(r["image"], r["caption"]) for r in csv.DictReader(fh) if r["image"] in dev]
    rng = random.Random(0)
    queries = rng.sample(rows, args.queries)
    for _, caption in queries[:10]:  # warm-up
        engine.search_text(caption, 10)
    total, encode, search, found = [], [], [], 0
    for image, caption in queries:
        t0 = time.perf_counter()
        q = engine.embed_text(caption)
        t1 = time.perf_counter()
        hits = engine.index.search_photos(q, 10)[0]
        t2 = time.perf_counter()
        total.append((t2 - t0) * 1000)
        encode.append((t1 - t0) * 1000)
        search.append((t2 - t1) * 1000)
        found += any(p.path == image for p, _ in hits)
    # The public call, end to end, as the CLI and the service make it.
    public, _ = timed(lambda caption: engine.search_text(caption, 10), [caption for _, caption in queries])
    result["text_query"] = {
        "k": 10,
        "photos_searched": len(engine.index),
        "end_to_end": percentiles(public),
        "breakdown_run": {"total": percentiles(total), "tokenise_and_encode": percentiles(encode),
                          "search": percentiles(search)},  # fmt: skip
        "found_own_photo_in_top10": round(100 * found / len(queries), 1),
        "queries": "dev-split captions, random sample (seed 0), one at a time",
    }
    result["image_query"] = image_query_latency(engine, rng.sample([images / p.path for p in engine.index.photos], args.image_queries))
    result["torch_threads"] = torch.get_num_threads()
    if args.note:
        result["note"] = args.note
    result["peak_rss_mb"] = peak_rss_mb()
    path = write_result("search_flickr8k", result)
    print(f"wrote {path}")
    print(f"index: {first.photos} photos in {build_s:.1f} s; no-op update {again_s:.2f} s")
    print(f"text query end to end: p50 {result['text_query']['end_to_end']['p50_ms']} ms, "
          f"p99 {result['text_query']['end_to_end']['p99_ms']} ms; found@10 {result['text_query']['found_own_photo_in_top10']}%")  # fmt: skip
    print(f"image query: p50 {result['image_query']['end_to_end']['p50_ms']} ms")


if __name__ == "__main__":
    main()
