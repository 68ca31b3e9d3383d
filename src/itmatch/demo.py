"""The demo behind ``itmatch demo``: generated data -> baseline and modality-invariant model -> report.

One call of :func:`run_demo` runs the project end to end on data it makes itself:

1. generate the image-caption data set (:func:`itmatch.synth.generate_dataset`, Karpathy JSON +
   PNG folder; reused when the folder already holds the same one);
2. extract frozen EfficientNet-Lite0 features of every image (cached: a rerun computes nothing);
3. train the VSE++ baseline (recipe ``demo_vsepp``), then, both starting from its best checkpoint,
   the modality-invariant stages (``demo_miie_adv``: classifier alone, then adversarial) and the
   control (``demo_vsepp_more``: the same extra epochs without classifier or adversary);
4. score every model on the test split (Recall@K, protocol ``all``, and the modality-invariance
   metrics) and write a report folder: the table (Markdown + JSON), side-by-side t-SNE maps,
   query examples (a sentence and each model's top-5 images), training curves and a README.

Output folder::

    data/        the generated data set (dataset_synth.json, images/, scenes.json)
    features/    the feature cache
    runs/        one run folder per model (vsepp, vsepp_more, miie)
    report/      README.md, results.md, results.json, tsne.png, queries/*.png, curves_*.png

Nothing is written outside the output folder. The module is silent: progress bars (``progress``)
go to stderr through the trainer and the extractor, and messages go to the ``log`` callback.
"""

from __future__ import annotations

import json
import math
import shutil
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from itmatch.errors import ItmatchError
from itmatch.evaluation.invariance import MMD_BANDWIDTH
from itmatch.training.compare import TABLE_COLUMNS as COMPARISON_COLUMNS

if TYPE_CHECKING:
    from itmatch.data import Corpus
    from itmatch.features import FeatureStore

DATA_DIR = "data"
FEATURES_DIR = "features"
RUNS_DIR = "runs"
REPORT_DIR = "report"
EVAL_SPLIT = "test"
PROTOCOL = "all"


@dataclass(frozen=True)
class DemoModel:
    """One trained model of the demo: its run folder name, table label and recipe."""

    key: str
    label: str
    recipe: str
    init_from: str | None = None  # key of the model whose best checkpoint starts this one


MODELS: tuple[DemoModel, ...] = (
    DemoModel("vsepp", "VSE++ baseline", "demo_vsepp"),
    DemoModel("vsepp_more", "VSE++ + extra epochs (control)", "demo_vsepp_more", init_from="vsepp"),
    DemoModel("miie", "modality-invariant (adversarial)", "demo_miie_adv", init_from="vsepp"),
)

# Table columns: (metric key, title), the same as the comparison runner's. probe_acc: a fresh
# linear probe's accuracy at telling the modalities apart (50 = invariant); centroid_dist:
# distance between the modality means; MMD with its one fixed kernel bandwidth in the title.
TABLE_COLUMNS: tuple[tuple[str, str], ...] = tuple(COMPARISON_COLUMNS)


@dataclass(frozen=True)
class DemoPlan:
    """How big the demo is. ``overrides`` apply to every recipe (a stage a recipe lacks is skipped)."""

    n_train: int = 2000
    n_val: int = 250
    n_test: int = 500
    image_size: int = 128
    overrides: tuple[str, ...] = ()
    tsne_points: int = 600  # per map; t-SNE time grows fast with it (1,000: ~3x the time of 600)
    n_queries: int = 6  # t2i R@5 is ~40% on this data: six random queries show hits and misses
    min_query_words: int = 7  # queries are random test captions at least this long (specific ones)


FULL_PLAN = DemoPlan()
# For tests: 1/6 of the data at half the resolution, a few epochs.
QUICK_PLAN = DemoPlan(
    n_train=300,
    n_val=50,
    n_test=100,
    image_size=64,
    overrides=(
        "stages.warmup.epochs=4",
        "stages.hardest.epochs=2",
        "stages.hardest.lr_decay_epochs=1",
        "stages.adversarial.epochs=1",
        "stages.more.epochs=1",
    ),
    tsne_points=200,
    n_queries=2,
)

