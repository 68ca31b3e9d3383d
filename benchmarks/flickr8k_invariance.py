"""Does modality invariance help matching? The adversary given every fair chance, on the converged
frozen-MiniLM testbed of benchmarks/flickr8k_baseline.py (frozen all-MiniLM-L6-v2 sentence vectors
+ frozen EfficientNet-Lite0 features, d = 1024, batch 128, one thread).

    .venv/bin/python benchmarks/flickr8k_invariance.py run VARIANT [--seed 0] [--data DIR]
    .venv/bin/python benchmarks/flickr8k_invariance.py table    # markdown table of every run so far
    .venv/bin/python benchmarks/flickr8k_invariance.py paired   # the best model's variants against the same seed's control
    .venv/bin/python benchmarks/flickr8k_invariance.py plot     # docs/invariance_tradeoff.png, docs/invariance_best_model.png
    .venv/bin/python benchmarks/flickr8k_invariance.py last [--seed S]  # row minilm_last (see score_last)

Every ``inv_*`` variant starts from the converged baseline's best checkpoint of the same seed
(variant ``minilm``: 1 warm-up + 29 hardest epochs) and runs the same 8 extra epochs as
``minilm_adv`` (classifier 2 + adversarial 6) or, for the non-adversarial alignment penalties,
the control's 6 extra epochs with the penalty added. ``minilm``, ``minilm_adv`` and
``minilm_more`` (the control) are the rows of flickr8k_baseline.py, re-scored here from their run
folders (same dev protocol: all 1,000 dev images); ``miie`` is the one-run recipe from scratch on
the same testbed (1 + 29 baseline epochs, then the adversarial stages; select among the
adversarial epochs only). Selection: the best held-out-train (500 images) validation rsum. ``minilm_lite2`` and the
``lite2_*`` rows repeat the baseline / control / adversary / MMD comparison on the stronger frozen
model (EfficientNet-Lite2 features, benchmarks/flickr8k_backbones.py); ``ft_adv`` and ``ft_mmd``
ask it of the best model (configs/vse_minilm_ft.yaml, MiniLM fine-tuned), the adversary or the
MMD penalty on in its fine-tuning stage, against the recipe itself (``best`` / ``best_fp32``,
copied from results/flickr8k_best.json by ``import-baseline``). The ``gru*`` rows ask it of the GRU
baseline at its own size (``gru``: configs/vsepp_ref.yaml), with ``gru_miie`` the one-run recipe
from scratch on the same schedule (``_fp32``: the same in float32, for CPUs without fast bf16). The
plot shows the Lite0 testbed only.

Per run the results hold dev R@1/5/10 both ways, rsum, a fresh linear probe's accuracy,
the centroid distance, MMD (RBF kernel, one fixed bandwidth sigma = 1.0 for the whole table:
itmatch.evaluation.invariance.MMD_BANDWIDTH) and the trained classifier's own balanced dev
accuracy. Results accumulate in benchmarks/results/flickr8k_invariance.json; runs live in
/tmp/itmatch-f8k-baseline (the same folder as the baseline's, so its runs are reused).
"""

from __future__ import annotations

import argparse
import statistics
from pathlib import Path
from typing import Any

import flickr8k_backbones as fb_backbones
import flickr8k_baseline as fb

from _common import REPO_ROOT

MMD_BANDWIDTH = 1.0  # = itmatch.evaluation.invariance.MMD_BANDWIDTH, the kernel of every MMD here

RESULT = "flickr8k_invariance"
PLOT = REPO_ROOT / "docs" / "invariance_tradeoff.png"
MINILM = fb.HOLDOUT + fb.MINILM
# The one-run recipe on the testbed's schedule: the baseline's 1 + 29 epochs (lr / 10 after 15).
MIIE_TESTBED = ["stages.hardest.epochs=29", "stages.hardest.lr_decay_epochs=15"]

