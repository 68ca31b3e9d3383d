"""Ranking and classifier losses against slow loop implementations written here."""

from __future__ import annotations

import math

import pytest
import torch

from itmatch.losses import (
    classifier_loss,
    confusion_loss,
    dann_lambda,
    modality_logits_and_labels,
    triplet_ranking_loss,
)
from itmatch.models import ModalityClassifier, grad_reverse, l2_normalize


def loop_triplet_loss(im, tx, margin, max_violation, image_ids=None):
    n = im.shape[0]
    ids = list(range(n)) if image_ids is None else [int(i) for i in image_ids]
    total = 0.0
    for k in range(n):
        pos = float(im[k] @ tx[k])
        text_costs, image_costs = [], []
        for j in range(n):
            if ids[j] == ids[k]:
                continue
            text_costs.append(max(0.0, margin - pos + float(im[k] @ tx[j])))  # image k vs caption j
            image_costs.append(max(0.0, margin - pos + float(im[j] @ tx[k])))  # caption k vs image j
        if max_violation:
            total += max(text_costs, default=0.0) + max(image_costs, default=0.0)
        else:
            total += sum(text_costs) + sum(image_costs)
    return total


@pytest.mark.parametrize("max_violation", [False, True])
@pytest.mark.parametrize("with_ids", [False, True])
def test_triplet_loss_matches_loop(max_violation, with_ids):
    g = torch.Generator().manual_seed(0)
    im = l2_normalize(torch.randn(12, 16, generator=g, dtype=torch.float64))
    tx = l2_normalize(torch.randn(12, 16, generator=g, dtype=torch.float64))
    ids = torch.tensor([0, 1, 1, 2, 3, 3, 3, 4, 5, 6, 7, 7]) if with_ids else None
    fast = triplet_ranking_loss(im, tx, margin=0.2, max_violation=max_violation, image_ids=ids)
    slow = loop_triplet_loss(im, tx, 0.2, max_violation, ids)
    assert fast.item() == pytest.approx(slow, rel=1e-10, abs=1e-12)
    assert slow > 0


def test_triplet_loss_zero_when_positives_win_by_margin():
    im = torch.eye(4)
    tx = torch.eye(4)
    assert triplet_ranking_loss(im, tx, margin=0.2).item() == 0.0
    assert triplet_ranking_loss(im, tx, margin=0.2, max_violation=True).item() == 0.0
    # A margin larger than the gap (1.0) makes every negative violate: 2 * n * (n - 1) * 0.5
    assert triplet_ranking_loss(im, tx, margin=1.5).item() == pytest.approx(2 * 4 * 3 * 0.5)


def test_hardest_negative_gradient_matches_finite_difference():
    g = torch.Generator().manual_seed(11)
    im = l2_normalize(torch.randn(6, 8, generator=g, dtype=torch.float64)).requires_grad_(True)
    tx = l2_normalize(torch.randn(6, 8, generator=g, dtype=torch.float64))
    margin, eps = 0.5, 1e-6
    # Off the kinks: with these seeded inputs every hinge cost is away from 0 and each query's
    # hardest negative leads the runner-up by far more than a bump of eps can move a score, so
    # the loss is differentiable at this point and the one-sided quotients below are exact to O(eps).
    s = (im @ tx.T).detach()
    n = len(s)
    for k in range(n):
        for costs in (margin - s[k, k] + s[k], margin - s[k, k] + s[:, k]):  # captions / images vs k
            negatives = torch.cat([costs[:k], costs[k + 1 :]])
            top2 = negatives.topk(2).values
            assert top2[0] - top2[1] > 1e-3, (k, top2)
            assert negatives.abs().min() > 1e-3, (k, negatives)
    triplet_ranking_loss(im, tx, margin=margin, max_violation=True).backward()
    base = triplet_ranking_loss(im.detach(), tx, margin=margin, max_violation=True).item()
    assert base > 0  # some hinge is active, so the gradient is not trivially zero
    numeric = torch.zeros_like(im)
    for idx in [(r, c) for r in range(im.shape[0]) for c in range(im.shape[1])]:
        bumped = im.detach().clone()
        bumped[idx] += eps
        numeric[idx] = (triplet_ranking_loss(bumped, tx, margin=margin, max_violation=True).item() - base) / eps
    assert numeric.abs().max() > 0.1
    torch.testing.assert_close(im.grad, numeric, rtol=0, atol=1e-5)


def test_classifier_losses():
    logits = torch.tensor([3.0, -2.0, 0.0, 1.0])
    labels = torch.tensor([1.0, 0.0, 1.0, 0.0])
    expected = sum(
        -(y * math.log(1 / (1 + math.exp(-z))) + (1 - y) * math.log(1 - 1 / (1 + math.exp(-z))))
        for z, y in zip(logits.tolist(), labels.tolist())
    )
    assert classifier_loss(logits, labels).item() == pytest.approx(expected, rel=1e-6)
    # flip objective = classifier loss with the labels swapped
    assert confusion_loss(logits, labels, "flip").item() == pytest.approx(classifier_loss(logits, 1 - labels).item())
    # uniform objective is minimal (n * log 2) at logit 0
    zero = torch.zeros(4)
    assert confusion_loss(zero, labels, "uniform").item() == pytest.approx(4 * math.log(2), rel=1e-6)
    assert confusion_loss(logits, labels, "uniform").item() > 4 * math.log(2)
    with pytest.raises(ValueError, match="unknown confusion objective"):
        confusion_loss(logits, labels, "bogus")


