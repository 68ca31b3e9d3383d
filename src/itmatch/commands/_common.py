"""Small helpers shared by the sub-commands (argument groups, printing)."""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

INVARIANCE_KEYS = ("probe_acc", "centroid_dist", "mmd", "classifier_acc")


def add_data_arguments(parser: argparse.ArgumentParser, required: bool = False) -> None:
    g = parser.add_argument_group("data set")
    g.add_argument("--format", choices=["precomp", "karpathy", "coco", "flickr8k"], required=required, help="data format")
    g.add_argument("--data", metavar="PATH", required=required, help="data set file or folder (layouts: docs/data.md)")
    g.add_argument("--image-root", metavar="DIR", help="image folder, when not the format's default")


def data_overrides(args: argparse.Namespace) -> list[str]:
    """``--format/--data/--image-root`` as config overrides."""
    out = []
    for flag, key in (("format", "data.format"), ("data", "data.path"), ("image_root", "data.image_root")):
        value = getattr(args, flag, None)
        if value is not None:
            out.append(f"{key}={json.dumps(str(value))}")
    return out


def data_config_with_args(data_cfg: dict[str, Any], args: argparse.Namespace) -> dict[str, Any]:
    """A run's ``data`` config with ``--format/--data/--image-root`` applied (to score another data set)."""
    out = dict(data_cfg)
    for flag, key in (("format", "format"), ("data", "path"), ("image_root", "image_root")):
        if getattr(args, flag, None):
            out[key] = getattr(args, flag)
    return out


def format_metrics_table(rows: dict[str, dict[str, Any]], keys: tuple[str, ...]) -> str:
    """A fixed-width table, one row per named result."""
    name_w = max([len("model")] + [len(n) for n in rows])
    header = f"{'model':<{name_w}}  " + "  ".join(f"{k:>13}" for k in keys)
    lines = [header, "-" * len(header)]
    for name, metrics in rows.items():
        cells = []
        for k in keys:
            v = metrics.get(k)
            cells.append(f"{v:>13.2f}" if isinstance(v, (int, float)) else f"{'-':>13}")
        lines.append(f"{name:<{name_w}}  " + "  ".join(cells))
    return "\n".join(lines)


def eprint(*args: Any) -> None:
    print(*args, file=sys.stderr, flush=True)
