"""``itmatch train``: train a recipe and write a run folder."""

from __future__ import annotations

import argparse
from pathlib import Path

from itmatch.commands._common import add_data_arguments, data_overrides, eprint


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--config", help="recipe name in configs/ (vsepp, miie, ...) or a YAML path (default: vsepp; "
                                     "with --resume: the run's own config.yaml)")
    p.add_argument("--out", required=True, metavar="RUN_DIR", help="run folder to create (or continue with --resume)")
    add_data_arguments(p)
    p.add_argument("--val-split", help="split used for model selection (default: hold out data.val_holdout train images)")
    p.add_argument("--seed", type=int, help="random seed (overrides the recipe's)")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override a config value, e.g. --set training.batch_size=64 --set stages.1.epochs=3")
    p.add_argument("--resume", action="store_true",
                   help="continue the run in --out from its last checkpoint; --set/--config may then change only "
                        "how it runs (training.device, threads, num_workers, eval_batch_size, log_every, "
                        "checkpoint_every, data.feature_cache) and the epochs of stages not yet finished")
    p.add_argument("--init-from", metavar="RUN", help="start from another run's best checkpoint (weights and vocabulary)")
    p.add_argument("--quiet", action="store_true", help="no progress bars or per-epoch lines")


def run(args: argparse.Namespace) -> int:
    from itmatch.errors import ItmatchError
    from itmatch.training.config import apply_overrides, load_config, resolve_config
    from itmatch.training.trainer import train

    overrides = data_overrides(args) + list(args.overrides)
    if args.val_split:
        overrides.append(f"data.val_split={args.val_split}")
    if args.seed is not None:
        overrides.append(f"seed={args.seed}")
    cfg = None
    if not args.resume:
        cfg = load_config(args.config or "vsepp", overrides)
    elif args.config is not None:
        cfg = load_config(args.config, overrides)  # compared with the run's config by the trainer
    elif overrides:
        # Every flag is applied to the run's own config, then the trainer refuses what a resume
        # may not change: nothing is ignored silently.
        import yaml

        saved_path = Path(args.out) / "config.yaml"
        if not saved_path.is_file():
            raise ItmatchError(f"{args.out} holds no run to resume (no {saved_path.name})")
        saved = yaml.safe_load(saved_path.read_text(encoding="utf-8"))
        cfg = resolve_config(apply_overrides(saved, overrides), where=str(saved_path))

    def log(record: dict) -> None:
        if args.quiet or "val/rsum" not in record:
            return
        eprint(
            f"[{record['stage']} epoch {record['epoch']}] rsum {record['val/rsum']:.1f}  "
            f"i2t R@1 {record['val/i2t_r1']:.1f}  t2i R@1 {record['val/t2i_r1']:.1f}  "
            f"probe {record['val/probe_acc']:.1f}%  D {record['val/classifier_acc']:.1f}%"
            + ("  (best)" if record.get("best") else "")
        )

    summary = train(cfg, Path(args.out), resume=args.resume, init_from=args.init_from, progress=not args.quiet, log=log)
    best = summary["best"]
    if best:
        eprint(f"done: best rsum {best['val/rsum']:.1f} at {best['stage']} epoch {best['epoch']}; run in {args.out}")
    else:
        eprint(f"done: run in {args.out}")
    return 0
