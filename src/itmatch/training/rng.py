"""Per-rank RNG state of a training checkpoint (saving and loading the files: :mod:`itmatch.checkpoints`)."""

from __future__ import annotations

from typing import Any

import torch


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