Log = Callable[[str], None]
RecordLog = Callable[[str, dict[str, Any]], None]


@dataclass
class DemoResult:
    """What :func:`run_demo` produced. ``metrics[key]`` are the test metrics of model ``key``."""

    out_dir: Path
    report_dir: Path
    dataset_json: Path
    models: list[DemoModel]
    metrics: dict[str, dict[str, float]]
    chance: dict[str, float]
    n_test_images: int
    table_markdown: str
    timings: dict[str, float]
    files: list[Path] = field(default_factory=list)


# --------------------------------------------------------------------------------------------
# chance level


def chance_recall(n_images: int, ks: Sequence[int] = (1, 5, 10)) -> dict[str, float]:
    """Expected Recall@K (%) of a random ranking of ``n_images`` images and their 5N captions.

    i2t: an image's rank is the best of its 5 captions among 5N, so R@K = 1 - C(5N-5, K) / C(5N, K);
    t2i: one right image among N, so R@K = K / N. ``rsum`` is their sum.
    """
    if n_images < 1:
        raise ValueError(f"n_images must be >= 1, got {n_images}")
    n_caps = 5 * n_images
    out: dict[str, float] = {}
    for k in ks:
        k_i2t = min(k, n_caps)
        miss = math.comb(n_caps - 5, k_i2t) / math.comb(n_caps, k_i2t) if n_caps - 5 >= k_i2t else 0.0
        out[f"i2t_r{k}"] = 100.0 * (1.0 - miss)
        out[f"t2i_r{k}"] = 100.0 * min(k, n_images) / n_images
    out["rsum"] = sum(out.values())
    out["probe_acc"] = 50.0
    return out


# --------------------------------------------------------------------------------------------
# steps


def prepare_dataset(out_dir: str | Path, plan: DemoPlan, seed: int, progress: bool = False) -> tuple[Path, bool]:
    """Generate (or reuse) the data set in ``out_dir/data``; returns (its JSON path, reused)."""
    from itmatch.synth import generate_dataset

    folder = Path(out_dir) / DATA_DIR
    with _bar(progress, "generating scenes") as report:
        path = generate_dataset(
            folder, plan.n_train, plan.n_val, plan.n_test, seed=seed, image_size=plan.image_size, progress=report
        )
    return path, not report.called  # a reused folder generates (and reports) nothing


def prepare_features(
    dataset_json: Path, out_dir: str | Path, plan: DemoPlan, progress: bool = False, device: str = "auto"
) -> tuple[FeatureStore, int]:
    """Extract (or reuse) the features of every image of the data set on ``device`` (the demo's
    recipes train on ``auto`` too); returns (store, computed)."""
    from itmatch.data import load_corpus
    from itmatch.device import pick_device
    from itmatch.features import extract_features

    ids: list[str] = []
    root = None
    for split in ("train", "val", "test"):
        corpus = load_corpus("karpathy", dataset_json, split)
        ids += corpus.image_ids
        root = corpus.image_root
    # One decoding worker: the PNGs are small, and on a busy 2-core machine a second decoding
    # process next to the forward pass costs more than it gives.
    store = extract_features(
        root, ids, Path(out_dir) / FEATURES_DIR, image_size=plan.image_size, num_workers=1, progress=progress,
        device=pick_device(device),
    )
    return store, store.computed


def model_config(model: DemoModel, dataset_json: Path, out_dir: str | Path, plan: DemoPlan, seed: int) -> dict[str, Any]:
    """The resolved recipe of ``model`` for this demo (data set, feature cache, seed, plan overrides)."""
    from itmatch.training.config import load_config

    overrides = [
        f"data.path={json.dumps(str(dataset_json))}",
        f"data.feature_cache={json.dumps(str(Path(out_dir) / FEATURES_DIR))}",
        f"data.image_size={int(plan.image_size)}",
        f"seed={int(seed)}",
        *plan.overrides,
    ]
    return load_config(model.recipe, overrides, skip_missing_stages=True)


