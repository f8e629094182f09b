"""Losses for 1-Lipschitz classifiers (Serrurier et al. 2021, "Achieving robustness in
classification using optimal transport with hinge regularization").

All take logits (N, K) and integer labels (N,) and return a scalar. Multiclass losses are the mean
over the K one-vs-all problems, so their scale does not depend on the batch size or on K.
"""

from __future__ import annotations

import inspect
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

__all__ = [
    "LOSSES",
    "MulticlassHKR",
    "MulticlassHinge",
    "MulticlassKR",
    "TauCrossEntropy",
    "make_loss",
]


def _signs(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """(N, K) tensor: +1 at the true class, -1 elsewhere."""
    return 2.0 * F.one_hot(labels, logits.shape[1]).to(logits.dtype) - 1.0


class MulticlassKR(nn.Module):
    """Kantorovich-Rubinstein term, one-vs-all: for each class k,
    ``mean_{y = k} f_k(x) - mean_{y != k} f_k(x)``, averaged over the classes present on both sides.
    For a 1-Lipschitz f this estimates the Wasserstein-1 distance between the two groups; training
    maximises it, so the module returns it and HKR subtracts it."""

    def forward(self, logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        positive = F.one_hot(labels, logits.shape[1]).to(logits.dtype)  # (N, K)
        n_pos = positive.sum(0)
        n_neg = positive.shape[0] - n_pos
        valid = (n_pos > 0) & (n_neg > 0)
        mean_pos = (logits * positive).sum(0) / n_pos.clamp(min=1)
        mean_neg = (logits * (1 - positive)).sum(0) / n_neg.clamp(min=1)
        # A batch where no class has examples on both sides carries no KR signal: 0, not NaN.
        return (mean_pos - mean_neg)[valid].sum() / valid.sum().clamp(min=1)


class MulticlassHinge(nn.Module):
    """One-vs-all hinge ``mean_{n,k} relu(margin - s_nk f_k(x_n))``, s = +1 at the true class and
    -1 elsewhere. The true-class term is weighted by K - 1 so both sides count equally."""

    def __init__(self, margin: float = 1.0) -> None:
        super().__init__()
        if margin <= 0:
            raise ValueError(f"margin must be positive, got {margin}")
        self.margin = margin

    def forward(self, logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        signs = _signs(logits, labels)
        weights = torch.where(signs > 0, logits.shape[1] - 1.0, 1.0)
        hinge = F.relu(self.margin - signs * logits)
        return (weights * hinge).sum(1).mean() / (2.0 * (logits.shape[1] - 1))


class MulticlassHKR(nn.Module):
    """Hinge-KR: ``alpha * hinge(margin) - KR``. ``alpha`` trades accuracy (large) against
    robustness (small); ``margin`` is the logit margin the hinge asks for."""

    def __init__(self, alpha: float = 10.0, margin: float = 1.0) -> None:
        super().__init__()
        if alpha < 0:
            raise ValueError(f"alpha must be >= 0, got {alpha}")
        self.alpha = alpha
        self.hinge = MulticlassHinge(margin)
        self.kr = MulticlassKR()

    def forward(self, logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        return self.alpha * self.hinge(logits, labels) - self.kr(logits, labels)


class TauCrossEntropy(nn.Module):
    """Cross-entropy with temperature and margin: ``CE(tau * (logits - offset * onehot(y)), y) / tau``.

    1-Lipschitz logits are small, so ``tau`` (e.g. 5..20) sets how large a margin the loss keeps
    pushing for. ``offset`` lowers the true logit before the softmax (Prach & Lampert 2022, the loss
    of the SLL and AOC papers): the loss only becomes small once the true logit leads the others by
    about ``offset``, i.e. at a certified radius of about ``offset / sqrt(2)`` for a 1-Lipschitz net.
    """

    def __init__(self, tau: float = 10.0, offset: float = 0.0) -> None:
        super().__init__()
        if tau <= 0:
            raise ValueError(f"tau must be positive, got {tau}")
        if offset < 0:
            raise ValueError(f"offset must be >= 0, got {offset}")
        self.tau = tau
        self.offset = offset

    def forward(self, logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        if self.offset:
            logits = logits - self.offset * F.one_hot(labels, logits.shape[1]).to(logits.dtype)
        return F.cross_entropy(self.tau * logits, labels) / self.tau


LOSSES: dict[str, type[nn.Module]] = {
    "hkr": MulticlassHKR,
    "kr": MulticlassKR,
    "hinge": MulticlassHinge,
    "tau_cross_entropy": TauCrossEntropy,
}


def make_loss(name: str, params: dict[str, Any]) -> nn.Module:
    """Build a loss by name; unknown names or parameters raise ValueError naming them.

    The KR term alone is a quantity to maximise, so as a loss ``kr`` is its negation.
    """
    if name not in LOSSES:
        raise ValueError(f"unknown loss {name!r}; known: {', '.join(LOSSES)}")
    cls = LOSSES[name]
    accepted = set(inspect.signature(cls).parameters)
    for key in params:
        if key not in accepted:
            raise ValueError(f"loss {name!r} has no parameter {key!r} (parameters: {sorted(accepted)})")
    loss = cls(**params)
    return _Negated(loss) if name == "kr" else loss


class _Negated(nn.Module):
    def __init__(self, inner: nn.Module) -> None:
        super().__init__()
        self.inner = inner

    def forward(self, logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        return -self.inner(logits, labels)
