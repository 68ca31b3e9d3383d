"""Requests per second that ``itmatch serve`` sustains under concurrent clients, how many failed,
and how much a few clients uploading very large photos slow everyone else's text queries.

    .venv/bin/python benchmarks/search_service.py --index INDEX [--clients 8 16] [--duration 30] [--threads 1]
        [--large-clients 3] [--large-megapixels 49]

Starts ``itmatch serve INDEX`` (uvicorn, one process) in a subprocess on a free port, waits for
/api/health, then runs a local asyncio + httpx load generator: ``--clients`` connections, each
sending its next request as soon as the previous answer arrived (closed loop), for ``--duration``
seconds per phase. Phases: text queries (GET /api/search/text, k=10, Flickr8k dev captions),
photo uploads (POST /api/search/image, Flickr8k JPEGs), thumbnails of results (GET /thumbs/...).
Then, for each ``--clients`` count, text queries alone and text queries while ``--large-clients``
more clients upload a ``--large-megapixels`` PNG in a closed loop (issue 14: decoding one on the
event loop pushed text p99 from 9 ms to 2.7 s); ``large_upload_effect`` holds the text p99 of
both and their ratio. A request fails when it raises or answers anything but 200 (uploads: 200
or 413). The load generator shares the machine's cores with the server.
Writes benchmarks/results/search_service.json.
"""

from __future__ import annotations

import argparse
import asyncio
import csv
import io
import random
import socket
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import httpx
import numpy as np

from _common import REPO_ROOT, load_average, write_result

DATA = REPO_ROOT.parent / "shared" / "data" / "flickr8k"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class _Tally:
    def __init__(self) -> None:
        self.latencies: list[float] = []
        self.statuses: Counter = Counter()
        self.errors: Counter = Counter()

    def summary(self, clients: int, elapsed: float, ok_statuses: tuple[int, ...] = (200,)) -> dict:
        total = sum(self.statuses.values()) + sum(self.errors.values())
        ok = sum(self.statuses.get(s, 0) for s in ok_statuses)
        a = np.asarray(self.latencies) if self.latencies else np.zeros(1)
        return {
            "clients": clients, "seconds": round(elapsed, 2), "requests": total, "ok": ok, "failed": total - ok,
            "statuses": {str(k): v for k, v in sorted(self.statuses.items())}, "errors": dict(self.errors),
            "requests_per_second": round(ok / elapsed, 2),
            "latency_p50_ms": round(float(np.percentile(a, 50)), 2), "latency_p99_ms": round(float(np.percentile(a, 99)), 2),
            "latency_max_ms": round(float(a.max()), 2),
        }  # fmt: skip


async def _workers(client, tally: _Tally, count: int, seed: int, deadline: float, make_request) -> None:
    async def worker(i: int) -> None:
        rng = random.Random(seed + i)
        while time.perf_counter() < deadline:
            t = time.perf_counter()
            try:
                r = await make_request(client, rng)
                tally.statuses[r.status_code] += 1
            except Exception as exc:  # a failed request, counted by type
                tally.errors[type(exc).__name__] += 1
                continue
            tally.latencies.append((time.perf_counter() - t) * 1000)

    await asyncio.gather(*(worker(i) for i in range(count)))


async def phase(base: str, clients: int, duration: float, make_request) -> dict:
    tally = _Tally()
    deadline = time.perf_counter() + duration
    limits = httpx.Limits(max_connections=clients, max_keepalive_connections=clients)
    async with httpx.AsyncClient(base_url=base, limits=limits, timeout=60) as client:
        start = time.perf_counter()
        await _workers(client, tally, clients, 0, deadline, make_request)
        elapsed = time.perf_counter() - start
    return tally.summary(clients, elapsed)


async def mixed_phase(base: str, clients: int, large: int, duration: float, text_request, large_request) -> dict:
    """``clients`` text-query clients and ``large`` large-upload clients at once, tallied apart."""
    text, uploads = _Tally(), _Tally()
    deadline = time.perf_counter() + duration
    n = clients + large
    limits = httpx.Limits(max_connections=n, max_keepalive_connections=n)
    async with httpx.AsyncClient(base_url=base, limits=limits, timeout=120) as client:
        start = time.perf_counter()
        await asyncio.gather(_workers(client, text, clients, 0, deadline, text_request),
                             _workers(client, uploads, large, 1000, deadline, large_request))  # fmt: skip
        elapsed = time.perf_counter() - start
    return {"text_query": text.summary(clients, elapsed), "large_upload": uploads.summary(large, elapsed, (200, 413))}


