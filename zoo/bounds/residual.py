"""Sound bound of an *adjoint residual* block ``x -> x + B relu(A x + b) + c`` from its weights.

Such a block is how an SLL block (and the Householder activation) computes once folded: ``A`` is a
dense layer or a stride-1 convolution and ``B`` a layer of the adjoint geometry (dense; the
transposed convolution with the same arguments; or, as the zoo folds it because runtimes run it
faster, the plain convolution with the :func:`adjoint_kernel`). The triangle inequality gives
``1 + ||B|| ||A||`` (about 3 for an SLL block); :func:`adjoint_residual_bound` gives about 1, for
any weights:

``B`` is the adjoint map of the kernel ``K_B`` read in ``A``'s layout. Fit per hidden channel ``h``
the weight ``d_h = max(0, -<K_B[h], K_A[h]> / (2 ||K_A[h]||^2))`` and let ``E = K_B + 2 D K_A`` (the
part of ``B`` that is not ``-2 A^T D``). With ``L`` the ReLU slopes between two inputs (diagonal, in
[0, 1]) the difference of outputs is ``J (x - y)`` with ``J = (I - 2 A^T D L A) + E^T L A``. The
first term is symmetric with ``0 <= A^T D L A <= A^T D A``, whose norm is ``rho = ||D^(1/2) A||^2``,
so its norm is at most ``max(1, 2 rho - 1)``; the second is at most ``||E|| ||A||``. Every factor is
a sound bound of an operator built from the weights, so the sum is a sound bound for *any* weights;
for a folded SLL block ``d = 1 / T``, ``E`` is rounding noise and ``rho <= 1``: the bound is 1 plus
the margins.

The certifier (``zoo.certify``, from modules) and the artifact verifiers (``export``, from graph
ops) both describe the two layers as :class:`LinearMap` and call :func:`adjoint_residual_bound`, so
they compute the same number.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from zoo.bounds.conv import conv_bound
from zoo.bounds.dense import matrix_norm_bound

__all__ = ["LinearMap", "adjoint_kernel", "adjoint_residual_bound"]


@dataclass(frozen=True, eq=False)
class LinearMap:
    """One linear layer (bias excluded): its weight, in torch's layout, and its geometry.

    Attributes:
        weight: ``(out, in)`` for a dense map; ``(out, in / groups, *kernel)`` for a convolution;
            ``(in, out / groups, *kernel)`` for a transposed convolution (torch's ConvTranspose layout).
        transposed: a transposed convolution.
        stride, padding, dilation, output_padding: per spatial axis (empty for a dense map);
            ``padding`` is symmetric zero padding.
        groups: convolution groups.
    """

    weight: torch.Tensor
    transposed: bool = False
    stride: tuple[int, ...] = ()
    padding: tuple[int, ...] = ()
    dilation: tuple[int, ...] = ()
    output_padding: tuple[int, ...] = ()
    groups: int = 1

    @property
    def dense(self) -> bool:
        return self.weight.dim() == 2

    @classmethod
    def of(cls, module: nn.Module) -> LinearMap | None:
        """The map of an ``nn.Linear`` / ``nn.ConvNd`` / ``nn.ConvTransposeNd`` with zero padding, else
        None."""
        if isinstance(module, nn.Linear):
            return cls(module.weight.detach())
        if not isinstance(module, nn.modules.conv._ConvNd) or module.padding_mode != "zeros":
            return None
        if isinstance(module.padding, str):
            return None
        return cls(
            module.weight.detach(),
            transposed=module.transposed,
            stride=tuple(module.stride),
            padding=tuple(module.padding),
            dilation=tuple(module.dilation),
            output_padding=tuple(module.output_padding),
            groups=module.groups,
        )


def adjoint_kernel(weight: torch.Tensor) -> torch.Tensor:
    """The weight of the plain layer that computes the adjoint of a layer of weight ``weight``.

    For a dense ``(out, in)`` weight it is the transpose. For a stride-1 convolution
    ``(out, in, *kernel)`` with padding ``p`` and dilation ``d`` it is the convolution with channels
    swapped and the kernel flipped, ``(in, out, *kernel)``, with padding ``d (k - 1) - p`` (the same
    padding for a "same" convolution), which computes exactly what the transposed convolution does.
    The map is its own inverse.
    """
    spatial = tuple(range(2, weight.dim()))
    swapped = weight.transpose(0, 1)
    return swapped.flip(spatial) if spatial else swapped


def _adjoint_kernels(inner: LinearMap, outer: LinearMap) -> tuple[torch.Tensor, torch.Tensor] | None:
    """(K_A, K_B), both in ``inner``'s layout, when ``outer`` computes the adjoint geometry of
    ``inner``: a transposed convolution with the same arguments, or a plain layer of the
    :func:`adjoint_kernel` form (stride 1, groups 1 throughout); None otherwise."""
    plain_geometry = (
        not inner.transposed
        and inner.dense == outer.dense
        and all(s == 1 for s in inner.stride + outer.stride)
        and inner.groups == outer.groups == 1
        and inner.dilation == outer.dilation
    )
    if not plain_geometry:
        return None
    if outer.transposed:
        same = (
            outer.weight.shape == inner.weight.shape
            and outer.padding == inner.padding
            and not any(outer.output_padding)
        )
        return (inner.weight, outer.weight) if same else None
    kernel = tuple(inner.weight.shape[2:])
    complement = tuple(d * (k - 1) - p for k, p, d in zip(kernel, inner.padding, inner.dilation, strict=True))
    swapped = (inner.weight.shape[1], inner.weight.shape[0], *kernel)
    same = tuple(outer.weight.shape) == swapped and outer.padding == complement
    return (inner.weight, adjoint_kernel(outer.weight)) if same else None


def adjoint_residual_bound(inner: LinearMap, outer: LinearMap, input_size: tuple[int, ...]) -> float | None:
    """Sound bound of ``x -> x + B relu(A x + b) + c`` (module docstring), or None when ``outer``
    (``B``) does not have the adjoint geometry of ``inner`` (``A``).

    Args:
        inner: ``A``, a dense map or a convolution.
        outer: ``B``, a dense map or a transposed convolution.
        input_size: spatial size of ``x`` (empty for a dense map).
    """
    kernels = _adjoint_kernels(inner, outer)
    if kernels is None:
        return None
    kernel_a, kernel_b = (kernel.detach().to(device="cpu", dtype=torch.float64) for kernel in kernels)
    per_channel = (-1,) + (1,) * (kernel_a.dim() - 1)
    dims = tuple(range(1, kernel_a.dim()))
    norms = kernel_a.square().sum(dims)
    fit = -(kernel_a * kernel_b).sum(dims) / (2 * norms.clamp_min(torch.finfo(norms.dtype).tiny))
    d = torch.where(norms > 0, fit, 0.0).clamp_min(0.0).view(per_channel)

    def bound(kernel: torch.Tensor) -> float:
        if inner.dense:
            return matrix_norm_bound(kernel)
        return conv_bound(kernel, input_size=input_size, padding=inner.padding, dilation=inner.dilation)

    rho = bound(d.sqrt() * kernel_a) ** 2
    return max(1.0, 2 * rho - 1) + bound(kernel_b + 2 * d * kernel_a) * bound(kernel_a)
