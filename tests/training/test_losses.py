"""Losses against hand computations on tiny tensors."""

from __future__ import annotations

import math

import pytest
import torch

from training.losses import MulticlassHinge, MulticlassHKR, MulticlassKR, TauCrossEntropy, make_loss

LOGITS = torch.tensor([[2.0, -1.0, 0.5], [0.0, 1.0, -2.0], [1.0, 0.0, 3.0], [0.5, 0.5, 0.0]])
LABELS = torch.tensor([0, 1, 2, 0])


def test_kr_one_vs_all_by_hand():
    # class 0: positives rows 0,3 -> mean(2.0, 0.5) = 1.25; negatives rows 1,2 -> mean(0, 1) = 0.5
    # class 1: positive row 1 -> 1.0; negatives -> mean(-1, 0, 0.5) = -1/6
    # class 2: positive row 2 -> 3.0; negatives -> mean(0.5, -2, 0) = -0.5
    expected = ((1.25 - 0.5) + (1.0 + 1 / 6) + (3.0 + 0.5)) / 3
    assert float(MulticlassKR()(LOGITS, LABELS)) == pytest.approx(expected)


def test_kr_batch_without_both_sides_is_zero_not_nan():
    assert float(MulticlassKR()(torch.randn(3, 4), torch.tensor([2, 2, 2]))) == 0.0


def test_hinge_by_hand():
    margin = 1.0
    total = 0.0
    for row, label in zip(LOGITS.tolist(), LABELS.tolist(), strict=True):
        for k, value in enumerate(row):
            if k == label:
                total += 2 * max(0.0, margin - value)  # weight K - 1 = 2
            else:
                total += max(0.0, margin + value)
    expected = total / len(LABELS) / (2 * 2)
    assert float(MulticlassHinge(margin)(LOGITS, LABELS)) == pytest.approx(expected)


def test_hkr_combines_hinge_and_kr():
    hkr = MulticlassHKR(alpha=5.0, margin=0.5)
    expected = 5.0 * MulticlassHinge(0.5)(LOGITS, LABELS) - MulticlassKR()(LOGITS, LABELS)
    assert float(hkr(LOGITS, LABELS)) == pytest.approx(float(expected))


@pytest.mark.parametrize("offset", [0.0, 1.5])
def test_tau_cross_entropy_by_hand(offset):
    tau = 4.0
    expected = 0.0
    for row, label in zip(LOGITS.tolist(), LABELS.tolist(), strict=True):
        scaled = [tau * (v - offset * (k == label)) for k, v in enumerate(row)]
        expected += -(scaled[label] - math.log(sum(math.exp(v) for v in scaled)))
    expected /= len(LABELS) * tau
    assert float(TauCrossEntropy(tau, offset)(LOGITS, LABELS)) == pytest.approx(expected)


def test_make_loss_names_bad_parameters():
    assert isinstance(make_loss("hkr", {"alpha": 2.0}), MulticlassHKR)
    assert float(make_loss("kr", {})(LOGITS, LABELS)) == pytest.approx(-float(MulticlassKR()(LOGITS, LABELS)))
    with pytest.raises(ValueError, match="no parameter 'alpah'"):
        make_loss("hkr", {"alpah": 2.0})
    with pytest.raises(ValueError, match="unknown loss"):
        make_loss("mse", {})
    with pytest.raises(ValueError, match="tau must be positive"):
        make_loss("tau_cross_entropy", {"tau": 0.0})
    with pytest.raises(ValueError, match="offset must be >= 0"):
        make_loss("tau_cross_entropy", {"tau": 1.0, "offset": -1.0})
