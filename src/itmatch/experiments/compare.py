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
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from itmatch.errors import ConfigError
from itmatch.evaluation.invariance import MMD_BANDWIDTH
from itmatch.experiments.tables import aggregate, markdown_table
from itmatch.fileio import atomic_write_text


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


def summary_table(summary: dict[str, dict[str, dict[str, float]]]) -> str:
    """:func:`aggregate`'s summary as a Markdown table: one ``spec (n=seeds)`` row, mean ± std cells."""
    rows = {}
    for spec, metrics in summary.items():
        n = next(iter(metrics.values()))["n"] if metrics else 0
        rows[f"{spec} (n={n})"] = metrics
    return markdown_table(rows)


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
    from itmatch.data.splits import load_split
    from itmatch.evaluation.plots import tsne_grid
    from itmatch.evaluation.recall import resolve_protocol
    from itmatch.evaluation.runs import embed_run, score_embeddings
    from itmatch.training.config import load_config
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
            # The first run's data config names the split every run is scored on.
            embedded = embed_run(run_dir, eval_split, corpus=corpus, device=load_config_device(run_dir), progress=progress)
            corpus, im, tx = embedded.corpus, embedded.images, embedded.texts
            metrics = score_embeddings(im, tx, protocol=protocol, seed=seed, folds=False)
            atomic_write_text(run_dir / f"eval_{eval_split}.json", json.dumps(metrics, indent=2, sort_keys=True))
            per_seed[spec].append(metrics)
            say(f"{spec} seed {seed}: rsum {metrics['rsum']:.1f}, probe {metrics['probe_acc']:.1f}%")
            if seed == seeds[0]:
                maps.append((f"{spec} (seed {seed})", im, tx))
    summary = aggregate(per_seed)
    table = summary_table(summary)
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
