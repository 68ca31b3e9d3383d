"""``itmatch index``: embed a photo folder (and optionally sentences) with a trained run."""

from __future__ import annotations

import argparse
import json

from itmatch.commands._common import eprint


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("run", metavar="RUN", help="run folder, checkpoint file, exported model folder or model name "
                   "(itmatch models) whose model embeds the photos; leave it out with --model")
    p.add_argument("images", metavar="IMAGES_DIR", nargs="?",
                   help="photo folder, searched recursively (jpg, png, webp, ...)")
    p.add_argument("--model", metavar="NAME",
                   help="an installed model (itmatch models, e.g. itmatch-f8k) or an exported model folder, instead of RUN")
    p.add_argument("-o", "--out", required=True, metavar="INDEX", help="index folder to create or update")
    p.add_argument("--captions", metavar="FILE",
                   help="sentences to index too: .txt (one a line), .csv with image,caption header, or Karpathy .json")
    p.add_argument("--checkpoint", default="best", help="best | last | a file name in the run's checkpoints/")
    p.add_argument("--approximate", choices=["ivf", "hnsw", "exact"],
                   help="also build a FAISS index (needs faiss-cpu) for millions of photos; exact drops it "
                        "(default: keep what the index had, exact for a new one)")
    p.add_argument("--nlist", type=int, help="IVF cells (default about 4 * sqrt(photos))")
    p.add_argument("--nprobe", type=int, default=16, help="IVF cells searched per query (default 16)")
    p.add_argument("--rebuild", action="store_true",
                   help="start afresh, replacing an index built with another run or folder")
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--device", default="auto", help="torch device: auto (cuda, then mps, then cpu), cpu, cuda, cuda:1 ...")
    p.add_argument("--threads", type=int,
                   help="torch intra-op threads (default: torch's; on a busy machine 1 or 2 can be several times faster)")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.add_argument("--json", action="store_true", help="print the summary as one JSON object")


def run(args: argparse.Namespace) -> int:
    import torch

    from itmatch.errors import ItmatchError

    if args.threads is not None and args.threads < 1:
        raise ItmatchError(f"--threads must be >= 1, got {args.threads}")
    if args.model is not None:  # itmatch index --model NAME IMAGES_DIR: the one positional is the folder
        if args.images is not None:
            raise ItmatchError("give either RUN or --model, not both")
        args.run, args.images = args.model, args.run
    if args.images is None:
        raise ItmatchError("the photo folder IMAGES_DIR is missing")
    if args.batch_size < 1:
        raise ItmatchError(f"--batch-size must be >= 1, got {args.batch_size}")
    previous_threads = torch.get_num_threads()
    if args.threads:
        torch.set_num_threads(args.threads)
    try:
        return _run(args)
    finally:
        torch.set_num_threads(previous_threads)


def _run(args: argparse.Namespace) -> int:
    from itmatch.inference import Matcher
    from itmatch.retrieval import build_index

    approximate: str | dict | None = args.approximate
    if args.approximate == "ivf":
        approximate = {"method": "ivf", "nprobe": args.nprobe, **({"nlist": args.nlist} if args.nlist else {})}
    matcher = Matcher.from_run(args.run, checkpoint=args.checkpoint, device=args.device)
    bar = None

    def progress(done: int, total: int) -> None:
        nonlocal bar
        if args.quiet or args.json or total == 0:
            return
        if bar is None:
            from tqdm import tqdm

            bar = tqdm(total=total, unit="photo", desc="embedding", leave=False)
        bar.n = done
        bar.refresh()

    try:
        summary = build_index(matcher, args.images, args.out, captions=args.captions, approximate=approximate,
                              rebuild=args.rebuild, batch_size=args.batch_size, progress=progress)  # fmt: skip
    finally:
        if bar is not None:
            bar.close()
    if args.json:
        print(json.dumps(summary.to_dict()))
        return 0
    for rel, reason in sorted(summary.unreadable.items()):
        eprint(f"warning: skipped unreadable photo {rel}: {reason}")
    for rel in summary.outside:
        eprint(f"warning: skipped {rel}: it links to a file outside {summary.images_root}")
    search = summary.approximate["method"] if summary.approximate else "exact"
    restamped = f" ({summary.restamped} with a new modification time, same bytes)" if summary.restamped else ""
    print(f"{summary.index}: {summary.photos} photos ({summary.embedded} embedded, {summary.reused} unchanged{restamped}, "
          f"{summary.removed} removed, {len(summary.unreadable)} unreadable skipped), {summary.captions} sentences "
          f"({summary.captions_embedded} embedded); {search} search; {summary.seconds:.1f} s")  # fmt: skip
    return 0
