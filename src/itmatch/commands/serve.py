"""``itmatch serve``: the HTTP API and search page over an index (FastAPI + uvicorn)."""

from __future__ import annotations

import argparse

from itmatch.commands._common import eprint


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("index", metavar="INDEX", help="index folder made by itmatch index")
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1: this machine only)")
    p.add_argument("--port", type=int, default=8000)
    p.add_argument("--run", help="run to query with (default: the one recorded in the index; it must be the same model)")
    p.add_argument("--checkpoint", default="best", help="with --run: best | last | a file name")
    p.add_argument("--exact", action="store_true", help="brute-force search even if the index has a FAISS index")
    p.add_argument("--device", default="auto", help="torch device: auto (cuda, then mps, then cpu), cpu, cuda, cuda:1 ...")
    p.add_argument("--max-k", type=int, default=100, help="largest k a query may ask for (default 100)")
    p.add_argument("--max-query-chars", type=int, default=500, help="longest text query (default 500 characters)")
    p.add_argument("--max-upload-mb", type=float, default=10.0, help="largest photo upload (default 10 MiB)")
    p.add_argument("--threads", type=int, help="torch intra-op threads (default: torch's; 1 suits many concurrent queries on few cores)")
    p.add_argument("--log-level", default="warning", help="uvicorn log level (default warning)")


def run(args: argparse.Namespace) -> int:
    from itmatch.errors import ItmatchError

    try:
        import uvicorn
    except ImportError:
        raise ItmatchError("itmatch serve needs FastAPI and uvicorn: pip install 'itmatch[serve]'") from None
    from itmatch.retrieval.service import create_app

    if args.threads:
        import torch

        torch.set_num_threads(args.threads)

    app = create_app(args.index, args.run, checkpoint=args.checkpoint, device=args.device, exact=args.exact,
                     max_k=args.max_k, max_query_chars=args.max_query_chars,
                     max_upload_bytes=int(args.max_upload_mb * 2**20))  # fmt: skip
    engine = app.state.engine
    eprint(f"serving {args.index}: {len(engine.index)} photos, {len(engine.index.captions)} sentences "
           f"on http://{args.host}:{args.port}/  (Ctrl-C stops)")  # fmt: skip
    uvicorn.run(app, host=args.host, port=args.port, log_level=args.log_level)
    return 0
