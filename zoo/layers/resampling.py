"""Invertible resampling: moving pixels between space and channels is a permutation of the input
values, so it is orthogonal (norm 1 both ways) and loses nothing, unlike pooling."""

from __future__ import annotations

from torch import nn

__all__ = ["InvertibleDownSampling", "InvertibleUpSampling"]


class InvertibleDownSampling(nn.PixelUnshuffle):
    """Space to depth: every ``factor x factor`` block of pixels becomes ``factor^2`` channels.

    Shape: (N, C, H, W) -> (N, C * factor^2, H / factor, W / factor); H and W divisible by ``factor``.
    """

    def __init__(self, factor: int) -> None:
        super().__init__(factor)


class InvertibleUpSampling(nn.PixelShuffle):
    """Depth to space, the inverse of :class:`InvertibleDownSampling`.

    Shape: (N, C * factor^2, H, W) -> (N, C, H * factor, W * factor).
    """

    def __init__(self, factor: int) -> None:
        super().__init__(factor)
