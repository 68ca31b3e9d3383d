"""What the demo trains and how big it is: its models, its plans and its folder layout."""

from __future__ import annotations

from dataclasses import dataclass

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

@dataclass(frozen=True)
class DemoPlan:
    """How big the demo is. ``overrides`` apply to every recipe (a stage a recipe lacks is skipped)."""

    n_train: int = 2000
    n_val: int = 250
    n_test: int = 500
    image_size: int = 128
    overrides: tuple[str, ...] = ()
    tsne_points: int = 600  # per map; t-SNE time grows faster than linearly with it
    n_queries: int = 6  # t2i R@5 is far from 100 on this data: six random queries show hits and misses
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
