"""Certified L2 robustness from a global Lipschitz bound (docs/ARCHITECTURE.md, "Certificates")."""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch

__all__ = ["REPORTED_EPS", "certified_accuracy", "certified_radius", "eps_key", "eps_name", "reported_eps"]

# The L2 radii (in [0, 1] pixel units) at which a model's certified accuracy is measured and recorded:
# the 8x8 digits stop at 0.5; 28x28 and larger images add 1.0 and the literature's 36/255 and 72/255.
REPORTED_EPS: dict[str, tuple[float, ...]] = {
    "digits": (0.1, 0.25, 0.5),
    "mnist": (0.1, 36 / 255, 0.25, 72 / 255, 0.5, 1.0),
    "fashion_mnist": (0.1, 36 / 255, 0.25, 72 / 255, 0.5, 1.0),
    "cifar10": (0.1, 36 / 255, 0.25, 72 / 255, 0.5, 1.0),
}


def reported_eps(dataset: str) -> tuple[float, ...]:
    """The radii at which models of ``dataset`` (a models.yaml dataset name) report certified accuracy."""
    if dataset not in REPORTED_EPS:
        raise ValueError(f"no reported radii for dataset {dataset!r}; known: {', '.join(REPORTED_EPS)}")
    return REPORTED_EPS[dataset]


def eps_name(eps: float) -> str:
    """How tables print a radius: 36/255 and 72/255 as such, 1.0 as '1.0', others as :func:`eps_key`."""
    named = {36 / 255: "36/255", 72 / 255: "72/255"}
    return named.get(eps, f"{eps:.1f}" if eps == int(eps) else eps_key(eps))


def eps_key(eps: float) -> str:
    """How a radius names a metric (``certified_accuracy_<key>``): 4 significant digits, so
    0.1 -> '0.1', 36/255 -> '0.1412', 1.0 -> '1'."""
    return f"{eps:.4g}"


def certified_radius(logits: torch.Tensor, lipschitz_bound: float) -> torch.Tensor:
    """Certified L2 radius ``(top1 - top2) / (sqrt(2) * L)`` of each prediction.

    Args:
        logits: (N, K) logits, K >= 2.
        lipschitz_bound: sound upper bound L of the network's L2 Lipschitz constant, > 0.

    Returns:
        (N,) float64 radii in input units; 0 where the two top logits are equal (a tie is never
        certified).
    """
    if logits.dim() != 2 or logits.shape[1] < 2:
        raise ValueError(f"logits must have shape (N, K >= 2), got {tuple(logits.shape)}")
    if not lipschitz_bound > 0:
        raise ValueError(f"lipschitz_bound must be positive, got {lipschitz_bound}")
    top2 = logits.double().topk(2, dim=1).values
    return (top2[:, 0] - top2[:, 1]) / (math.sqrt(2.0) * lipschitz_bound)


def certified_accuracy(
    logits: torch.Tensor, labels: torch.Tensor, lipschitz_bound: float, eps: Sequence[float]
) -> dict[float, float]:
    """Fraction of examples predicted correctly with a certified radius strictly above each eps.

    Returns ``{eps: accuracy}``; eps = 0 gives the accuracy of predictions that are correct and not
    tied with another class.
    """
    radius = certified_radius(logits, lipschitz_bound)
    correct = logits.argmax(dim=1) == labels
    return {e: float(((radius > e) & correct).double().mean()) for e in eps}
