"""Ground truth shared by the layer tests, computed independently of the bound engine, and the
residual blocks that the certifier and the artifact verifiers are both checked on."""

from __future__ import annotations

import torch
from torch import nn
from torch.func import jacrev

from zoo.bounds import adjoint_kernel
from zoo.layers import Residual


def jacobian_matrix(layer: nn.Module, shape: tuple[int, ...]) -> torch.Tensor:
    """Jacobian of ``layer`` (float64 weights) at a random float64 point of one example's ``shape``,
    as an (out_numel, in_numel) matrix: the dense matrix of a linear layer."""
    x = torch.randn(*shape, dtype=torch.float64)
    jac = jacrev(lambda v: layer(v.unsqueeze(0)).squeeze(0))(x).detach()
    return jac.reshape(-1, x.numel())


def adjoint_residual(kind: str, noise: float, sign: float) -> tuple[Residual, tuple[int, ...]]:
    """``x + B relu(A x + b)`` with ``B = sign * 2 A^T D + noise`` for random positive ``D``; ``B`` is
    a dense layer ('linear'), a transposed convolution ('conv1d', 'conv2d') or the plain convolution
    of the flipped kernel ('conv2d-flipped', the form SLL blocks fold into)."""
    if kind == "linear":
        inner, outer, shape = nn.Linear(5, 8), nn.Linear(8, 5, bias=False), (5,)
        outer_kernel = adjoint_kernel
    elif kind == "conv1d":
        inner, outer, shape = nn.Conv1d(3, 4, 3, padding=1), nn.ConvTranspose1d(4, 3, 3, padding=1), (3, 7)
        outer_kernel = lambda k: k  # noqa: E731
    elif kind == "conv2d":
        inner, outer, shape = nn.Conv2d(3, 4, 3, padding=1), nn.ConvTranspose2d(4, 3, 3, padding=1), (3, 5, 5)
        outer_kernel = lambda k: k  # noqa: E731
    else:
        inner, outer, shape = nn.Conv2d(3, 4, 3, padding=1), nn.Conv2d(4, 3, 3, padding=1), (3, 5, 5)
        outer_kernel = adjoint_kernel
    with torch.no_grad():
        d = torch.rand(inner.weight.shape[0]).view(-1, *(1,) * (inner.weight.dim() - 1)) * 0.3
        kernel = sign * 2 * d * inner.weight + noise * torch.randn_like(inner.weight)
        outer.weight.copy_(outer_kernel(kernel))
    return Residual(nn.Sequential(inner, nn.ReLU(), outer)), shape
