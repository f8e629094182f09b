"""Spectral normalisation + Bjorck orthonormalisation (the deel-torchlip ``Spectral*`` layers).

The weight, viewed as the (out, in * prod(kernel)) matrix, is divided by its largest singular value
(power iteration) and pushed towards the nearest orthonormal matrix by Bjorck iterations, so all its
singular values are close to ``lip``: gradient norm preserving dense layers. A convolution is
additionally divided by ``sqrt(conv_overlap_factor)`` (``conv_norm='overlap'``): sound for every
kernel, loose for most; or by the norm of the convolution operator itself (``conv_norm='operator'``,
power iteration on the convolution: :mod:`zoo.layers.operator_norm`). A transposed
convolution is the adjoint of the convolution with the same weight, whose matrix view is the same,
so it gets the same treatment (:func:`SpectralConvTranspose2d`).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.utils import parametrize

from zoo.layers.operator_norm import ConvOperatorNorm
from zoo.layers.parametrizations import TRANSPOSED_TYPES, check_layer, conv_overlap_factor, layer_constructor

__all__ = [
    "CONV_NORMS",
    "SpectralBjorck",
    "SpectralConv1d",
    "SpectralConv2d",
    "SpectralConvTranspose1d",
    "SpectralConvTranspose2d",
    "SpectralLinear",
    "bjorck_orthonormalize",
    "gram_norm_bound",
    "spectral_bjorck",
]


# How a spectral convolution is scaled after its matrix view is made orthonormal (see spectral_bjorck).
CONV_NORMS = ("overlap", "operator")


def bjorck_orthonormalize(
    matrix: torch.Tensor, iters: int, beta: float = 0.5, tol: float | None = None
) -> torch.Tensor:
    """Bjorck & Bowie iteration ``W <- (1 + beta) W - beta W W^T W`` towards the nearest orthonormal matrix.

    For ``beta = 0.5`` each singular value follows ``s <- s (3 - s^2) / 2``, which maps [0, 2] into
    [-1, 1] with a fixed point at 1: singular values move towards 1 and, from a matrix of norm below
    2, never exceed 1 after the first iteration (which therefore always runs).

    Args:
        matrix: (m, n) matrix whose spectral norm is at most about 1 (the iteration converges for
            norms below sqrt(3)).
        iters: largest number of iterations (each costs two products with the smaller Gram matrix).
        beta: step of the iteration; 0.5 is the classical order-1 Bjorck step.
        tol: stop early (after at least one iteration) once the Gram matrix is within ``tol`` of the
            identity (largest absolute entry); None runs all ``iters`` iterations (no host sync).

    Returns:
        (m, n) matrix with singular values close to 1, differentiable with respect to ``matrix``.
    """
    rows, cols = matrix.shape
    tall = rows >= cols  # then the (n, n) Gram matrix is the smaller one
    for step in range(iters):
        gram = matrix.T @ matrix if tall else matrix @ matrix.T
        if tol is not None and step > 0:
            eye = torch.eye(gram.shape[0], dtype=gram.dtype, device=gram.device)
            if float((gram.detach() - eye).abs().max()) < tol:
                break
        update = matrix @ gram if tall else gram @ matrix
        matrix = (1 + beta) * matrix - beta * update
    return matrix


def gram_norm_bound(matrix: torch.Tensor, steps: int = 3) -> torch.Tensor:
    """Upper bound (in exact arithmetic) of the spectral norm of ``matrix`` by Gram iteration, no gradient.

    ``||G^(2^steps)||_F^(1 / 2^(steps + 1))`` with ``G`` the smaller Gram matrix is at least
    ``sigma_max`` and at most ``n^(1 / 2^(steps + 1)) sigma_max`` (``n`` the smaller dimension:
    a factor 1.48 for n = 512 at 3 steps). The matrix is first divided by its largest entry and each
    power of ``G`` by its Frobenius norm, whose logarithm is accumulated, so nothing overflows. Not a
    certificate (float32 rounding); ``zoo.bounds`` computes those.

    Args:
        matrix: (m, n) matrix.
        steps: number of squarings.

    Returns:
        0-dim tensor.
    """
    with torch.no_grad():
        largest = matrix.abs().max().clamp_min(torch.finfo(matrix.dtype).tiny)
        matrix = matrix / largest
        gram = matrix.T @ matrix if matrix.shape[0] >= matrix.shape[1] else matrix @ matrix.T
        log_norm = torch.zeros((), dtype=matrix.dtype, device=matrix.device)
        for _ in range(steps):
            frobenius = torch.linalg.matrix_norm(gram).clamp_min(torch.finfo(gram.dtype).tiny)
            log_norm = 2 * (log_norm + frobenius.log())
            gram = (gram / frobenius) @ (gram / frobenius)
        log_norm = log_norm + torch.linalg.matrix_norm(gram).log()
        return largest * torch.exp(log_norm / 2 ** (steps + 1))


class SpectralBjorck(nn.Module):
    """``W -> lip * scale * Bjorck(W / sigma(W))`` on the (out, in * prod(kernel)) matrix view of ``W``.

    ``sigma`` is estimated by power iteration with a persistent left singular vector ``u`` (a buffer,
    updated ``power_iters`` times per training forward), then Bjorck iterations make the matrix
    orthonormal. Power iteration converges from below and its vector lags one optimiser step (and
    is not updated in eval mode, where folding happens), so after a large step it can be far too
    low. Bjorck's map keeps singular values up to 2 at most 1 after one iteration; ``sigma`` is
    therefore floored at ``gram_norm_bound(W) / 1.9``, which never exceeds the true norm for
    matrices smaller than 1.9^16 (60 000) but guarantees ``||W / sigma|| <= 1.9``: the result never
    exceeds ``lip`` (with the default step 0.5).

    A grouped convolution is block-diagonal over its groups: each group's block of rows (its own
    matrix view) is normalised on its own, with its own slice of ``u``.

    Args:
        out_features: first dimension of the weight (rows of the matrix view).
        groups: convolution groups (the rows split into that many blocks).
        lip: the Lipschitz coefficient the layer should have.
        scale: extra factor, e.g. ``1 / sqrt(conv_overlap_factor(...))`` for convolutions.
        power_iters: power iterations per training step.
        bjorck_iters: largest number of Bjorck iterations per forward.
        bjorck_beta: Bjorck step (0.5 is the one that never overshoots 1).
        bjorck_tol: stop Bjorck early at this distance of the Gram matrix to the identity (None: never).
        generator: optional generator for the random start of ``u`` (seeded runs).
    """

    def __init__(
        self,
        out_features: int,
        *,
        groups: int = 1,
        lip: float = 1.0,
        scale: float = 1.0,
        power_iters: int = 1,
        bjorck_iters: int = 15,
        bjorck_beta: float = 0.5,
        bjorck_tol: float | None = None,
        generator: torch.Generator | None = None,
    ) -> None:
        super().__init__()
        if lip <= 0:
            raise ValueError(f"lip must be positive, got {lip}")
        if power_iters < 1 or bjorck_iters < 1:
            raise ValueError("power_iters and bjorck_iters must be >= 1")
        if out_features % groups:
            raise ValueError(f"groups ({groups}) must divide out_features ({out_features})")
        self.groups = groups
        self.lip = lip
        self.scale = scale
        self.power_iters = power_iters
        self.bjorck_iters = bjorck_iters
        self.bjorck_beta = bjorck_beta
        self.bjorck_tol = bjorck_tol
        u = torch.randn(out_features, generator=generator)
        self.register_buffer("u", F.normalize(u, dim=0))

    def forward(self, weight: torch.Tensor) -> torch.Tensor:
        blocks = weight.flatten(1).chunk(self.groups, dim=0)
        vectors = self.u.chunk(self.groups)  # views: updating one updates the buffer
        if self.training:  # all updates before any use, which autograd saves
            with torch.no_grad():
                for matrix, u in zip(blocks, vectors, strict=True):
                    estimate = u
                    for _ in range(self.power_iters):
                        v = F.normalize(matrix.T @ estimate, dim=0)
                        estimate = F.normalize(matrix @ v, dim=0)
                    u.copy_(estimate)
        orthonormal = torch.cat([self._orthonormal(m, u) for m, u in zip(blocks, vectors, strict=True)])
        return (self.lip * self.scale * orthonormal).view_as(weight)

    def _orthonormal(self, matrix: torch.Tensor, u: torch.Tensor) -> torch.Tensor:
        """``Bjorck(matrix / sigma)`` for one block, with ``u`` its power-iteration vector."""
        v = F.normalize(matrix.T @ u, dim=0)
        sigma = torch.maximum(torch.dot(u, matrix @ v), gram_norm_bound(matrix) / 1.9)
        return bjorck_orthonormalize(matrix / sigma, self.bjorck_iters, self.bjorck_beta, self.bjorck_tol)

    def extra_repr(self) -> str:
        return (
            f"groups={self.groups}, lip={self.lip}, scale={self.scale:.4g}, power_iters={self.power_iters}, "
            f"bjorck_iters={self.bjorck_iters}, bjorck_tol={self.bjorck_tol}"
        )


def spectral_bjorck(
    module: nn.Module,
    *,
    lip: float = 1.0,
    power_iters: int = 1,
    bjorck_iters: int = 15,
    bjorck_tol: float | None = None,
    conv_norm: str = "overlap",
    input_size: Sequence[int] | None = None,
    generator: torch.Generator | None = None,
) -> nn.Module:
    """Register a :class:`SpectralBjorck` parametrization on ``module.weight`` (in place) and return it.

    Works for ``nn.Linear``, ``nn.Conv1d`` / ``nn.Conv2d`` (any groups, zero or circular padding) and
    ``nn.ConvTranspose1d`` / ``2d`` (groups=1). A transposed convolution's weight ``(in, out, *kernel)``
    viewed as an ``(in, out * prod(kernel))`` matrix is the matrix view of the convolution it is the
    adjoint of (same stride, dilation), whose norm bounds its own.

    A convolution's orthonormal matrix view is then scaled to keep the convolution ``lip``-Lipschitz,
    as ``conv_norm`` says:

    * ``'overlap'`` (deel-torchlip's way): times ``1 / sqrt(conv_overlap_factor)``, sound for every
      kernel but 1/3 for a 3x3 conv, typically 2-3 times below the norm the conv could have;
    * ``'operator'``: divided by the operator norm of the convolution on inputs of ``input_size``
      (:class:`~zoo.layers.operator_norm.ConvOperatorNorm`, power iteration), so its largest
      singular value is about ``lip``. Conv1d / Conv2d only; needs ``input_size``.
    """
    check_layer(module, "spectral_bjorck", transposed=True)
    if conv_norm not in CONV_NORMS:
        raise ValueError(f"unknown conv_norm {conv_norm!r}; known: {', '.join(CONV_NORMS)}")
    operator = conv_norm == "operator" and not isinstance(module, nn.Linear)
    if operator and isinstance(module, TRANSPOSED_TYPES):
        raise ValueError("conv_norm='operator' supports nn.Conv1d / nn.Conv2d, not transposed convolutions")
    if operator and input_size is None:
        raise ValueError(
            "conv_norm='operator' needs the input_size of the convolution's inputs, e.g. (28, 28)"
        )
    scale = 1.0
    if not isinstance(module, nn.Linear) and not operator:
        scale = 1.0 / math.sqrt(conv_overlap_factor(module.kernel_size, module.stride, module.dilation))
    parametrization = SpectralBjorck(
        module.weight.shape[0],
        groups=getattr(module, "groups", 1),
        lip=1.0 if operator else lip,
        scale=scale,
        power_iters=power_iters,
        bjorck_iters=bjorck_iters,
        bjorck_tol=bjorck_tol,
        generator=generator,
    )
    parametrize.register_parametrization(module, "weight", parametrization)
    if operator:
        normalize = ConvOperatorNorm(module, input_size, lip=lip, generator=generator)
        parametrize.register_parametrization(module, "weight", normalize)
    return module


SpectralLinear = layer_constructor(nn.Linear, spectral_bjorck, "SpectralLinear")
SpectralConv1d = layer_constructor(nn.Conv1d, spectral_bjorck, "SpectralConv1d")
SpectralConv2d = layer_constructor(nn.Conv2d, spectral_bjorck, "SpectralConv2d")
SpectralConvTranspose1d = layer_constructor(nn.ConvTranspose1d, spectral_bjorck, "SpectralConvTranspose1d")
SpectralConvTranspose2d = layer_constructor(nn.ConvTranspose2d, spectral_bjorck, "SpectralConvTranspose2d")
