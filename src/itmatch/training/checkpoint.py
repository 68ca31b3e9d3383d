"""Checkpoints: plain dictionaries of tensors and config data, written atomically.

They load with ``torch.load(weights_only=True)``: no pickled classes, no argparse namespaces.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from itmatch.errors import ItmatchError
from itmatch.fileio import atomic_write_bytes, atomic_write_text  # noqa: F401  (re-exported: the trainer's writers)

TEMP_PATTERN = ".*.tmp"  # what atomic_write_bytes leaves behind when killed mid-write


def remove_stale_temp_files(folder: Path) -> list[Path]:
    """Delete the temporary files a killed atomic write left in ``folder``; the caller must hold
    the folder's lock (no live writer then). Returns what was removed."""
    removed = []
    for tmp in Path(folder).glob(TEMP_PATTERN):
        if tmp.is_file():
            try:
                tmp.unlink()
                removed.append(tmp)
            except FileNotFoundError:
                pass
    return removed


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


def capture_rng_state(device: torch.device) -> dict[str, torch.Tensor | None]:
    """This process's torch RNG state: the CPU generator and, on a CUDA run, the device's
    (dropout, stochastic depth and classifier dropout on the GPU draw from the latter)."""
    cuda = torch.cuda.get_rng_state(device) if device.type == "cuda" else None
    return {"cpu": torch.get_rng_state(), "cuda": cuda}


def restore_rng_state(saved: dict[str, Any] | torch.Tensor, rank: int, device: torch.device) -> bool:
    """Restore rank ``rank``'s RNG state from a checkpoint's ``rng`` entry; False when the
    checkpoint holds none for this rank (a run resumed with more ranks than it was saved with).

    ``saved`` is ``{"cpu": [state per rank], "cuda": [state or None per rank]}``; a bare tensor
    (checkpoints written before per-rank states) is rank 0's CPU state.
    """
    if isinstance(saved, torch.Tensor):
        saved = {"cpu": [saved], "cuda": [None]}
    cpu, cuda = list(saved.get("cpu") or []), list(saved.get("cuda") or [])
    if rank >= len(cpu):
        return False
    torch.set_rng_state(cpu[rank])
    if device.type == "cuda" and rank < len(cuda) and cuda[rank] is not None:
        torch.cuda.set_rng_state(cuda[rank], device)
    return True
