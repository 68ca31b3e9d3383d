"""The VSE++ baseline on Flickr8k trained to convergence, and the ablations that explain the gap
to the reference VSE++ code (fartashf/vsepp) at equal settings.

    .venv/bin/python benchmarks/flickr8k_baseline.py run VARIANT [--seed 0] [--data DIR]
    .venv/bin/python benchmarks/flickr8k_baseline.py table      # markdown table of every run so far
    .venv/bin/python benchmarks/flickr8k_baseline.py plot       # learning curves -> results/flickr8k_baseline{,_devsel}_curves.png

Every variant trains the full-size model (d = 1024, 300-d words, one GRU layer, frozen
EfficientNet-Lite0 features at 224 px, batch 128, Adam, grad clip 2) on frozen features, one
thread. Two selection protocols:

- ``dev-selected`` variants (``*_devsel``) train on all 6,000 train images and select the epoch
  on dev, as the reference code does: only for the comparison with its published-protocol
  number, never as a result of ours.
- the others train on 5,500 train images, select on 500 held-out train images (``holdout_seed``
  0) and report dev: the project's protocol.

Each run records its learning curve (validation rsum per epoch), the epoch time and where it
plateaued (the first epoch within 1.0 rsum of the curve's best), and
its dev figures (1K protocol = all 1,000 dev images). Results accumulate, variant by variant, in
benchmarks/results/flickr8k_baseline.json; runs live in /tmp/itmatch-f8k-baseline.
"""

from __future__ import annotations

import argparse
import json
import statistics
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from _common import REPO_ROOT, RESULT_HEADER, RESULTS_DIR, bf16_speedup, cpu_flags, result_lock, write_result

RESULT = "flickr8k_baseline"
RUNS = Path("/tmp/itmatch-f8k-baseline")
CACHE = "/tmp/itmatch-bench-cache"
DEFAULT_DATA = REPO_ROOT.parent / "shared" / "data" / "flickr8k"
PLATEAU_DELTA = 1.0  # rsum points: a rise smaller than this is noise between epochs

COMMON = ["training.threads=1", "training.log_every=100"]
DEVSEL = ["data.val_split=dev"]
HOLDOUT = ["data.val_holdout=500"]


def cpu_has_fast_bf16() -> bool:
    """Whether bf16 autocast pays on this CPU, measured (``_common.bf16_speedup``: at least 1.25x
    fp32 on a linear layer), not read from its flags: with native bf16 arithmetic it ran 2.8x
    fp32 (AMD EPYC, AVX-512 BF16: results/train_throughput_bf16_2threads.json) or 2.3x (Intel
    Xeon with AMX: MiniLM, results/finetune_speed.json); emulated on AVX2 it was 9x slower
    (results/train_throughput{,_bf16}_avx2.json); and on an Intel Xeon with AVX-512 BF16 but no
    AMX MiniLM ran at 0.63x fp32 (results/finetune_speed_noamx.json)."""
    return BF16_SPEEDUP is not None and BF16_SPEEDUP >= 1.25


# The probe's ratio on this machine (None: no native bf16, emulated, never worth timing); recorded in every run entry.
BF16_SPEEDUP = round(bf16_speedup(), 2) if {"avx512_bf16", "amx_bf16"} & cpu_flags() else None
BF16 = ["training.precision=bf16"] if cpu_has_fast_bf16() else []  # recorded in each run's overrides
MINILM = ["model.text_encoder=minilm"]

# The reference code's schedule: max-violation from the first step, 20 epochs, lr / 10 after 10.
REF_STAGES = ("stages=[{name: hardest, epochs: 20, lr: 2.0e-4, lr_decay_epochs: 10, "
              "train: [image, text], rank: max_violation}]")  # fmt: skip
LONG_STAGES = ("stages=[{name: warmup, epochs: 1, lr: 2.0e-4, train: [image, text], rank: sum}, "
               "{name: hardest, epochs: 29, lr: 2.0e-4, lr_decay_epochs: 15, train: [image, text], rank: max_violation}]")  # fmt: skip