VARIANTS: dict[str, tuple[str, list[str], str]] = {
    "minilm": fb.VARIANTS["minilm"],
    "minilm_more": fb.VARIANTS["minilm_more"],
    "minilm_adv": fb.VARIANTS["minilm_adv"],
    "miie": ("miie", MINILM + MIIE_TESTBED, "the one-run miie recipe from scratch (1 + 29 baseline epochs, classifier 2, adversarial 6)"),
}
ADV = "stages.adversarial.adversarial"
# name: (recipe, overrides, what it tests); all start from minilm's best checkpoint of the seed.
VARIANTS.update({
    "inv_linear": ("miie_adv", MINILM + ["model.classifier_hidden=[]"], "miie_adv, linear classifier"),
    "inv_wide3": ("miie_adv", MINILM + ["model.classifier_hidden=[2048,1024,512]"], "miie_adv, 3 hidden layers, wider (2048-1024-512)"),
    "inv_drop_ls": ("miie_adv", MINILM + ["model.classifier_dropout=0.3", f"{ADV}.label_smoothing=0.2"], "miie_adv, classifier dropout 0.3 + label smoothing 0.2"),
    # A classifier step of the default D (1024-512-256) costs about as much as the encoder step on
    # this testbed, so the many-step and many-member variants use a cheaper D (one hidden layer of 256).
    "inv_k3": ("miie_adv", MINILM + ["model.classifier_hidden=[256]", f"{ADV}.d_steps=3"], "miie_adv, D 1024-256, 3 classifier steps per encoder step"),
    "inv_reinit": ("miie_adv", MINILM + [f"{ADV}.reinit_every=100"], "miie_adv, classifier re-initialised every 100 steps (~2 per epoch)"),
    "inv_ens3": ("miie_adv", MINILM + ["model.classifier_hidden=[256]", "model.classifier_members=3"], "miie_adv, ensemble of 3 classifiers (1024-256 each)"),
    "inv_lam1": ("miie_adv", MINILM + [f"{ADV}.lambda=1.0"], "miie_adv, lambda 1 (DANN ramp)"),
    "inv_lam001": ("miie_adv", MINILM + [f"{ADV}.lambda=0.01", f"{ADV}.schedule=constant"], "miie_adv, lambda 0.01 constant"),
    "inv_lam03c": ("miie_adv", MINILM + [f"{ADV}.lambda=0.3", f"{ADV}.schedule=constant"], "miie_adv, lambda 0.3 constant"),
    "inv_alt_uniform": ("miie_adv", MINILM + [f"{ADV}.mode=alternate", f"{ADV}.objective=uniform"], "alternating, uniform confusion target, lambda 0.1 DANN"),
    "inv_alt_flip": ("miie_adv", MINILM + [f"{ADV}.mode=alternate", f"{ADV}.objective=flip"], "alternating, flipped labels (GAN), lambda 0.1 DANN"),
    "inv_wgan": ("miie_adv_wgan", MINILM + ["model.classifier_hidden=[256]", "stages.*.adversarial.d_steps=2"], "Wasserstein critic 1024-256 + gradient penalty 10, 2 critic steps, lambda 0.1 DANN"),
    "inv_mmd": ("vsepp_more_align", MINILM, "control + MMD penalty (sigma 1, weight 10 per pair)"),
    "inv_coral": ("vsepp_more_align", MINILM + ["stages.more.align.kind=coral", "stages.more.align.weight=1.0e7"], "control + CORAL penalty (weight 1e7 per pair)"),
    "inv_centroid": ("vsepp_more_align", MINILM + ["stages.more.align.kind=centroid", "stages.more.align.weight=3.0"], "control + centroid penalty (weight 3 per pair)"),
    "inv_align_unif": ("vsepp_more_align", MINILM + ["stages.more.align.kind=align_uniform", "stages.more.align.weight=0.1"], "control + Wang & Isola alignment + uniformity (weight 0.1 per pair)"),
})  # fmt: skip
# The same question on the stronger frozen model (Lite2 features at 260 px, 1 + 9 epochs:
# benchmarks/flickr8k_backbones.py, whose runs these start from): the baseline, the control,
# the shipped adversary and the MMD penalty (the strongest invariance of the Lite0 screen).
LITE2 = MINILM + ["data.feature_backbone=efficientnet_lite2", "data.image_size=260"]
VARIANTS.update({
    "minilm_lite2": fb_backbones.VARIANTS["minilm_lite2"],
    "lite2_more": ("vsepp_more", LITE2, "Lite2 testbed: the control (6 more epochs at lr 2e-5, ranking only)"),
    "lite2_adv": ("miie_adv", LITE2, "Lite2 testbed: miie_adv (classifier 2, adversarial 6 epochs)"),
    "lite2_mmd": ("vsepp_more_align", LITE2, "Lite2 testbed: control + MMD penalty (sigma 1, weight 10 per pair)"),
})  # fmt: skip
# The same question on the best model (configs/vse_minilm_ft.yaml: Lite2 features, MiniLM
# fine-tuned 4 epochs): the adversary or the MMD penalty switched on in its fine-tuning stage, so
# the control is the recipe itself (variants ``best`` and, in float32 as these runs on a CPU
# without fast bf16, ``best_fp32`` of benchmarks/flickr8k_best.py: same epochs, same schedule,
# rows copied by ``import-baseline``). D trains from scratch in that stage at
# 1e-3 (10x the stage's rate, as miie_adv's 50x), while the DANN ramp holds lambda near 0.
FT = "stages.text_finetune"
PX260, PX300 = ["data.image_size=260"], ["data.image_size=300"]
FT_BEST = fb.HOLDOUT + fb.BF16 + PX260
VARIANTS.update({
    "ft_adv": ("vse_minilm_ft", FT_BEST + [f"{FT}.train=[image,text,text_backbone,classifier]", f"{FT}.lr_parts={{classifier: 1.0e-3}}",
                                           f"{FT}.adversarial={{mode: grl, lambda: 0.1, schedule: dann}}"],
               "best recipe, adversary (GRL, lambda 0.1 DANN, D 1024-512-256 at lr 1e-3) in its fine-tuning stage"),
    "ft_adv_lam001": ("vse_minilm_ft", FT_BEST + [f"{FT}.train=[image,text,text_backbone,classifier]", f"{FT}.lr_parts={{classifier: 1.0e-3}}",
                                                  f"{FT}.adversarial={{mode: grl, lambda: 0.01, schedule: dann}}"],
                      "ft_adv at lambda 0.01 (DANN ramp)"),
    "ft_mmd": ("vse_minilm_ft", FT_BEST + [f"{FT}.align={{kind: mmd, weight: 10.0}}"],
               "best recipe, MMD penalty (sigma 1, weight 10 per pair) in its fine-tuning stage"),
})  # fmt: skip
# The same on Lite2 features of 300 px photos (the recipe's control there: best_300) and of 380 px
# photos (the recipe as shipped: best_380).
VARIANTS.update({
    f"{name}_{px}": (recipe, [f"data.image_size={px}" if o == PX260[0] else o for o in overrides], f"{about}, {px} px photos")
    for name, (recipe, overrides, about) in list(VARIANTS.items()) if name in ("ft_adv", "ft_adv_lam001", "ft_mmd")
    for px in (300, 380)
})
# The GRU baseline at its own size, trained as the reference VSE++ code trains it (configs/vsepp_ref.yaml:
# hardest negatives from step 1, 20 epochs, lr / 10 after 10; 260.0 +- 3.7 dev rsum when selected on
# dev, flickr8k_baseline.json) but selected on held-out train images like every row here; then the
# control, the shipped adversary and the MMD penalty from its best checkpoint, as on the testbeds.
GRU = fb.HOLDOUT + fb.BF16
VARIANTS.update({
    "gru": ("vsepp_ref", GRU, "GRU baseline: the reference schedule (20 hardest epochs, lr / 10 after 10), held-out selection"),
    "gru_more": ("vsepp_more", GRU, "GRU: the control (6 more epochs at lr 2e-5, ranking only)"),
    "gru_adv": ("miie_adv", GRU, "GRU: miie_adv (classifier 2, adversarial 6 epochs)"),
    "gru_mmd": ("vsepp_more_align", GRU, "GRU: control + MMD penalty (sigma 1, weight 10 per pair)"),
    # The one-run recipe from scratch on the same schedule as `gru` (no warm-up, 20 hardest epochs,
    # lr / 10 after 10), then its classifier 2 + adversarial 6 epochs; only those compete for best.pt.
    "gru_miie": ("miie", GRU + ["stages.warmup.epochs=0", "stages.hardest.epochs=20", "stages.hardest.lr_decay_epochs=10"],
                 "GRU: the one-run miie recipe from scratch (20 hardest epochs as `gru`, classifier 2, adversarial 6)"),
})  # fmt: skip
# The same in float32 (for a CPU without fast bf16, where `gru_miie` runs in float32): the
# baseline and the control again, so that the one-run recipe has a control of its own precision
# and the pair says whether bf16 costs the GRU anything.
FP32 = ["training.precision=fp32"]
VARIANTS.update({
    f"{name}_fp32": (recipe, [o for o in overrides if o not in fb.BF16] + FP32, f"{about}; float32")
    for name, (recipe, overrides, about) in list(VARIANTS.items()) if name in ("gru", "gru_more", "gru_miie")
})  # fmt: skip
GRU_ROWS = tuple(name for name in VARIANTS if name.startswith("gru"))
# these start from the same seed's baseline run (of their precision)
GRU_FROM_BASELINE = {"gru_more": "gru", "gru_adv": "gru", "gru_mmd": "gru", "gru_more_fp32": "gru_fp32"}
BASE = {name: "minilm" for name in VARIANTS if name not in ("minilm", "miie", "minilm_lite2", *GRU_ROWS) and not name.startswith("ft_")}
BASE.update({name: "minilm_lite2" for name in ("lite2_more", "lite2_adv", "lite2_mmd")})
BASE.update(GRU_FROM_BASELINE)
LITE2_ROWS = ("minilm_lite2", "lite2_more", "lite2_adv", "lite2_mmd")  # a second testbed: not in the Lite0 plot
FT_ROWS = ("best", "best_fp32", "ft_adv", "ft_adv_lam001", "ft_mmd")  # a third: the fine-tuned best model at 260 px
FT300_ROWS = ("best_300", "ft_adv_300", "ft_adv_lam001_300", "ft_mmd_300")  # a fourth: the same at 300 px
FT380_ROWS = ("best_380", "ft_adv_380", "ft_adv_lam001_380", "ft_mmd_380")  # a fifth: the recipe as shipped (380 px)


