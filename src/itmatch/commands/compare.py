"""``itmatch compare``: named recipes x seeds -> a Markdown table (mean +- std) and t-SNE maps."""

from __future__ import annotations

import argparse

from itmatch.commands._common import add_data_arguments, data_overrides, eprint


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--recipes", nargs="+", default=["vsepp", "miie_adv@vsepp"], metavar="SPEC",
                   help="NAME or NAME@BASE (start from BASE's run of the same seed); default: vsepp miie_adv@vsepp")
    p.add_argument("--seeds", type=int, default=3, help="number of seeds (0..N-1), default 3")
    p.add_argument("--out", required=True, metavar="DIR", help="folder for the runs, results.json, table.md, tsne.png")
    add_data_arguments(p)
    p.add_argument("--val-split", help="model-selection split (default: hold out data.val_holdout train images)")
    p.add_argument("--split", default="test", help="split the table is computed on (default: test)")
    p.add_argument("--protocol", default="all", help="recall protocol: all (default), 1k/5k (only on exactly 1,000/5,000 images), 5fold1k")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="config override applied to every recipe")
    p.add_argument("--quiet", action="store_true")


def run(args: argparse.Namespace) -> int:
    from itmatch.experiments.compare import run_comparison

    overrides = data_overrides(args) + list(args.overrides)
    if args.val_split:
        overrides.append(f"data.val_split={args.val_split}")
    result = run_comparison(
        args.recipes, list(range(args.seeds)), args.out, overrides=overrides, eval_split=args.split,
        protocol=args.protocol, progress=not args.quiet, log=None if args.quiet else eprint,
    )  # fmt: skip
    print(result["table"])
    eprint(f"results: {args.out}/results.json, {args.out}/table.md, {args.out}/tsne.png")
    return 0
