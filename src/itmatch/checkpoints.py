"""Checkpoints: plain dictionaries of tensors and config data, written atomically.

They load with ``torch.load(weights_only=True)``: no pickled classes, no argparse namespaces.
The trainer writes them and every model user (inference, the search index) reads them, so this
module sits below both.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from itmatch.errors import ItmatchError
from itmatch.fileio import atomic_write_bytes


def save_checkpoint(path: Path, payload: dict[str, Any]) -> None:
    atomic_write_bytes(path, lambda f: torch.save(payload, f))


def load_checkpoint(path: str | Path, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    path = Path(path)
    if not path.is_file():
        raise ItmatchError(f"checkpoint {path} does not exist")
    with open(path, "rb") as fh:
        head = fh.read(4)
    # torch.save writes a zip archive (or, before PyTorch 1.6, a pickle stream).
    if not (head.startswith(b"PK\x03\x04") or head[:1] == b"\x80"):
        raise ItmatchError(
            f"{path} is not a PyTorch checkpoint (expected a file written by itmatch train, such as RUN/checkpoints/best.pt)"
        )
    try:
        return torch.load(path, map_location=map_location, weights_only=True)
    except Exception as exc:  # corrupt file, wrong format, pickled classes
        # PyTorch's message advises weights_only=False, which would run pickled code: not for us.
        reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        if "weights only" in str(exc).lower() or "weights_only" in str(exc):
            reason = "it holds pickled Python objects, which itmatch never loads (only tensors and plain data)"
        raise ItmatchError(f"checkpoint {path} could not be loaded: {reason}") from exc
