"""The trainer: stage transitions, checkpoints, exact resume, and a tiny end-to-end run."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import yaml

from itmatch.cli import main
from itmatch.errors import ConfigError, ItmatchError
from itmatch.training.config import load_config
from itmatch.training.trainer import train

from conftest import tiny_overrides

THREE_STAGES = {
    "name": "three",
    "stages": [
        {"name": "rank", "epochs": 2, "lr": 1e-3, "train": ["image", "text"], "rank": "sum"},
        {"name": "clf", "epochs": 1, "lr": 5e-3, "train": ["classifier"], "classifier": True, "select": "none"},
        {"name": "adv", "epochs": 1, "lr": 1e-4, "lr_parts": {"classifier": 2e-3}, "train": ["image", "text", "classifier"],
         "rank": "max_violation", "adversarial": {"mode": "grl", "lambda": 0.5, "schedule": "dann"}},
    ],
}  # fmt: skip


def write_recipe(tmp_path: Path, recipe: dict) -> Path:
    path = tmp_path / "recipe.yaml"
    path.write_text(yaml.safe_dump(recipe))
    return path


def records(run: Path) -> list[dict]:
    return [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]


def part_snapshot(run: Path, name: str) -> dict[str, torch.Tensor]:
    return torch.load(run / "checkpoints" / name, weights_only=True)["model"]


def test_stage_transitions_switch_losses_learning_rates_and_frozen_parts(tmp_path, precomp_data, monkeypatch):
    cfg = load_config(write_recipe(tmp_path, THREE_STAGES), tiny_overrides(precomp_data))
    snapshots: dict[str, dict[str, torch.Tensor]] = {}
    import itmatch.training.trainer as trainer_module

    real_step = trainer_module.train_step
    seen_stage = {"name": None}

    def spy(model, batch, stage, optimizers, *args):
        if stage.name != seen_stage["name"]:  # snapshot at each stage's first step
            snapshots[stage.name] = {k: v.clone() for k, v in model.state_dict().items()}
            seen_stage["name"] = stage.name
        return real_step(model, batch, stage, optimizers, *args)

    monkeypatch.setattr(trainer_module, "train_step", spy)
    run = tmp_path / "run"
    train(cfg, run)
    final = part_snapshot(run, "last.pt")

    def changed(before, after, prefix):
        return any(not torch.equal(before[k], after[k]) for k in before if k.startswith(prefix))

    # rank stage: encoders move, classifier does not
    assert changed(snapshots["rank"], snapshots["clf"], "image_encoder.")
    assert changed(snapshots["rank"], snapshots["clf"], "text_encoder.")
    assert not changed(snapshots["rank"], snapshots["clf"], "classifier.")
    # classifier stage: only the classifier moves
    assert not changed(snapshots["clf"], snapshots["adv"], "image_encoder.")
    assert not changed(snapshots["clf"], snapshots["adv"], "text_encoder.")
    assert changed(snapshots["clf"], snapshots["adv"], "classifier.")
    # adversarial stage: everything moves
    for prefix in ("image_encoder.", "text_encoder.", "classifier."):
        assert changed(snapshots["adv"], final, prefix)

    recs = [r for r in records(run) if "train/loss" in r]
    by_stage = {s: [r for r in recs if r["stage"] == s] for s in ("rank", "clf", "adv")}
    assert all("train/rank_loss" in r and "train/d_loss" not in r for r in by_stage["rank"])
    assert all("train/d_loss" in r and "train/rank_loss" not in r for r in by_stage["clf"])
    assert all({"train/d_loss", "train/rank_loss", "train/lambda"} <= set(r) for r in by_stage["adv"])
    assert by_stage["rank"][0]["lr/image"] == pytest.approx(1e-3)
    assert "lr/classifier" not in by_stage["rank"][0]
    assert by_stage["clf"][0]["lr/classifier"] == pytest.approx(5e-3) and "lr/text" not in by_stage["clf"][0]
    adv = by_stage["adv"]
    assert adv[0]["lr/text"] == pytest.approx(1e-4) and adv[0]["lr/classifier"] == pytest.approx(2e-3)
    lambdas = [r["train/lambda"] for r in adv]
    assert lambdas == sorted(lambdas) and 0 <= lambdas[0] < lambdas[-1] <= 0.5  # DANN ramp


def test_resume_after_a_crash_continues_exactly(tmp_path, precomp_data):
    cfg = load_config(write_recipe(tmp_path, THREE_STAGES), tiny_overrides(precomp_data, "training.checkpoint_every=4"))
    clean = tmp_path / "clean"
    train(cfg, clean)

    crashed = tmp_path / "crashed"

    class Crash(Exception):
        pass

    def crash_at_step_11(record):
        if record.get("global_step") == 11 and "train/loss" in record:
            raise Crash

    with pytest.raises(Crash):
        train(cfg, crashed, log=crash_at_step_11)
    # The run folder is never left without a loadable checkpoint.
    mid = torch.load(crashed / "checkpoints" / "last.pt", weights_only=True)
    assert mid["progress"]["global_step"] == 8  # the last checkpoint before step 11
    assert mid["progress"]["stage"] == 0 and mid["progress"]["step"] == 8  # mid-epoch (32 steps per epoch)
    with pytest.raises(ItmatchError, match="already holds a run"):
        train(cfg, crashed)
    train(None, crashed, resume=True)

    a, b = part_snapshot(clean, "last.pt"), part_snapshot(crashed, "last.pt")
    assert a.keys() == b.keys()
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=0, atol=0, msg=k)
    steps = [r["global_step"] for r in records(crashed) if "train/loss" in r]
    assert steps == sorted(set(steps))  # the resumed log has no duplicated steps

    def timeless(recs):
        return [{k: v for k, v in r.items() if k != "epoch_time_s"} for r in recs]

    assert timeless(records(clean)) == timeless(records(crashed))


def test_checkpoints_are_plain_and_atomic(tmp_path, precomp_data):
    cfg = load_config("vsepp", tiny_overrides(precomp_data, "stages.0.epochs=1", "stages.1.epochs=1"))
    run = tmp_path / "run"
    train(cfg, run)
    for name in ("best.pt", "last.pt"):
        state = torch.load(run / "checkpoints" / name, weights_only=True)
        assert state["format"] == "itmatch-checkpoint-1"
        assert state["config"]["name"] == "vsepp"
    assert not list((run / "checkpoints").glob("*.tmp"))
    assert json.loads((run / "vocab.json").read_text())["words"]


def test_tiny_end_to_end_recall_rises_well_above_chance(tmp_path, precomp_data, capsys):
    run = tmp_path / "run"
    rc = main(["train", "--config", "vsepp", "--out", str(run), "--format", "precomp", "--data", str(precomp_data),
               "--val-split", "dev", "--quiet", *sum((["--set", o] for o in tiny_overrides(precomp_data)[3:]), []),
               "--set", "stages.1.epochs=8", "--set", "stages.0.lr=1e-3", "--set", "stages.1.lr=1e-3",
               "--set", "training.log_every=50"])  # fmt: skip
    assert rc == 0
    capsys.readouterr()
    assert main(["evaluate", str(run), "--split", "test", "--json"]) == 0
    metrics = json.loads(capsys.readouterr().out)
    # 60 test images: chance R@1 is 1.7% (i2t picks 1 of 300 captions, 5 of which are right).
    assert metrics["i2t_r1"] > 30 and metrics["t2i_r1"] > 30
    assert metrics["rsum"] > 350
    val = [r for r in records(run) if "val/rsum" in r]
    assert val[-1]["val/rsum"] > val[0]["val/rsum"]


def test_config_errors_are_clear(tmp_path):
    with pytest.raises(ConfigError, match=r"no key 'training.batchsize'"):
        load_config("vsepp", ["training.batchsize=3"])
    with pytest.raises(ConfigError, match=r"'stages.nope' is neither a valid index nor a stage name"):
        load_config("vsepp", ["stages.nope.epochs=3"])
    cfg = load_config("vsepp", ["stages.*.lr=0.5", "stages.hardest.epochs=3", "stages.0.epochs=2"])
    assert [s["lr"] for s in cfg["stages"]] == [0.5, 0.5]
    assert [s["epochs"] for s in cfg["stages"]] == [2, 3]
    with pytest.raises(ConfigError, match=r"unknown recipe 'nope'"):
        load_config("nope")
    bad = dict(THREE_STAGES, stages=[{"name": "x", "epochs": 1, "lr": 1e-3, "train": ["image", "brain"], "rank": "sum"}])
    with pytest.raises(ConfigError, match=r"stages\[0\]\.train: unknown part\(s\) \['brain'\]"):
        load_config(write_recipe(tmp_path, bad))
    bad = dict(THREE_STAGES, stages=[{"name": "x", "epochs": 1, "lr": 1e-3, "train": ["image"]}])
    with pytest.raises(ConfigError, match="no loss is on"):
        load_config(write_recipe(tmp_path, bad))


def test_named_recipes_ship_inside_the_wheel(built_wheel):
    """An installed itmatch (not a source checkout) must find ``--config vsepp``: the recipes are
    package data, and the repository's ``configs/`` is the same folder."""
    import zipfile

    from itmatch.training.config import CONFIG_DIR

    root = Path(__file__).resolve().parents[1]
    assert (root / "configs").resolve() == CONFIG_DIR
    wheel = built_wheel
    shipped = {Path(n).name for n in zipfile.ZipFile(wheel).namelist() if n.startswith("itmatch/configs/")}
    assert shipped == {p.name for p in CONFIG_DIR.glob("*.yaml")}
    assert {"vsepp.yaml", "miie.yaml", "finetune.yaml", "vsepp_minilm.yaml"} <= shipped


