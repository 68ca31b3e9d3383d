"""Helpers shared by the benchmark scripts: machine facts, peak memory, and result files.

Every script ends with ``write_result(NAME, payload)``, which writes
``benchmarks/results/NAME.json`` holding the payload plus what is needed to judge and reproduce
it: the command line, the date, the git commit, and the machine (CPU model, cores, memory,
torch/numpy versions and threads, GPU if any, load average). Scripts import it as
``from _common import write_result`` (Python puts the script's folder on ``sys.path``).
"""

from __future__ import annotations

import contextlib
import datetime as _dt
import json
import os
import platform
import resource
import shlex
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

REPO_ROOT = Path(__file__).resolve().parents[1]
RESULTS_DIR = REPO_ROOT / "benchmarks" / "results"


def _read_proc(path: str) -> str:
    try:
        return Path(path).read_text()
    except OSError:
        return ""


def _proc_field(text: str, key: str) -> str | None:
    for line in text.splitlines():
        if line.startswith(key):
            return line.split(":", 1)[1].strip()
    return None


def cpu_model() -> str:
    """The CPU's marketing name (``/proc/cpuinfo``), or what ``platform`` knows."""
    return _proc_field(_read_proc("/proc/cpuinfo"), "model name") or platform.processor() or "unknown"


def cpu_flags() -> set[str]:
    """The CPU's feature flags (``/proc/cpuinfo``); empty where /proc is absent."""
    return set((_proc_field(_read_proc("/proc/cpuinfo"), "flags") or "").split())


def bf16_speedup(repeats: int = 5) -> float:
    """fp32 time / bf16-autocast time of one linear layer's forward + backward on one thread
    (2,048 x 384 -> 1,536, MiniLM's feed-forward shape), the best of ``repeats`` each: above 1
    where this CPU computes bf16 natively. CPU flags do not tell: AVX-512 BF16 measured 2.8x
    fp32 on an AMD EPYC (results/train_throughput_bf16_2threads.json), while on an Intel Xeon
    with AVX-512 BF16 and no AMX this probe read 0.47 and MiniLM's forward + backward ran at
    0.63x fp32 (results/finetune_speed_noamx.json)."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    gen = torch.Generator().manual_seed(0)
    layer = torch.nn.Linear(384, 1536)
    x = torch.randn(2048, 384, generator=gen, requires_grad=True)
    best = {"fp32": float("inf"), "bf16": float("inf")}
    try:
        for _ in range(repeats):
            for precision in best:
                start = time.perf_counter()
                with torch.autocast("cpu", dtype=torch.bfloat16, enabled=precision == "bf16"):
                    y = layer(x)
                y.float().sum().backward()
                best[precision] = min(best[precision], time.perf_counter() - start)
    finally:
        torch.set_num_threads(threads)
    return best["fp32"] / best["bf16"]


def load_average() -> list[float] | None:
    """1/5/15-minute load averages: above the core count means the machine was shared."""
    try:
        return [round(x, 2) for x in os.getloadavg()]
    except OSError:
        return None


def machine_info() -> dict[str, Any]:
    """Facts about this machine and software that a benchmark number depends on."""
    import numpy as np
    import torch

    mem_kb = _proc_field(_read_proc("/proc/meminfo"), "MemTotal")
    info: dict[str, Any] = {
        "cpu_model": cpu_model(),
        "cpu_flags_simd": sorted(f for f in cpu_flags() if f.startswith(("avx", "fma", "amx"))),
        "logical_cpus": os.cpu_count(),
        "usable_cpus": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count(),
        "memory_gb": round(int(mem_kb.split()[0]) / 2**20, 1) if mem_kb else None,
        "platform": platform.platform(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "torch_threads": torch.get_num_threads(),
        "torch_blas": "mkl" if torch.backends.mkl.is_available() else "other",
        "numpy": np.__version__,
        "omp_num_threads_env": os.environ.get("OMP_NUM_THREADS"),
        "load_average_at_write": load_average(),
    }
    if torch.cuda.is_available():
        info["gpu"] = torch.cuda.get_device_name(0)
    return info


def command_line() -> str:
    """The command that ran this script, as run from the repository root."""
    argv = list(sys.argv)
    if argv and argv[0]:
        script = Path(argv[0]).resolve()
        try:
            argv[0] = str(script.relative_to(REPO_ROOT))
        except ValueError:
            argv[0] = str(script)
    return shlex.join([".venv/bin/python", *argv])


def git_state() -> dict[str, Any]:
    """Commit and whether the working tree had uncommitted changes (None outside a git checkout)."""

    def git(*args: str) -> str | None:
        try:
            out = subprocess.run(["git", *args], cwd=REPO_ROOT, capture_output=True, text=True, timeout=10)
        except (OSError, subprocess.TimeoutExpired):
            return None
        return out.stdout.strip() if out.returncode == 0 else None

    commit = git("rev-parse", "HEAD")
    status = git("status", "--porcelain")
    return {"commit": commit, "dirty": bool(status) if status is not None else None}


def peak_rss_mb() -> float | None:
    """This process's peak resident memory so far (``VmHWM``), in MiB; None where /proc is absent."""
    value = _proc_field(_read_proc("/proc/self/status"), "VmHWM")
    return int(value.split()[0]) / 1024 if value else None


