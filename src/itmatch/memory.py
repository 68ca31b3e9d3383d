"""Keeping freed memory in the process (Linux, glibc): what makes CPU steps on photos fast.

glibc's malloc serves every block above its mmap threshold (32 MiB at most) with a fresh ``mmap``
and hands it back to the kernel on ``free``. The activations of a batch of photos are hundreds of
megabytes, so without this every training step maps them, page-faults every page in (the kernel
zeroes each one) and unmaps them again: most of such a step's CPU time is then the kernel's.
:func:`retain_freed_memory` makes malloc serve big blocks from its heap and never shrink it, so
the next step reuses the pages it already has (``benchmarks/cpu_memory.py`` measures both ways).

The setting is process-wide and stays until the process exits, which then keeps its peak memory
(it never returns it to the system). The trainer applies it on CPU (``training.retain_memory``);
the command line applies it for every command but ``train``. A library user calls it, or not.
"""

from __future__ import annotations

import ctypes
import sys

# glibc's mallopt parameters (malloc.h)
_M_TRIM_THRESHOLD = -1
_M_MMAP_MAX = -4


def retain_freed_memory() -> bool:
    """Serve every allocation from malloc's heap (no per-block ``mmap``) and never trim the heap.

    Returns whether the C library took both settings (False off Linux, or with a C library
    without glibc's ``mallopt``, such as musl's, which ignores them).
    """
    if not sys.platform.startswith("linux"):
        return False
    try:
        mallopt = ctypes.CDLL(None).mallopt  # the C library this process already runs on
    except (OSError, AttributeError):
        return False
    mallopt.argtypes = (ctypes.c_int, ctypes.c_int)
    mallopt.restype = ctypes.c_int
    # M_MMAP_MAX 0: no block gets its own mapping; M_TRIM_THRESHOLD -1: never give the top back.
    return mallopt(_M_MMAP_MAX, 0) == 1 and mallopt(_M_TRIM_THRESHOLD, -1) == 1
