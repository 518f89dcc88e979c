"""Label-smoothed CE, batch-hard triplet, RATR and their sum."""

from __future__ import annotations

import math
from itertools import combinations

import pytest
import torch
import torch.nn.functional as F

from reidcam.reid.losses import (
    BatchHardTripletLoss,
    LabelSmoothingCrossEntropy,
    ReIDMambaLoss,
    ratr_inter,
    ratr_intra,
)
from reidcam.reid.losses.ratr import first_of_each_identity


def test_label_smoothing_by_hand():
    logits = torch.tensor([[2.0, 0.0, -1.0]])
    log_p = [2.0 - math.log(math.exp(2) + 1 + math.exp(-1)), -math.log(math.exp(2) + 1 + math.exp(-1))]
    log_p.append(log_p[1] - 1.0)
    expected = -(0.9 * log_p[0] + 0.05 * log_p[1] + 0.05 * log_p[2])
    loss = LabelSmoothingCrossEntropy(0.1)(logits, torch.tensor([0]))
    assert loss.item() == pytest.approx(expected, rel=1e-6)


def test_label_smoothing_differs_from_torch_convention():
    torch.manual_seed(0)
    logits, targets = torch.randn(6, 5), torch.randint(0, 5, (6,))
    ours = LabelSmoothingCrossEntropy(0.1)(logits, targets)
    log_p = F.log_softmax(logits, 1)
    true = log_p.gather(1, targets[:, None]).squeeze(1)
    manual = -(0.9 * true + 0.1 / 4 * (log_p.sum(1) - true)).mean()
    torch.testing.assert_close(ours, manual)
    assert not torch.allclose(ours, F.cross_entropy(logits, targets, label_smoothing=0.1))
    torch.testing.assert_close(LabelSmoothingCrossEntropy(0.0)(logits, targets), F.cross_entropy(logits, targets))


def test_batch_hard_triplet_by_hand():
    features = torch.tensor([[0.0], [1.0], [3.0], [5.0]])
    labels = torch.tensor([0, 0, 1, 1])
    # hardest positive / negative: (1, 3), (1, 2), (2, 2), (2, 4) -> hinge with margin 1.2
    expected = (0.0 + 0.2 + 1.2 + 0.0) / 4
    assert BatchHardTripletLoss(1.2)(features, labels).item() == pytest.approx(expected, abs=1e-5)
    soft = sum(math.log1p(math.exp(p - n)) for p, n in ((1, 3), (1, 2), (2, 2), (2, 4))) / 4
    assert BatchHardTripletLoss(0.0)(features, labels).item() == pytest.approx(soft, abs=1e-5)


def test_triplet_uses_unnormalised_euclidean_distance():
    features = torch.tensor([[0.0, 0.0], [0.0, 10.0], [3.0, 4.0], [6.0, 8.0]])
    labels = torch.tensor([0, 0, 1, 1])
    distances = torch.cdist(features, features)
    same = labels[:, None] == labels[None, :]
    positive = distances.masked_fill(~same, -1).amax(1)
    negative = distances.masked_fill(same, 1e9).amin(1)
    expected = F.relu(positive - negative + 1.2).mean()
    torch.testing.assert_close(BatchHardTripletLoss(1.2)(features, labels), expected, atol=1e-5, rtol=1e-5)


def test_triplet_gradient_is_finite_for_identical_features():
    features = torch.ones(4, 8, requires_grad=True)
    loss = BatchHardTripletLoss(1.2)(features, torch.tensor([0, 0, 1, 1]))
    loss.backward()
    assert loss.item() == pytest.approx(1.2, abs=1e-4)
    assert torch.isfinite(features.grad).all()


def test_triplet_without_any_negative_is_zero_and_stays_in_the_graph():
    features = torch.randn(4, 8, requires_grad=True)
    loss = BatchHardTripletLoss(1.2)(features, torch.zeros(4, dtype=torch.long))
    loss.backward()
    assert loss.item() == 0.0
    assert torch.equal(features.grad, torch.zeros_like(features))


def test_first_of_each_identity_marks_one_sample_per_identity():
    labels = torch.tensor([3, 1, 3, 7, 1, 1])
    same = labels.view(-1, 1) == labels.view(1, -1)
    assert first_of_each_identity(same).tolist() == [True, True, False, True, False, False]


def brute_force_tau(x: list[float], y: list[float], t: float) -> float:
    pairs = list(combinations(range(len(x)), 2))
    total = sum(math.tanh((x[p] - x[q]) / t) * math.tanh((y[p] - y[q]) / t) for p, q in pairs)
    return total / len(pairs)


