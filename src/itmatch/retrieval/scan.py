"""The photos of a folder: image files by relative path, with what tells a changed one apart."""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

IMAGE_EXTENSIONS = frozenset({".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff"})


def scan_images(root: Path, skip: Sequence[Path] = ()) -> tuple[dict[str, os.stat_result], list[str]]:
    """Image files under ``root`` (recursive; hidden files and folders skipped) by relative path,
    with their ``stat``; and the links that point outside ``root`` (skipped)."""
    root_real = root.resolve()
    skip_real = [p.resolve() for p in skip]
    found: dict[str, os.stat_result] = {}
    outside: list[str] = []
    for dirpath, dirnames, filenames in os.walk(root):
        here = Path(dirpath)
        dirnames[:] = sorted(d for d in dirnames if not d.startswith(".") and (here / d).resolve() not in skip_real)
        for name in sorted(filenames):
            if name.startswith(".") or Path(name).suffix.lower() not in IMAGE_EXTENSIONS:
                continue
            path = here / name
            rel = path.relative_to(root).as_posix()
            try:
                real = path.resolve(strict=True)
                st = real.stat()
            except (OSError, RuntimeError):
                continue  # a dangling link
            if not real.is_relative_to(root_real):
                outside.append(rel)
                continue
            found[rel] = st
    return found, outside