def test_init_from_loads_the_base_weights_and_refuses_another_model(tmp_path, precomp_data):
    one_stage = {"name": "one", "stages": [THREE_STAGES["stages"][0] | {"epochs": 1}]}
    base = tmp_path / "base"
    train(load_config(write_recipe(tmp_path, one_stage), tiny_overrides(precomp_data)), base)
    # A checkpoint saved before a model key existed (here: backbone_weights) still fits.
    ckpt = base / "checkpoints" / "best.pt"
    state = torch.load(ckpt, weights_only=True)
    del state["config"]["model"]["backbone_weights"]
    torch.save(state, ckpt)

    clf_only = {"name": "clf", "stages": [THREE_STAGES["stages"][1]]}
    run = tmp_path / "clf"
    train(load_config(write_recipe(tmp_path, clf_only), tiny_overrides(precomp_data)), run, init_from=base)
    after = part_snapshot(run, "last.pt")
    # The classifier stage trains nothing else: the encoders are the base run's, unchanged.
    encoders = [k for k in state["model"] if k.startswith(("image_encoder.", "text_encoder."))]
    assert encoders and all(torch.equal(after[k], state["model"][k]) for k in encoders)

    wider = load_config(write_recipe(tmp_path, clf_only), tiny_overrides(precomp_data, "model.embed_dim=24"))
    with pytest.raises(ItmatchError, match=r"its model config differs from this recipe's \(embed_dim: \d+ there, 24 here\)"):
        train(wider, tmp_path / "wider", init_from=base)


