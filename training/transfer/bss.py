"""Batch Spectral Shrinkage (Chen et al. 2019): damp the feature directions the target data barely
supports, where negative transfer from the source lives."""

from __future__ import annotations

import torch
from torch import nn

__all__ = ["BatchSpectralShrinkage"]


class BatchSpectralShrinkage(nn.Module):
    """``sum_{i <= k} sigma_{-i}^2 / B``: the k smallest squared singular values of the (B, D) batch
    of features, divided by the batch size.

    Normalisation: ``sigma_i^2 / B`` are the eigenvalues of the features' second-moment matrix
    ``F^T F / B``, which do not grow with the batch (the reference's unnormalised sum does).

    Guards: the singular values come from ``torch.linalg.svdvals`` in float32 (also under autocast);
    its backward is ``U diag(grad) V^T`` with no ``1 / (sigma_i^2 - sigma_j^2)`` factor, so it stays
    finite when singular values are equal or close (the reference's full ``torch.svd`` does not).
    When the batch has no more than k singular values (``min(B, D) <= k``) the "smallest" ones would
    be the whole spectrum and the penalty would shrink every feature: it is then 0.

    Args:
        k: how many of the smallest singular values to shrink.

    Shape: ``forward(features (B, D))`` -> scalar.
    """

    def __init__(self, k: int = 1) -> None:
        super().__init__()
        if k < 1:
            raise ValueError(f"k must be >= 1, got {k}")
        self.k = k

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        if features.dim() != 2:
            raise ValueError(f"features must have shape (B, D), got {tuple(features.shape)}")
        if min(features.shape) <= self.k:
            return features.sum() * 0.0  # keeps the graph (and the device) of a normal step
        with torch.autocast(device_type=features.device.type, enabled=False):
            singular_values = torch.linalg.svdvals(features.float())  # descending
        return singular_values[-self.k :].square().sum() / features.shape[0]
