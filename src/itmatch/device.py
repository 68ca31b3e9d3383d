"""The one device choice of itmatch: ``auto`` (the default everywhere) or a torch device name.

Training (``training.device``), feature extraction inside training and evaluation, and every
command that embeds (``evaluate``, ``index``, ``search``, ``serve``, ``compare``, the demo) resolve
their device here, so a run and whatever it extracts or embeds agree on where the work happens.
"""

from __future__ import annotations

import torch

from itmatch.errors import ItmatchError

DEFAULT_DEVICE = "auto"


def pick_device(name: str | torch.device | None = DEFAULT_DEVICE) -> torch.device:
    """``auto`` (or None) -> cuda, then mps, then cpu; any other name is used as given.

    An explicit device this machine lacks (``cuda`` without a GPU) raises an
    :class:`~itmatch.errors.ItmatchError` naming it, rather than a torch error later.
    """
    if isinstance(name, torch.device):
        return name
    if name is None or name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    try:
        device = torch.device(name)
    except (RuntimeError, TypeError) as exc:
        raise ItmatchError(f"device {name!r} is not a torch device name (auto, cpu, cuda, cuda:1, mps)") from exc
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ItmatchError(f"device {name!r}: no CUDA device is available (use auto or cpu)")
    if device.type == "cuda" and device.index is not None and device.index >= torch.cuda.device_count():
        raise ItmatchError(f"device {name!r}: this machine has {torch.cuda.device_count()} CUDA device(s)")
    if device.type == "mps" and not (getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available()):
        raise ItmatchError(f"device {name!r}: MPS is not available")
    return device
