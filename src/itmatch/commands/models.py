"""``itmatch models``: the trained models installed with itmatch (or in the folders named)."""

from __future__ import annotations

import argparse
import json


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("folders", nargs="*", metavar="MODEL_DIR", help="also describe these exported model folders")
    p.add_argument("--json", action="store_true", help="print one JSON list")


def run(args: argparse.Namespace) -> int:
    from itmatch.errors import ItmatchError
    from itmatch.pretrained import describe, installed_models, model_dir

    folders = list(installed_models().values())
    for f in args.folders:
        found = model_dir(f)
        if found is None:
            raise ItmatchError(f"{f} is not an itmatch model folder (no itmatch-model.json)")
        folders.append(found)
    rows = [describe(f) for f in folders]
    if args.json:
        print(json.dumps(rows))
        return 0
    if not rows:
        print("no models installed")
        return 0
    header = f"{'name':<16} {'size':>9} {'dev rsum':>9}  {'text':<7} backbones"
    print(header)
    print("-" * len(header))
    for r in rows:
        rsum = f"{r['dev_rsum']:.1f}" if isinstance(r["dev_rsum"], (int, float)) else "-"
        backbones = ", ".join(f"{b['name']} ({b['package'] or 'local file'}{', fine-tuned' if b['shipped'] else ''}, "
                              f"sha256 {b['sha256'][:12]})" for b in r["backbones"])  # fmt: skip
        print(f"{r['name']:<16} {r['bytes'] / 2**20:>5.1f} MiB {rsum:>9}  {r['text_encoder']:<7} {backbones}")
    print("(dev rsum: the model card's figure, R@1+5+10 both ways; docs/models.md)")
    return 0