def testbed(variant: str) -> int:
    """0: the frozen Lite0 testbed (the plot's), 1: frozen Lite2, 2 / 3 / 4: the fine-tuned best
    model at 260 / 300 / 380 px, 5: the GRU baseline."""
    if variant in GRU_ROWS:
        return 5
    return 4 if variant in FT380_ROWS else 3 if variant in FT300_ROWS else 2 if variant in FT_ROWS else 1 if variant in LITE2_ROWS else 0


def classifier_dev_accuracy(run_dir: Path, data: Path, checkpoint: str = "best") -> float:
    """The trained modality classifier's own balanced accuracy (%) on the dev embeddings (for
    the wgan critic: the share on the right side of 0, which its arbitrary offset makes meaningless)."""
    import torch

    from itmatch.data import load_corpus
    from itmatch.inference import Matcher
    from itmatch.losses import classifier_accuracy
    from itmatch.models.classifier import ModalityClassifier

    matcher = Matcher.from_run(run_dir, checkpoint)
    im, tx = matcher.embed_corpus(load_corpus("flickr8k", str(data), "dev"))
    clf, dev = matcher.model.classifier, matcher.device
    with torch.no_grad():
        return 0.5 * (
            classifier_accuracy(clf(im.to(dev)), torch.full((len(im),), ModalityClassifier.IMAGE, device=dev))
            + classifier_accuracy(clf(tx.to(dev)), torch.full((len(tx),), ModalityClassifier.TEXT, device=dev))
        )


