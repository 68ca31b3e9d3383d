"""The adversary's options and the alignment penalties of issue 11, against slow references
written here (loops over rows, float64), and the step's behaviour: k classifier steps, the
classifier's re-initialisation, the ensemble, the Wasserstein critic, the DANN ramp as trained."""

from __future__ import annotations

import itertools
import math

import pytest
import torch

from itmatch.errors import ConfigError
from itmatch.losses import dann_lambda
from itmatch.losses_alignment import (
    alignment_loss,
    alignment_penalty,
    centroid_penalty,
    coral_penalty,
    gradient_penalty,
    member_classifier_loss,
    mmd_penalty,
    uniformity_loss,
)
from itmatch.models import build_model
from itmatch.models.classifier import ModalityClassifier
from itmatch.training.config import load_config
from itmatch.training.schedule import parse_stage
from itmatch.training.step import StepContext, train_step
from itmatch.training.trainer import make_optimizers, set_trainable, train

from conftest import tiny_overrides

MODEL = {"embed_dim": 16, "word_dim": 8, "text_encoder": "gru"}


def rows(n: int, d: int, seed: int, shift: float = 0.0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, d, generator=g, dtype=torch.float64) + shift


def sqdist(a: torch.Tensor, b: torch.Tensor) -> float:
    return sum((float(a[k]) - float(b[k])) ** 2 for k in range(len(a)))


# ---------------------------------------------------------------------------------------------
# alignment penalties against loops


def slow_mmd(x, y, sigma):
    def k(a, b):
        return math.exp(-sqdist(a, b) / (2 * sigma**2))

    n, m = len(x), len(y)
    xx = sum(k(x[i], x[j]) for i in range(n) for j in range(n) if i != j) / (n * (n - 1))
    yy = sum(k(y[i], y[j]) for i in range(m) for j in range(m) if i != j) / (m * (m - 1))
    xy = sum(k(x[i], y[j]) for i in range(n) for j in range(m)) / (n * m)
    return xx + yy - 2 * xy


def slow_cov(x):
    n, d = x.shape
    mean = [sum(float(x[i, a]) for i in range(n)) / n for a in range(d)]
    return [[sum((float(x[i, a]) - mean[a]) * (float(x[i, b]) - mean[b]) for i in range(n)) / (n - 1)
             for b in range(d)] for a in range(d)]  # fmt: skip


def test_mmd_penalty_matches_the_double_loop_and_grows_with_the_shift():
    x, y = rows(7, 3, 0), rows(5, 3, 1, shift=0.5)
    for sigma in (0.5, 1.0, 2.0):
        assert float(mmd_penalty(x, y, sigma)) == pytest.approx(slow_mmd(x, y, sigma), rel=1e-10, abs=1e-12)
    near, far = mmd_penalty(x, rows(5, 3, 1, shift=0.1)), mmd_penalty(x, rows(5, 3, 1, shift=2.0))
    assert far > near
    # differentiable, also where two points coincide (a sqrt-based distance would give NaN there)
    z = x.clone().requires_grad_(True)
    mmd_penalty(z, torch.cat([x[:2], y])).backward()
    assert torch.isfinite(z.grad).all() and z.grad.abs().sum() > 0


def test_coral_penalty_matches_the_loop_covariances():
    x, y = rows(9, 4, 2), rows(6, 4, 3) * 1.7
    cx, cy = slow_cov(x), slow_cov(y)
    want = sum((cx[a][b] - cy[a][b]) ** 2 for a in range(4) for b in range(4)) / (4 * 4 * 4)
    assert float(coral_penalty(x, y)) == pytest.approx(want, rel=1e-10)
    assert float(coral_penalty(x, x + 3.0)) == pytest.approx(0.0, abs=1e-12)  # a shift is not a covariance change


def test_centroid_penalty_is_the_squared_distance_of_the_means():
    x, y = rows(5, 3, 4), rows(8, 3, 5, shift=1.0)
    mx = [sum(float(x[i, a]) for i in range(5)) / 5 for a in range(3)]
    my = [sum(float(y[i, a]) for i in range(8)) / 8 for a in range(3)]
    assert float(centroid_penalty(x, y)) == pytest.approx(sum((p - q) ** 2 for p, q in zip(mx, my)), rel=1e-10)


