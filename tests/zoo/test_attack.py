"""The minimal L2 adversarial search: near the exact distance on linear classifiers (known in closed
form), always a real adversarial example, and never below a certified radius."""

from __future__ import annotations

import torch
from torch import nn

import zoo
from training.data import load_digits
from zoo.attack import minimal_l2_adversarial
from zoo.robustness import certified_radius


def exact_linear_distances(layer: nn.Linear, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Predicted classes and the exact L2 distance to the nearest other class of a linear classifier
    (no input box): ``min_j (f_y - f_j) / ||w_y - w_j||``."""
    with torch.no_grad():
        logits = layer(x).double()
        labels = logits.argmax(1)
        weight = layer.weight.double()
        distance = torch.full((len(x),), torch.inf, dtype=torch.float64)
        for j in range(logits.shape[1]):
            gap = logits.gather(1, labels[:, None])[:, 0] - logits[:, j]
            to_j = gap / (weight[labels] - weight[j]).norm(dim=1)
            distance = torch.where(labels == j, distance, torch.minimum(distance, to_j))
    return labels, distance


def test_finds_the_exact_distance_of_a_linear_classifier():
    torch.manual_seed(0)
    layer = nn.Linear(20, 5)
    with torch.no_grad():
        layer.weight.mul_(10)
        layer.bias.mul_(10)
    x = torch.rand(64, 20) * 0.2 + 0.4
    labels, exact = exact_linear_distances(layer, x)
    assert float(exact.max()) < 0.4  # the box [0, 1] is further than the nearest other class
    found = minimal_l2_adversarial(layer, x, labels)
    ratio = found.distance / exact
    assert float(ratio.min()) >= 1 - 1e-5  # float32 rounding; never really below the truth
    assert float(ratio.max()) <= 1 + 1e-3


def test_adversarial_examples_are_real_in_the_box_and_at_their_distance():
    torch.manual_seed(1)
    layer = nn.Linear(12, 3)
    x = torch.rand(32, 12)
    labels, _ = exact_linear_distances(layer, x)
    labels[:4] = (labels[:4] + 1) % 3  # four inputs misclassified from the start
    found = minimal_l2_adversarial(layer, x, labels, steps=100)
    assert torch.equal(found.distance[:4], torch.zeros(4, dtype=torch.float64))
    assert torch.equal(found.adversarial[:4], x[:4])
    reached = torch.isfinite(found.distance)
    with torch.no_grad():
        predicted = layer(found.adversarial).argmax(1)
    assert bool((predicted[reached] != labels[reached]).all())
    assert float(found.adversarial.min()) >= 0 and float(found.adversarial.max()) <= 1
    distance = (found.adversarial - x).flatten(1).norm(dim=1).double()
    torch.testing.assert_close(found.distance[reached], distance[reached])


def test_a_model_that_never_changes_its_answer_has_no_adversarial_example():
    constant = nn.Sequential(nn.Linear(6, 3), nn.Flatten())
    with torch.no_grad():
        constant[0].weight.zero_()
        constant[0].bias.copy_(torch.tensor([1.0, 0.0, 0.0]))
    found = minimal_l2_adversarial(constant, torch.rand(5, 6), torch.zeros(5, dtype=torch.long), steps=20)
    assert bool(torch.isinf(found.distance).all())


def test_attack_distances_are_never_below_the_certified_radius():
    certified = zoo.load("lipmlp_s.digits_hkr")
    digits = load_digits()
    x, y = digits.x_test[:48], digits.y_test[:48]
    found = minimal_l2_adversarial(certified.model, x, y, steps=100)
    with torch.no_grad():
        logits = certified.model(x)
    radius = certified_radius(logits, certified.certificate.lipschitz_bound)
    correct = logits.argmax(1) == y
    assert bool(torch.isfinite(found.distance[correct]).all())
    assert bool((radius[correct] <= found.distance[correct]).all())
