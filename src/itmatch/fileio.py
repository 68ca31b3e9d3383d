"""File helpers: the one atomic writer (every file itmatch writes whole goes through
:func:`atomic_write_bytes`), folder locks, and error messages that name the file."""

from __future__ import annotations

import contextlib
import errno
import hashlib
import os
import secrets
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from itmatch.errors import ItmatchError

# How long a second writer of a shared cache (feature store, sentence cache) waits for the first
# one's lock before it gives up: long enough for a whole extraction pass.
WRITER_WAIT_S = 3600.0


@contextlib.contextmanager
def exclusive_lock(
    lock_file: Path, busy_message: str, wait_s: float = 0.0, on_wait: Callable[[str], None] | None = None
) -> Iterator[None]:
    """Hold an exclusive lock on ``lock_file`` (POSIX ``flock``; no locking elsewhere). While
    another process holds it, wait up to ``wait_s`` seconds (polling; ``on_wait(holder_pid)`` is
    called once when the wait starts), then raise ``ItmatchError(busy_message + " (held by PID
    N)")``: the holder writes its PID into the file. The lock dies with its process (kill -9
    included), so a stale file never blocks anyone."""
    lock_file.parent.mkdir(parents=True, exist_ok=True)
    with open(lock_file, "a+") as fh:
        try:
            import fcntl
        except ImportError:  # not POSIX: no locking
            yield
            return
        deadline = time.monotonic() + wait_s
        while True:
            try:
                fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except OSError:
                fh.seek(0)
                holder = fh.read(32).strip()
                left = deadline - time.monotonic()
                if left <= 0:
                    raise ItmatchError(busy_message + (f" (held by PID {holder})" if holder.isdigit() else "")) from None
                if on_wait is not None:
                    on_wait(holder)
                    on_wait = None
                time.sleep(min(0.25, left))
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


def os_error_about(exc: OSError, path: Path | str, written: int = 0) -> OSError:
    """``exc`` naming the file being written (not a temporary twin, not None); on a full disk it
    also carries ``needed_bytes``: at least what had been written when the space ran out."""
    out = OSError(exc.errno, exc.strerror or str(exc), str(path))
    if exc.errno == errno.ENOSPC and written:
        out.needed_bytes = written  # type: ignore[attr-defined]
    return out


def _create_temp_beside(path: Path) -> tuple[int, str]:
    """A new, exclusively created ``.NAME.<random>.tmp`` beside ``path``. Created with mode 0666
    less the umask (what ``open()`` gives), not ``mkstemp``'s 0600: the renamed file then has the
    permissions any other file written here would have (reports and indexes are for sharing)."""
    while True:
        tmp = path.parent / f".{path.name}.{secrets.token_hex(6)}.tmp"
        try:
            return os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_BINARY", 0), 0o666), str(tmp)
        except FileExistsError:
            continue


def atomic_write_bytes(path: Path, write: Callable[[Any], Any]) -> None:
    """Call ``write(file_object)`` on a temporary file beside ``path``, then rename it over ``path``.

    A crash at any moment leaves either the old file or the new one, never half of one (a kill
    can leave the temporary file: ``.NAME.*.tmp``, which the next locked writer removes). An
    OSError names ``path``, and on a full disk how much had been written.
    """
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = _create_temp_beside(path)
    except OSError as exc:
        raise os_error_about(exc, path) from exc
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException as exc:
        written = os.path.getsize(tmp) if os.path.exists(tmp) else 0
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        if isinstance(exc, OSError):
            raise os_error_about(exc, path, written) from exc
        raise


def atomic_write_text(path: Path, text: str) -> Path:
    """:func:`atomic_write_bytes` of ``text`` in UTF-8; returns ``path``."""
    atomic_write_bytes(path, lambda f: f.write(text.encode("utf-8")))
    return Path(path)


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


_HASH_CACHE: dict[tuple[str, int, int], str] = {}


def file_digest(path: str | Path) -> str:
    """The content digest the feature store and the photo index record per image (BLAKE2b,
    16 bytes, hex): it tells a copied or touched file (new mtime, same bytes) from a changed one."""
    h = hashlib.blake2b(digest_size=16)
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def same_bytes(path: str | Path, size: int, recorded_size: int, recorded_digest: str | None) -> bool:
    """Whether the file at ``path`` (now ``size`` bytes) still holds the bytes recorded as
    ``recorded_size`` / ``recorded_digest``: False without a recorded digest, on another size (no
    read), or when the file cannot be read."""
    if recorded_digest is None or recorded_size != size:
        return False
    try:
        return file_digest(path) == recorded_digest
    except OSError:
        return False


def file_sha256(path: str | Path) -> str:
    """SHA-256 of a file (memoised per path, size and mtime within the process)."""
    path = Path(path).resolve()
    st = path.stat()
    key = (str(path), st.st_size, st.st_mtime_ns)
    if key not in _HASH_CACHE:
        digest = hashlib.sha256()
        with open(path, "rb") as fh:
            for chunk in iter(lambda: fh.read(1 << 20), b""):
                digest.update(chunk)
        _HASH_CACHE[key] = digest.hexdigest()
    return _HASH_CACHE[key]