def test_alignment_and_uniformity_match_wang_and_isola_written_as_loops():
    x, y = rows(6, 3, 6), rows(6, 3, 7)
    x, y = x / x.norm(dim=1, keepdim=True), y / y.norm(dim=1, keepdim=True)
    for alpha in (1.0, 2.0):
        want = sum(math.sqrt(sqdist(x[i], y[i])) ** alpha for i in range(6)) / 6
        assert float(alignment_loss(x, y, alpha)) == pytest.approx(want, rel=1e-10)
    for t in (1.0, 2.0):
        pairs = [(i, j) for i, j in itertools.product(range(6), repeat=2) if i != j]
        want = math.log(sum(math.exp(-t * sqdist(x[i], x[j])) for i, j in pairs) / len(pairs))
        assert float(uniformity_loss(x, t)) == pytest.approx(want, rel=1e-10)
    combined = alignment_penalty("align_uniform", x, y)
    assert float(combined) == pytest.approx(float(alignment_loss(x, y) + 0.5 * (uniformity_loss(x) + uniformity_loss(y))))
    with pytest.raises(ValueError, match="pairs row i"):
        alignment_loss(x, y[:4])
    with pytest.raises(ValueError, match="unknown alignment penalty 'nope'"):
        alignment_penalty("nope", x, y)


def test_member_classifier_loss_with_smoothing_and_members_matches_the_loop():
    g = torch.Generator().manual_seed(8)
    logits, labels = torch.randn(6, 3, generator=g, dtype=torch.float64), torch.tensor([1.0, 1, 1, 0, 0, 0], dtype=torch.float64)
    s = 0.2

    def bce(z, t):
        p = 1 / (1 + math.exp(-z))
        return -(t * math.log(p) + (1 - t) * math.log(1 - p))

    target = [float(v) * (1 - s) + s / 2 for v in labels]
    want = sum(bce(float(logits[i, j]), target[i]) for i in range(6) for j in range(3)) / 3
    assert float(member_classifier_loss(logits, labels, s)) == pytest.approx(want, rel=1e-10)
    one = sum(bce(float(logits[i, 0]), float(labels[i])) for i in range(6))
    assert float(member_classifier_loss(logits[:, 0], labels)) == pytest.approx(one, rel=1e-10)


# ---------------------------------------------------------------------------------------------
# the Wasserstein critic's gradient penalty


def test_gradient_penalty_of_a_linear_critic_is_exact_and_trains_its_weights():
    critic = torch.nn.Linear(4, 1).double()
    x, y = rows(5, 4, 9), rows(5, 4, 10)
    gp = gradient_penalty(lambda v: critic(v).squeeze(-1), x, y)
    w = critic.weight.detach().view(-1)
    assert float(gp.detach()) == pytest.approx((float(w.norm()) - 1) ** 2, rel=1e-10)  # grad f = w everywhere
    gp.backward()  # d/dw (|w| - 1)^2 = 2 (|w| - 1) w / |w|: the penalty's graph reaches the weights
    torch.testing.assert_close(critic.weight.grad.view(-1), 2 * (w.norm() - 1) * w / w.norm())


def test_gradient_penalty_of_an_mlp_critic_matches_finite_differences():
    torch.manual_seed(0)
    critic = torch.nn.Sequential(torch.nn.Linear(3, 8), torch.nn.Tanh(), torch.nn.Linear(8, 1)).double()

    def f(v):
        return critic(v).squeeze(-1)

    x, y = rows(4, 3, 11), rows(4, 3, 12)
    alpha = torch.tensor([0.1, 0.5, 0.9, 0.3], dtype=torch.float64)
    eps, total = 1e-6, 0.0
    with torch.no_grad():
        for i in range(4):
            point = alpha[i] * x[i] + (1 - alpha[i]) * y[i]
            grad = []
            for a in range(3):
                step = torch.zeros(3, dtype=torch.float64)
                step[a] = eps
                grad.append((float(f((point + step)[None])) - float(f((point - step)[None]))) / (2 * eps))
            total += (math.sqrt(sum(g * g for g in grad)) - 1) ** 2
    assert float(gradient_penalty(f, x, y, alpha).detach()) == pytest.approx(total / 4, rel=1e-6)


# ---------------------------------------------------------------------------------------------
# the step: k classifier steps, re-initialisation, the ensemble, wgan


def make_batch(n: int = 16, seed: int = 0) -> dict:
    g = torch.Generator().manual_seed(seed)
    return {
        "images": torch.randn(n, 12, generator=g),
        "text": {"tokens": torch.randint(4, 30, (n, 6), generator=g), "lengths": torch.randint(2, 7, (n,), generator=g)},
        "image_ids": torch.arange(n),
    }


ADV_STAGE = {"name": "adv", "epochs": 1, "lr": 1e-3, "train": ["image", "text", "classifier"], "rank": "max_violation"}


def setup(adversarial: dict, **model_cfg):
    torch.manual_seed(0)
    model = build_model({**MODEL, **model_cfg}, vocab_size=30, feature_dim=12)
    stage = parse_stage({**ADV_STAGE, "adversarial": adversarial}, "test")
    set_trainable(model, stage)
    return model, stage, make_optimizers(model, stage, 0)


