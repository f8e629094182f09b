"""Certified L2 robustness from a global Lipschitz bound (docs/ARCHITECTURE.md, "Certificates")."""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch

__all__ = ["certified_accuracy", "certified_radius"]


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