def test_dann_schedule_values():
    assert dann_lambda(0.0, 1.0) == 0.0
    assert dann_lambda(1.0, 1.0) == pytest.approx(2 / (1 + math.exp(-10)) - 1)
    assert dann_lambda(0.5, 0.3) == pytest.approx(0.3 * (2 / (1 + math.exp(-5)) - 1))
    values = [dann_lambda(p / 10, 1.0) for p in range(11)]
    assert values == sorted(values)  # monotone ramp
    assert dann_lambda(2.0, 1.0) == dann_lambda(1.0, 1.0)  # clipped progress


@pytest.mark.parametrize("lambd", [0.0, 0.3, 1.0])
def test_reversed_gradient_reaches_encoder_with_opposite_sign(lambd):
    """The encoder parameter receives -lambda times the gradient it would get without reversal."""
    torch.manual_seed(0)
    encoder = torch.nn.Linear(6, 8)
    clf = ModalityClassifier(8, hidden=[4])
    x_img, x_txt = torch.randn(5, 6), torch.randn(5, 6) + 1.0

    def classifier_loss_through(reverse: bool) -> torch.Tensor:
        im, tx = encoder(x_img), encoder(x_txt)
        if reverse:
            im, tx = grad_reverse(im, lambd), grad_reverse(tx, lambd)
        logits, labels = modality_logits_and_labels(clf, im, tx)
        return classifier_loss(logits, labels)

    classifier_loss_through(False).backward()
    plain_enc = encoder.weight.grad.clone()
    plain_clf = [p.grad.clone() for p in clf.parameters()]
    encoder.zero_grad()
    clf.zero_grad()
    classifier_loss_through(True).backward()
    assert plain_enc.abs().sum() > 0
    torch.testing.assert_close(encoder.weight.grad, -lambd * plain_enc)
    if lambd == 0.0:
        assert torch.count_nonzero(encoder.weight.grad) == 0
    else:
        # opposite sign of the classifier's own descent direction, elementwise
        assert torch.all(torch.sign(encoder.weight.grad[plain_enc != 0]) == -torch.sign(plain_enc[plain_enc != 0]))
    for got, want in zip([p.grad for p in clf.parameters()], plain_clf):
        torch.testing.assert_close(got, want)  # the classifier itself is untouched by the reversal


def test_classifier_learns_two_separable_clouds():
    torch.manual_seed(0)
    d = 16
    img = l2_normalize(torch.randn(256, d) + 2.0 * torch.eye(d)[0])
    txt = l2_normalize(torch.randn(256, d) - 2.0 * torch.eye(d)[0])
    clf = ModalityClassifier(d)
    opt = torch.optim.Adam(clf.parameters(), lr=1e-2)
    for _ in range(100):
        logits, labels = modality_logits_and_labels(clf, img, txt)
        loss = classifier_loss(logits, labels)
        opt.zero_grad()
        loss.backward()
        opt.step()
    logits, labels = modality_logits_and_labels(clf, img, txt)
    assert ((logits > 0).float() == labels).float().mean().item() > 0.97


@pytest.mark.parametrize("same_image_negatives", [False, True])
def test_same_image_negatives_option_reaches_the_training_step(same_image_negatives):
    """``loss.same_image_negatives``: the step's ranking loss leaves a row's same-image captions
    out (default) or counts them as negatives (the VSE++ reference code), as the loss computed
    here from the model's embeddings with or without the image ids."""
    from itmatch.models import build_model
    from itmatch.training.config import load_config
    from itmatch.training.schedule import parse_stage
    from itmatch.training.step import StepContext, train_step
    from itmatch.training.trainer import make_optimizers, set_trainable

    cfg = load_config("vsepp", [f"loss.same_image_negatives={str(same_image_negatives).lower()}"])
    assert cfg["loss"]["same_image_negatives"] is same_image_negatives
    torch.manual_seed(0)
    model = build_model({"embed_dim": 16, "word_dim": 8, "text_encoder": "gru"}, vocab_size=30, feature_dim=12)
    stage = parse_stage({"name": "s", "epochs": 1, "lr": 1e-3, "train": ["image", "text"], "rank": "sum"}, "test")
    set_trainable(model, stage)
    g = torch.Generator().manual_seed(1)
    batch = {
        "images": torch.randn(12, 12, generator=g),
        "text": {"tokens": torch.randint(4, 30, (12, 6), generator=g), "lengths": torch.randint(2, 7, (12,), generator=g)},
        "image_ids": torch.arange(12) // 3,  # 3 captions per image
    }
    model.train()
    with torch.no_grad():
        im, tx = model.encoders()(batch["images"], batch["text"])
    with_ids = triplet_ranking_loss(im, tx, 0.2, image_ids=batch["image_ids"])
    without = triplet_ranking_loss(im, tx, 0.2)
    assert without > with_ids  # the same-image pairs do violate the margin here
    ctx = StepContext(same_image_negatives=bool(cfg["loss"]["same_image_negatives"]))
    out = train_step(model, batch, stage, make_optimizers(model, stage, 0), ctx)
    expected = without if same_image_negatives else with_ids
    torch.testing.assert_close(out["rank_loss"], expected, rtol=1e-5, atol=1e-4)
