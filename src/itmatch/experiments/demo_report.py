"""The demo's report folder: the table (Markdown + JSON), pictures and a README that explains them."""

from __future__ import annotations

import json
from dataclasses import asdict
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from itmatch.evaluation.invariance import MMD_BANDWIDTH
from itmatch.experiments.demo_models import EVAL_SPLIT, MODELS, PROTOCOL, RUNS_DIR, DemoModel, DemoPlan
from itmatch.experiments.figures import comparison_curves, query_examples
from itmatch.experiments.tables import markdown_table
from itmatch.fileio import atomic_write_text

if TYPE_CHECKING:
    from itmatch.data import Corpus


def demo_table(metrics: dict[str, dict[str, float]], chance: dict[str, float] | None = None, n_images: int | None = None) -> str:
    """The comparison as a Markdown table: one row per model (and a chance row when given)."""
    labels = {m.key: m.label for m in MODELS}
    rows: dict[str, dict[str, float]] = {labels.get(key, key): values for key, values in metrics.items()}
    if chance is not None:
        name = f"chance ({n_images} images)" if n_images else "chance"
        rows[f"*{name}*"] = chance
    return markdown_table(rows)


def write_report(
    report_dir: Path,
    *,
    plan: DemoPlan,
    seed: int,
    corpus: Corpus,
    embeddings: dict[str, tuple[torch.Tensor, torch.Tensor]],
    metrics: dict[str, dict[str, float]],
    chance: dict[str, float],
    table: str,
    runs_dir: Path,
    configs: dict[str, dict[str, Any]],
    summaries: dict[str, dict[str, Any]],
    timings: dict[str, float],
) -> list[Path]:
    """Write every report file; returns their paths."""
    from itmatch.evaluation.plots import plot_training_curves, tsne_grid

    report_dir.mkdir(parents=True, exist_ok=True)
    # Pictures of an earlier demo (e.g. one with more queries) would read as part of this report.
    for stale in [*report_dir.glob("*.png"), *report_dir.glob("queries/query_*.png")]:
        stale.unlink()
    labels = {m.key: m.label for m in MODELS}
    files: list[Path] = []
    files.append(atomic_write_text(report_dir / "results.md", table + "\n"))
    files.append(write_results(report_dir, plan, seed, metrics, chance, len(corpus), configs, summaries, timings))
    # The t-SNE maps and the query examples compare the baseline with the modality-invariant
    # model (the control is in the table and the curves).
    shown = [m for m in MODELS if m.key in ("vsepp", "miie")]
    maps = [
        (f"{m.label}\nprobe {metrics[m.key]['probe_acc']:.0f}%, centroid dist {metrics[m.key]['centroid_dist']:.2f}",
         *embeddings[m.key])
        for m in shown
    ]  # fmt: skip
    files.append(tsne_grid(maps, report_dir / "tsne.png", max_points=plan.tsne_points, seed=seed))
    files += query_examples(
        corpus, {m.key: embeddings[m.key] for m in shown}, labels, report_dir / "queries",
        n_queries=plan.n_queries, min_words=plan.min_query_words, seed=seed,
    )  # fmt: skip
    logs = {m.key: joined_metrics(m, runs_dir) for m in MODELS}
    files.append(comparison_curves(logs, labels, report_dir / "curves.png"))
    # Every logged metric of the modality-invariant model, baseline stages included.
    tmp = report_dir / ".metrics_miie.jsonl"
    tmp.write_text("".join(json.dumps(r) + "\n" for r in logs["miie"]))
    try:
        files.append(plot_training_curves(tmp, report_dir / "curves_miie.png"))
    finally:
        tmp.unlink()
    files.append(write_readme(report_dir, plan, seed, table, len(corpus), configs, summaries, timings, files))
    return files


def joined_metrics(model: DemoModel, runs_dir: Path) -> list[dict[str, Any]]:
    """The metrics records of ``model``'s run preceded by those of the runs it started from, with
    ``global_step`` continuing across them, so a curve shows every stage (baseline stages first)."""
    by_key = {m.key: m for m in MODELS}
    chain = [model]
    while chain[0].init_from:
        chain.insert(0, by_key[chain[0].init_from])
    out: list[dict[str, Any]] = []
    offset = 0
    for m in chain:
        path = runs_dir / m.key / "metrics.jsonl"
        records = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
        for record in records:
            out.append({**record, "global_step": int(record.get("global_step", 0)) + offset, "run": m.key})
        if records:
            offset = out[-1]["global_step"]
    return out


def write_results(
    report_dir: Path,
    plan: DemoPlan,
    seed: int,
    metrics: dict[str, dict[str, float]],
    chance: dict[str, float],
    n_images: int,
    configs: dict[str, dict[str, Any]],
    summaries: dict[str, dict[str, Any]],
    timings: dict[str, float],
) -> Path:
    result = {
        "split": EVAL_SPLIT,
        "protocol": PROTOCOL,
        "mmd_bandwidth": MMD_BANDWIDTH,
        "test_images": n_images,
        "test_captions": 5 * n_images,
        "seed": seed,
        "plan": asdict(plan),
        "models": {
            m.key: {
                "label": m.label,
                "recipe": m.recipe,
                "init_from": m.init_from,
                "metrics": metrics.get(m.key, {}),
                "best_validation": _best_summary(summaries.get(m.key)),
                "stages": configs[m.key]["stages"] if m.key in configs else None,
            }
            for m in MODELS
        },
        "chance": chance,
        "timings_s": {k: round(v, 2) for k, v in timings.items()},
    }
    return atomic_write_text(report_dir / "results.json", json.dumps(result, indent=2) + "\n")


