"""Gradient-norm-preserving activations: each is 1-Lipschitz in L2 (a permutation of its input
within small groups), parameter free, and exports to plain ONNX ops (Split / Min / Max / Concat)."""

from __future__ import annotations

import torch
from torch import nn

__all__ = ["GroupSort2", "MaxMin"]


def _check_even_channels(x: torch.Tensor, layer: str) -> None:
    if x.dim() < 2 or x.shape[1] % 2:
        raise ValueError(
            f"{layer} needs an even number of channels in dim 1, got shape {tuple(x.shape)}"
        )


class MaxMin(nn.Module):
    """Split the channels (dim 1) in halves a, b and return ``cat(max(a, b), min(a, b))``.

    Shape: (N, C, *) -> (N, C, *), C even.
    """

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        _check_even_channels(x, "MaxMin")
        a, b = x.chunk(2, dim=1)
        return torch.cat((torch.maximum(a, b), torch.minimum(a, b)), dim=1)


class GroupSort2(nn.Module):
    """Sort each pair of neighbouring channels (2k, 2k+1) in ascending order.

    Shape: (N, C, *) -> (N, C, *), C even. Equivalent to GroupSort with group size 2.
    """

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        _check_even_channels(x, "GroupSort2")
        pairs = x.unflatten(1, (x.shape[1] // 2, 2))
        low, high = pairs.unbind(dim=2)
        return torch.stack((torch.minimum(low, high), torch.maximum(low, high)), dim=2).flatten(
            1, 2
        )
