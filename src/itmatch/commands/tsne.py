"""``itmatch tsne``: a 2-D t-SNE map of a run's image and text embeddings on a split."""

from __future__ import annotations

import argparse

from itmatch.commands._common import add_data_arguments, data_config_with_args, eprint


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("run", help="run folder or checkpoint file")
    p.add_argument("--checkpoint", default="best", help="best | last | a file name in the run's checkpoints/")
    p.add_argument("--split", default="test")
    add_data_arguments(p)
    p.add_argument("-o", "--output", required=True, metavar="PNG")
    p.add_argument("--max-points", type=int, default=1000, help="points per modality (subsampled)")
    p.add_argument("--device", default="auto", help="torch device: auto (cuda, then mps, then cpu), cpu, cuda ...")


def run(args: argparse.Namespace) -> int:
    from itmatch.evaluation.invariance import invariance_metrics
    from itmatch.evaluation.plots import tsne_map
    from itmatch.evaluation.runs import embed_run

    embedded = embed_run(
        args.run, args.split, checkpoint=args.checkpoint, data=data_config_with_args({}, args), device=args.device,
        progress=True,
    )  # fmt: skip
    im, tx = embedded.images, embedded.texts
    probe = invariance_metrics(im, tx)["probe_acc"]
    title = f"{embedded.matcher.config.get('name', 'run')} ({args.split}): probe accuracy {probe:.1f}%"
    tsne_map(im, tx, args.output, title=title, max_points=args.max_points)
    eprint(f"wrote {args.output}")
    return 0