# name: (recipe, overrides, what it tests)
VARIANTS: dict[str, tuple[str, list[str], str]] = {
    "vsepp_devsel": (
        "vsepp",
        DEVSEL + BF16,
        "the shipped recipe (1 warm-up + 15 hardest epochs, lr / 10 after 8)",
    ),
    "vsepp_fp32_devsel": (
        "vsepp",
        DEVSEL + ["training.precision=fp32"],
        "the shipped recipe in float32 (is bf16 as good?)",
    ),
    "ref_devsel": (
        "vsepp",
        DEVSEL + BF16 + [REF_STAGES],
        "the reference schedule: hardest from the start, 20 epochs, lr / 10 after 10 (= the vsepp_ref recipe)",
    ),
    "ref_negs_devsel": (
        "vsepp",
        DEVSEL + BF16 + [REF_STAGES, "loss.same_image_negatives=true"],
        "the reference schedule, and a caption's same-image captions in the batch count as negatives (as in the reference code)",
    ),
    "long_devsel": (
        "vsepp",
        DEVSEL + BF16 + [LONG_STAGES],
        "1 warm-up + 29 hardest epochs, lr / 10 after 15",
    ),
    "vsepp": ("vsepp", HOLDOUT + BF16, "the shipped recipe, our protocol (select on held-out train images)"),
    # The cheap testbed: frozen all-MiniLM-L6-v2 sentence embeddings (cached on disk) + frozen
    # image features; only the two projections train, so an epoch costs seconds.
    "minilm": (
        "vsepp",
        HOLDOUT + MINILM + [LONG_STAGES],
        "frozen MiniLM + frozen features, 1 warm-up + 29 hardest epochs",
    ),
    "minilm_ref": (
        "vsepp",
        HOLDOUT + MINILM + [REF_STAGES],
        "frozen MiniLM, the reference schedule (no warm-up, 20 epochs, lr / 10 after 10)",
    ),
    "long": ("vsepp", HOLDOUT + BF16 + [LONG_STAGES], "1 warm-up + 29 hardest epochs, our protocol"),
    # Started from the converged frozen-MiniLM baseline of the same seed (its best checkpoint):
    "minilm_adv": ("miie_adv", HOLDOUT + MINILM, "minilm + the adversarial stages (classifier 2, adversarial 6 epochs)"),
    "minilm_more": ("vsepp_more", HOLDOUT + MINILM, "minilm + the control: 6 more epochs, ranking loss only"),
}
# Variants that start from another variant's best checkpoint of the same seed (--init-from).
BASE = {"minilm_adv": "minilm", "minilm_more": "minilm"}


def load_results(result: str = RESULT) -> dict[str, Any]:
    path = RESULTS_DIR / f"{result}.json"
    return json.loads(path.read_text()) if path.exists() else {}


def curve_of(run_dir: Path) -> list[dict[str, Any]]:
    records = [
        json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines() if line.strip()
    ]
    return [
        {
            "epoch": i + 1,
            "stage": r["stage"],
            "val_rsum": r["val/rsum"],
            "probe_acc": r.get("val/probe_acc"),
            "epoch_time_s": r.get("epoch_time_s"),
        }  # fmt: skip
        for i, r in enumerate(r for r in records if "val/rsum" in r)
    ]


def plateau_epoch(curve: list[dict[str, Any]]) -> int:
    """The first epoch whose validation rsum is within PLATEAU_DELTA of the curve's best: more
    epochs after it gain nothing (the curve is flat or, with overfitting, falls)."""
    best = max(p["val_rsum"] for p in curve)
    return next(p["epoch"] for p in curve if p["val_rsum"] >= best - PLATEAU_DELTA)