def count_steps(optimizers) -> dict[str, int]:
    steps = {key: 0 for key in optimizers}
    for key, opt in optimizers.items():
        opt.register_step_post_hook(lambda *_, key=key: steps.__setitem__(key, steps[key] + 1))
    return steps


@pytest.mark.parametrize(("mode", "k", "classifier_steps"), [("alternate", 3, 3), ("grl", 3, 3), ("grl", 1, 1), ("wgan", 4, 4)])
def test_k_classifier_steps_per_encoder_step(mode, k, classifier_steps):
    model, stage, optimizers = setup({"mode": mode, "lambda": 0.5, "d_steps": k})
    steps = count_steps(optimizers)
    for i in range(2):
        train_step(model, make_batch(seed=i), stage, optimizers, StepContext(), 0.5)
    assert steps == {"encoders": 2, "classifier": 2 * classifier_steps}


def test_reinitialisation_resets_the_classifier_weights_and_its_optimizer_state():
    model, stage, optimizers = setup({"mode": "alternate", "lambda": 0.5, "reinit_every": 2})
    ctx = StepContext()
    for i in range(2):
        train_step(model, make_batch(seed=i), stage, optimizers, ctx, 0.5)
    opt_d = optimizers["classifier"]
    assert all(opt_d.state[p]["step"] == 2 for p in model.classifier.parameters())
    # The third step starts with a re-initialisation. With the classifier's learning rate at 0 its
    # weights after the step are exactly the fresh draw, which a twin reproduces from the same RNG state.
    for group in opt_d.param_groups:
        group["lr"] = 0.0
    trained = {k: v.clone() for k, v in model.classifier.state_dict().items()}
    twin = ModalityClassifier(16)  # built first: its construction draws from the RNG too
    rng = torch.get_rng_state()
    train_step(model, make_batch(seed=2), stage, optimizers, ctx, 0.5)
    torch.set_rng_state(rng)
    twin.reset_parameters()
    for key, value in model.classifier.state_dict().items():
        torch.testing.assert_close(value, twin.state_dict()[key], rtol=0, atol=0)
        assert not torch.equal(value, trained[key])
    # Adam's moments were dropped: one step since the reset, not three
    assert all(opt_d.state[p]["step"] == 1 for p in model.classifier.parameters())
    # and without reinit_every the state keeps counting
    model, stage, optimizers = setup({"mode": "alternate", "lambda": 0.5})
    for i in range(3):
        train_step(model, make_batch(seed=i), stage, optimizers, StepContext(), 0.5)
    assert all(optimizers["classifier"].state[p]["step"] == 3 for p in model.classifier.parameters())


def test_an_ensemble_trains_every_member_and_reports_their_mean():
    model, stage, optimizers = setup({"mode": "grl", "lambda": 0.5}, classifier_members=3, classifier_hidden=[8])
    clf = model.classifier
    assert clf.members == 3
    x = torch.randn(5, 16)
    each = clf(x, all_members=True)
    assert each.shape == (5, 3)
    torch.testing.assert_close(clf(x), each.mean(dim=1))
    before = [torch.cat([p.detach().view(-1).clone() for p in m.parameters()]) for m in [clf.net, *clf.others]]
    train_step(model, make_batch(), stage, optimizers, StepContext(), 0.5)
    after = [torch.cat([p.detach().view(-1) for p in m.parameters()]) for m in [clf.net, *clf.others]]
    assert all(not torch.equal(b, a) for b, a in zip(before, after))
    # one member keeps the old parameter names (old checkpoints load)
    assert set(ModalityClassifier(16, [8]).state_dict()) == {"net.0.weight", "net.0.bias", "net.2.weight", "net.2.bias"}


def test_wgan_critic_learns_to_score_images_above_texts_and_the_encoders_get_its_gradient():
    model, stage, optimizers = setup({"mode": "wgan", "lambda": 20.0, "d_steps": 5}, classifier_hidden=[8])
    batch = make_batch(seed=3)

    def w1() -> float:
        with torch.no_grad():
            im, tx = model(batch["images"], batch["text"])
            return float(model.classifier(im).mean() - model.classifier(tx).mean())

    def set_lr(key: str, lr: float) -> None:
        for group in optimizers[key].param_groups:
            group["lr"] = lr

    set_lr("encoders", 0.0)  # the critic alone moves: its W1 estimate must rise
    set_lr("classifier", 1e-2)
    start = w1()
    for _ in range(4):
        values = train_step(model, batch, stage, optimizers, StepContext(), 20.0)
    trained = w1()
    assert trained > start + 0.1  # 0.02 -> 0.2 measured
    assert {"w1_estimate", "d_loss", "loss"} <= set(values)
    set_lr("encoders", 1e-2)  # now the encoders alone: they must shrink the critic's estimate
    set_lr("classifier", 0.0)
    for _ in range(4):
        train_step(model, batch, stage, optimizers, StepContext(), 20.0)
    assert w1() < trained - 0.1


