"""Frobenius normalisation (deel-torchlip ``Frobenius*``): ``W -> lip * W / ||W||_F``.

The spectral norm never exceeds the Frobenius norm, so a dense layer is ``lip``-Lipschitz, exactly so
when ``W`` has rank one (a single output: the usual last layer of a binary classifier). No power
iteration, no state: the cheapest constraint. Convolutions are further divided by
``sqrt(conv_overlap_factor)`` (see :func:`zoo.layers.parametrizations.conv_overlap_factor`); a grouped
convolution is block diagonal, its norm is the largest block norm, below the whole kernel's norm.
"""

from __future__ import annotations

import math

import torch
from torch import nn
from torch.nn.utils import parametrize

from zoo.layers.parametrizations import check_layer, conv_overlap_factor, layer_constructor

__all__ = ["FrobeniusConv1d", "FrobeniusConv2d", "FrobeniusLinear", "FrobeniusNormalize", "frobenius"]


class FrobeniusNormalize(nn.Module):
    """``W -> lip * scale * W / ||W||_F`` for a weight of any shape.

    Args:
        lip: the Lipschitz coefficient the layer should have.
        scale: extra factor, ``1 / sqrt(conv_overlap_factor)`` for convolutions.
    """

    def __init__(self, *, lip: float = 1.0, scale: float = 1.0) -> None:
        super().__init__()
        if lip <= 0:
            raise ValueError(f"lip must be positive, got {lip}")
        self.lip = lip
        self.scale = scale

    def forward(self, weight: torch.Tensor) -> torch.Tensor:
        return weight * (self.lip * self.scale / torch.linalg.vector_norm(weight))

    def extra_repr(self) -> str:
        return f"lip={self.lip}, scale={self.scale:.4g}"


def frobenius(module: nn.Module, *, lip: float = 1.0) -> nn.Module:
    """Register :class:`FrobeniusNormalize` on ``module.weight`` (in place) and return ``module``.

    Accepts ``nn.Linear`` and ``nn.Conv1d`` / ``nn.Conv2d`` (any groups, stride and dilation; zero or
    circular padding).
    """
    check_layer(module, "frobenius")
    scale = 1.0
    if not isinstance(module, nn.Linear):
        scale = 1.0 / math.sqrt(conv_overlap_factor(module.kernel_size, module.stride, module.dilation))
    parametrize.register_parametrization(module, "weight", FrobeniusNormalize(lip=lip, scale=scale))
    return module


FrobeniusLinear = layer_constructor(nn.Linear, frobenius, "FrobeniusLinear")
FrobeniusConv1d = layer_constructor(nn.Conv1d, frobenius, "FrobeniusConv1d")
FrobeniusConv2d = layer_constructor(nn.Conv2d, frobenius, "FrobeniusConv2d")