def _save(key: str, entry: dict[str, Any]) -> None:
    fb.record_run(RESULT, key, entry, mmd_bandwidth=MMD_BANDWIDTH, split="dev, all 1,000 images")


def run(variant: str, seed: int, data: Path) -> dict[str, Any]:
    entry = fb.run(variant, seed, data, VARIANTS, BASE, RESULT)
    entry["dev_metrics"]["classifier_acc"] = classifier_dev_accuracy(Path(entry["run_dir"]), data)
    _save(f"{variant}-seed{seed}", entry)
    return entry


def score_last(seed: int, data: Path) -> dict[str, Any]:
    """Row ``minilm_last``: the baseline run's *last* epoch (30 of 30) on dev, the one-run control
    of ``miie``, whose adversarial stages start from that epoch (not from the selected best)."""
    from itmatch.data import load_corpus
    from itmatch.inference import Matcher

    run_dir = fb.RUNS / f"minilm-seed{seed}"
    im, tx = Matcher.from_run(run_dir, "last").embed_corpus(load_corpus("flickr8k", str(data), "dev"))
    metrics = fb.dev_scores(im, tx)
    metrics["classifier_acc"] = classifier_dev_accuracy(run_dir, data, "last")
    curve = fb.curve_of(run_dir)
    entry = {"variant": "minilm_last", "about": "minilm's last epoch (30), no selection: what miie's adversarial stages start from",
             "seed": seed, "dev_metrics": metrics, "selected": {"stage": curve[-1]["stage"], "val_rsum": curve[-1]["val_rsum"]},
             "epochs": len(curve), "curve": curve, "run_dir": str(run_dir), "checkpoint": "last"}  # fmt: skip
    _save(f"minilm_last-seed{seed}", entry)
    return entry


