"""Orthogonal dense layers and orthogonal convolutions that fold into one plain convolution.

* Dense, and convolutions whose kernel is no larger than their stride (RKO, "reshaped kernel
  orthogonalisation"): such a convolution applies its (out, in * prod(kernel)) matrix to disjoint
  windows, so making that matrix orthonormal (rows or columns, whichever fit) makes the layer
  orthogonal.
* Larger kernels (AOC-style, Boissin et al. 2025): a BCOP block convolution (Li et al. 2019) on ``m``
  channels, stride 1, kernel ``k - s + 1`` per axis, followed by an RKO convolution of kernel and stride
  ``s``. Each BCOP block is the 2-tap convolution ``[P, I - P]`` along one axis, with ``P`` an
  orthogonal projector: orthogonal as a circular convolution. Composing the kernels (the full
  correlation of one kernel with the other) gives a single kernel ``k``, stride ``s``, computing the
  composition exactly.

Circular padding makes the folded convolution orthogonal (all singular values 1) when the padding
keeps ``n / s`` outputs; zero padding restricts the circular convolution of a larger grid, so its norm
is at most 1. ``m`` is chosen so that the composition is an isometry (``out >= in * prod(s)``:
``m = out // prod(s)``, the input channels embedded into the first ``in`` of ``m``) or a co-isometry
(``m = in``, every BCOP block unitary, the RKO matrix with orthonormal rows).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from functools import reduce

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.utils import parametrize

from zoo.layers.parametrizations import check_layer, layer_constructor

__all__ = [
    "BlockOrthogonal",
    "OrthogonalConv1d",
    "OrthogonalConv2d",
    "OrthogonalLinear",
    "Orthonormal",
    "compose_kernels",
    "orthogonal",
    "orthonormalize",
]

_CONV = {1: F.conv1d, 2: F.conv2d}


def orthonormalize(matrix: torch.Tensor) -> torch.Tensor:
    """The orthonormal factor of the QR decomposition of ``matrix`` (or of its transpose when wide).

    The factor is made unique (and continuous) by giving ``R`` a non-negative diagonal, so an
    orthonormal input is returned unchanged.

    Args:
        matrix: (..., m, n) full-rank matrices.

    Returns:
        (..., m, n): orthonormal columns when m >= n, orthonormal rows otherwise; differentiable.
    """
    wide = matrix.shape[-2] < matrix.shape[-1]
    q, r = torch.linalg.qr(matrix.mT if wide else matrix)
    signs = torch.where(torch.diagonal(r, dim1=-2, dim2=-1) < 0, -1.0, 1.0).to(q.dtype)
    q = q * signs.unsqueeze(-2)
    return q.mT if wide else q


def compose_kernels(first: torch.Tensor, second: torch.Tensor) -> torch.Tensor:
    """Kernel of ``conv(second, stride s) o conv(first, stride 1)``, as one convolution of stride ``s``.

    ``y = sum_a first[a] x[. + a]`` then ``z[i] = sum_b second[b] y[s i + b]`` gives
    ``z[i] = sum_t (sum_{a + b = t} second[b] first[a]) x[s i + t]``: the full correlation below.

    Args:
        first: (c2, c1, *ka) kernel applied first (stride 1).
        second: (c3, c2, *kb) kernel applied second.

    Returns:
        (c3, c1, *(ka + kb - 1)) kernel.
    """
    spatial = list(range(2, second.dim()))
    padding = [k - 1 for k in second.shape[2:]]
    fused = _CONV[len(spatial)](first.transpose(0, 1), second.flip(spatial), padding=padding)
    return fused.transpose(0, 1)


class Orthonormal(nn.Module):
    """``W -> lip * orthonormalize(W viewed as (out, in * prod(kernel)))``: orthogonal dense layers and
    RKO convolutions (kernel <= stride on every axis). A grouped convolution is block-diagonal: each
    group's block of rows is orthonormalised on its own."""

    def __init__(self, *, groups: int = 1, lip: float = 1.0) -> None:
        super().__init__()
        if lip <= 0:
            raise ValueError(f"lip must be positive, got {lip}")
        self.groups = groups
        self.lip = lip

    def forward(self, weight: torch.Tensor) -> torch.Tensor:
        blocks = weight.flatten(1).chunk(self.groups, dim=0)
        return (self.lip * torch.cat([orthonormalize(block) for block in blocks])).view_as(weight)

    def extra_repr(self) -> str:
        return f"groups={self.groups}, lip={self.lip}"