def test_align_penalty_is_added_to_the_ranking_loss():
    torch.manual_seed(0)
    model = build_model(MODEL, vocab_size=30, feature_dim=12)
    plain = parse_stage({**ADV_STAGE, "train": ["image", "text"]}, "t")
    aligned = parse_stage({**ADV_STAGE, "train": ["image", "text"], "align": {"kind": "centroid", "weight": 2.0}}, "t")
    set_trainable(model, plain)
    batch = make_batch()
    values = train_step(model, batch, aligned, make_optimizers(model, aligned, 0), StepContext(grad_clip=0), 0.0)
    with torch.no_grad():
        im, tx = model(batch["images"], batch["text"])
    assert "align_loss" in values
    assert float(values["loss"]) == pytest.approx(float(values["rank_loss"]) + 2.0 * float(values["align_loss"]), rel=1e-5)
    assert float(values["align_loss"]) > 0
    del im, tx


def test_stage_options_are_checked_and_saved_only_when_set():
    stage = parse_stage({**ADV_STAGE, "adversarial": {"mode": "grl"}}, "t")
    assert stage.to_dict()["adversarial"] == {"mode": "grl", "lambda": 0.1, "schedule": "constant", "objective": "uniform"}
    assert "align" not in stage.to_dict()  # a run saved before these options existed compares equal
    stage = parse_stage({**ADV_STAGE, "adversarial": {"mode": "wgan", "d_steps": 5}}, "t")
    assert stage.to_dict()["adversarial"]["d_steps"] == 5
    for bad, match in (
        ({"adversarial": {"mode": "grl", "d_steps": 0}}, r"t\.adversarial\.d_steps"),
        ({"adversarial": {"mode": "wgan", "label_smoothing": 0.1}}, "no labels to smooth"),
        ({"adversarial": {"mode": "grl", "label_smoothing": 1.0}}, r"label_smoothing"),
        ({"align": {"kind": "mmd2"}}, r"t\.align\.kind: 'mmd2' is not one of"),
        ({"align": {"kind": "mmd", "bandwidth": 0}}, r"t\.align\.bandwidth"),
        ({"align": {"kind": "mmd"}, "rank": None, "classifier": True}, "align is a penalty on the ranking objective"),
    ):
        with pytest.raises(ConfigError, match=match):
            parse_stage({**ADV_STAGE, **bad}, "t")


# ---------------------------------------------------------------------------------------------
# the DANN ramp as the trainer applies it, and init-from with another classifier


def test_the_trainer_feeds_the_dann_ramp_step_by_step(tmp_path, precomp_data):
    recipe = ["stages=[{name: adv, epochs: 2, lr: 1.0e-3, train: [image, text, classifier], rank: sum, "
              "adversarial: {mode: grl, lambda: 0.4, schedule: dann}}]"]  # fmt: skip
    cfg = load_config("vsepp", tiny_overrides(precomp_data, *recipe))
    seen: list[float] = []
    train(cfg, tmp_path / "run", log=lambda r: seen.append(r["train/lambda"]) if "train/lambda" in r else None)
    steps = len(seen)  # log_every = 1: every step
    assert steps == 2 * (200 * 5 // 32 + (1 if 200 * 5 % 32 else 0))
    assert seen == pytest.approx([0.4 * math.tanh(5 * i / steps) for i in range(steps)])  # 2/(1+e^-10p)-1 = tanh(5p)
    assert dann_lambda(0.25, 0.4) == pytest.approx(0.4 * math.tanh(1.25))


def test_init_from_accepts_another_classifier_shape_and_starts_it_fresh(tmp_path, precomp_data):
    base = tmp_path / "base"
    train(load_config("vsepp", tiny_overrides(precomp_data, "stages.*.epochs=1")), base)
    cfg = load_config("miie_adv", tiny_overrides(precomp_data, "stages.*.epochs=0", "model.classifier_hidden=[]"))
    cfg["stages"] = cfg["stages"][:1]
    cfg["stages"][0]["epochs"] = 1
    train(cfg, tmp_path / "run", init_from=base)
    ours = torch.load(tmp_path / "run" / "checkpoints" / "last.pt", weights_only=True)["model"]
    theirs = torch.load(base / "checkpoints" / "best.pt", weights_only=True)["model"]
    assert ours["classifier.net.0.weight"].shape == (1, 32)  # linear
    torch.testing.assert_close(ours["image_encoder.fc.weight"], theirs["image_encoder.fc.weight"])  # encoders loaded
