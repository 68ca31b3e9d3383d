"""Comparison runner: train named recipes over several seeds, score them on one split, and
tabulate mean +- std of recall and modality-invariance metrics.

A recipe spec is ``NAME`` (trained from scratch) or ``NAME@BASE`` (started from the best
checkpoint of recipe ``BASE`` with the same seed, e.g. ``miie_adv@vsepp``: the adversarial
stages on top of each baseline run). Runs already finished are reused, interrupted ones resumed,
so re-running the same command after a crash continues where it stopped.

One set of overrides applies to every recipe; one that names a stage (``stages.hardest.epochs=3``)
applies to the recipes that have that stage.
"""

from __future__ import annotations

import json
import statistics
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from itmatch.errors import ConfigError
from itmatch.evaluation.invariance import MMD_BANDWIDTH
from itmatch.training.checkpoint import atomic_write_text

TABLE_COLUMNS = [
    ("i2t_r1", "i2t R@1"), ("i2t_r5", "i2t R@5"), ("i2t_r10", "i2t R@10"),
    ("t2i_r1", "t2i R@1"), ("t2i_r5", "t2i R@5"), ("t2i_r10", "t2i R@10"),
    ("rsum", "rsum"), ("probe_acc", "probe acc %"), ("centroid_dist", "centroid dist"),
    ("mmd", f"MMD (σ={MMD_BANDWIDTH:g})"),  # one fixed kernel for every model: the MMDs compare
]  # fmt: skip


def parse_spec(spec: str) -> tuple[str, str | None]:
    name, _, base = spec.partition("@")
    if not name or (base == "" and "@" in spec):
        raise ConfigError(f"recipe spec {spec!r}: expected NAME or NAME@BASE")
    return name, base or None


def order_specs(specs: Sequence[str]) -> list[str]:
    """Specs with every ``BASE`` trained before the recipes that start from it."""
    names = [parse_spec(s)[0] for s in specs]
    for spec in specs:
        base = parse_spec(spec)[1]
        if base is not None and base not in names:
            raise ConfigError(f"recipe spec {spec!r}: its base {base!r} is not among the compared recipes {names}")
    return sorted(specs, key=lambda s: parse_spec(s)[1] is not None)


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


def markdown_table(summary: dict[str, dict[str, dict[str, float]]], columns=TABLE_COLUMNS) -> str:
    header = "| model | " + " | ".join(title for _, title in columns) + " |"
    lines = [header, "|" + "---|" * (len(columns) + 1)]
    for spec, metrics in summary.items():
        cells = []
        for key, _ in columns:
            m = metrics.get(key)
            digits = 3 if key in ("centroid_dist", "mmd") else 1  # distances live in [0, 2]
            cells.append("-" if m is None else f"{m['mean']:.{digits}f} ± {m['std']:.{digits}f}")
        n = next(iter(metrics.values()))["n"] if metrics else 0
        lines.append(f"| {spec} (n={n}) | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def run_comparison(
    specs: Sequence[str],
    seeds: Sequence[int],
    out_dir: str | Path,
    *,
    overrides: Sequence[str] = (),
    eval_split: str = "test",
    protocol: str = "all",
    progress: bool = False,
    log: Callable[[str], None] | None = None,
) -> dict[str, Any]:
    """Train (or reuse) every spec x seed under ``out_dir``, score each best checkpoint on
    ``eval_split`` and write ``results.json``, ``table.md`` and ``tsne.png`` there."""
    from itmatch.evaluation.invariance import invariance_metrics
    from itmatch.evaluation.plots import tsne_grid
    from itmatch.evaluation.recall import evaluate_embeddings, resolve_protocol
    from itmatch.inference import Matcher
    from itmatch.training.config import load_config
    from itmatch.data.splits import load_split
    from itmatch.training.trainer import train

    # A protocol that does not fit the evaluation split (e.g. "1k" on a 5,000-image test set) is
    # refused before hours of training, not after the first run.
    first = parse_spec(order_specs(specs)[0])[0]
    eval_corpus = load_split(load_config(first, list(overrides), skip_missing_stages=True)["data"], eval_split)
    try:
        resolve_protocol(protocol, len(eval_corpus))
    except ValueError as exc:
        raise ConfigError(f"{eval_split} split of {eval_corpus.name}: {exc}") from exc

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    say = log or (lambda message: None)
    per_seed: dict[str, list[dict[str, float]]] = {}
    maps: list[tuple[str, Any, Any]] = []
    corpus = None
    for spec in order_specs(specs):
        name, base = parse_spec(spec)
        per_seed[spec] = []
        for seed in seeds:
            run_dir = out_dir / f"{name}-seed{seed}"
            if (run_dir / "summary.json").exists():
                say(f"{spec} seed {seed}: reusing {run_dir}")
            elif (run_dir / "checkpoints" / "last.pt").exists():
                say(f"{spec} seed {seed}: resuming {run_dir}")
                train(None, run_dir, resume=True, progress=progress)
            else:
                say(f"{spec} seed {seed}: training into {run_dir}")
                cfg = load_config(name, [*overrides, f"seed={seed}"], skip_missing_stages=True)
                init = out_dir / f"{base}-seed{seed}" if base else None
                train(cfg, run_dir, init_from=init, progress=progress)
            matcher = Matcher.from_run(run_dir, "best", device=load_config_device(run_dir))
            if corpus is None:
                corpus = load_split(matcher.config["data"], eval_split)
            im, tx = matcher.embed_corpus(corpus, progress=progress)
            metrics = {k: v for k, v in evaluate_embeddings(im, tx, protocol=protocol).items() if not isinstance(v, list)}
            metrics.update(invariance_metrics(im, tx, seed=seed))
            atomic_write_text(run_dir / f"eval_{eval_split}.json", json.dumps(metrics, indent=2, sort_keys=True))
            per_seed[spec].append(metrics)
            say(f"{spec} seed {seed}: rsum {metrics['rsum']:.1f}, probe {metrics['probe_acc']:.1f}%")
            if seed == seeds[0]:
                maps.append((f"{spec} (seed {seed})", im, tx))
    summary = aggregate(per_seed)
    table = markdown_table(summary)
    result = {
        "specs": list(specs), "seeds": list(seeds), "eval_split": eval_split, "protocol": protocol,
        "mmd_bandwidth": MMD_BANDWIDTH, "overrides": list(overrides), "summary": summary, "per_seed": per_seed,
    }  # fmt: skip
    atomic_write_text(out_dir / "results.json", json.dumps(result, indent=2, sort_keys=True))
    atomic_write_text(out_dir / "table.md", table + "\n")
    tsne_grid(maps, out_dir / "tsne.png")
    result["table"] = table
    return result


def load_config_device(run_dir: Path) -> str:
    """The device a run was trained on (its ``training.device``): its evaluation runs there too."""
    import yaml

    cfg = yaml.safe_load((Path(run_dir) / "config.yaml").read_text()) or {}
    return str((cfg.get("training") or {}).get("device") or "auto")
