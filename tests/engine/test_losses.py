"""Losses: batch-hard triplet on -cosine (hand-computed), label smoothing, weights."""
import math

import pytest
import torch
import torch.nn.functional as F

from reid.losses import CrossEntropyLabelSmooth, ReIDLoss, TripletLoss


def test_triplet_hand_computed_cosine():
    # 2-D unit vectors at angles (ids 0, 0, 1, 1); distance = -cos(angle difference), so the
    # hardest positive is the largest angle to the same id, the hardest negative the smallest
    ang = torch.tensor([0.0, 1.2, 1.0, 2.0])
    x = torch.stack([ang.cos(), ang.sin()], 1)
    y = torch.tensor([0, 0, 1, 1])
    loss = TripletLoss(margin=0.3)(x, y)
    expected = [
        -math.cos(1.2) + math.cos(1.0) + 0.3,  # anchor at 0.0: positive 1.2 away, negative 1.0
        -math.cos(1.2) + math.cos(0.2) + 0.3,  # anchor at 1.2: negative at 1.0
        -math.cos(1.0) + math.cos(0.2) + 0.3,  # anchor at 1.0: positive at 2.0, negative at 1.2
        -math.cos(1.0) + math.cos(0.8) + 0.3,  # anchor at 2.0: negative at 1.2
    ]
    assert min(expected) > 0
    assert loss.item() == pytest.approx(sum(expected) / 4, rel=1e-5)


def test_triplet_is_scale_invariant_with_cosine_and_zero_when_separated():
    x = torch.tensor([[1.0, 0.0], [0.9, 0.1], [-1.0, 0.0], [-0.9, -0.1]])
    y = torch.tensor([0, 0, 1, 1])
    t = TripletLoss(margin=0.3)
    assert t(x, y).item() == 0.0
    assert t(x * 10, y).item() == t(x, y).item()


def test_triplet_without_negatives_is_zero_with_a_gradient_path():
    x = torch.randn(4, 3, requires_grad=True)
    loss = TripletLoss()(x, torch.zeros(4, dtype=torch.long))
    loss.backward()
    assert loss.item() == 0.0 and x.grad is not None


def test_label_smoothing_matches_its_definition():
    logits = torch.randn(5, 7)
    y = torch.randint(0, 7, (5,))
    eps = 0.1
    logp = F.log_softmax(logits, 1)
    target = torch.full((5, 7), eps / 7).scatter_(1, y[:, None], 1 - eps + eps / 7)
    expected = -(target * logp).sum(1).mean()
    assert CrossEntropyLabelSmooth(7, eps)(logits, y).item() == pytest.approx(expected.item(), rel=1e-5)
    assert CrossEntropyLabelSmooth(7, 0.0)(logits, y).item() == pytest.approx(F.cross_entropy(logits, y).item())


def test_combined_loss_weights_and_parts():
    logits, feats = torch.randn(8, 4), torch.randn(8, 6)
    y = torch.tensor([0, 0, 1, 1, 2, 2, 3, 3])
    total, parts = ReIDLoss(4, ce_weight=2.0, triplet_weight=0.5)(logits, feats, y)
    assert total.item() == pytest.approx(2.0 * parts["ce"].item() + 0.5 * parts["triplet"].item(), rel=1e-6)


@pytest.mark.parametrize(
    "kwargs,msg",
    [({"epsilon": 1.0}, "epsilon"), ({"margin": -1}, "margin"), ({"distance": "l1"}, "distance")],
)
def test_bad_hyper_parameters_are_named(kwargs, msg):
    with pytest.raises(ValueError, match=msg):
        if "epsilon" in kwargs:
            CrossEntropyLabelSmooth(3, **kwargs)
        else:
            TripletLoss(**kwargs)
