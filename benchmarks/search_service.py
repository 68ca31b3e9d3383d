"""Requests per second that ``itmatch serve`` sustains under 8 concurrent clients, and how many failed.

    .venv/bin/python benchmarks/search_service.py --index INDEX [--clients 8] [--duration 30] [--threads 1]

Starts ``itmatch serve INDEX`` (uvicorn, one process) in a subprocess on a free port, waits for
/api/health, then runs a local asyncio + httpx load generator: ``--clients`` connections, each
sending its next request as soon as the previous answer arrived (closed loop), for ``--duration``
seconds per phase. Phases: text queries (GET /api/search/text, k=10, Flickr8k dev captions),
photo uploads (POST /api/search/image, Flickr8k JPEGs), thumbnails of results (GET /thumbs/...).
A request fails when it raises or answers anything but 200. The load generator shares the
machine's cores with the server. Writes benchmarks/results/search_service.json.
"""

from __future__ import annotations

import argparse
import asyncio
import csv
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


async def phase(base: str, clients: int, duration: float, make_request) -> dict:
    latencies: list[float] = []
    statuses: Counter = Counter()
    errors: Counter = Counter()
    deadline = time.perf_counter() + duration
    limits = httpx.Limits(max_connections=clients, max_keepalive_connections=clients)
    async with httpx.AsyncClient(base_url=base, limits=limits, timeout=60) as client:

        async def worker(seed: int) -> None:
            rng = random.Random(seed)
            while time.perf_counter() < deadline:
                t = time.perf_counter()
                try:
                    r = await make_request(client, rng)
                    statuses[r.status_code] += 1
                except Exception as exc:  # a failed request, counted by type
                    errors[type(exc).__name__] += 1
                    continue
                latencies.append((time.perf_counter() - t) * 1000)

        start = time.perf_counter()
        await asyncio.gather(*(worker(i) for i in range(clients)))
        elapsed = time.perf_counter() - start
    total = sum(statuses.values()) + sum(errors.values())
    ok = statuses.get(200, 0)
    a = np.asarray(latencies) if latencies else np.zeros(1)
    return {
        "clients": clients, "seconds": round(elapsed, 2), "requests": total, "ok": ok, "failed": total - ok,
        "statuses": {str(k): v for k, v in sorted(statuses.items())}, "errors": dict(errors),
        "requests_per_second": round(ok / elapsed, 2),
        "latency_p50_ms": round(float(np.percentile(a, 50)), 2), "latency_p99_ms": round(float(np.percentile(a, 99)), 2),
    }  # fmt: skip


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--index", required=True)
    ap.add_argument("--data", default=str(DATA))
    ap.add_argument("--clients", type=int, default=8)
    ap.add_argument("--duration", type=float, default=30.0)
    ap.add_argument("--threads", type=int, default=1, help="torch threads in the server (itmatch serve --threads)")
    args = ap.parse_args()
    data = Path(args.data)
    dev = set((data / "dev_images.txt").read_text().split())
    with open(data / "captions.txt", newline="", encoding="utf-8") as fh:
        captions = [r["caption"] for r in csv.DictReader(fh) if r["image"] in dev]
    photos = [(data / "images" / name).read_bytes() for name in sorted(dev)[:200]]

    port = free_port()
    base = f"http://127.0.0.1:{port}"
    cmd = [sys.executable, "-m", "itmatch", "serve", args.index, "--port", str(port), "--threads", str(args.threads)]
    server = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    result: dict = {"server_command": " ".join(cmd[1:]), "load_average_at_start": load_average(),
                    "load_generator": "python asyncio + httpx.AsyncClient, closed loop, same machine"}  # fmt: skip
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
        for name, fn in (("text_query", text), ("image_upload", image), ("thumbnail", thumb)):
            warm = asyncio.run(phase(base, args.clients, 3.0, fn))
            result["phases"][name] = asyncio.run(phase(base, args.clients, args.duration, fn))
            result["phases"][name]["warmup_3s"] = {"requests": warm["requests"], "failed": warm["failed"]}
            r = result["phases"][name]
            print(f"{name}: {r['requests_per_second']} req/s, p50 {r['latency_p50_ms']} ms, p99 {r['latency_p99_ms']} ms, "
                  f"failed {r['failed']} of {r['requests']}", flush=True)  # fmt: skip
        result["failed_requests_total"] = sum(p["failed"] + p["warmup_3s"]["failed"] for p in result["phases"].values())
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
