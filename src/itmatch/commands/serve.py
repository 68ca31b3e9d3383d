"""``itmatch serve``: the HTTP API and search page over an index (FastAPI + uvicorn)."""

from __future__ import annotations

import argparse

from itmatch.commands._common import eprint

# Kept here, not imported from the service, so `itmatch serve --help` needs no FastAPI.
TOKEN_ENV = "ITMATCH_SERVE_TOKEN"
DEFAULT_MAX_CONNECTIONS = 256
DEFAULT_HEADER_TIMEOUT = 10.0
LOOPBACK = {"127.0.0.1", "localhost", "::1"}


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("index", metavar="INDEX", help="index folder made by itmatch index")
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1: this machine only)")
    p.add_argument("--port", type=int, default=8000)
    p.add_argument("--run", "--model", dest="run",
                   help="run, exported model folder or model name to query with (default: the one recorded in the index; it must be the same model)")
    p.add_argument("--checkpoint", default="best", help="with --run: best | last | a file name")
    p.add_argument("--exact", action="store_true", help="brute-force search even if the index has a FAISS index")
    p.add_argument("--device", default="auto", help="torch device: auto (cuda, then mps, then cpu), cpu, cuda, cuda:1 ...")
    p.add_argument("--max-k", type=int, default=100, help="largest k a query may ask for (default 100)")
    p.add_argument("--max-query-chars", type=int, default=500, help="longest text query (default 500 characters)")
    p.add_argument("--max-upload-mb", type=float, default=10.0, help="largest photo upload (default 10 MiB)")
    p.add_argument("--threads", type=int, help="torch intra-op threads (default: torch's; 1 suits many concurrent queries on few cores)")
    p.add_argument("--log-level", default="warning", help="uvicorn log level (default warning)")
    p.add_argument("--allow-host", action="append", default=[], metavar="NAME",
                   help="also answer requests addressed to this host name (repeatable; '*': any). By default only "
                        "the names of the --host address are answered, so a DNS-rebinding web page cannot query it")
    p.add_argument("--token", help=f"require this bearer token on every request (default: ${TOKEN_ENV}); "
                                   "advised for any --host other than this machine")
    p.add_argument("--max-connections", type=int, default=DEFAULT_MAX_CONNECTIONS,
                   help=f"open connections at most; more are closed at once (default {DEFAULT_MAX_CONNECTIONS})")
    p.add_argument("--header-timeout", type=float, default=DEFAULT_HEADER_TIMEOUT,
                   help=f"seconds a connection may take to send its request headers (default {DEFAULT_HEADER_TIMEOUT:g})")
    p.add_argument("--upload-workers", type=int, help="threads decoding photo uploads (default: half the CPU cores)")


def allowed_hosts(host: str, extra: list[str]) -> list[str]:
    """The Host header names a server bound to ``host`` answers: the loopback names for a
    loopback address; for a wildcard address (0.0.0.0, ::), those and this machine's names and
    addresses; else the address itself. ``extra`` adds names (``*``: any)."""
    import socket

    names = {host}
    if host in LOOPBACK or host.startswith("127."):
        names |= LOOPBACK
    elif host in ("0.0.0.0", "::", ""):
        names |= LOOPBACK
        hostname = socket.gethostname()
        names |= {hostname, socket.getfqdn()}
        try:
            names |= {info[4][0] for info in socket.getaddrinfo(hostname, None)}
        except OSError:
            pass
    return sorted(n for n in names | set(extra) if n)


def run(args: argparse.Namespace) -> int:
    import os
    import warnings

    from itmatch.errors import ItmatchError

    try:
        import uvicorn  # noqa: F401
    except ImportError:
        raise ItmatchError("itmatch serve needs FastAPI and uvicorn: pip install 'itmatch[serve]'") from None
    from PIL import Image

    from itmatch.retrieval.service import create_app, run_server

    if args.max_connections < 1:
        raise ItmatchError(f"--max-connections must be >= 1, got {args.max_connections}")
    if args.header_timeout <= 0:
        raise ItmatchError(f"--header-timeout must be > 0, got {args.header_timeout}")
    if args.upload_workers is not None and args.upload_workers < 1:
        raise ItmatchError(f"--upload-workers must be >= 1, got {args.upload_workers}")
    if args.threads:
        import torch

        torch.set_num_threads(args.threads)
    # Uploads over the pixel limit are refused with 413 anyway; PIL's warning would only fill the log.
    warnings.simplefilter("ignore", Image.DecompressionBombWarning)
    token = args.token or os.environ.get(TOKEN_ENV) or None
    hosts = allowed_hosts(args.host, args.allow_host)

    app = create_app(args.index, args.run, checkpoint=args.checkpoint, device=args.device, exact=args.exact,
                     max_k=args.max_k, max_query_chars=args.max_query_chars,
                     max_upload_bytes=int(args.max_upload_mb * 2**20), allowed_hosts=hosts, token=token,
                     upload_workers=args.upload_workers)  # fmt: skip
    engine = app.state.engine
    shown_host = f"[{args.host}]" if ":" in args.host else args.host
    url = f"http://{shown_host}:{args.port}/" + (f"?token={token}" if token else "")
    eprint(f"serving {args.index}: {len(engine.index)} photos, {len(engine.index.captions)} sentences "
           f"on {url}  (Ctrl-C stops)")  # fmt: skip
    if "*" not in hosts:
        eprint(f"answering Host names: {', '.join(hosts)} (add one with --allow-host NAME)")
    loopback = args.host in LOOPBACK or args.host.startswith("127.")
    if not loopback and token is None:
        eprint(f"warning: serving on {args.host} without a token: anyone who can reach this port can search and "
               f"see the photos; set --token or ${TOKEN_ENV}")  # fmt: skip
    run_server(app, host=args.host, port=args.port, log_level=args.log_level, max_connections=args.max_connections,
               header_timeout=args.header_timeout)  # fmt: skip
    return 0