def current_rss_mb() -> float | None:
    """This process's resident memory now (``VmRSS``), in MiB."""
    value = _proc_field(_read_proc("/proc/self/status"), "VmRSS")
    return int(value.split()[0]) / 1024 if value else None


def reset_peak_rss() -> bool:
    """Reset ``VmHWM`` to the current RSS (Linux >= 4.0); False when the kernel refuses."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
    except OSError:
        return False
    return True


RESULT_HEADER = ("name", "date", "command", "git", "machine")  # the bookkeeping keys write_result adds


def time_steps(step: Callable[[], None], steps: int) -> dict[str, float]:
    """``step`` once to warm up (first allocations, weights paged in), then ``steps`` timed times:
    the median seconds a step, user and system CPU seconds and minor page faults per step, and the
    process's peak resident memory (GB) at the end."""
    step()
    times, before = [], resource.getrusage(resource.RUSAGE_SELF)
    for _ in range(steps):
        t = time.perf_counter()
        step()
        times.append(time.perf_counter() - t)
    after = resource.getrusage(resource.RUSAGE_SELF)
    return {
        "step_s": round(statistics.median(times), 3),
        "user_s_per_step": round((after.ru_utime - before.ru_utime) / steps, 3),
        "system_s_per_step": round((after.ru_stime - before.ru_stime) / steps, 3),
        "minor_faults_per_step": round((after.ru_minflt - before.ru_minflt) / steps),
        "peak_rss_gb": round(after.ru_maxrss / 2**20, 2),  # ru_maxrss: KiB on Linux
    }


def write_result(name: str, payload: dict[str, Any]) -> Path:
    """Write ``benchmarks/results/NAME.json``: the payload plus command, date, git and machine blocks.

    The payload's own keys come after the bookkeeping ones; a payload key with the same name as
    one of them (``name``, ``date``, ``command``, ``git``, ``machine``) is an error.
    """
    header = {
        "name": name,
        "date": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "command": command_line(),
        "git": git_state(),
        "machine": machine_info(),
    }
    assert tuple(header) == RESULT_HEADER
    clash = sorted(set(header) & set(payload))
    if clash:
        raise ValueError(f"write_result({name!r}): payload keys {clash} clash with the result header")
    RESULTS_DIR.mkdir(parents=True, exist_ok=True)
    path = RESULTS_DIR / f"{name}.json"
    tmp = path.with_suffix(f".json.{os.getpid()}.tmp")
    tmp.write_text(json.dumps({**header, **payload}, indent=2) + "\n")
    os.replace(tmp, path)
    return path


@contextlib.contextmanager
def result_lock(name: str) -> Iterator[None]:
    """Hold an exclusive lock on ``benchmarks/results/NAME.json`` for a read-modify-write: two
    benchmark runs finishing at once would otherwise each write the file without the other's entry."""
    import fcntl

    RESULTS_DIR.mkdir(parents=True, exist_ok=True)
    with open(RESULTS_DIR / f".{name}.lock", "w") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)
