"""Shared test fixtures.

Real data lives beside the project in ``../shared/data`` (or ``$ITMATCH_SHARED_DATA``); tests that
need it skip when it is absent. Everything else uses data the tests make themselves.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

REPO_ROOT = Path(__file__).resolve().parents[1]
SHARED_DATA = Path(os.environ.get("ITMATCH_SHARED_DATA", REPO_ROOT.parent / "shared" / "data"))

# Two cores on CI: keep torch from oversubscribing when pytest runs helper processes.
torch.set_num_threads(min(2, torch.get_num_threads()))


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """Path to ``../shared/data``; skips the test when it is absent."""
    if not SHARED_DATA.is_dir():
        pytest.skip(f"real data folder {SHARED_DATA} is absent")
    return SHARED_DATA
