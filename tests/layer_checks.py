"""Ground truth shared by the layer tests, computed independently of the bound engine."""

from __future__ import annotations

import torch
from torch import nn
from torch.func import jacrev


def jacobian_matrix(layer: nn.Module, shape: tuple[int, ...]) -> torch.Tensor:
    """Jacobian of ``layer`` (float64 weights) at a random float64 point of one example's ``shape``,
    as an (out_numel, in_numel) matrix: the dense matrix of a linear layer."""
    x = torch.randn(*shape, dtype=torch.float64)
    jac = jacrev(lambda v: layer(v.unsqueeze(0)).squeeze(0))(x).detach()
    return jac.reshape(-1, x.numel())