def train_model(
    model: DemoModel,
    cfg: dict[str, Any],
    runs_dir: Path,
    progress: bool = False,
    on_record: RecordLog | None = None,
) -> dict[str, Any]:
    """Train ``model`` into ``runs_dir/<key>`` (a previous demo run there is replaced)."""
    from itmatch.training.trainer import train

    run_dir = runs_dir / model.key
    _clear_run(run_dir)
    init = runs_dir / model.init_from if model.init_from else None

    def log(record: dict[str, Any]) -> None:
        if on_record is not None:
            on_record(model.key, record)

    return train(cfg, run_dir, init_from=init, progress=progress, log=log)


def evaluate_run(
    run_dir: Path, split: str = EVAL_SPLIT, seed: int = 0
) -> tuple[dict[str, float], torch.Tensor, torch.Tensor, Corpus]:
    """Test metrics of a run's best checkpoint, with the embeddings and the corpus they came from."""
    from itmatch.evaluation.invariance import invariance_metrics
    from itmatch.evaluation.recall import evaluate_embeddings
    from itmatch.inference import Matcher
    from itmatch.data.splits import load_split

    matcher = Matcher.from_run(run_dir, "best")
    corpus = load_split(matcher.config["data"], split)
    im, tx = matcher.embed_corpus(corpus)
    metrics = {k: float(v) for k, v in evaluate_embeddings(im, tx, protocol=PROTOCOL).items() if not isinstance(v, list)}
    metrics.update(invariance_metrics(im, tx, seed=seed))
    return metrics, im, tx, corpus


# --------------------------------------------------------------------------------------------
# the whole demo


