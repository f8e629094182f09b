"""1-Lipschitz layers that fold to plain torch ops: weight parametrizations (one family per module),
activations, pooling and resampling, normalisation, residual blocks.

``FAMILIES`` maps a family name to the function that constrains an ``nn.Linear`` / ``nn.Conv1d`` /
``nn.Conv2d`` in place (``family(layer, lip=1.0)``); architectures take the name as an option.
"""

from collections.abc import Callable

from torch import nn

from zoo.layers.activations import Abs, FullSort, GroupSort, GroupSort2, HouseHolder, LPReLU, MaxMin
from zoo.layers.aol import AOLConv1d, AOLConv2d, AOLLinear, AOLRescale, aol
from zoo.layers.frobenius import (
    FrobeniusConv1d,
    FrobeniusConv2d,
    FrobeniusLinear,
    FrobeniusNormalize,
    frobenius,
)
from zoo.layers.normalization import (
    BatchCentering,
    BatchLipNorm,
    BatchReCentering2d,
    BatchReNorm2d,
    LayerCentering,
    fold_batchrenorm,
)
from zoo.layers.operator_norm import ConvOperatorNorm
from zoo.layers.orthogonal import (
    BlockOrthogonal,
    OrthogonalConv1d,
    OrthogonalConv2d,
    OrthogonalLinear,
    Orthonormal,
    orthogonal,
)
from zoo.layers.pooling import (
    GlobalL2NormPool2d,
    ScaledAdaptiveAvgPool2d,
    ScaledAvgPool2d,
    ScaledL2NormPool2d,
)
from zoo.layers.resampling import InvertibleDownSampling, InvertibleUpSampling
from zoo.layers.residual import (
    SLL,
    ConvexResidual,
    Residual,
    SLLConv1d,
    SLLConv2d,
    SLLLinear,
    sll_residual,
)
from zoo.layers.spectral import (
    CONV_NORMS,
    SpectralBjorck,
    SpectralConv1d,
    SpectralConv2d,
    SpectralConvTranspose1d,
    SpectralConvTranspose2d,
    SpectralLinear,
    bjorck_orthonormalize,
    spectral_bjorck,
)

FAMILIES: dict[str, Callable[..., nn.Module]] = {
    "spectral": spectral_bjorck,
    "frobenius": frobenius,
    "aol": aol,
    "orthogonal": orthogonal,
}

__all__ = [
    "CONV_NORMS",
    "FAMILIES",
    "SLL",
    "AOLConv1d",
    "AOLConv2d",
    "AOLLinear",
    "AOLRescale",
    "Abs",
    "BatchCentering",
    "BatchLipNorm",
    "BatchReCentering2d",
    "BatchReNorm2d",
    "BlockOrthogonal",
    "ConvOperatorNorm",
    "ConvexResidual",
    "FrobeniusConv1d",
    "FrobeniusConv2d",
    "FrobeniusLinear",
    "FrobeniusNormalize",
    "FullSort",
    "GlobalL2NormPool2d",
    "GroupSort",
    "GroupSort2",
    "HouseHolder",
    "InvertibleDownSampling",
    "InvertibleUpSampling",
    "LPReLU",
    "LayerCentering",
    "MaxMin",
    "OrthogonalConv1d",
    "OrthogonalConv2d",
    "OrthogonalLinear",
    "Orthonormal",
    "Residual",
    "SLLConv1d",
    "SLLConv2d",
    "SLLLinear",
    "ScaledAdaptiveAvgPool2d",
    "ScaledAvgPool2d",
    "ScaledL2NormPool2d",
    "SpectralBjorck",
    "SpectralConv1d",
    "SpectralConv2d",
    "SpectralConvTranspose1d",
    "SpectralConvTranspose2d",
    "SpectralLinear",
    "aol",
    "bjorck_orthonormalize",
    "fold_batchrenorm",
    "frobenius",
    "orthogonal",
    "sll_residual",
    "spectral_bjorck",
]
