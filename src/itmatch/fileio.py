"""File helpers shared by the feature cache and the search index."""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from pathlib import Path

from itmatch.errors import ItmatchError


@contextlib.contextmanager
def exclusive_lock(lock_file: Path, busy_message: str) -> Iterator[None]:
    """Hold an exclusive, non-blocking lock on ``lock_file`` (POSIX ``flock``; no locking
    elsewhere). A second holder gets ``ItmatchError(busy_message + " (held by PID N)")`` instead
    of waiting: the holder writes its PID into the file. The lock dies with its process (kill -9
    included), so a stale file never blocks anyone."""
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
            fh.seek(0)
            holder = fh.read(32).strip()
            raise ItmatchError(busy_message + (f" (held by PID {holder})" if holder.isdigit() else "")) from None
        try:
            fh.seek(0)
            fh.truncate()
            fh.write(str(os.getpid()))
            fh.flush()
            yield
        finally:
            fh.seek(0)
            fh.truncate()
            fcntl.flock(fh, fcntl.LOCK_UN)