def run_demo(
    out_dir: str | Path,
    *,
    seed: int = 0,
    quick: bool = False,
    plan: DemoPlan | None = None,
    progress: bool = False,
    log: Log | None = None,
    on_record: RecordLog | None = None,
) -> DemoResult:
    """Run the demo into ``out_dir`` (see the module docstring); returns what it measured and wrote.

    ``plan`` defaults to :data:`QUICK_PLAN` with ``quick`` else :data:`FULL_PLAN`. ``log`` receives
    one line per step; ``on_record(model_key, record)`` every training metrics record.
    """
    plan = plan or (QUICK_PLAN if quick else FULL_PLAN)
    say = log or (lambda message: None)
    out = Path(out_dir).absolute()  # the runs' configs name it: from any directory, the same folder
    out.mkdir(parents=True, exist_ok=True)
    runs_dir = out / RUNS_DIR
    report_dir = out / REPORT_DIR
    timings: dict[str, float] = {}
    start = time.perf_counter()
    n_steps = 4 + len(MODELS)
    step = 0

    def begin(text: str) -> float:
        nonlocal step
        step += 1
        say(f"[{step}/{n_steps}] {text}")
        return time.perf_counter()

    t = begin(f"data set: {plan.n_train} train / {plan.n_val} val / {plan.n_test} test scenes, "
              f"{plan.image_size} px, seed {seed}")  # fmt: skip
    dataset_json, reused = prepare_dataset(out, plan, seed, progress)
    timings["data"] = time.perf_counter() - t
    say(f"      {'reused' if reused else 'generated'} {dataset_json} ({timings['data']:.1f} s)")

    t = begin("image features: frozen EfficientNet-Lite0 (ImageNet weights)")
    store, computed = prepare_features(dataset_json, out, plan, progress)
    timings["features"] = time.perf_counter() - t
    state = f"computed {computed}" if computed else "all cached"
    say(f"      {len(store)} x {store.feature_dim} features, {state} ({timings['features']:.1f} s)")

    configs: dict[str, dict[str, Any]] = {}
    summaries: dict[str, dict[str, Any]] = {}
    for model in MODELS:
        cfg = model_config(model, dataset_json, out, plan, seed)
        configs[model.key] = cfg
        stages = ", ".join(f"{s['name']} x{s['epochs']}" for s in cfg["stages"])
        origin = f" from {model.init_from}'s best checkpoint" if model.init_from else ""
        t = begin(f"training {model.label} [{model.recipe}: {stages}]{origin}")
        summaries[model.key] = train_model(model, cfg, runs_dir, progress, on_record)
        timings[f"train_{model.key}"] = time.perf_counter() - t
        best = summaries[model.key].get("best") or {}
        where = f"best val rsum {best['val/rsum']:.1f} at {best['stage']} epoch {best['epoch']}; " if best else ""
        say(f"      {where}{timings[f'train_{model.key}']:.1f} s")

    t = begin(f"evaluating on the {EVAL_SPLIT} split (protocol {PROTOCOL!r})")
    metrics: dict[str, dict[str, float]] = {}
    embeddings: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}
    corpus: Corpus | None = None
    for model in MODELS:
        metrics[model.key], im, tx, corpus = evaluate_run(runs_dir / model.key, EVAL_SPLIT, seed)
        embeddings[model.key] = (im, tx)
    assert corpus is not None
    chance = chance_recall(len(corpus))
    timings["evaluate"] = time.perf_counter() - t
    say(f"      {len(corpus)} images, {corpus.num_captions} captions ({timings['evaluate']:.1f} s)")

    t = begin(f"report: t-SNE maps, {plan.n_queries} query examples, training curves")
    table = markdown_table(metrics, chance, len(corpus))
    files = write_report(
        report_dir, plan=plan, seed=seed, corpus=corpus, embeddings=embeddings, metrics=metrics,
        chance=chance, table=table, runs_dir=runs_dir, configs=configs, summaries=summaries, timings=timings,
    )  # fmt: skip
    timings["report"] = time.perf_counter() - t
    timings["total"] = time.perf_counter() - start
    # The timings are final only now: rewrite the two files that carry them.
    _write_results(report_dir, plan, seed, metrics, chance, len(corpus), configs, summaries, timings)
    _write_readme(report_dir, plan, seed, table, len(corpus), configs, summaries, timings, files)
    return DemoResult(
        out_dir=out, report_dir=report_dir, dataset_json=dataset_json, models=list(MODELS), metrics=metrics,
        chance=chance, n_test_images=len(corpus), table_markdown=table, timings=timings, files=files,
    )  # fmt: skip


# --------------------------------------------------------------------------------------------
# report