class BlockOrthogonal(nn.Module):
    """Block-orthogonal convolution kernel (BCOP blocks then RKO), ``kernel >= stride`` on every axis.

    Trained tensors (the parametrization's originals):
        matrix: (out, m * prod(stride)), orthonormalised into the RKO kernel (out, m, *stride).
        projectors: (groups * blocks, m, rank), one per BCOP block; each is orthonormalised to ``U``
            and gives the projector ``P = U U^T``. There are ``kernel - stride`` blocks per axis.

    A grouped convolution is block-diagonal over its groups: each group (``in / groups`` to
    ``out / groups`` channels) gets its own blocks and its own rows of ``matrix``.

    Args:
        in_channels, out_channels: the convolution's channels.
        kernel_size, stride: per spatial axis (1 or 2 axes).
        groups: the convolution's groups.
        lip: the Lipschitz coefficient; the kernel is orthogonal times ``lip``.

    Output: the (out, in / groups, *kernel_size) kernel.
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: Sequence[int],
        stride: Sequence[int],
        *,
        groups: int = 1,
        lip: float = 1.0,
    ) -> None:
        super().__init__()
        if lip <= 0:
            raise ValueError(f"lip must be positive, got {lip}")
        if any(k < s for k, s in zip(kernel_size, stride, strict=True)):
            raise ValueError("BlockOrthogonal needs kernel_size >= stride on every axis")
        window = math.prod(stride)
        in_channels, out_channels = in_channels // groups, out_channels // groups  # of one group
        expanding = out_channels >= in_channels * window
        self.groups = groups
        self.in_channels = in_channels
        self.out_channels = out_channels
        self.stride = tuple(stride)
        self.channels = out_channels // window if expanding else in_channels
        self.rank = max(1, self.channels // 2)
        # Axis of every BCOP block, in the order they are applied.
        self.block_axes = tuple(
            axis for axis, (k, s) in enumerate(zip(kernel_size, stride, strict=True)) for _ in range(k - s)
        )
        self.lip = lip

    def forward(self, matrix: torch.Tensor, projectors: torch.Tensor) -> torch.Tensor:
        groups = zip(matrix.chunk(self.groups), projectors.chunk(self.groups), strict=True)
        return torch.cat([self._group_kernel(rows, group_projectors) for rows, group_projectors in groups])

    def _group_kernel(self, matrix: torch.Tensor, projectors: torch.Tensor) -> torch.Tensor:
        """The (out / groups, in / groups, *kernel) kernel of one group."""
        m = self.channels
        u = orthonormalize(projectors)
        eye = torch.eye(m, dtype=u.dtype, device=u.device)
        blocks = []
        for axis, p in zip(self.block_axes, u @ u.mT, strict=True):
            shape = [m, m] + [2 if a == axis else 1 for a in range(len(self.stride))]
            blocks.append(torch.stack((p, eye - p), dim=-1).view(shape))
        rko = orthonormalize(matrix).view(self.out_channels, m, *self.stride)
        kernel = reduce(compose_kernels, [*blocks, rko])
        return self.lip * kernel[:, : self.in_channels]

    def right_inverse(self, weight: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Originals for a newly registered layer: a random point of the parametrization's domain
        (drawn from torch's global generator). A block-orthogonal kernel cannot be recovered from an
        arbitrary kernel, so ``weight`` only gives the dtype and device."""
        options = {"dtype": weight.dtype, "device": weight.device}
        rows = self.groups * self.out_channels
        matrix = torch.randn(rows, self.channels * math.prod(self.stride), **options)
        projectors = torch.randn(self.groups * len(self.block_axes), self.channels, self.rank, **options)
        return matrix, projectors

    def extra_repr(self) -> str:
        return (
            f"groups={self.groups}, channels={self.channels}, rank={self.rank}, "
            f"blocks={len(self.block_axes)}, lip={self.lip}"
        )


def orthogonal(module: nn.Module, *, lip: float = 1.0) -> nn.Module:
    """Make ``module`` (``nn.Linear``, ``nn.Conv1d``, ``nn.Conv2d``) ``lip`` times orthogonal, in place.

    Dense layers and convolutions with kernel <= stride get :class:`Orthonormal` (RKO); convolutions
    with kernel >= stride get :class:`BlockOrthogonal` (kernel == stride takes the simpler RKO path).
    Convolutions need dilation=1 and zero or circular padding; each group of a grouped convolution is
    made orthogonal on its own (the whole is then block-diagonal orthogonal).
    """
    check_layer(module, "orthogonal", dilation=False)
    groups = getattr(module, "groups", 1)
    if isinstance(module, nn.Linear) or all(
        k <= s for k, s in zip(module.kernel_size, module.stride, strict=True)
    ):
        parametrization: nn.Module = Orthonormal(groups=groups, lip=lip)
    elif all(k >= s for k, s in zip(module.kernel_size, module.stride, strict=True)):
        parametrization = BlockOrthogonal(
            module.in_channels, module.out_channels, module.kernel_size, module.stride, groups=groups, lip=lip
        )
    else:
        raise ValueError(
            f"orthogonal needs kernel_size <= stride or kernel_size >= stride on every axis, got "
            f"kernel_size={module.kernel_size}, stride={module.stride}"
        )
    parametrize.register_parametrization(module, "weight", parametrization)
    return module


OrthogonalLinear = layer_constructor(nn.Linear, orthogonal, "OrthogonalLinear")
OrthogonalConv1d = layer_constructor(nn.Conv1d, orthogonal, "OrthogonalConv1d")
OrthogonalConv2d = layer_constructor(nn.Conv2d, orthogonal, "OrthogonalConv2d")
