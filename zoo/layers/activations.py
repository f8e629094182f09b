"""1-Lipschitz activations. Each is 1-Lipschitz in L2 for every value of its parameters, so the
certificate needs no weight of theirs; all export to plain ONNX ops (Min / Max / TopK / Abs / Where).

GroupSort, GroupSort2, FullSort and MaxMin permute their input (piecewise), Abs flips signs, and
HouseHolder reflects pairs: all are gradient-norm preserving (orthogonal Jacobian almost everywhere).
"""

from __future__ import annotations

import math

import torch
from torch import nn

__all__ = ["Abs", "FullSort", "GroupSort", "GroupSort2", "HouseHolder", "MaxMin"]


def _check_channels(x: torch.Tensor, multiple: int, layer: str) -> None:
    if torch.jit.is_tracing():  # shapes are traced values there; the eager call already checked
        return
    if x.dim() < 2 or x.shape[1] % multiple:
        raise ValueError(
            f"{layer} needs a number of channels in dim 1 divisible by {multiple}, got shape {tuple(x.shape)}"
        )


class GroupSort(nn.Module):
    """Sort the channels (dim 1) in ascending order within consecutive groups of ``group_size``.

    Args:
        group_size: channels per group; None sorts all channels as one group (:class:`FullSort`).

    Shape: (N, C, *) -> (N, C, *), C divisible by ``group_size``.
    """

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
            low, high = groups.unbind(dim=2)
            return torch.stack((torch.minimum(low, high), torch.maximum(low, high)), dim=2).flatten(1, 2)
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

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        _check_channels(x, 2, "MaxMin")
        a, b = x.chunk(2, dim=1)
        return torch.cat((torch.maximum(a, b), torch.minimum(a, b)), dim=1)


class Abs(nn.Module):
    """Elementwise absolute value. Shape: any -> same."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.abs()


class HouseHolder(nn.Module):
    """Learnable Householder activation (Singla et al. 2022) on channel pairs.

    The channels (dim 1) are split in halves a, b; each pair z = (a_i, b_i) is kept when
    ``v . z >= 0`` and reflected to ``z - 2 (v . z) v`` otherwise, with the unit vector
    ``v = (cos theta_i, sin theta_i)``. On the line ``v . z = 0`` both branches agree, and each branch
    is orthogonal, so the map is 1-Lipschitz for every ``theta``. ``theta = -pi / 4`` (the default
    start) is :class:`MaxMin`.

    Args:
        channels: C, the number of channels (even); there is one angle per pair.

    Shape: (N, C, *) -> (N, C, *).
    """

    def __init__(self, channels: int) -> None:
        super().__init__()
        if channels % 2:
            raise ValueError(f"HouseHolder needs an even number of channels, got {channels}")
        self.theta = nn.Parameter(torch.full((channels // 2,), -math.pi / 4))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        _check_channels(x, 2, "HouseHolder")
        a, b = x.chunk(2, dim=1)
        shape = (1, -1) + (1,) * (x.dim() - 2)
        cos, sin = self.theta.cos().view(shape), self.theta.sin().view(shape)
        projection = torch.clamp(a * cos + b * sin, max=0.0)  # v . z where the pair is reflected
        return torch.cat((a - 2 * projection * cos, b - 2 * projection * sin), dim=1)

    def extra_repr(self) -> str:
        return f"channels={2 * self.theta.numel()}"
