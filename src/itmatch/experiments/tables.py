"""The results table of the demo and of the comparison runner: its columns, its cells, and
mean +- std over seeds."""

from __future__ import annotations

import statistics
from collections.abc import Mapping, Sequence
from typing import Any

from itmatch.evaluation.invariance import MMD_BANDWIDTH

# (metric key, title). probe_acc: a fresh linear probe's accuracy at telling the modalities apart
# (50 = invariant); centroid_dist: distance between the modality means; MMD with its one fixed
# kernel bandwidth in the title.
TABLE_COLUMNS: tuple[tuple[str, str], ...] = (
    ("i2t_r1", "i2t R@1"), ("i2t_r5", "i2t R@5"), ("i2t_r10", "i2t R@10"),
    ("t2i_r1", "t2i R@1"), ("t2i_r5", "t2i R@5"), ("t2i_r10", "t2i R@10"),
    ("rsum", "rsum"), ("probe_acc", "probe acc %"), ("centroid_dist", "centroid dist"),
    ("mmd", f"MMD (σ={MMD_BANDWIDTH:g})"),  # one fixed kernel for every model: the MMDs compare
)  # fmt: skip

# Distances live in [0, 2]: three decimals; percentages and rsum: one.
_THREE_DIGITS = frozenset({"centroid_dist", "mmd"})


def format_cell(key: str, value: float | Mapping[str, float] | None) -> str:
    """One cell: ``-`` when missing, a number, or a ``{"mean", "std"}`` summary as ``mean ± std``."""
    if value is None:
        return "-"
    digits = 3 if key in _THREE_DIGITS else 1
    if isinstance(value, Mapping):
        return f"{value['mean']:.{digits}f} ± {value['std']:.{digits}f}"
    return f"{value:.{digits}f}"


def markdown_table(
    rows: Mapping[str, Mapping[str, Any]], columns: Sequence[tuple[str, str]] = TABLE_COLUMNS
) -> str:
    """A Markdown table: one row per ``{label: {metric: value}}`` entry, numbers right-aligned;
    a value is a number or a ``{"mean", "std"}`` summary (see :func:`format_cell`)."""
    lines = [
        "| model | " + " | ".join(title for _, title in columns) + " |",
        "|---|" + "---:|" * len(columns),
    ]
    for label, metrics in rows.items():
        lines.append(f"| {label} | " + " | ".join(format_cell(key, metrics.get(key)) for key, _ in columns) + " |")
    return "\n".join(lines)


def mean_std(values: Sequence[float]) -> tuple[float, float]:
    """Mean and sample standard deviation (0 for a single value)."""
    return statistics.fmean(values), (statistics.stdev(values) if len(values) > 1 else 0.0)


def aggregate(per_seed: dict[str, list[dict[str, float]]]) -> dict[str, dict[str, dict[str, float]]]:
    """{spec: {metric: {"mean", "std", "n"}}} over seeds, for every numeric metric."""
    out: dict[str, dict[str, dict[str, float]]] = {}
    for spec, runs in per_seed.items():
        keys = sorted({k for r in runs for k, v in r.items() if isinstance(v, (int, float))})
        out[spec] = {}
        for k in keys:
            mean, std = mean_std([float(r[k]) for r in runs if k in r])
            out[spec][k] = {"mean": mean, "std": std, "n": len(runs)}
    return out
