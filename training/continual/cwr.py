"""CWR* (Lomonaco, Maltoni & Pellegrini 2020): consolidated rows of the output layer, and the
parametrization that keeps that layer 1-Lipschitz.

The output layer ``W`` (K classes x F features, no bias) is trained one experience at a time, but
each class keeps a *consolidated* row ``saved_c`` (zeros until the class is first trained):

- before training, the rows of the classes being trained (current and replayed) are reset to
  their consolidated values and every other row to zero;
- after training, with ``globavg`` the mean of *all entries* of the trained rows (one scalar, as in
  the reference implementations), each trained class ``c`` gets ``w' = W_c - globavg`` and
  ``saved_c = w'`` with ``past_c = n_c`` if it was never trained, else, with
  ``wpast = sqrt(past_c / n_c)``, ``saved_c = (saved_c * wpast + w') / (wpast + 1)`` and
  ``past_c += n_c``. ``n_c`` counts the patterns of ``c`` in the experience (current and replayed);
- the consolidated rows are then written into ``W`` (zeros for classes never trained).

A weighted average of rows trained at different times has no reason to keep the layer's spectral
norm at most 1. :class:`ProjectedRows` puts the layer back in that budget every time it computes:
the rows of the *active* classes (the trained ones while training, every consolidated one after)
minus their mean row (which adds the same value to every logit: it changes no prediction and no
margin, but spends norm), divided by ``max(1, (1 + SLACK) * spectral norm)``. So the layer trains
under the constraint it ships with, and CWR* consolidates the rows the network computed with.
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import nn
from torch.nn.utils import parametrize

__all__ = ["SLACK", "CWRStar", "ProjectedRows", "project_rows"]

# The projected layer's spectral norm is at most 1 / (1 + SLACK) in float64: room for the float32
# rounding of its entries and the certificate's relative margin, so its certified bound stays <= 1.
SLACK = 1e-4


class ProjectedRows(nn.Module):
    """Parametrization of a (K, F) output layer's weight: the active rows, centred and scaled into
    spectral norm ``1 / (1 + SLACK)`` when they exceed it; inactive rows are zero.

    The spectral norm is the largest singular value of the float64 matrix (exact up to rounding, and
    differentiable), not an estimate: the slack covers the rest, and the certificate recomputes it.

    Args:
        num_classes: K.

    Shape: (K, F) -> (K, F).
    """

    def __init__(self, num_classes: int) -> None:
        super().__init__()
        self.register_buffer("active", torch.zeros(num_classes, dtype=torch.bool))

    def forward(self, weight: torch.Tensor) -> torch.Tensor:
        mask = self.active.to(torch.float64).unsqueeze(1)
        rows = weight.double() * mask
        centred = (rows - rows.sum(0) / mask.sum().clamp_min(1)) * mask
        norm = torch.linalg.matrix_norm(centred, ord=2) * (1 + SLACK)
        return (centred / norm.clamp_min(1.0)).to(weight.dtype)

    def right_inverse(self, weight: torch.Tensor) -> torch.Tensor:
        """Assigning a weight stores it as it is (the projection is applied when it is used)."""
        return weight


def project_rows(head: nn.Linear) -> ProjectedRows:
    """Register :class:`ProjectedRows` on ``head.weight`` (no active class yet); returns it."""
    projection = ProjectedRows(head.out_features).to(head.weight.device)
    parametrize.register_parametrization(head, "weight", projection)
    return projection


class CWRStar:
    """The consolidated rows of ``head``.

    Args:
        head: the output layer (K, F); its bias, if any, should stay zero and frozen. When its weight
            carries a :class:`ProjectedRows` parametrization, the rows are consolidated as the layer
            computes them, and the parametrization's active classes follow CWR*: the trained ones
            during an experience, every consolidated one after it.
    """

    def __init__(self, head: nn.Linear) -> None:
        self.head = head
        self.saved = torch.zeros_like(head.weight.detach())
        self.past = torch.zeros(head.out_features, dtype=torch.float64)

    def _write(self, weight: torch.Tensor, active: torch.Tensor) -> None:
        """Set the layer's stored weight (the raw tensor of a parametrized one) and active rows."""
        if parametrize.is_parametrized(self.head, "weight"):
            self.head.parametrizations.weight.original.copy_(weight)
            self.head.parametrizations.weight[0].active.copy_(active)
        else:
            self.head.weight.copy_(weight)

    @torch.no_grad()
    def reset_head(self, classes: list[int]) -> None:
        """Rows of ``classes`` <- their consolidated values; every other row <- 0."""
        weight = torch.zeros_like(self.saved)
        weight[classes] = self.saved[classes]
        active = torch.zeros(len(weight), dtype=torch.bool, device=weight.device)
        active[classes] = True
        self._write(weight, active)

    @torch.no_grad()
    def consolidate(self, counts: torch.Tensor) -> None:
        """Merge the trained rows into the consolidated ones.

        Args:
            counts: (K,) number of patterns of each class trained on in this experience; the classes
                with a non-zero count are the trained ones.
        """
        classes = counts.nonzero().flatten().tolist()
        trained = self.head.weight[classes]
        centred = trained - trained.mean()
        for c, row in zip(classes, centred, strict=True):
            n = float(counts[c])
            if self.past[c] > 0:
                wpast = math.sqrt(float(self.past[c]) / n)
                self.saved[c] = (self.saved[c] * wpast + row) / (wpast + 1)
                self.past[c] += n
            else:
                self.saved[c] = row
                self.past[c] = n

    @torch.no_grad()
    def write_head(self) -> None:
        """The consolidated rows into the output layer (what is evaluated and shipped)."""
        self._write(self.saved, (self.past > 0).to(self.saved.device))

    def state_dict(self) -> dict[str, Any]:
        return {"saved": self.saved, "past": self.past}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.saved = state["saved"].to(self.head.weight.device)
        self.past = state["past"].clone()