def import_baseline_rows() -> list[str]:
    """Copy the ``minilm``, ``minilm_more`` and ``minilm_adv`` runs from results/flickr8k_baseline.json
    and the ``best`` runs (the fine-tuned testbed's control) from results/flickr8k_best.json (same
    runs, same dev scoring: flickr8k_baseline.dev_scores) instead of scoring them again. Their
    ``classifier_acc`` stays absent: minilm, minilm_more and best never train the classifier, and
    minilm_adv's is only in its validation curve. ``run`` re-scores a row with it when wanted."""
    copied = []
    present = set(fb.load_results(RESULT).get("runs", {}))
    for source, variants in ((fb.RESULT, ("minilm", "minilm_more", "minilm_adv")), ("flickr8k_best", ("best", "best_fp32", "best_300", "best_380"))):
        for key, entry in fb.load_results(source).get("runs", {}).items():
            if entry["variant"] in variants and key not in present:
                _save(key, {**entry, "scored_by": f"{source}.py (copied)"})
                copied.append(key)
    return copied


COLUMNS = ("i2t_r1", "i2t_r5", "i2t_r10", "t2i_r1", "t2i_r5", "t2i_r10", "rsum", "probe_acc", "centroid_dist", "mmd", "classifier_acc")
MARKED = {"minilm": "baseline", "minilm_more": "control (+6 epochs, ranking only)"}


