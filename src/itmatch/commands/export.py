"""``itmatch export``: write a trained run as a self-contained model folder (see itmatch.pretrained)."""

from __future__ import annotations

import argparse
import json


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("run", help="run folder (or checkpoint file) to export")
    p.add_argument("-o", "--out", required=True, metavar="MODEL_DIR", help="model folder to write")
    p.add_argument("--checkpoint", default="best", help="best | last | a file name in the run's checkpoints/")
    p.add_argument("--dtype", choices=["float32", "float16"], default="float32",
                   help="weights' precision: float32 embeds exactly as the run; float16 is half the size")
    p.add_argument("--name", help="the model's name (default: the folder's name)")
    p.add_argument("--no-classifier", action="store_true",
                   help="leave out the modality classifier (not needed to embed or search)")
    p.add_argument("--replace", action="store_true", help="replace the model already in MODEL_DIR")
    p.add_argument("--json", action="store_true", help="print the manifest as one JSON object")


def run(args: argparse.Namespace) -> int:
    from itmatch.pretrained import export_model, folder_bytes

    manifest = export_model(args.run, args.out, checkpoint=args.checkpoint, dtype=args.dtype, name=args.name,
                            replace=args.replace, keep_classifier=not args.no_classifier)  # fmt: skip
    if args.json:
        print(json.dumps(manifest))
        return 0
    backbones = ", ".join(f"{b['name']} ({'shipped' if b['shipped'] else b['package'] or 'local file'})"
                          for b in manifest["backbones"])  # fmt: skip
    w = manifest["weights"]
    print(f"{args.out}: model {manifest['name']!r}, {w['parameters']:,} parameters in {manifest['dtype']}, "
          f"{folder_bytes(args.out) / 2**20:.1f} MiB; backbones: {backbones}")  # fmt: skip
    return 0