def large_png(source: Path, megapixels: float) -> tuple[bytes, tuple[int, int]]:
    """A Flickr8k photo upscaled to about ``megapixels`` and saved as PNG (fast compression)."""
    from PIL import Image

    side = int((megapixels * 1e6) ** 0.5)
    with Image.open(source) as img:
        big = img.convert("RGB").resize((side, side), Image.BILINEAR)
    out = io.BytesIO()
    big.save(out, format="PNG", compress_level=1)
    return out.getvalue(), (side, side)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--index", required=True)
    ap.add_argument("--data", default=str(DATA))
    ap.add_argument("--clients", type=int, nargs="+", default=[8, 16],
                    help="text-query client counts; the first also runs the photo and thumbnail phases")
    ap.add_argument("--duration", type=float, default=30.0)
    ap.add_argument("--threads", type=int, default=1, help="torch threads in the server (itmatch serve --threads)")
    ap.add_argument("--large-clients", type=int, default=3, help="clients uploading a very large PNG (0: skip)")
    ap.add_argument("--large-megapixels", type=float, default=49.0)
    ap.add_argument("--max-upload-mb", type=float, default=300.0, help="itmatch serve --max-upload-mb")
    ap.add_argument("--note", default="", help="a line stored with the result (e.g. what else ran on the machine)")
    args = ap.parse_intermixed_args()
    data = Path(args.data)
    dev = set((data / "dev_images.txt").read_text().split())
    with open(data / "captions.txt", newline="", encoding="utf-8") as fh:
        captions = [r["caption"] for r in csv.DictReader(fh) if r["image"] in dev]
    photos = [(data / "images" / name).read_bytes() for name in sorted(dev)[:200]]

    port = free_port()
    base = f"http://127.0.0.1:{port}"
    cmd = [sys.executable, "-m", "itmatch", "serve", args.index, "--port", str(port), "--threads", str(args.threads),
           "--max-upload-mb", str(args.max_upload_mb)]  # fmt: skip
    server = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    result: dict = {"server_command": " ".join(cmd[1:]), "load_average_at_start": load_average(),
                    "load_generator": "python asyncio + httpx.AsyncClient, closed loop, same machine", "note": args.note}  # fmt: skip
    try:
        t = time.perf_counter()
        while True:
            if server.poll() is not None:
                raise SystemExit(f"itmatch serve exited: {server.stderr.read() if server.stderr else ''}")
            try:
                health = httpx.get(base + "/api/health", timeout=2)
                if health.status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if time.perf_counter() - t > 300:
                raise SystemExit("itmatch serve did not answer within 300 s")
            time.sleep(0.5)
        result["server_start_seconds"] = round(time.perf_counter() - t, 2)
        result["health"] = health.json()
        thumbs = [h["thumb_url"] for h in httpx.get(base + "/api/search/text", params={"q": "a dog", "k": 100}).json()["photos"]]

        async def text(client, rng):
            return await client.get("/api/search/text", params={"q": rng.choice(captions), "k": 10})

        async def image(client, rng):
            return await client.post("/api/search/image", files={"file": ("q.jpg", rng.choice(photos), "image/jpeg")},
                                     data={"k": "10"})  # fmt: skip

        async def thumb(client, rng):
            return await client.get(rng.choice(thumbs))

        result["phases"] = {}
        first = args.clients[0]
        for name, fn in (("text_query", text), ("image_upload", image), ("thumbnail", thumb)):
            warm = asyncio.run(phase(base, first, 3.0, fn))
            result["phases"][name] = asyncio.run(phase(base, first, args.duration, fn))
            result["phases"][name]["warmup_3s"] = {"requests": warm["requests"], "failed": warm["failed"]}
            r = result["phases"][name]
            print(f"{name}: {r['requests_per_second']} req/s, p50 {r['latency_p50_ms']} ms, p99 {r['latency_p99_ms']} ms, "
                  f"failed {r['failed']} of {r['requests']}", flush=True)  # fmt: skip
        failed = sum(p["failed"] + p["warmup_3s"]["failed"] for p in result["phases"].values())

        if args.large_clients:
            big, size = large_png(data / "images" / sorted(dev)[0], args.large_megapixels)

            async def large(client, rng):
                return await client.post("/api/search/image", files={"file": ("big.png", big, "image/png")},
                                         data={"k": "10"})  # fmt: skip

            effect = {"large_upload": {"width": size[0], "height": size[1], "bytes": len(big), "clients": args.large_clients},
                      "by_clients": {}}  # fmt: skip
            for clients in args.clients:
                alone = asyncio.run(phase(base, clients, args.duration, text))
                mixed = asyncio.run(mixed_phase(base, clients, args.large_clients, args.duration, text, large))
                ratio = mixed["text_query"]["latency_p99_ms"] / max(alone["latency_p99_ms"], 1e-9)
                effect["by_clients"][str(clients)] = {
                    "text_alone": alone, "text_with_large_uploads": mixed["text_query"], "large_uploads": mixed["large_upload"],
                    "text_p99_ms_alone": alone["latency_p99_ms"], "text_p99_ms_with_large_uploads": mixed["text_query"]["latency_p99_ms"],
                    "p99_ratio": round(ratio, 2),
                }  # fmt: skip
                failed += alone["failed"] + mixed["text_query"]["failed"] + mixed["large_upload"]["failed"]
                print(f"{clients} text clients: p99 {alone['latency_p99_ms']} ms alone, "
                      f"{mixed['text_query']['latency_p99_ms']} ms with {args.large_clients} clients uploading "
                      f"{size[0]}x{size[1]} PNGs ({mixed['large_upload']['ok']} uploads answered, "
                      f"{mixed['large_upload']['latency_p50_ms']:.0f} ms p50): ratio {ratio:.2f}", flush=True)  # fmt: skip
            result["large_upload_effect"] = effect
        result["failed_requests_total"] = failed
    finally:
        server.terminate()
        try:
            server.wait(timeout=20)
        except subprocess.TimeoutExpired:
            server.kill()
    path = write_result("search_service", result)
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