def by_variant() -> dict[str, list[dict[str, Any]]]:
    out: dict[str, list[dict[str, Any]]] = {}
    for entry in fb.load_results(RESULT).get("runs", {}).values():
        out.setdefault(entry["variant"], []).append(entry)
    return out


def summary() -> dict[str, dict[str, Any]]:
    """Per variant: seeds, and mean / sample standard deviation over seeds of every column and of
    the selection score (held-out-train validation rsum)."""
    out = {}
    for name, entries in by_variant().items():
        row: dict[str, Any] = {"seeds": sorted(e["seed"] for e in entries), "about": entries[0]["about"]}
        for col in (*COLUMNS, "val_rsum"):
            values = [e["selected"]["val_rsum"] if col == "val_rsum" else e["dev_metrics"].get(col) for e in entries]
            values = [v for v in values if v is not None]
            if values:
                row[col] = {"mean": statistics.mean(values), "sd": statistics.stdev(values) if len(values) > 1 else None}
        out[name] = row
    return out


def table() -> str:
    rows = summary()
    digits = {"centroid_dist": 3, "mmd": 4}
    head = "| variant | seeds | val rsum | " + " | ".join(COLUMNS) + " |"
    lines = [head, "|" + "---|" * (len(COLUMNS) + 3)]
    # The Lite0 testbed's rows first, then the Lite2 testbed's, then the fine-tuned model's, each by dev rsum.
    for name, row in sorted(rows.items(), key=lambda kv: (testbed(kv[0]), -kv[1]["rsum"]["mean"])):
        cells = []
        for col in ("val_rsum", *COLUMNS):
            if col not in row:
                cells.append("-")
                continue
            d = digits.get(col, 1)
            m, sd = row[col]["mean"], row[col]["sd"]
            cells.append(f"{m:.{d}f}" + (f" ± {sd:.{d}f}" if sd is not None else ""))
        lines.append(f"| {name} | {len(row['seeds'])} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def plot() -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    groups = {name: entries for name, entries in by_variant().items() if testbed(name) == 0}
    fig, axes = plt.subplots(1, 2, figsize=(13, 5.5), sharey=True)
    others = sorted(name for name in groups if name not in MARKED)
    colours = plt.get_cmap("tab20")  # one colour per variant: the default cycle repeats after 10
    for ax, col, label in ((axes[0], "probe_acc", "fresh linear probe accuracy (%)"), (axes[1], "centroid_dist", "centroid distance")):
        for name, entries in sorted(groups.items()):
            xs = [e["dev_metrics"][col] for e in entries]
            ys = [e["dev_metrics"]["rsum"] for e in entries]
            if name in MARKED:
                ax.scatter(xs, ys, s=120, marker="*" if name == "minilm" else "D", zorder=3, label=MARKED[name], edgecolor="k")
            else:
                penalty = VARIANTS.get(name, ("",))[0] == "vsepp_more_align"  # triangles: no adversary
                ax.scatter(xs, ys, s=36, alpha=0.85, label=name, marker="^" if penalty else "o",
                           color=colours(others.index(name) % 20))  # fmt: skip
        ax.set_xlabel(label)
        ax.grid(alpha=0.3)
        if col == "probe_acc":
            ax.axvline(60, color="grey", ls="--", lw=1)
            ax.text(60.5, ax.get_ylim()[0] + 2, "probe 60%", color="grey", fontsize=8)
    axes[0].set_ylabel("dev rsum (1K images)")
    axes[1].legend(fontsize=7, loc="center left", bbox_to_anchor=(1.01, 0.5))
    fig.suptitle("Flickr8k, frozen-MiniLM testbed: matching quality against modality invariance (one point per variant and seed)")
    fig.tight_layout()
    PLOT.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(PLOT, dpi=110, bbox_inches="tight")
    return PLOT


PLOT_BEST = REPO_ROOT / "docs" / "invariance_best_model.png"
# The fine-tuned testbeds: photo size, and the control each variant is paired with (same seed,
# stages and precision: ft_adv at 260 px ran in float32, so its control is best_fp32).
BEST_TESTBEDS = {2: ("260 px", "best_fp32"), 3: ("300 px", "best_300"), 4: ("380 px", "best_380")}
BEST_MARKERS = {"control": ("D", "the recipe (control)"), "ft_mmd": ("^", "+ MMD penalty"),
                "ft_adv": ("o", "+ adversary, lambda 0.1"), "ft_adv_lam001": ("s", "+ adversary, lambda 0.01")}  # fmt: skip


def _objective(variant: str) -> str:
    """``ft_mmd_380`` -> ``ft_mmd``; a control row -> ``control``."""
    if not variant.startswith("ft_"):
        return "control"
    return variant.removesuffix("_300").removesuffix("_380")


def _fine_tuned_variants(groups: dict[str, list[dict[str, Any]]], bed: int) -> list[str]:
    """The invariance variants (``ft_*``) run on fine-tuned testbed ``bed``, by name."""
    return sorted(n for n in groups if testbed(n) == bed and n.startswith("ft_"))


def plot_best() -> Path:
    """The best model's trade-off: dev rsum against probe accuracy and centroid distance, one point
    per variant and seed, a colour per photo size, a thin line from each seed's control to the same
    seed's variant (the comparison is paired)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    groups = by_variant()
    colours = dict(zip(BEST_TESTBEDS, ("tab:blue", "tab:orange", "tab:green"), strict=True))
    fig, axes = plt.subplots(1, 2, figsize=(13, 5.5), sharey=True)
    for ax, col, label in ((axes[0], "probe_acc", "fresh linear probe accuracy (%)"), (axes[1], "centroid_dist", "centroid distance")):
        for bed, (size, control) in BEST_TESTBEDS.items():
            controls = {e["seed"]: e["dev_metrics"] for e in groups.get(control, [])}
            names = [control] + _fine_tuned_variants(groups, bed)
            for name in names:
                entries = groups.get(name, [])
                if not entries:
                    continue
                marker, what = BEST_MARKERS[_objective(name)]
                xs = [e["dev_metrics"][col] for e in entries]
                ys = [e["dev_metrics"]["rsum"] for e in entries]
                ax.scatter(xs, ys, s=90 if name == control else 50, marker=marker, color=colours[bed], edgecolor="k",
                           zorder=3, label=f"{size}: {what} (n = {len(entries)})")  # fmt: skip
                for e in entries if name != control else []:
                    if e["seed"] in controls:
                        c = controls[e["seed"]]
                        ax.plot([c[col], e["dev_metrics"][col]], [c["rsum"], e["dev_metrics"]["rsum"]],
                                color=colours[bed], lw=0.8, alpha=0.6, zorder=2)  # fmt: skip
        ax.set_xlabel(label)
        ax.grid(alpha=0.3)
        if col == "probe_acc":
            ax.axvline(60, color="grey", ls="--", lw=1)
    axes[0].set_ylabel("dev rsum (1K images)")
    axes[1].legend(fontsize=7, loc="center left", bbox_to_anchor=(1.01, 0.5))
    fig.suptitle("Flickr8k, the best recipe (MiniLM fine-tuned): an invariance objective in its fine-tuning stage, "
                 "against the recipe itself (lines join a seed's control to its variant)", fontsize=10)  # fmt: skip
    fig.tight_layout()
    fig.savefig(PLOT_BEST, dpi=110, bbox_inches="tight")
    return PLOT_BEST


def paired() -> str:
    """The paired comparisons: for every invariance objective in the best model's fine-tuning
    stage, its per-seed difference from the same seed's control (dev rsum, and the held-out-train
    validation rsum the project selects on), per photo size and pooled over sizes, with how many
    seed pairs the variant is ahead on; then the GRU testbed's control against its baseline and
    the adversary and the MMD penalty against the control."""
    groups = by_variant()

    def line(label: str, pairs: list[tuple[float, float]]) -> str:
        dev, val = [p[0] for p in pairs], [p[1] for p in pairs]
        cells = [", ".join(f"{d:+.2f}" for d in dev), f"{statistics.mean(dev):+.2f}", f"{sum(d > 0 for d in dev)} / {len(dev)}",
                 ", ".join(f"{v:+.2f}" for v in val), f"{statistics.mean(val):+.2f}", f"{sum(v > 0 for v in val)} / {len(val)}"]  # fmt: skip
        return f"| {label} | " + " | ".join(cells) + " |"

    def seed_pairs(variant: str, control: str) -> list[tuple[float, float]]:
        controls = {e["seed"]: e for e in groups.get(control, [])}
        return [(e["dev_metrics"]["rsum"] - c["dev_metrics"]["rsum"], e["selected"]["val_rsum"] - c["selected"]["val_rsum"])
                for e in sorted(groups.get(variant, []), key=lambda e: e["seed"]) if (c := controls.get(e["seed"])) is not None]  # fmt: skip

    lines = ["| variant - control | dev rsum, per seed | mean | ahead | val rsum, per seed | mean | ahead |",
             "|---|---|---|---|---|---|---|"]  # fmt: skip
    pooled: dict[str, list[tuple[float, float]]] = {}
    for bed, (size, control) in BEST_TESTBEDS.items():
        for name in _fine_tuned_variants(groups, bed):
            if pairs := seed_pairs(name, control):
                lines.append(line(f"{name} - {control} ({size})", pairs))
                pooled.setdefault(_objective(name), []).extend(pairs)
    lines += [line(f"{objective}, every photo size", pairs) for objective, pairs in pooled.items() if len(pairs) > 3]
    # The GRU testbed: the control against its baseline, the variants that start from the same
    # seed's baseline run against the control; the one-run recipes (GRU, MiniLM testbed) against
    # the same seed's control, which has as many ranking epochs before its extra ones.
    for variant, control in (("gru_more", "gru"), ("gru_adv", "gru_more"), ("gru_mmd", "gru_more"), ("gru_miie", "gru_more"),
                             ("gru_fp32", "gru"), ("gru_more_fp32", "gru_fp32"), ("gru_miie_fp32", "gru_more_fp32"),
                             ("miie", "minilm_more")):  # fmt: skip
        if pairs := seed_pairs(variant, control):
            lines.append(line(f"{variant} - {control} ({'GRU' if variant.startswith('gru') else 'MiniLM testbed'})", pairs))
    return "\n".join(lines)


def _seed_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--seed", type=int, default=0)
    fb.data_argument(p)


def main() -> None:
    fb.main(
        __doc__,
        VARIANTS,
        BASE,
        RESULT,
        extra={
            "run": ("train one variant and score it on dev", fb.run_arguments(VARIANTS),
                    lambda args: run(args.variant, args.seed, args.data)),
            "last": ("score the baseline runs' last epoch (row minilm_last)", _seed_arguments,
                     lambda args: score_last(args.seed, args.data)),
            "import-baseline": ("copy the minilm / minilm_more / minilm_adv rows from flickr8k_baseline.json",
                                lambda p: None, lambda args: print(import_baseline_rows())),
            "table": ("markdown table of every run so far", lambda p: None, lambda args: print(table())),
            "paired": ("the best model's and the GRU testbed's variants against the same seed's control (dev and validation rsum)",
                       lambda p: None, lambda args: print(paired())),
            "plot": ("rsum against probe accuracy and centroid distance -> docs/invariance_tradeoff.png "
                     "(the Lite0 testbed) and docs/invariance_best_model.png (the best recipe)",
                     lambda p: None, lambda args: print(plot(), plot_best())),
        },
    )  # fmt: skip


if __name__ == "__main__":
    main()
