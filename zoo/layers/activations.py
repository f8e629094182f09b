"""1-Lipschitz activations. Each is 1-Lipschitz in L2 for every value of its parameters, so the
certificate needs no weight of theirs (except HouseHolder's, bounded like a residual block); all
export to plain ONNX ops (Min / Max / TopK / Abs; Conv, Relu, Conv, Add for HouseHolder).

GroupSort, GroupSort2, FullSort and MaxMin permute their input (piecewise), Abs flips signs, and
HouseHolder reflects pairs: all are gradient-norm preserving (orthogonal Jacobian almost everywhere).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.utils import parametrize

from zoo.bounds.residual import LinearMap, adjoint_kernel

__all__ = ["Abs", "FullSort", "GroupSort", "GroupSort2", "HouseHolder", "LPReLU", "MaxMin", "SlopeClamp"]

_LAYERS = {0: F.linear, 1: F.conv1d, 2: F.conv2d}
"""Spatial axes -> the map of a weight (a 1x1 kernel for convolutions)."""


def _check_channels(x: torch.Tensor, multiple: int, layer: str) -> None:
    if torch.jit.is_tracing():  # shapes are traced values there; the eager call already checked
        return
    if x.dim() < 2 or x.shape[1] % multiple:
        raise ValueError(
            f"{layer} needs a number of channels in dim 1 divisible by {multiple}, got shape {tuple(x.shape)}"
        )


def _min_max(a: torch.Tensor, b: torch.Tensor, through_relu: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """``(minimum(a, b), maximum(a, b))``.

    With ``through_relu`` (training mode of a layer whose ``minmax_through_relu`` is set), as
    ``b - relu(b - a)`` and ``a + relu(b - a)``: the same values up to one rounding, whose backward pass
    (one ReLU mask) costs about a fifth of that of ``minimum`` / ``maximum`` (measured on the CPU).
    Otherwise, and always in eval mode (in which models are folded and exported), the ``minimum`` /
    ``maximum`` ops themselves, which the file verifiers recognise.
    """
    if not through_relu:
        return torch.minimum(a, b), torch.maximum(a, b)
    gap = torch.relu(b - a)
    return b - gap, a + gap


class GroupSort(nn.Module):
    """Sort the channels (dim 1) in ascending order within consecutive groups of ``group_size``.

    Args:
        group_size: channels per group; None sorts all channels as one group (:class:`FullSort`).

    Shape: (N, C, *) -> (N, C, *), C divisible by ``group_size``.
    """

    minmax_through_relu = False
    """Groups of 2 in training mode: min / max through one ReLU (faster backward, the same values up
    to one rounding); a recipe's ``minmax_through_relu`` sets it (training.recipe.build_model)."""

    def __init__(self, group_size: int | None = 2) -> None:
        super().__init__()
        if group_size is not None and group_size < 1:
            raise ValueError(f"group_size must be >= 1, got {group_size}")
        self.group_size = group_size

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        size = self.group_size or x.shape[1]
        _check_channels(x, size, type(self).__name__)
        groups = x.unflatten(1, (x.shape[1] // size, size))
        if size == 2:  # min / max export to elementwise ops, cheaper than a sort
            low, high = _min_max(*groups.unbind(dim=2), self.training and self.minmax_through_relu)
            return torch.stack((low, high), dim=2).flatten(1, 2)
        return groups.sort(dim=2).values.flatten(1, 2)

    def extra_repr(self) -> str:
        return f"group_size={self.group_size}"


class GroupSort2(GroupSort):
    """:class:`GroupSort` with groups of 2: sort each pair of neighbouring channels (2k, 2k+1)."""

    def __init__(self) -> None:
        super().__init__(2)


class FullSort(GroupSort):
    """:class:`GroupSort` with one group: sort all channels (dim 1) in ascending order."""

    def __init__(self) -> None:
        super().__init__(None)


class MaxMin(nn.Module):
    """Split the channels (dim 1) in halves a, b and return ``cat(max(a, b), min(a, b))``.

    Shape: (N, C, *) -> (N, C, *), C even.
    """

    minmax_through_relu = False
    """In training mode: min / max through one ReLU, as :attr:`GroupSort.minmax_through_relu`."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        _check_channels(x, 2, "MaxMin")
        low, high = _min_max(*x.chunk(2, dim=1), self.training and self.minmax_through_relu)
        return torch.cat((high, low), dim=1)


class Abs(nn.Module):
    """Elementwise absolute value. Shape: any -> same."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.abs()


class SlopeClamp(nn.Module):
    """Parametrization ``slope -> clamp(slope, -1, 1)`` of a PReLU's negative slopes (values already
    in [-1, 1] are their own preimage)."""

    def forward(self, slope: torch.Tensor) -> torch.Tensor:
        return slope.clamp(-1.0, 1.0)

    def right_inverse(self, value: torch.Tensor) -> torch.Tensor:
        return value


def LPReLU(num_parameters: int = 1, init: float = 0.25) -> nn.PReLU:
    """``nn.PReLU`` with its learnt negative slopes clamped to [-1, 1] (deel-torchlip's LPReLU): each
    output is ``x`` or ``a x`` with ``|a| <= 1``, so the layer is 1-Lipschitz. Folds into a plain
    ``nn.PReLU`` (certified from its slopes: ``max(1, max |a|)``).

    Args:
        num_parameters: 1 (one slope) or the number of channels (dim 1).
        init: initial slope, in [-1, 1].

    Shape: (N, C, *) -> same.
    """
    if not -1 <= init <= 1:
        raise ValueError(f"init must be in [-1, 1], got {init}")
    layer = nn.PReLU(num_parameters, init)
    parametrize.register_parametrization(layer, "weight", SlopeClamp())
    return layer


class HouseHolder(nn.Module):
    """Learnable Householder activation (Singla et al. 2022) on channel pairs.

    The channels (dim 1) are split in halves a, b; each pair z = (a_i, b_i) is kept when
    ``v . z >= 0`` and reflected to ``z - 2 (v . z) v`` otherwise, with the unit vector
    ``v = (cos theta_i, sin theta_i)``. On the line ``v . z = 0`` both branches agree, and each branch
    is orthogonal, so the map is 1-Lipschitz for every ``theta``. ``theta = -pi / 4`` (the default
    start) is :class:`MaxMin`.

    It is computed as ``x - 2 A^T relu(A x)`` with ``A = -[diag(cos theta) | diag(sin theta)]``
    (``relu(-v . z)`` is how far the pair is on the reflected side): a 1x1 convolution by ``A`` (a
    dense map for inputs without spatial axes), a ReLU, one by ``-2 A^T`` and the residual sum. That
    is the form of a folded SLL block, which certificates and artifact verifiers bound from ``A``
    (:func:`zoo.bounds.adjoint_residual_bound`).

    Args:
        channels: C, the number of channels (even); there is one angle per pair.

    Shape: (N, C) or (N, C, L) or (N, C, H, W) -> same shape.
    """

    def __init__(self, channels: int) -> None:
        super().__init__()
        if channels % 2:
            raise ValueError(f"HouseHolder needs an even number of channels, got {channels}")
        self.theta = nn.Parameter(torch.full((channels // 2,), -math.pi / 4))

    def reflection_kernel(self, spatial_dims: int) -> torch.Tensor:
        """``A``: a (C / 2, C) matrix, viewed as a 1x1 kernel (C / 2, C, 1, ...) with ``spatial_dims``
        kernel axes."""
        identity = torch.eye(self.theta.numel(), dtype=self.theta.dtype, device=self.theta.device)
        matrix = -torch.cat((identity * self.theta.cos(), identity * self.theta.sin()), dim=1)
        return matrix.view(*matrix.shape, *(1,) * spatial_dims)

    def linear_maps(self, spatial_dims: int) -> tuple[LinearMap, LinearMap]:
        """``A`` and ``-2 A^T`` as the layers :meth:`forward` applies, for inputs with
        ``spatial_dims`` spatial axes."""
        kernel = self.reflection_kernel(spatial_dims).detach()
        ones, zeros = (1,) * spatial_dims, (0,) * spatial_dims
        inner = LinearMap(kernel, stride=ones, padding=zeros, dilation=ones)
        outer = LinearMap(-2 * adjoint_kernel(kernel), stride=ones, padding=zeros, dilation=ones)
        return inner, outer

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        _check_channels(x, 2, "HouseHolder")
        spatial_dims = x.dim() - 2
        if spatial_dims not in _LAYERS:
            raise ValueError(
                f"HouseHolder takes (N, C), (N, C, L) or (N, C, H, W) inputs, got {tuple(x.shape)}"
            )
        kernel, layer = self.reflection_kernel(spatial_dims), _LAYERS[spatial_dims]
        return x + layer(F.relu(layer(x, kernel)), -2 * adjoint_kernel(kernel))

    def extra_repr(self) -> str:
        return f"channels={2 * self.theta.numel()}"
