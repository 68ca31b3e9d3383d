"""``itmatch demo``: generate a data set, train the baseline and the modality-invariant model,
compare them on the test split and write a report folder (see :mod:`itmatch.experiments.demo`)."""

from __future__ import annotations

import argparse
import time
from typing import Any

from itmatch.commands._common import eprint


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--out", default="demo-output", metavar="DIR",
                   help="output folder: data set, feature cache, runs and report/ (default: demo-output)")
    p.add_argument("--seed", type=int, default=0, help="seed of the data set and of the training (default: 0)")
    p.add_argument("--quick", action="store_true",
                   help="a much smaller variant (1/6 of the data at half the resolution, a few epochs), for tests")
    p.add_argument("--threads", type=int, default=1,
                   help="CPU threads for torch and BLAS (default: 1; on a busy 2-core machine 2 threads made a "
                        "training step 10-20x slower than 1)")
    p.add_argument("--quiet", action="store_true", help="no progress bars or per-epoch lines")


def run(args: argparse.Namespace) -> int:
    import torch
    from threadpoolctl import threadpool_limits  # a scikit-learn dependency

    from itmatch.errors import ItmatchError
    from itmatch.experiments.demo import run_demo

    if args.threads < 1:
        raise ItmatchError(f"--threads must be >= 1, got {args.threads}")
    log = None if args.quiet else eprint
    start = time.perf_counter()
    previous_threads = torch.get_num_threads()
    torch.set_num_threads(args.threads)
    try:
        with threadpool_limits(limits=args.threads):
            result = run_demo(
                args.out, seed=args.seed, quick=args.quick, progress=not args.quiet, log=log,
                on_record=None if args.quiet else _print_record,
            )  # fmt: skip
    finally:
        torch.set_num_threads(previous_threads)

    print()
    print(f"Test split: {result.n_test_images} images, {5 * result.n_test_images} captions "
          f"(chance rsum {result.chance['rsum']:.1f}, chance probe accuracy 50%)")  # fmt: skip
    print(result.table_markdown)
    print()
    report = result.report_dir
    print(f"Report: {report}/README.md  (table: results.md, results.json; pictures: tsne.png, "
          f"queries/, curves.png, curves_miie.png)")  # fmt: skip
    print(f"Done in {time.perf_counter() - start:.0f} s: " + ", ".join(
        f"{k} {v:.0f} s" for k, v in result.timings.items() if k != "total"
    ))  # fmt: skip
    return 0


def _print_record(model: str, record: dict[str, Any]) -> None:
    if "val/rsum" not in record:
        return
    # D's accuracy only where D trains (else it is an untrained classifier's); it is measured on
    # N images and 5N captions, so always answering "text" scores 83%.
    d_acc = f"  D {record['val/classifier_acc']:.1f}%" if record["stage"] in ("classifier", "adversarial") else ""
    eprint(
        f"      [{model} {record['stage']} {record['epoch']}] val rsum {record['val/rsum']:.1f}  "
        f"i2t R@1 {record['val/i2t_r1']:.1f}  t2i R@1 {record['val/t2i_r1']:.1f}  "
        f"probe {record['val/probe_acc']:.1f}%  centroid {record['val/centroid_dist']:.3f}{d_acc}"
        + ("  (best)" if record.get("best") else "")
    )
