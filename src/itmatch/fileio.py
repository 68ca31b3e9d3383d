"""File helpers shared by the feature cache and the search index."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from pathlib import Path

from itmatch.errors import ItmatchError


@contextlib.contextmanager
def exclusive_lock(lock_file: Path, busy_message: str) -> Iterator[None]:
    """Hold an exclusive, non-blocking lock on ``lock_file`` (POSIX ``flock``; no locking
    elsewhere). A second holder gets ``ItmatchError(busy_message)`` instead of waiting."""
    lock_file.parent.mkdir(parents=True, exist_ok=True)
    with open(lock_file, "a+") as fh:
        try:
            import fcntl
        except ImportError:  # not POSIX: no locking
            yield
            return
        try:
            fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            raise ItmatchError(busy_message) from None
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)
