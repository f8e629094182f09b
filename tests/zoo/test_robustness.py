from __future__ import annotations

import math

import pytest
import torch

from zoo.robustness import certified_accuracy, certified_radius, eps_key, eps_name, reported_eps


def test_radius_is_top1_minus_top2_over_sqrt2_l():
    logits = torch.tensor([[3.0, 1.0, 0.0], [0.0, 0.5, 0.25], [1.0, 1.0, 0.0]])
    radius = certified_radius(logits, 0.5)
    expected = torch.tensor([2.0, 0.25, 0.0], dtype=torch.float64) / (math.sqrt(2) * 0.5)
    torch.testing.assert_close(radius, expected)


def test_certified_accuracy_counts_correct_and_strictly_above_eps():
    logits = torch.tensor([[3.0, 1.0], [0.0, 2.0], [1.0, 1.0], [2.0, 0.0]])
    labels = torch.tensor([0, 1, 0, 1])  # last one is wrong, third one is a tie
    # radii with L = 1: 2/sqrt2, 2/sqrt2, 0, (wrong)
    result = certified_accuracy(logits, labels, 1.0, [0.0, 1.0, 1.5])
    assert result == {0.0: 0.5, 1.0: 0.5, 1.5: 0.0}


def test_all_equal_logits_never_count():
    logits = torch.zeros(10, 4)
    labels = torch.zeros(10, dtype=torch.long)
    assert certified_accuracy(logits, labels, 1.0, [0.0]) == {0.0: 0.0}


def test_bad_arguments():
    with pytest.raises(ValueError, match="positive"):
        certified_radius(torch.zeros(2, 3), 0.0)
    with pytest.raises(ValueError, match="shape"):
        certified_radius(torch.zeros(3), 1.0)


def test_reported_radii_and_their_names():
    assert reported_eps("digits") == (0.1, 0.25, 0.5)
    assert reported_eps("fashion_mnist") == (0.1, 36 / 255, 0.25, 72 / 255, 0.5, 1.0)
    assert [eps_key(e) for e in reported_eps("fashion_mnist")] == [
        "0.1",
        "0.1412",
        "0.25",
        "0.2824",
        "0.5",
        "1",
    ]
    assert [eps_name(e) for e in reported_eps("fashion_mnist")] == [
        "0.1",
        "36/255",
        "0.25",
        "72/255",
        "0.5",
        "1.0",
    ]
    with pytest.raises(ValueError, match="no reported radii for dataset 'imagenet'"):
        reported_eps("imagenet")