def brute_force_ratr(features, labels, t=0.1):
    """Per-anchor loops over explicit positive lists and identity centres."""
    normalised = [F.normalize(f, dim=1).tolist() for f in features]
    labels = labels.tolist()
    identities = sorted(set(labels))

    def dot(u, v):
        return sum(a * b for a, b in zip(u, v))

    def centre(feats, identity):
        members = [feats[i] for i, other in enumerate(labels) if other == identity]
        mean = [sum(c) / len(members) for c in zip(*members)]
        norm = math.sqrt(sum(c * c for c in mean))
        return [c / norm for c in mean]

    intra, inter = [], []
    for a, b in combinations(range(len(features)), 2):
        intra_taus, inter_taus = [], []
        for i, label in enumerate(labels):
            positives = [j for j, other in enumerate(labels) if other == label and j != i]
            if len(positives) >= 2:
                xa = [dot(normalised[a][i], normalised[a][j]) for j in positives]
                xb = [dot(normalised[b][i], normalised[b][j]) for j in positives]
                intra_taus.append(brute_force_tau(xa, xb, t))
            others = [k for k in identities if k != label]
            ya = [dot(normalised[a][i], centre(normalised[a], k)) for k in others]
            yb = [dot(normalised[b][i], centre(normalised[b], k)) for k in others]
            inter_taus.append(brute_force_tau(ya, yb, t))
        intra.append(sum(intra_taus) / len(intra_taus))
        inter.append(sum(inter_taus) / len(inter_taus))
    return sum(intra) / len(intra), sum(inter) / len(inter)


def test_ratr_matches_brute_force_on_a_pk_batch():
    torch.manual_seed(0)
    labels = torch.arange(4).repeat_interleave(3)
    features = [torch.randn(12, 16) for _ in range(3)]
    intra, inter = brute_force_ratr(features, labels)
    assert ratr_intra(features, labels).item() == pytest.approx(intra, abs=1e-5)
    assert ratr_inter(features, labels).item() == pytest.approx(inter, abs=1e-5)


def test_ratr_masks_come_from_labels_not_batch_layout():
    torch.manual_seed(1)
    labels = torch.tensor([0, 0, 0, 1, 1, 1, 1, 2, 2, 3, 3, 3])  # uneven K
    features = [torch.randn(12, 8) for _ in range(3)]
    intra, inter = brute_force_ratr(features, labels)
    assert ratr_intra(features, labels).item() == pytest.approx(intra, abs=1e-5)
    assert ratr_inter(features, labels).item() == pytest.approx(inter, abs=1e-5)
    order = torch.randperm(12)
    shuffled = [f[order] for f in features]
    assert ratr_intra(shuffled, labels[order]).item() == pytest.approx(intra, abs=1e-5)
    assert ratr_inter(shuffled, labels[order]).item() == pytest.approx(inter, abs=1e-5)


def test_ratr_is_high_for_identical_branches_and_minimising_it_decorrelates():
    torch.manual_seed(2)
    labels = torch.arange(4).repeat_interleave(4)
    base = torch.randn(16, 32)
    same = [base, base.clone(), base.clone()]
    assert ratr_inter(same, labels).item() > 0.3
    branches = [(base + 0.01 * torch.randn(16, 32)).requires_grad_() for _ in range(3)]
    optimizer = torch.optim.SGD(branches, lr=1.0)
    start = (ratr_intra(branches, labels) + ratr_inter(branches, labels)).item()
    for _ in range(30):
        optimizer.zero_grad()
        (ratr_intra(branches, labels) + ratr_inter(branches, labels)).backward()
        optimizer.step()
    assert (ratr_intra(branches, labels) + ratr_inter(branches, labels)).item() < start - 0.1


def test_intra_term_vanishes_with_two_images_per_identity():
    labels = torch.arange(4).repeat_interleave(2)
    features = [torch.randn(8, 4, requires_grad=True) for _ in range(3)]
    value = ratr_intra(features, labels)
    assert value.item() == 0.0
    value.backward()  # still part of the graph


def test_total_loss_is_the_sum_of_its_components():
    torch.manual_seed(3)
    labels = torch.arange(4).repeat_interleave(4)
    features = [torch.randn(16, 24, requires_grad=True) for _ in range(3)]
    logits = [torch.randn(16, 10, requires_grad=True) for _ in range(3)]
    parts = ReIDMambaLoss()(features, logits, labels)
    assert set(parts) == {"loss", "triplet", "id", "ratr_intra", "ratr_inter"}
    triplet = sum(BatchHardTripletLoss(1.2)(f, labels) for f in features) / 3
    identity = sum(LabelSmoothingCrossEntropy(0.1)(scores, labels) for scores in logits) / 3
    torch.testing.assert_close(parts["triplet"], triplet)
    torch.testing.assert_close(parts["id"], identity)
    torch.testing.assert_close(parts["loss"], triplet + identity + parts["ratr_intra"] + parts["ratr_inter"])
    parts["loss"].backward()
    assert all(f.grad is not None and torch.isfinite(f.grad).all() for f in features)