def _best_summary(summary: dict[str, Any] | None) -> dict[str, Any] | None:
    best = (summary or {}).get("best") or {}
    if not best:
        return None
    return {"stage": best.get("stage"), "epoch": best.get("epoch"), "rsum": best.get("val/rsum")}


def write_readme(
    report_dir: Path,
    plan: DemoPlan,
    seed: int,
    table: str,
    n_images: int,
    configs: dict[str, dict[str, Any]],
    summaries: dict[str, dict[str, Any]],
    timings: dict[str, float],
    files: list[Path],
) -> Path:
    def stages(key: str) -> str:
        return ", ".join(
            f"{s['name']} ({s['epochs']} ep, lr {s['lr']:g}"
            + (f" x{s['lr_decay_gamma']:g} every {s['lr_decay_epochs']} ep" if s.get("lr_decay_epochs") else "")
            + (f", rank {s['rank']}" if s.get("rank") else "")
            + (", classifier" if s.get("classifier") else "")
            + (f", adversarial {s['adversarial']['mode']} lambda {s['adversarial']['lambda']:g} {s['adversarial']['schedule']}" if s.get("adversarial") else "")
            + ")"
            for s in configs[key]["stages"]
        )

    def best(key: str) -> str:
        b = _best_summary(summaries.get(key))
        return f"{b['stage']} epoch {b['epoch']} (val rsum {b['rsum']:.1f})" if b else "last epoch"

    model_cfg = configs[MODELS[0].key]["model"]
    queries = sorted(p.name for p in files if p.parent.name == "queries" and p.suffix == ".png")
    timing_lines = ", ".join(f"{k} {v:.0f} s" for k, v in timings.items() if k != "total")
    total = f"{timings['total']:.0f} s" if "total" in timings else "see results.json"
    text = f"""# itmatch demo report

Generated by `itmatch demo` (seed {seed}) on a data set it generated: rendered scenes of 1-4
coloured shapes on a plain or textured background, each with five generated captions that mention
different subsets of the scene ({plan.n_train} train / {plan.n_val} val / {plan.n_test} test images,
{plan.image_size} x {plan.image_size} px). Image features: frozen EfficientNet-Lite0 (ImageNet).
Scores are on the {n_images} test images and their {5 * n_images} captions (protocol `{PROTOCOL}`:
every test image and caption is a candidate; ties count against the query). One seed: no
seed-to-seed spread is measured here (`itmatch compare --seeds N` does that).

{table}

- **i2t R@K**: % of test images with one of their 5 captions among the K best-scored captions;
  **t2i R@K**: % of captions whose image is among the K best-scored images; **rsum**: the sum of
  the six. Many captions fit several scenes ("Four shapes on a black background."), so t2i is bounded
  well below 100 on this data.
- **probe acc %**: accuracy of a fresh logistic-regression probe trained to tell image from text
  embeddings (half of the test embeddings to fit, half to score); 50 = the modalities cannot be
  told apart. **centroid dist**: distance between the mean image and the mean text embedding;
  **MMD**: maximum mean discrepancy between the two sets (RBF kernel, the same fixed bandwidth
  σ = {MMD_BANDWIDTH:g} for every model). Lower = more invariant.

## The models

Joint space d = {model_cfg['embed_dim']}, {model_cfg['word_dim']}-d word vectors, GRU text encoder, linear
projection of the image features; model selection on validation rsum.

- **{MODELS[0].label}** (`configs/{MODELS[0].recipe}.yaml`): {stages(MODELS[0].key)}.
  Selected: {best(MODELS[0].key)}.
- **{MODELS[1].label}** (`configs/{MODELS[1].recipe}.yaml`), from the baseline's selected
  checkpoint: {stages(MODELS[1].key)}. Selected: {best(MODELS[1].key)}.
- **{MODELS[2].label}** (`configs/{MODELS[2].recipe}.yaml`), from the baseline's selected
  checkpoint: {stages(MODELS[2].key)}. Selected (adversarial epochs only): {best(MODELS[2].key)}.

The control gets the same extra epochs at the same learning rate as the adversarial stage, with the
ranking loss only: what the modality-invariant model does differently from the control is what the
classifier and the adversarial loss did, not the extra training.

## Pictures

- `tsne.png`: t-SNE maps of test image (blue) and caption (orange) embeddings ({plan.tsne_points} points
  per map, half of each), baseline and modality-invariant model side by side.
- `queries/`: {", ".join(queries) or "none"}: a test caption and the five best images of the
  baseline (top row) and of the modality-invariant model (bottom row); the caption's own image is
  framed in green, and shown last with its rank. `queries/queries.json`: the captions and ranks.
- `curves.png`: validation rsum, probe accuracy, centroid distance and MMD per epoch, all models
  (the control and the modality-invariant model branch off the baseline's curve at its selected epoch).
- `curves_miie.png`: every logged metric of the modality-invariant model, baseline stages first
  (dashed lines mark stage changes).

Files: `results.md` (the table), `results.json` (all metrics, recipes' stages, timings), run folders
in `../{RUNS_DIR}/` (config, vocabulary, metrics log, checkpoints).

Time: {total} ({timing_lines}).
"""
    return atomic_write_text(report_dir / "README.md", text)
