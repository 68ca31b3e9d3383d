"""Embeddings handed to the metrics and plots, checked once: a 2-D array of finite real numbers."""

from __future__ import annotations

import numpy as np
import torch

ArrayLike = torch.Tensor | np.ndarray


def as_numpy(x: ArrayLike, name: str, min_rows: int = 0) -> np.ndarray:
    """``x`` (tensor or array) as a numpy array of its own dtype; a ValueError naming ``name`` when
    it is not 2-D, not real numbers, holds NaN or infinite values, or has fewer than ``min_rows`` rows."""
    if isinstance(x, torch.Tensor):
        x = x.detach().cpu().numpy()
    x = np.asarray(x)
    if x.ndim != 2:
        raise ValueError(f"{name}: expected a 2-D array (rows x dims), got shape {x.shape}")
    if len(x) < min_rows:
        raise ValueError(f"{name}: expected at least {min_rows} row(s), got shape {x.shape}")
    if x.dtype.kind not in "fiu":
        raise ValueError(f"{name}: expected real numbers, got dtype {x.dtype}")
    if not np.isfinite(x).all():
        raise ValueError(f"{name}: holds NaN or infinite values")
    return x
