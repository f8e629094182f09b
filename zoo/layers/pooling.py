"""Pooling layers rescaled so that they do not shrink the signal more than needed."""

from __future__ import annotations

import math

import torch
from torch import nn

__all__ = ["ScaledAvgPool2d"]


class ScaledAvgPool2d(nn.AvgPool2d):
    """``nn.AvgPool2d`` multiplied by ``sqrt(kernel_h * kernel_w)``.

    A non-overlapping average pool (stride == kernel) has L2 operator norm ``1 / sqrt(kh * kw)``;
    the rescaling makes it exactly 1 in that case. Overlapping windows have a larger norm: the
    certificate computes the true one from the window, stride and input size.

    Shape: (N, C, H, W) -> (N, C, H_out, W_out) as for ``nn.AvgPool2d``.
    """

    def __init__(self, kernel_size, stride=None, padding=0) -> None:
        super().__init__(kernel_size, stride, padding, ceil_mode=False, count_include_pad=True)
        kh, kw = nn.modules.utils._pair(self.kernel_size)
        self.scale = math.sqrt(kh * kw)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return super().forward(x) * self.scale

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, scale={self.scale:.4g}"