def dev_scores(im, tx) -> dict[str, float]:
    """Recall (all images of the split at once) and the modality-invariance metrics."""
    from itmatch.evaluation.invariance import invariance_metrics
    from itmatch.evaluation.recall import evaluate_embeddings

    out = {k: v for k, v in evaluate_embeddings(im, tx, protocol="all").items() if not isinstance(v, list)}
    out.update(invariance_metrics(im, tx))
    return out


def run(
    variant: str,
    seed: int,
    data: Path,
    variants: dict[str, tuple[str, list[str], str]] = VARIANTS,
    base_of: dict[str, str] = BASE,
    result: str = RESULT,
) -> dict[str, Any]:
    """Train one variant (resuming an interrupted run), score its best checkpoint on dev and
    record it in results/RESULT.json. Other Flickr8k benchmarks call this with their own variant
    table and result name."""
    import torch

    from itmatch.data import load_corpus
    from itmatch.inference import Matcher
    from itmatch.training.config import load_config
    from itmatch.training.trainer import train

    recipe, overrides, about = variants[variant]
    overrides = [
        "data.format=flickr8k",
        f"data.path={data}",
        f"data.feature_cache={CACHE}",
        *COMMON,
        *overrides,
        f"seed={seed}",
    ]
    cfg = load_config(recipe, overrides)
    run_dir = RUNS / f"{variant}-seed{seed}"
    base = RUNS / f"{base_of[variant]}-seed{seed}" if variant in base_of else None
    if base is not None and not (base / "summary.json").exists():
        raise SystemExit(f"{variant} starts from {base}: run the {base_of[variant]} variant with --seed {seed} first")
    if not (run_dir / "summary.json").exists():
        resume = (run_dir / "checkpoints" / "last.pt").exists()
        train(cfg, run_dir, progress=True, resume=resume, init_from=None if resume else base)
    summary = json.loads((run_dir / "summary.json").read_text())
    curve = curve_of(run_dir)
    torch.set_num_threads(1)
    matcher = Matcher.from_run(run_dir, "best")
    im, tx = matcher.embed_corpus(load_corpus("flickr8k", str(data), "dev"))
    metrics = dev_scores(im, tx)
    epoch_times = [p["epoch_time_s"] for p in curve if p["epoch_time_s"] is not None]
    entry = {
        "variant": variant,
        "about": about,
        "recipe": recipe,
        "overrides": overrides,
        "seed": seed,
        "init_from": str(base) if base is not None else None,
        "selection": "dev (as the reference code)"
        if "data.val_split=dev" in overrides
        else "500 held-out train images",
        "dev_metrics": metrics,
        "selected": {
            "stage": summary["best"].get("stage"),
            "epoch_in_stage": summary["best"].get("epoch"),
            "val_rsum": summary["best"].get("val/rsum"),
        },  # fmt: skip
        "epochs": len(curve),
        "plateau_epoch": plateau_epoch(curve),
        "epoch_time_s_median": statistics.median(epoch_times) if epoch_times else None,
        "train_wall_s": sum(epoch_times),
        "bf16_speedup_linear": BF16_SPEEDUP,  # what chose the precision (cpu_has_fast_bf16)
        "curve": curve,
        "run_dir": str(run_dir),
    }
    record_run(result, f"{variant}-seed{seed}", entry)
    print(json.dumps({k: entry[k] for k in ("variant", "seed", "plateau_epoch", "epochs", "train_wall_s")}
                     | {"dev_rsum": metrics["rsum"], "probe_acc": metrics["probe_acc"]}))  # fmt: skip
    return entry


def record_run(result: str, key: str, entry: dict[str, Any], **blocks: Any) -> None:
    """Put ``entry`` under ``runs[key]`` of results/RESULT.json (and set the top-level ``blocks``),
    under the file's lock. The file's other blocks (a script's own timings, say) stay; its header
    is written anew."""
    with result_lock(result):
        kept = {k: v for k, v in load_results(result).items() if k not in RESULT_HEADER}
        runs = kept.pop("runs", {}) | {key: entry}
        write_result(result, kept | blocks | {"plateau_delta_rsum": PLATEAU_DELTA, "runs": dict(sorted(runs.items()))})


