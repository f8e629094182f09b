"""Co-Tuning (You et al. 2020): supervise the frozen source head with translated target labels.

A target label t is translated into a distribution over the source classes, the category
relationship ``p(y_s | y_t = t)``, and the source head, reading the current backbone features, is
trained towards it with a cross-entropy. Two ways to learn the relationship, both from the source
model's probabilities on the labelled target examples:

* direct: average, over the examples of target class t, of the source probabilities;
* calibrated: fit a multinomial logistic map ``p(y_t | source probabilities)``, read it at each pure
  source class (a one-hot input), calibrate it with a fitted temperature, and invert it with
  Bayes' rule using the source class prior ``p(y_s)`` = the mean source probability.

Source probabilities are ``softmax(scale * logits)`` with the source's training scale (1-Lipschitz
logits are small; see :mod:`training.transfer.lwf`).
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from training.transfer.frozen import frozen_copy

__all__ = [
    "CoTuning",
    "bayes_inversion",
    "calibrated_relationship",
    "direct_relationship",
    "fit_temperature",
]


def direct_relationship(
    source_probabilities: torch.Tensor, labels: torch.Tensor, num_classes: int
) -> torch.Tensor:
    """``R[t] = mean of source_probabilities[i] over the examples i with labels[i] == t``.

    Shape: (N, S), (N,) -> (num_classes, S) float32, rows summing to 1. Every class needs an example.
    """
    one_hot = F.one_hot(labels, num_classes).double()  # (N, T)
    counts = one_hot.sum(0)
    if (counts == 0).any():
        missing = torch.nonzero(counts == 0).flatten().tolist()
        raise ValueError(f"no labelled example of target classes {missing}")
    return (one_hot.T @ source_probabilities.double() / counts[:, None]).float()


def fit_temperature(logits: torch.Tensor, labels: torch.Tensor) -> float:
    """The factor t > 0 minimising the cross-entropy of ``softmax(t * logits)`` (temperature scaling,
    L-BFGS on log t in float64)."""
    logits, log_t = logits.double(), torch.zeros((), dtype=torch.float64, requires_grad=True)
    optimizer = torch.optim.LBFGS([log_t], lr=0.5, max_iter=100, line_search_fn="strong_wolfe")

    def closure() -> torch.Tensor:
        optimizer.zero_grad()
        loss = F.cross_entropy(log_t.exp() * logits, labels)
        loss.backward()
        return loss

    optimizer.step(closure)
    return log_t.exp().item()


def bayes_inversion(target_given_source: torch.Tensor, source_prior: torch.Tensor) -> torch.Tensor:
    """``p(s | t) = p(t | s) p(s) / sum_s' p(t | s') p(s')``.

    Shape: (S, T), (S,) -> (T, S), rows summing to 1.
    """
    joint = target_given_source * source_prior[:, None]  # (S, T): p(s, t)
    return (joint / joint.sum(0, keepdim=True)).T


def calibrated_relationship(
    source_probabilities: torch.Tensor, labels: torch.Tensor, num_classes: int, C: float = 1.0
) -> torch.Tensor:
    """The calibrated relationship (see the module docstring).

    A multinomial logistic regression without intercept (scikit-learn, inverse L2 strength ``C``)
    maps source probabilities (N, S) to target labels; its coefficients ``W`` (T, S) give the
    logits ``W[:, s]`` of a pure source class s. The temperature fitted on the training logits
    ``P W^T`` undoes the shrinkage of the L2 penalty; ``p(t | s) = softmax_t(temperature * W[t, s])``.

    Shape: (N, S), (N,) -> (num_classes, S) float32, rows summing to 1.
    """
    from sklearn.linear_model import LogisticRegression

    present = torch.unique(labels)
    if len(present) != num_classes:
        raise ValueError(f"the calibrated relationship needs examples of all {num_classes} target classes")
    probabilities = source_probabilities.double()
    regression = LogisticRegression(C=C, fit_intercept=False, max_iter=2000)
    regression.fit(probabilities.numpy(), labels.numpy())
    coefficients = torch.from_numpy(np.asarray(regression.coef_, dtype=np.float64))
    if num_classes == 2:  # scikit-learn keeps one row for two classes: the logit of class 1
        coefficients = torch.cat([torch.zeros_like(coefficients), coefficients])
    temperature = fit_temperature(probabilities @ coefficients.T, labels)
    target_given_source = torch.softmax(temperature * coefficients.T, dim=1)  # (S, T)
    return bayes_inversion(target_given_source, probabilities.mean(0)).float()


class CoTuning(nn.Module):
    """``mean_b -sum_s R[y_b, s] * log_softmax(scale * h(f_b))_s``: the cross-entropy of the frozen
    source head ``h`` on the current features ``f`` against the translated labels.

    Averaged over the batch, so the weight does not depend on the batch size.

    Args:
        source_head: the source model's last layer (a copy is kept, frozen).
        relationship: (T, S) rows ``p(y_s | y_t)`` (a buffer).
        scale: the source's logit scale.

    Shape: ``forward(features (B, D), labels (B,))`` -> scalar.
    """

    def __init__(self, source_head: nn.Module, relationship: torch.Tensor, scale: float) -> None:
        super().__init__()
        if scale <= 0:
            raise ValueError(f"scale must be positive, got {scale}")
        self.source_head = frozen_copy(source_head)
        self.register_buffer("relationship", relationship.detach().clone())
        self.scale = scale

    def forward(self, features: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        log_probabilities = F.log_softmax(self.scale * self.source_head(features), dim=1)
        return -(self.relationship[labels] * log_probabilities).sum(1).mean()
