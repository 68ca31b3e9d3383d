"""``itmatch evaluate``: Recall@K (and modality-invariance metrics) of a run or of saved embeddings."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import torch

from itmatch.commands._common import (
    INVARIANCE_KEYS,
    add_data_arguments,
    data_config_with_args,
    eprint,
    format_metrics_table,
)
from itmatch.errors import ItmatchError
from itmatch.evaluation.recall import METRIC_KEYS


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("run", nargs="*", help="run folder, checkpoint file, exported model folder or model name (itmatch models) to "
                   "evaluate; two or more are scored as one ensemble (the mean of their cosine similarities)")  # fmt: skip
    p.add_argument("--checkpoint", default="best", help="best | last | a file name in the run's checkpoints/")
    p.add_argument("--split", default="test", help="split to score (default: test)")
    add_data_arguments(p)
    p.add_argument("--image-emb", metavar="IMAGES.npy", help="N x d image embeddings saved by any model")
    p.add_argument(
        "--text-emb", metavar="TEXTS.npy", help="5N x d caption embeddings, caption rows in image order"
    )
    p.add_argument(
        "--protocol",
        default="all",
        choices=["all", "1k", "5k", "5fold", "5fold1k"],
        help="all (default): all images of the split at once; 1k/5k: the same, only on exactly "
        "1,000/5,000 images; 5fold1k: mean over 5 folds of 1,000 (MSCOCO 1K)",
    )
    p.add_argument("--no-invariance", action="store_true", help="skip the modality-invariance metrics")
    p.add_argument(
        "--center",
        action="store_true",
        help="subtract each modality's mean embedding and renormalise before scoring "
        "(removes the modality gap; see itmatch.evaluation.centering)",
    )
    p.add_argument("--save-emb", metavar="PREFIX", help="also save PREFIX_images.npy and PREFIX_texts.npy")
    p.add_argument("--json", action="store_true", help="print the metrics as one JSON object")
    p.add_argument(
        "--device",
        default="auto",
        help="torch device: auto (cuda, then mps, then cpu), cpu, cuda, cuda:1 ...",
    )


def _load_embeddings(path: str, what: str) -> torch.Tensor:
    """A 2-D array of finite numbers from a .npy file, or an error saying what is wrong with it."""
    p = Path(path)
    if not p.is_file():
        raise ItmatchError(f"{what} file {p} does not exist")
    with open(p, "rb") as fh:
        head = fh.read(6)
    if head.startswith(b"PK\x03\x04"):
        raise ItmatchError(
            f"{what} file {p} is a .npz archive; save the one array with numpy.save (a .npy file)"
        )
    if head != b"\x93NUMPY":
        raise ItmatchError(
            f"{what} file {p} is not a .npy array (no .npy header: text or CSV? save it with numpy.save)"
        )
    try:
        arr = np.load(p, allow_pickle=False)
    except (ValueError, OSError, EOFError) as exc:
        raise ItmatchError(f"{what} file {p} is not a readable .npy array: {exc}") from exc
    if arr.ndim != 2:
        raise ItmatchError(f"{what} file {p}: expected a 2-D array (rows x dims), got shape {arr.shape}")
    if arr.shape[0] == 0 or arr.shape[1] == 0:
        raise ItmatchError(f"{what} file {p}: the array is empty (shape {arr.shape})")
    if arr.dtype.kind not in "fiu":
        raise ItmatchError(f"{what} file {p}: expected numbers, got dtype {arr.dtype}")
    arr = np.array(arr, dtype=np.float32)  # an owned, writable copy (torch warns on read-only memory)
    finite = np.isfinite(arr).all(axis=1)
    if not finite.all():
        rows = np.flatnonzero(~finite)
        shown = ", ".join(str(r) for r in rows[:5]) + (f" and {len(rows) - 5} more" if len(rows) > 5 else "")
        raise ItmatchError(f"{what} file {p}: {len(rows)} row(s) hold NaN or infinite values (rows {shown})")
    return torch.from_numpy(arr)


def run(args: argparse.Namespace) -> int:
    from itmatch.evaluation.runs import embed_run, score_embeddings

    if (args.image_emb is None) != (args.text_emb is None):
        raise ItmatchError("--image-emb and --text-emb go together")
    if args.image_emb is not None:
        if args.run:
            raise ItmatchError("give either a run or --image-emb/--text-emb, not both")
        im = _load_embeddings(args.image_emb, "--image-emb")
        tx = _load_embeddings(args.text_emb, "--text-emb")
        if im.shape[1] != tx.shape[1]:
            raise ItmatchError(f"embedding sizes differ: images {tuple(im.shape)}, texts {tuple(tx.shape)}")
        source = f"{args.image_emb} + {args.text_emb}"
    elif args.run:
        embedded = embed_run(
            args.run[0] if len(args.run) == 1 else args.run, args.split, checkpoint=args.checkpoint, data=data_config_with_args({}, args),
            device=args.device, progress=not args.json,
        )  # fmt: skip
        im, tx, corpus = embedded.images, embedded.texts, embedded.corpus
        if len(args.run) == 1:
            source = f"{args.run[0]} ({embedded.matcher.checkpoint.name}) on {corpus.name}/{corpus.split}"
        else:
            source = f"ensemble of {len(args.run)} models ({', '.join(args.run)}) on {corpus.name}/{corpus.split}"
    else:
        raise ItmatchError("nothing to evaluate: give a run folder or --image-emb/--text-emb")

    if args.center:
        from itmatch.evaluation.centering import center_modalities

        im, tx = center_modalities(im, tx)
        source += ", each modality centred"
    try:  # the library names what is wrong (counts, protocol) in a ValueError
        metrics = score_embeddings(im, tx, protocol=args.protocol, invariance=not args.no_invariance)
    except ValueError as exc:
        raise ItmatchError(str(exc)) from None
    if args.save_emb:
        np.save(f"{args.save_emb}_images.npy", im.numpy())
        np.save(f"{args.save_emb}_texts.npy", tx.numpy())
    if args.json:
        print(json.dumps(metrics, sort_keys=True))
    else:
        eprint(f"{source}: {len(im)} images, {len(tx)} captions, protocol {args.protocol}")
        print(format_metrics_table({"recall": metrics}, METRIC_KEYS))
        if not args.no_invariance:
            print()
            print(format_metrics_table({"invariance": metrics}, INVARIANCE_KEYS[:3]))
            print(f"(mmd: RBF kernel, fixed bandwidth sigma = {metrics['mmd_bandwidth']:g})")
    return 0