def record_block(result: str, name: str, value: Any) -> None:
    """Set the top-level block ``name`` of results/RESULT.json, under the file's lock; its runs stay."""
    with result_lock(result):
        kept = {k: v for k, v in load_results(result).items() if k not in RESULT_HEADER}
        write_result(result, kept | {name: value})


COLUMNS = ("i2t_r1", "i2t_r5", "i2t_r10", "t2i_r1", "t2i_r5", "t2i_r10", "rsum", "probe_acc")


def last_stage_epoch_s(curve: list[dict[str, Any]]) -> float:
    """The median epoch time of a run's last stage (a fine-tuning stage's epochs cost minutes
    where the frozen stages before it cost seconds: a median over all of them says neither)."""
    last = curve[-1]["stage"]
    times = [p["epoch_time_s"] for p in curve if p["stage"] == last and p["epoch_time_s"] is not None]
    return statistics.median(times) if times else float("nan")


def precision_of(entries: list[dict[str, Any]]) -> str:
    """The training precision of a variant's runs, from their overrides (a later one wins)."""
    found = set()
    for e in entries:
        chosen = [o.split("=", 1)[1] for o in e["overrides"] if o.startswith("training.precision=")]
        found.add(chosen[-1] if chosen else "fp32")
    return "/".join(sorted(found))


def mean_spread(values: Sequence[float]) -> str:
    """A table cell: the mean, and ``± standard deviation`` when there is more than one value."""
    return f"{statistics.fmean(values):.1f}" + (f" ± {statistics.stdev(values):.1f}" if len(values) > 1 else "")


def table(result: str = RESULT) -> str:
    runs = load_results(result).get("runs", {})
    by_variant: dict[str, list[dict[str, Any]]] = {}
    for entry in runs.values():
        by_variant.setdefault(entry["variant"], []).append(entry)
    head = "| variant | seeds | selection | " + " | ".join(COLUMNS) + " | plateau / epochs | precision | s per epoch (last stage) | total s |"
    lines = [head, "|" + "---|" * (len(COLUMNS) + 7)]
    for name, entries in by_variant.items():
        cells = [mean_spread([e["dev_metrics"][col] for e in entries]) for col in COLUMNS]
        plateau = "/".join(str(plateau_epoch(e["curve"])) for e in entries)
        epochs = entries[0]["epochs"]
        sec = statistics.mean(last_stage_epoch_s(e["curve"]) for e in entries)
        total = statistics.mean(e["train_wall_s"] for e in entries)
        lines.append(
            f"| {name} | {len(entries)} | {entries[0]['selection']} | "
            + " | ".join(cells)
            + f" | {plateau} / {epochs} | {precision_of(entries)} | {sec:.0f} | {total:.0f} |"
        )
    return "\n".join(lines)