def test_the_trainers_fused_adam_steps_like_the_per_tensor_loop_and_bumps_versions():
    """Reference: torch's default (per-tensor) Adam with the same groups, stepped on the same gradients."""
    from itmatch.models import build_model
    from itmatch.training.schedule import parse_stage
    from itmatch.training.step import StepContext, _clip_and_step
    from itmatch.training.trainer import make_optimizers, set_trainable

    torch.manual_seed(0)
    model = build_model({"embed_dim": 8, "word_dim": 4}, vocab_size=20, feature_dim=6)
    stage = parse_stage({"name": "s", "epochs": 1, "lr": 1e-2, "train": ["image", "text"], "rank": "sum"}, "t")
    set_trainable(model, stage)
    (opt,) = make_optimizers(model, stage, 0).values()
    assert all(g["fused"] for g in opt.param_groups)
    params = [p for g in opt.param_groups for p in g["params"]]
    reference = [p.detach().clone().requires_grad_(True) for p in params]
    ref_opt = torch.optim.Adam([{"params": reference, "lr": 1e-2}])
    for _ in range(3):
        grads = [torch.randn_like(p) for p in params]
        for p, r, g in zip(params, reference, grads):
            p.grad, r.grad = g.clone(), g.clone()
        versions = [p._version for p in params]
        _clip_and_step(opt, StepContext(grad_clip=0.0))
        ref_opt.step()
        assert all(p._version > v for p, v in zip(params, versions))  # the caches see the change
        for p, r in zip(params, reference):
            torch.testing.assert_close(p.detach(), r.detach(), rtol=1e-6, atol=1e-7)
