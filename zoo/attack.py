"""Minimal L2 adversarial examples: an *upper* bound on each example's true robust radius.

For a correctly classified input ``x``, the distance to the nearest input the model classifies
differently (the robust radius) lies between two computed numbers:

    certified radius  <=  robust radius  <=  distance of any adversarial example found

The certificate gives the first (``zoo.robustness.certified_radius``); this module searches for the
second with a decoupled-direction-and-norm attack (Rony et al. 2019, "DDN"): gradient steps on the
logit margin move the perturbation's direction while its norm shrinks by ``gamma`` after each step
that stays adversarial and grows by ``gamma`` after each that does not; the smallest adversarial
perturbation seen is then shortened along its direction by bisection. Adversarial examples stay in
the input box (pixels in [0, 1] by default), as real images do. The gap between the two radii says
how much robustness the certificate leaves unproven.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import torch
from torch import nn

__all__ = ["AttackResult", "minimal_l2_adversarial"]


class AttackResult(NamedTuple):
    """What :func:`minimal_l2_adversarial` found.

    Attributes:
        adversarial: (N, *shape) adversarial inputs (the input itself where none was found or where
            it is already misclassified).
        distance: (N,) float64 L2 distances of those inputs to the originals: 0 for inputs already
            misclassified, ``inf`` where the attack found nothing.
    """

    adversarial: torch.Tensor
    distance: torch.Tensor


def _margin(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """(N,) true logit minus the largest other logit: negative exactly when misclassified."""
    true = logits.gather(1, labels[:, None])[:, 0]
    others = logits.scatter(1, labels[:, None], float("-inf"))
    return true - others.max(dim=1).values


def _norms(tensor: torch.Tensor) -> torch.Tensor:
    return tensor.flatten(1).norm(dim=1)


def _per_example(values: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    return values.view(-1, *[1] * (like.dim() - 1))


@torch.no_grad()
def _bisect(
    model: nn.Module,
    x: torch.Tensor,
    labels: torch.Tensor,
    direction: torch.Tensor,
    high: torch.Tensor,
    box: tuple[float, float],
    steps: int,
) -> torch.Tensor:
    """Per example, the smallest ``t`` in [0, high] (to ``high / 2^steps``) such that
    ``clamp(x + t direction)`` is misclassified, given that ``t = high`` is."""
    low = torch.zeros_like(high)
    for _ in range(steps):
        middle = (low + high) / 2
        candidate = (x + _per_example(middle, x) * direction).clamp(*box)
        adversarial = _margin(model(candidate), labels) < 0
        high = torch.where(adversarial, middle, high)
        low = torch.where(adversarial, low, middle)
    return high


def minimal_l2_adversarial(
    model: nn.Module,
    x: torch.Tensor,
    labels: torch.Tensor,
    *,
    steps: int = 200,
    initial_norm: float = 1.0,
    gamma: float = 0.05,
    box: tuple[float, float] = (0.0, 1.0),
    bisection_steps: int = 20,
) -> AttackResult:
    """Search small L2 adversarial examples of ``model`` around ``x`` (upper bounds of the robust radius).

    Args:
        model: maps (N, *shape) to (N, K) logits, called as given: put a module in eval mode first (an
            exported program's module has no modes); its parameters are not changed.
        x: (N, *shape) inputs in ``box``.
        labels: (N,) the classes the adversarial examples must leave.
        steps: DDN iterations (the step size decays from 1 to 0.01 of the current norm, cosine).
        initial_norm: the norm of the first perturbation tried (input units).
        gamma: relative change of the norm per step.
        box: the input domain the adversarial examples are clamped to.
        bisection_steps: halvings of the best perturbation's length along its direction.

    Returns:
        an :class:`AttackResult`; every finite distance is that of an input the model misclassifies.
    """
    x = x.detach()
    with torch.no_grad():
        misclassified = _margin(model(x), labels) < 0
    best = torch.where(misclassified, 0.0, math.inf).double()
    best_delta = torch.zeros_like(x)
    delta = torch.zeros_like(x, requires_grad=True)
    norm = torch.full((len(x),), initial_norm, dtype=x.dtype)
    for step in range(steps):
        rate = 0.01 + 0.99 * 0.5 * (1 + math.cos(math.pi * step / steps))
        candidate = (x + delta).clamp(*box)
        margin = _margin(model(candidate), labels)
        (gradient,) = torch.autograd.grad(margin.sum(), delta)
        with torch.no_grad():
            distance = _norms(candidate - x).double()
            adversarial = margin < 0
            better = adversarial & (distance < best)
            best = torch.where(better, distance, best)
            best_delta[better] = (candidate - x)[better]
            norm = torch.where(adversarial, norm * (1 - gamma), norm * (1 + gamma))
            direction = -gradient / _per_example(_norms(gradient).clamp_min(1e-12), gradient)
            moved = delta + _per_example(rate * norm, x) * direction
            moved = moved * _per_example(norm / _norms(moved).clamp_min(1e-12), moved)
            delta.copy_((x + moved).clamp(*box) - x)
    found = torch.isfinite(best) & ~misclassified
    if bool(found.any()):
        length = _norms(best_delta[found]).clamp_min(1e-12)
        direction = best_delta[found] / _per_example(length, best_delta[found])
        shortest = _bisect(model, x[found], labels[found], direction, length, box, bisection_steps)
        best_delta[found] = (x[found] + _per_example(shortest, direction) * direction).clamp(*box) - x[found]
        best[found] = _norms(best_delta[found]).double()
    return AttackResult((x + best_delta).detach(), best)
