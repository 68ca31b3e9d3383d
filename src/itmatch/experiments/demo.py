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
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from itmatch.errors import ItmatchError
from itmatch.evaluation.runs import embed_run, score_embeddings
from itmatch.experiments.chance import chance_recall
from itmatch.experiments.demo_models import (
    DATA_DIR,
    EVAL_SPLIT,
    FEATURES_DIR,
    FULL_PLAN,
    MODELS,
    PROTOCOL,
    QUICK_PLAN,
    REPORT_DIR,
    RUNS_DIR,
    DemoModel,
    DemoPlan,
)
from itmatch.experiments.demo_report import demo_table, write_readme, write_report, write_results

if TYPE_CHECKING:
    from itmatch.data import Corpus
    from itmatch.features import FeatureStore

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
        embedded = embed_run(runs_dir / model.key, EVAL_SPLIT)
        corpus = embedded.corpus
        metrics[model.key] = score_embeddings(embedded.images, embedded.texts, protocol=PROTOCOL, seed=seed, folds=False)
        embeddings[model.key] = (embedded.images, embedded.texts)
    assert corpus is not None
    chance = chance_recall(len(corpus))
    timings["evaluate"] = time.perf_counter() - t
    say(f"      {len(corpus)} images, {corpus.num_captions} captions ({timings['evaluate']:.1f} s)")

    t = begin(f"report: t-SNE maps, {plan.n_queries} query examples, training curves")
    table = demo_table(metrics, chance, len(corpus))
    files = write_report(
        report_dir, plan=plan, seed=seed, corpus=corpus, embeddings=embeddings, metrics=metrics,
        chance=chance, table=table, runs_dir=runs_dir, configs=configs, summaries=summaries, timings=timings,
    )  # fmt: skip
    timings["report"] = time.perf_counter() - t
    timings["total"] = time.perf_counter() - start
    # The timings are final only now: rewrite the two files that carry them.
    write_results(report_dir, plan, seed, metrics, chance, len(corpus), configs, summaries, timings)
    write_readme(report_dir, plan, seed, table, len(corpus), configs, summaries, timings, files)
    return DemoResult(
        out_dir=out, report_dir=report_dir, dataset_json=dataset_json, models=list(MODELS), metrics=metrics,
        chance=chance, n_test_images=len(corpus), table_markdown=table, timings=timings, files=files,
    )  # fmt: skip


# --------------------------------------------------------------------------------------------
# helpers


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
