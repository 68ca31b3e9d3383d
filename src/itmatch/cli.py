"""The ``itmatch`` command line: a thin layer that parses arguments and calls the library.

Each sub-command lives in ``itmatch.commands.<name>`` and defines ``add_arguments(parser)`` and
``run(args) -> int``. Modules are imported only when their command runs, so ``itmatch --help``
stays fast and optional extras (FastAPI, FAISS, transformers) are never imported needlessly.
``main(argv)`` takes a list, so tests drive the real command line in-process.
"""

from __future__ import annotations

import argparse
import errno
import importlib
import os
import sys

from itmatch.errors import ItmatchError
from itmatch.memory import retain_freed_memory

DESCRIPTION = "itmatch: match photos and sentences - train, evaluate, index a photo folder and search it by sentence."
DEBUG_ENV = "ITMATCH_DEBUG"  # =1: tracebacks instead of one-line errors (as --debug)

# name -> (module, one-line help). Add a command by adding a module and a line here.
COMMANDS: dict[str, tuple[str, str]] = {
    "extract": ("itmatch.commands.extract", "extract CNN features for a data set's images (cached, resumable)"),
    "train": ("itmatch.commands.train", "train a recipe (YAML config) and write a run folder"),
    "evaluate": ("itmatch.commands.evaluate", "score a trained run or saved embeddings with Recall@K"),
    "demo": ("itmatch.commands.demo", "generate a data set, train baseline + modality-invariant model, report"),
    "compare": ("itmatch.commands.compare", "train named recipes over several seeds and tabulate mean +- std"),
    "tsne": ("itmatch.commands.tsne", "2-D t-SNE map of image and text embeddings of a run"),
    "index": ("itmatch.commands.index", "embed a photo folder with a trained run into a search index"),
    "search": ("itmatch.commands.search", "query an index by sentence or by photo"),
    "serve": ("itmatch.commands.serve", "HTTP API and web page over an index"),
    "export": ("itmatch.commands.export", "write a trained run as a self-contained model folder to ship"),
    "models": ("itmatch.commands.models", "list the trained models installed with itmatch"),
}


def build_parser(argv: list[str] | None = None) -> tuple[argparse.ArgumentParser, str | None]:
    parser = argparse.ArgumentParser(
        prog="itmatch", description=DESCRIPTION, epilog="Run 'itmatch COMMAND --help' for the options of a command."
    )
    parser.add_argument("--version", action="version", version=f"itmatch {_version()}")
    debug_help = f"show the full traceback of an error (or set {DEBUG_ENV}=1)"
    parser.add_argument("--debug", action="store_true", help=debug_help)
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    # The command is the first argument that is not a top-level option (-h, --version, --debug).
    first = next((a for a in argv or [] if a != "--debug"), None)
    chosen = first if first in COMMANDS else None
    for name, (module, help_text) in COMMANDS.items():
        p = sub.add_parser(name, help=help_text, description=help_text)
        if name == chosen:
            importlib.import_module(module).add_arguments(p)
            p.add_argument("--debug", action="store_true", default=argparse.SUPPRESS, help=debug_help)
    return parser, chosen


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    parser, chosen = build_parser(argv)
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        return 2
    debug = bool(getattr(args, "debug", False)) or os.environ.get(DEBUG_ENV, "") not in ("", "0")
    # The one place where errors become one line: the project's own errors (bad input, named)
    # and the operating system's (a read-only or full disk, a missing file), unless --debug.
    # The command line owns its process: big freed blocks stay in it, so photo batches do not
    # page-fault their activations in afresh every time (itmatch.memory; 5x faster at 380 px).
    # `train` leaves it to the run's training.retain_memory (which may say false).
    if args.command != "train":
        retain_freed_memory()
    try:
        module = importlib.import_module(COMMANDS[args.command][0])
        return int(module.run(args) or 0)
    except (ItmatchError, OSError) as exc:
        if debug:
            raise
        print(f"itmatch {args.command}: error: {describe_error(exc)}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print(f"itmatch {args.command}: interrupted", file=sys.stderr)
        return 130


def describe_error(exc: BaseException) -> str:
    """One line (or a few, for a list of bad items) for an error a user can act on."""
    if not isinstance(exc, OSError) or isinstance(exc, ItmatchError):
        return str(exc)
    path = exc.filename
    where = f" {path}" if path else ""
    if exc.errno == errno.ENOSPC:
        free = _free_bytes(path)
        need = getattr(exc, "needed_bytes", None)
        parts = [f"no space left on the device to write{where}"]
        if need:
            parts.append(f"it needed at least {_size(need)}")
        if free is not None:
            parts.append(f"{_size(free)} free there")
        return "; ".join(parts)
    if exc.errno == errno.EROFS:
        return f"cannot write{where}: the file system is read-only (choose an output folder on a writable disk)"
    if exc.errno in (errno.EACCES, errno.EPERM):
        return f"permission denied:{where}"
    reason = exc.strerror or str(exc)
    return f"{reason}:{where}" if path else reason


def _free_bytes(path: str | None) -> int | None:
    import shutil
    from pathlib import Path

    p = Path(path) if path else None
    while p is not None and not p.exists() and p != p.parent:
        p = p.parent
    try:
        return shutil.disk_usage(p).free if p is not None else None
    except OSError:
        return None


def _size(n: int) -> str:
    return f"{n / 2**20:.1f} MiB" if n >= 2**20 else f"{n} bytes"


def _version() -> str:
    from itmatch import __version__

    return __version__


if __name__ == "__main__":
    raise SystemExit(main())