def plot(
    result: str = RESULT,
    title: str = "Flickr8k VSE++ baseline",
    only: Sequence[str] | None = None,
    stem: str = "curves",
    ylabel: str = "validation rsum (500 held-out train images)",
) -> Path:
    """Validation rsum per epoch, one line per variant (the mean over its seeds, their range
    shaded, a faint vertical line at the mean's plateau epoch) -> results/RESULT_STEM.png;
    ``only``: these variants, in this order (default: every variant of the file)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    groups: dict[str, list[list[float]]] = {}
    for entry in load_results(result).get("runs", {}).values():
        groups.setdefault(entry["variant"], []).append([p["val_rsum"] for p in entry["curve"]])
    names = [n for n in only if n in groups] if only is not None else sorted(groups)
    if not names:
        raise SystemExit(f"no runs to plot in {result}.json")
    fig, ax = plt.subplots(figsize=(9, 5.5))
    for name in names:
        curves = groups[name]
        epochs = min(len(c) for c in curves)  # seeds of one variant run the same schedule
        values = [c[:epochs] for c in curves]
        mean = [statistics.fmean(col) for col in zip(*values)]
        xs = list(range(1, epochs + 1))
        label = f"{name} ({len(curves)} seed{'s' if len(curves) > 1 else ''})"
        (line,) = ax.plot(xs, mean, marker=".", label=label)
        if len(curves) > 1:
            ax.fill_between(xs, [min(col) for col in zip(*values)], [max(col) for col in zip(*values)],
                            color=line.get_color(), alpha=0.15)  # fmt: skip
        ax.axvline(plateau_epoch([{"epoch": x, "val_rsum": v} for x, v in zip(xs, mean)]), color=line.get_color(), alpha=0.2)
    ax.set_xlabel("epoch")
    ax.set_ylabel(ylabel)
    ax.set_title(f"{title}: validation rsum per epoch\n(mean over seeds, range shaded; faint lines: plateau)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    out = RESULTS_DIR / f"{result}_{stem}.png"
    fig.tight_layout()
    fig.savefig(out, dpi=110)
    plt.close(fig)
    return out


# An extra subcommand of `main`: (help, add its arguments to the subparser, run it on the parsed args).
Command = tuple[str, Callable[[argparse.ArgumentParser], None], Callable[[argparse.Namespace], None]]


def main(
    doc: str = __doc__,
    variants: dict[str, tuple[str, list[str], str]] = VARIANTS,
    base_of: dict[str, str] = BASE,
    result: str = RESULT,
    title: str = "Flickr8k VSE++ baseline",
    extra: dict[str, Command] | None = None,
) -> None:
    """The `run VARIANT --seed S` / `table` / `plot` command line, shared by the Flickr8k
    benchmarks; `extra` adds a script's own subcommands (or replaces one of these three)."""
    builtin: dict[str, Command] = {
        "run": (
            "train one variant and score it on dev",
            run_arguments(variants),
            lambda args: run(args.variant, args.seed, args.data, variants, base_of, result),
        ),
        "table": ("markdown table of every run so far", lambda p: None, lambda args: print(table(result))),
        "plot": ("learning curves -> results/RESULT_curves.png", lambda p: None, lambda args: print(plot(result, title))),
    }
    commands = {**builtin, **(extra or {})}
    ap = argparse.ArgumentParser(description=doc, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="command", required=True)
    for name, (help_text, add_arguments, _) in commands.items():
        add_arguments(sub.add_parser(name, help=help_text))
    args = ap.parse_args()
    commands[args.command][2](args)


def run_arguments(variants: dict[str, tuple[str, list[str], str]]) -> Callable[[argparse.ArgumentParser], None]:
    def add(p: argparse.ArgumentParser) -> None:
        p.add_argument("variant", choices=sorted(variants))
        p.add_argument("--seed", type=int, default=0)
        data_argument(p)

    return add


def data_argument(p: argparse.ArgumentParser) -> None:
    p.add_argument("--data", type=Path, default=DEFAULT_DATA, help="the Flickr8k folder (default: %(default)s)")


def plot_both() -> tuple[Path, Path]:
    """This file's two plots: the project's protocol (validation = held-out train images) and the
    dev-selected GRU runs (their validation is dev: a different split and size, another axis)."""
    names = sorted({e["variant"] for e in load_results().get("runs", {}).values()})
    devsel = [n for n in names if n.endswith("_devsel")]
    return (
        plot(only=[n for n in names if n not in devsel]),
        plot(title="Flickr8k VSE++ (GRU), selected on dev as the reference code", only=devsel, stem="devsel_curves",
             ylabel="dev rsum (1,000 dev images, the selection split here)"),
    )  # fmt: skip


if __name__ == "__main__":
    main(extra={"plot": ("learning curves -> results/flickr8k_baseline_curves.png (held-out selection) and "
                         "results/flickr8k_baseline_devsel_curves.png (the dev-selected GRU runs)",
                         lambda p: None, lambda args: print(*plot_both()))})  # fmt: skip
