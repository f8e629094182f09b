"""1-Lipschitz layers: weight parametrizations, activations and pooling that fold to plain torch ops."""

from zoo.layers.activations import GroupSort2, MaxMin
from zoo.layers.parametrizations import (
    SpectralBjorck,
    SpectralConv2d,
    SpectralLinear,
    bjorck_orthonormalize,
    spectral_bjorck,
)
from zoo.layers.pooling import ScaledAvgPool2d

__all__ = [
    "GroupSort2",
    "MaxMin",
    "ScaledAvgPool2d",
    "SpectralBjorck",
    "SpectralConv2d",
    "SpectralLinear",
    "bjorck_orthonormalize",
    "spectral_bjorck",
]
