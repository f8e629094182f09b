"""Weight parametrizations that make ``nn.Linear`` / ``nn.Conv*d`` layers 1-Lipschitz while training.

They follow the style of ``torch.nn.utils.parametrizations``: a small ``nn.Module`` whose ``forward``
maps the trained tensor to the effective weight, registered with ``torch.nn.utils.parametrize``.
Folding (``zoo.fold``) replaces each parametrized weight by its current value, leaving a plain
``nn.Linear`` / ``nn.Conv2d`` whose state dict loads into the same architecture built without
parametrizations.

These layers are *designed* to be 1-Lipschitz; nothing here is a certificate. The certificate is
computed afterwards from the folded weights by ``zoo.certify``.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.utils import parametrize

__all__ = [
    "SpectralBjorck",
    "SpectralConv2d",
    "SpectralLinear",
    "bjorck_orthonormalize",
    "conv_overlap_factor",
    "spectral_bjorck",
]


def bjorck_orthonormalize(matrix: torch.Tensor, iters: int, beta: float = 0.5) -> torch.Tensor:
    """Bjorck & Bowie iteration ``W <- (1 + beta) W - beta W W^T W`` towards the nearest orthonormal matrix.

    Args:
        matrix: (m, n) matrix whose spectral norm is at most about 1 (the iteration converges for
            norms below sqrt(3)); singular values are pushed towards 1.
        iters: number of iterations (each costs two matrix products with the smaller Gram matrix).
        beta: step of the iteration; 0.5 is the classical order-1 Bjorck step.

    Returns:
        (m, n) matrix with singular values close to 1, differentiable with respect to ``matrix``.
    """
    rows, cols = matrix.shape
    for _ in range(iters):
        if rows >= cols:  # (n, n) Gram matrix is the smaller one
            matrix = (1 + beta) * matrix - beta * matrix @ (matrix.T @ matrix)
        else:
            matrix = (1 + beta) * matrix - beta * (matrix @ matrix.T) @ matrix
    return matrix


def conv_overlap_factor(kernel_size: tuple[int, ...], stride: tuple[int, ...]) -> int:
    """Largest number of output positions that read one input pixel: prod(ceil(k / s)).

    A convolution whose reshaped kernel matrix (c_out, c_in * prod(k)) has spectral norm 1 has an
    operator norm of at most sqrt(this factor), so dividing the weight by its square root keeps the
    convolution 1-Lipschitz (sound, usually loose: the certificate measures the real norm).
    """
    return math.prod(math.ceil(k / s) for k, s in zip(kernel_size, stride, strict=True))


class SpectralBjorck(nn.Module):
    """``W -> lip * scale * Bjorck(W / sigma(W))`` on the (out, in * prod(kernel)) matrix view of ``W``.

    ``sigma`` is estimated by power iteration with a persistent left singular vector ``u`` (a buffer,
    updated ``power_iters`` times per training forward), then Bjorck iterations make the matrix
    orthonormal, so all its singular values are close to 1 (gradient norm preserving).

    Args:
        out_features: first dimension of the weight (rows of the matrix view).
        lip: the Lipschitz coefficient the layer should have.
        scale: extra factor, e.g. ``1 / sqrt(conv_overlap_factor(...))`` for convolutions.
        power_iters: power iterations per training step.
        bjorck_iters: Bjorck iterations per forward.
        bjorck_beta: Bjorck step.
        generator: optional generator for the random start of ``u`` (seeded runs).
    """

    def __init__(
        self,
        out_features: int,
        *,
        lip: float = 1.0,
        scale: float = 1.0,
        power_iters: int = 1,
        bjorck_iters: int = 15,
        bjorck_beta: float = 0.5,
        generator: torch.Generator | None = None,
    ) -> None:
        super().__init__()
        if lip <= 0:
            raise ValueError(f"lip must be positive, got {lip}")
        if power_iters < 1 or bjorck_iters < 0:
            raise ValueError("power_iters must be >= 1 and bjorck_iters >= 0")
        self.lip = lip
        self.scale = scale
        self.power_iters = power_iters
        self.bjorck_iters = bjorck_iters
        self.bjorck_beta = bjorck_beta
        u = torch.randn(out_features, generator=generator)
        self.register_buffer("u", F.normalize(u, dim=0))

    def forward(self, weight: torch.Tensor) -> torch.Tensor:
        matrix = weight.flatten(1)
        if self.training:
            with torch.no_grad():
                u = self.u
                for _ in range(self.power_iters):
                    v = F.normalize(matrix.T @ u, dim=0)
                    u = F.normalize(matrix @ v, dim=0)
                self.u.copy_(u)
        v = F.normalize(matrix.T @ self.u, dim=0)
        sigma = torch.dot(self.u, matrix @ v)
        orthonormal = bjorck_orthonormalize(matrix / sigma, self.bjorck_iters, self.bjorck_beta)
        return (self.lip * self.scale * orthonormal).view_as(weight)

    def extra_repr(self) -> str:
        return (
            f"lip={self.lip}, scale={self.scale:.4g}, power_iters={self.power_iters}, "
            f"bjorck_iters={self.bjorck_iters}"
        )


def spectral_bjorck(
    module: nn.Module,
    *,
    lip: float = 1.0,
    power_iters: int = 1,
    bjorck_iters: int = 15,
    generator: torch.Generator | None = None,
) -> nn.Module:
    """Register a :class:`SpectralBjorck` parametrization on ``module.weight`` (in place) and return it.

    Works for ``nn.Linear`` and ``nn.Conv1d`` / ``nn.Conv2d``; convolutions get the extra factor
    ``1 / sqrt(conv_overlap_factor)`` so that the whole convolution stays 1-Lipschitz.
    """
    if isinstance(module, nn.Linear):
        scale = 1.0
    elif isinstance(module, nn.Conv1d | nn.Conv2d):
        if module.groups != 1:
            raise ValueError("spectral_bjorck supports groups=1 convolutions only")
        scale = 1.0 / math.sqrt(conv_overlap_factor(module.kernel_size, module.stride))
    else:
        raise TypeError(
            f"spectral_bjorck expects nn.Linear or nn.Conv1d/2d, got {type(module).__name__}"
        )
    parametrization = SpectralBjorck(
        module.weight.shape[0],
        lip=lip,
        scale=scale,
        power_iters=power_iters,
        bjorck_iters=bjorck_iters,
        generator=generator,
    )
    parametrize.register_parametrization(module, "weight", parametrization)
    return module


def SpectralLinear(
    in_features: int, out_features: int, bias: bool = True, *, lip: float = 1.0, **options
) -> nn.Linear:
    """``nn.Linear(in_features, out_features, bias)`` made ``lip``-Lipschitz by :func:`spectral_bjorck`."""
    return spectral_bjorck(nn.Linear(in_features, out_features, bias), lip=lip, **options)


def SpectralConv2d(
    in_channels: int,
    out_channels: int,
    kernel_size,
    *args,
    lip: float = 1.0,
    options=None,
    **kwargs,
) -> nn.Conv2d:
    """``nn.Conv2d(...)`` (same arguments) made ``lip``-Lipschitz by :func:`spectral_bjorck`."""
    conv = nn.Conv2d(in_channels, out_channels, kernel_size, *args, **kwargs)
    return spectral_bjorck(conv, lip=lip, **(options or {}))
