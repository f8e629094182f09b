"""Pooling layers rescaled so that they do not shrink the signal more than needed.

Their certificates (``zoo.certify``) are computed from the window, stride and input size: the
average pools are linear and bounded exactly, the L2-norm pools by the proof in their docstrings.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.modules.utils import _pair

__all__ = ["GlobalL2NormPool2d", "ScaledAdaptiveAvgPool2d", "ScaledAvgPool2d", "ScaledL2NormPool2d"]

# Squared norms are clamped from below before the square root: max(||w||, sqrt(EPS)) is still
# 1-Lipschitz in the window w and has a zero gradient (not NaN) at w = 0.
EPS = 1e-12


class ScaledAvgPool2d(nn.AvgPool2d):
    """``nn.AvgPool2d`` multiplied by ``sqrt(kernel_h * kernel_w)``.

    A non-overlapping average pool (stride == kernel) has L2 operator norm ``1 / sqrt(kh * kw)``;
    the rescaling makes it exactly 1 in that case. Overlapping windows have a larger norm: the
    certificate computes the true one from the window, stride and input size.

    Shape: (N, C, H, W) -> (N, C, H_out, W_out) as for ``nn.AvgPool2d``.
    """

    def __init__(self, kernel_size, stride=None, padding=0) -> None:
        super().__init__(kernel_size, stride, padding, ceil_mode=False, count_include_pad=True)
        kh, kw = _pair(self.kernel_size)
        self.scale = math.sqrt(kh * kw)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return super().forward(x) * self.scale

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, scale={self.scale:.4g}"


class ScaledAdaptiveAvgPool2d(nn.AdaptiveAvgPool2d):
    """``nn.AdaptiveAvgPool2d`` multiplied by ``sqrt((H / H_out) * (W / W_out))``.

    When the output size divides the input size the windows are disjoint and of that area, so the
    layer has norm exactly 1 (e.g. output size 1: the sum over the image divided by sqrt(H W)).
    Otherwise adaptive windows overlap and the certificate computes the true norm.

    Shape: (N, C, H, W) -> (N, C, *output_size).
    """

    def scale(self, height: int, width: int) -> float:
        """The factor applied for an (height, width) input."""
        out_h, out_w = _pair(self.output_size)
        return math.sqrt((height / (out_h or height)) * (width / (out_w or width)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return super().forward(x) * self.scale(x.shape[-2], x.shape[-1])


class ScaledL2NormPool2d(nn.Module):
    """The L2 norm of every pooling window: ``sqrt(sum of x^2 over the window)`` (zero padding).

    This is deel-torchlip's ``ScaledL2NormPool2d`` (the root mean square scaled by sqrt(kh * kw)).

    Lipschitz bound: let ``m`` be the largest number of windows that contain one input pixel (1 when
    stride >= kernel). For inputs x, y and a window w, ``| ||x_w|| - ||y_w|| | <= ||x_w - y_w||``
    (triangle inequality), so ``||f(x) - f(y)||^2 <= sum_w ||x_w - y_w||^2 <= m ||x - y||^2``: the
    layer is ``sqrt(m)``-Lipschitz. The clamp of the squared norm at ``EPS`` keeps this (a maximum of
    1-Lipschitz functions). ``zoo.certify`` computes ``m`` from the window, stride, padding and
    input size.

    Shape: (N, C, H, W) -> (N, C, H_out, W_out) as for ``nn.AvgPool2d``.
    """

    def __init__(self, kernel_size, stride=None, padding=0) -> None:
        super().__init__()
        self.kernel_size = _pair(kernel_size)
        self.stride = _pair(stride if stride is not None else kernel_size)
        self.padding = _pair(padding)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        area = self.kernel_size[0] * self.kernel_size[1]
        squares = F.avg_pool2d(x.square(), self.kernel_size, self.stride, self.padding) * area
        return squares.clamp_min(EPS).sqrt()

    def extra_repr(self) -> str:
        return f"kernel_size={self.kernel_size}, stride={self.stride}, padding={self.padding}"


class GlobalL2NormPool2d(nn.Module):
    """The L2 norm of each channel over all its pixels; 1-Lipschitz (every pixel is in one window,
    see :class:`ScaledL2NormPool2d`).

    Shape: (N, C, H, W) -> (N, C, 1, 1).
    """

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.square().sum(dim=(-2, -1), keepdim=True).clamp_min(EPS).sqrt()