def markdown_table(metrics: dict[str, dict[str, float]], chance: dict[str, float] | None = None, n_images: int | None = None) -> str:
    """The comparison as a Markdown table: one row per model (and a chance row when given)."""
    labels = {m.key: m.label for m in MODELS}
    header = "| model | " + " | ".join(title for _, title in TABLE_COLUMNS) + " |"
    lines = [header, "|---|" + "---:|" * len(TABLE_COLUMNS)]
    for key, values in metrics.items():
        cells = [_cell(k, values.get(k)) for k, _ in TABLE_COLUMNS]
        lines.append(f"| {labels.get(key, key)} | " + " | ".join(cells) + " |")
    if chance is not None:
        cells = [_cell(k, chance.get(k)) for k, _ in TABLE_COLUMNS]
        name = f"chance ({n_images} images)" if n_images else "chance"
        lines.append(f"| *{name}* | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def _cell(key: str, value: float | None) -> str:
    if value is None:
        return "-"
    return f"{value:.3f}" if key in ("centroid_dist", "mmd") else f"{value:.1f}"


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
    files.append(_write_text(report_dir / "results.md", table + "\n"))
    files.append(_write_results(report_dir, plan, seed, metrics, chance, len(corpus), configs, summaries, timings))
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
    logs = {m.key: _joined_metrics(m, runs_dir) for m in MODELS}
    files.append(comparison_curves(logs, labels, report_dir / "curves.png"))
    # Every logged metric of the modality-invariant model, baseline stages included.
    tmp = report_dir / ".metrics_miie.jsonl"
    tmp.write_text("".join(json.dumps(r) + "\n" for r in logs["miie"]))
    try:
        files.append(plot_training_curves(tmp, report_dir / "curves_miie.png"))
    finally:
        tmp.unlink()
    files.append(_write_readme(report_dir, plan, seed, table, len(corpus), configs, summaries, timings, files))
    return files


def _joined_metrics(model: DemoModel, runs_dir: Path) -> list[dict[str, Any]]:
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


CURVE_PANELS: tuple[tuple[str, str], ...] = (
    ("val/rsum", "validation rsum"),
    ("val/probe_acc", "validation probe accuracy % (50 = invariant)"),
    ("val/centroid_dist", "validation centroid distance"),
    ("val/mmd", "validation MMD"),
)


def comparison_curves(
    logs: dict[str, list[dict[str, Any]]], labels: dict[str, str], path: Path
) -> Path:
    """One PNG with the validation curves of every model (x: epochs since the start of the baseline).

    ``logs[key]``: records as :func:`_joined_metrics` returns them. A model that starts from
    another one is drawn from that run's selected epoch on (the checkpoint it started from).
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(11, 6.5), dpi=100)
    FigureCanvasAgg(fig)
    axes = [fig.add_subplot(2, 2, k + 1) for k in range(len(CURVE_PANELS))]
    for n, (key, records) in enumerate(logs.items()):
        val = [r for r in records if "val/rsum" in r]
        inherited = [r for r in val if r["run"] != key]
        own = [r for r in val if r["run"] == key]
        if inherited:
            # the branch starts from the inherited run's selected (best) epoch
            best = [k for k, r in enumerate(inherited, start=1) if r.get("best")]
            start = best[-1] if best else len(inherited)
            points = [(start, inherited[start - 1])] + [(start + k, r) for k, r in enumerate(own, start=1)]
        else:
            points = list(enumerate(own, start=1))
        xs = [x for x, _ in points]
        for ax, (metric, _) in zip(axes, CURVE_PANELS):
            ys = [float(r.get(metric, np.nan)) for _, r in points]
            ax.plot(xs, ys, marker="o", markersize=3, linewidth=1.4, color=f"C{n}", label=labels.get(key, key))
    for ax, (_, title) in zip(axes, CURVE_PANELS):
        ax.set_title(title, fontsize=10)
        ax.set_xlabel("epoch")
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=8, loc="lower right")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, format="png")
    return path


def query_examples(
    corpus: Corpus,
    embeddings: dict[str, tuple[torch.Tensor, torch.Tensor]],
    labels: dict[str, str],
    out_dir: Path,
    *,
    n_queries: int = 4,
    min_words: int = 7,
    seed: int = 0,
) -> list[Path]:
    """One PNG per query: a random test caption (at least ``min_words`` words) and each model's
    top-5 images, then the caption's own image with its rank (framed in green, also in the top 5).
    ``queries.json`` lists the captions and the 1-based rank of their image for every model."""
    captions = corpus.flat_captions()
    rng = np.random.default_rng(seed)
    eligible = [j for j, c in enumerate(captions) if len(c.split()) >= min_words] or list(range(len(captions)))
    chosen = sorted(int(j) for j in rng.choice(eligible, size=min(n_queries, len(eligible)), replace=False))
    out_dir.mkdir(parents=True, exist_ok=True)
    paths: list[Path] = []
    listing = []
    for n, j in enumerate(chosen, start=1):
        rows = []
        ranks = {}
        for key, (im, tx) in embeddings.items():
            scores = (im @ tx[j]).numpy()
            order = np.argsort(-scores, kind="stable")
            truth = j // 5
            # ties count against the query, as in the recall protocol
            rank = int(np.sum(scores >= scores[truth])) - 1
            rows.append((labels.get(key, key), [int(i) for i in order[:5]], rank))
            ranks[key] = rank + 1
        paths.append(_query_figure(corpus, captions[j], j // 5, rows, out_dir / f"query_{n}.png"))
        listing.append({"file": paths[-1].name, "caption": captions[j], "caption_row": j,
                        "image": corpus.image_ids[j // 5], "rank_of_its_image": ranks})  # fmt: skip
    paths.append(_write_text(out_dir / "queries.json", json.dumps(listing, indent=2) + "\n"))
    return paths


def _query_figure(corpus: Corpus, caption: str, truth: int, rows: list[tuple[str, list[int], int]], path: Path) -> Path:
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
    from PIL import Image

    def load(i: int) -> np.ndarray:
        with Image.open(Path(corpus.image_root) / corpus.image_ids[i]) as img:
            return np.asarray(img.convert("RGB"))

    n_cols = 6  # top 5, then the caption's own image
    fig = Figure(figsize=(1.9 * n_cols + 1.6, 2.3 * len(rows) + 0.7), dpi=100)
    FigureCanvasAgg(fig)
    fig.suptitle(f"\u201c{caption}\u201d", fontsize=11)
    for r, (label, top, rank) in enumerate(rows):
        cells = [(i, f"#{k + 1}") for k, i in enumerate(top)] + [(truth, f"its image: rank {rank + 1}")]
        for c, (i, title) in enumerate(cells):
            ax = fig.add_subplot(len(rows), n_cols, r * n_cols + c + 1)
            ax.imshow(load(i))
            ax.set_xticks([])
            ax.set_yticks([])
            hit = i == truth
            for spine in ax.spines.values():
                spine.set_color("tab:green" if hit else "lightgrey")
                spine.set_linewidth(5 if hit else 1)
            ax.set_title(title + (" \u2713" if hit and c < 5 else ""), fontsize=9,
                         color="tab:green" if hit else "black")  # fmt: skip
            if c == 0:
                ax.set_ylabel(label.replace(" (", "\n("), fontsize=9)
            if c == 5:
                ax.set_facecolor("white")
    fig.tight_layout(rect=(0, 0, 1, 0.95), h_pad=1.2)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, format="png")
    return path


def _write_results(
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
    return _write_text(report_dir / "results.json", json.dumps(result, indent=2) + "\n")


def _best_summary(summary: dict[str, Any] | None) -> dict[str, Any] | None:
    best = (summary or {}).get("best") or {}
    if not best:
        return None
    return {"stage": best.get("stage"), "epoch": best.get("epoch"), "rsum": best.get("val/rsum")}


def _write_readme(
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
    return _write_text(report_dir / "README.md", text)


# --------------------------------------------------------------------------------------------
# helpers


def _write_text(path: Path, text: str) -> Path:
    # Written beside and renamed over, with the usual permissions (a report is for sharing).
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(text, encoding="utf-8")
    tmp.replace(path)
    return path


def _clear_run(run_dir: Path) -> None:
    """Remove a previous demo run folder so the model is trained afresh; refuse anything else."""
    if not run_dir.exists():
        return
    looks_like_run = (run_dir / "config.yaml").is_file() or (run_dir / "checkpoints").is_dir()
    if not run_dir.is_dir() or not looks_like_run:
        raise ItmatchError(f"{run_dir} exists and is not an itmatch run folder; remove it or choose another --out")
    shutil.rmtree(run_dir)


class _bar:
    """A tqdm bar fed by ``(done, total)`` callbacks; a no-op when disabled. Records whether it was called."""

    def __init__(self, enabled: bool, desc: str):
        self.enabled, self.desc = enabled, desc
        self.bar: Any = None
        self.called = False

    def __enter__(self) -> _bar:
        return self

    def __call__(self, done: int, total: int) -> None:
        self.called = True
        if not self.enabled:
            return
        if self.bar is None:
            from tqdm import tqdm

            self.bar = tqdm(total=total, desc=self.desc, leave=False, dynamic_ncols=True)
        self.bar.update(done - self.bar.n)

    def __exit__(self, *exc: object) -> None:
        if self.bar is not None:
            self.bar.close()
