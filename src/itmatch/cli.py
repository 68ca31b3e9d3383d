"""The ``itmatch`` command line: a thin layer that parses arguments and calls the library.

Each sub-command lives in ``itmatch.commands.<name>`` and defines ``add_arguments(parser)`` and
``run(args) -> int``. Modules are imported only when their command runs, so ``itmatch --help``
stays fast and optional extras (FastAPI, FAISS, transformers) are never imported needlessly.
``main(argv)`` takes a list, so tests drive the real command line in-process.
"""

from __future__ import annotations

import argparse
import importlib
import sys

from itmatch.errors import ItmatchError

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
}


def build_parser(argv: list[str] | None = None) -> tuple[argparse.ArgumentParser, str | None]:
    parser = argparse.ArgumentParser(prog="itmatch", description=__doc__.splitlines()[0])
    parser.add_argument("--version", action="version", version=f"itmatch {_version()}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    # The command is the first argument (the top level takes no options but -h/--version).
    chosen = argv[0] if argv and argv[0] in COMMANDS else None
    for name, (module, help_text) in COMMANDS.items():
        p = sub.add_parser(name, help=help_text, description=help_text)
        if name == chosen:
            importlib.import_module(module).add_arguments(p)
    return parser, chosen


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    parser, chosen = build_parser(argv)
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        return 2
    module = importlib.import_module(COMMANDS[args.command][0])
    try:
        return int(module.run(args) or 0)
    except ItmatchError as exc:
        print(f"itmatch {args.command}: error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print(f"itmatch {args.command}: interrupted", file=sys.stderr)
        return 130


def _version() -> str:
    from itmatch import __version__

    return __version__


if __name__ == "__main__":
    raise SystemExit(main())
