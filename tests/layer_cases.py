"""The layers of the library, one table of cases: how to build each (trained form and the plain module
its folded state dict loads into), its input shape and its designed Lipschitz constant. Checked by
tests/zoo/test_layer_library.py (Jacobians, folding) and tests/export (export and verification)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from zoo.layers import (
    Abs,
    AOLConv1d,
    AOLConv2d,
    AOLLinear,
    BatchCentering,
    BatchLipNorm,
    ConvexResidual,
    FrobeniusConv1d,
    FrobeniusConv2d,
    FrobeniusLinear,
    FullSort,
    GlobalL2NormPool2d,
    GroupSort,
    GroupSort2,
    HouseHolder,
    InvertibleDownSampling,
    InvertibleUpSampling,
    LayerCentering,
    LPReLU,
    MaxMin,
    OrthogonalConv1d,
    OrthogonalConv2d,
    OrthogonalLinear,
    ScaledAdaptiveAvgPool2d,
    ScaledAvgPool2d,
    ScaledL2NormPool2d,
    SLLConv1d,
    SLLConv2d,
    SLLLinear,
    SpectralConv1d,
    SpectralConv2d,
    SpectralConvTranspose1d,
    SpectralConvTranspose2d,
    SpectralLinear,
    sll_residual,
)


@dataclass(frozen=True)
class Case:
    """A layer to check.

    Attributes:
        make: builds the (parametrized) layer; called under a fixed seed.
        plain: builds the plain module the folded layer's state dict loads into.
        shape: one input example's shape.
        lip: the Lipschitz constant the layer is designed to have at most.
        orthogonal: all singular values equal ``lip`` (isometry or co-isometry).
    """

    make: Callable[[], nn.Module]
    plain: Callable[[], nn.Module]
    shape: tuple[int, ...]
    lip: float = 1.0
    orthogonal: bool = False


def _sll_plain(inner: Callable[[], nn.Module]) -> Callable[[], nn.Module]:
    return lambda: sll_residual(inner())


def same_arguments(
    constrained: Callable[..., nn.Module], plain: Callable[..., nn.Module], *args: Any, **kwargs: Any
) -> tuple[Callable[[], nn.Module], Callable[[], nn.Module]]:
    """(make, plain) for a layer whose plain module takes the same arguments as its constructor."""
    return lambda: constrained(*args, **kwargs), lambda: plain(*args, **kwargs)


CIRCULAR = {"padding_mode": "circular"}
OPERATOR_NORM_6X6 = {"conv_norm": "operator", "input_size": (6, 6)}
CASES: dict[str, Case] = {
    # dense layers
    "spectral_linear": Case(*same_arguments(SpectralLinear, nn.Linear, 12, 7), (12,), orthogonal=True),
    "spectral_linear_lip2": Case(
        lambda: SpectralLinear(9, 9, lip=2.0, options={"bjorck_tol": 1e-7}),
        lambda: nn.Linear(9, 9),
        (9,),
        lip=2.0,
        orthogonal=True,
    ),
    "frobenius_linear": Case(*same_arguments(FrobeniusLinear, nn.Linear, 12, 1), (12,), orthogonal=True),
    "aol_linear": Case(*same_arguments(AOLLinear, nn.Linear, 10, 14), (10,)),
    "aol_linear_lip05": Case(lambda: AOLLinear(10, 6, lip=0.5), lambda: nn.Linear(10, 6), (10,), lip=0.5),
    "orthogonal_linear": Case(*same_arguments(OrthogonalLinear, nn.Linear, 6, 11), (6,), orthogonal=True),
    "orthogonal_linear_wide": Case(
        lambda: OrthogonalLinear(11, 6, lip=0.5), lambda: nn.Linear(11, 6), (11,), lip=0.5, orthogonal=True
    ),
    # 2-D convolutions
    "spectral_conv2d": Case(*same_arguments(SpectralConv2d, nn.Conv2d, 3, 6, 3, padding=1), (3, 6, 6)),
    "spectral_conv2d_stride2": Case(
        *same_arguments(SpectralConv2d, nn.Conv2d, 4, 8, 3, stride=2, padding=1),
        (4, 6, 6),
    ),
    "spectral_conv2d_groups": Case(
        *same_arguments(SpectralConv2d, nn.Conv2d, 4, 6, 3, padding=1, groups=2),
        (4, 6, 6),
    ),
    "spectral_conv2d_depthwise_stride2": Case(
        *same_arguments(SpectralConv2d, nn.Conv2d, 4, 4, 3, stride=2, padding=1, groups=4),
        (4, 6, 6),
    ),
    # divided by the operator norm on their input size (power iteration; eval mode: the sound bound)
    "spectral_conv2d_operator": Case(
        lambda: SpectralConv2d(3, 6, 3, padding=1, options=OPERATOR_NORM_6X6),
        lambda: nn.Conv2d(3, 6, 3, padding=1),
        (3, 6, 6),
    ),
    "spectral_conv2d_operator_stride2_circular": Case(
        lambda: SpectralConv2d(4, 8, 3, stride=2, padding=1, **CIRCULAR, options=OPERATOR_NORM_6X6),
        lambda: nn.Conv2d(4, 8, 3, stride=2, padding=1, **CIRCULAR),
        (4, 6, 6),
    ),
    "frobenius_conv2d": Case(
        *same_arguments(FrobeniusConv2d, nn.Conv2d, 4, 4, 3, stride=2, padding=1, groups=2),
        (4, 6, 6),
    ),
    "aol_conv2d": Case(*same_arguments(AOLConv2d, nn.Conv2d, 4, 6, 3, padding=1), (4, 6, 6)),
    "aol_conv2d_groups_dilation": Case(
        *same_arguments(AOLConv2d, nn.Conv2d, 4, 6, 3, padding=2, dilation=2, groups=2),
        (4, 6, 6),
    ),
    "aol_conv2d_stride2_circular": Case(
        *same_arguments(AOLConv2d, nn.Conv2d, 3, 5, 3, stride=2, padding=1, **CIRCULAR),
        (3, 6, 6),
    ),
    "orthogonal_conv2d_circular": Case(
        *same_arguments(OrthogonalConv2d, nn.Conv2d, 4, 4, 3, padding=1, **CIRCULAR),
        (4, 6, 6),
        orthogonal=True,
    ),
    "orthogonal_conv2d_expanding": Case(
        *same_arguments(OrthogonalConv2d, nn.Conv2d, 2, 6, 5, padding=2, **CIRCULAR),
        (2, 6, 6),
        orthogonal=True,
    ),
    "orthogonal_conv2d_zeros": Case(
        *same_arguments(OrthogonalConv2d, nn.Conv2d, 4, 4, 3, padding=1), (4, 6, 6)
    ),
    "orthogonal_conv2d_stride2": Case(
        *same_arguments(OrthogonalConv2d, nn.Conv2d, 4, 8, 3, stride=2, padding=1, **CIRCULAR),
        (4, 6, 6),
        orthogonal=True,
    ),
    "orthogonal_conv2d_stride2_expanding": Case(
        *same_arguments(OrthogonalConv2d, nn.Conv2d, 2, 12, 4, stride=2, padding=1, **CIRCULAR),
        (2, 6, 6),
        orthogonal=True,
    ),
    "orthogonal_conv2d_groups_circular": Case(
        *same_arguments(OrthogonalConv2d, nn.Conv2d, 4, 4, 3, padding=1, groups=2, **CIRCULAR),
        (4, 6, 6),
        orthogonal=True,
    ),
    "orthogonal_conv2d_groups_stride2_expanding": Case(
        *same_arguments(OrthogonalConv2d, nn.Conv2d, 2, 12, 4, stride=2, padding=1, groups=2, **CIRCULAR),
        (2, 6, 6),
        orthogonal=True,
    ),
    "orthogonal_conv2d_rko_groups": Case(
        *same_arguments(OrthogonalConv2d, nn.Conv2d, 4, 8, 2, stride=2, groups=2),
        (4, 6, 6),
        orthogonal=True,
    ),
    "orthogonal_conv2d_rko": Case(
        lambda: OrthogonalConv2d(3, 12, 2, stride=2, lip=2.0),
        lambda: nn.Conv2d(3, 12, 2, stride=2),
        (3, 6, 6),
        lip=2.0,
        orthogonal=True,
    ),
    "spectral_conv_transpose2d_stride2": Case(
        *same_arguments(
            SpectralConvTranspose2d, nn.ConvTranspose2d, 4, 6, 3, stride=2, padding=1, output_padding=1
        ),
        (4, 4, 4),
    ),
    # 1-D convolutions
    "spectral_conv_transpose1d": Case(
        *same_arguments(SpectralConvTranspose1d, nn.ConvTranspose1d, 3, 5, 4, stride=2, padding=1),
        (3, 6),
    ),
    "spectral_conv1d": Case(*same_arguments(SpectralConv1d, nn.Conv1d, 3, 5, 3, padding=1), (3, 10)),
    "spectral_conv1d_operator": Case(
        lambda: SpectralConv1d(3, 5, 3, padding=1, options={"conv_norm": "operator", "input_size": (10,)}),
        lambda: nn.Conv1d(3, 5, 3, padding=1),
        (3, 10),
    ),
    "frobenius_conv1d": Case(*same_arguments(FrobeniusConv1d, nn.Conv1d, 3, 5, 3, padding=1), (3, 10)),
    "aol_conv1d": Case(*same_arguments(AOLConv1d, nn.Conv1d, 4, 4, 5, padding=2), (4, 10)),
    "orthogonal_conv1d": Case(
        *same_arguments(OrthogonalConv1d, nn.Conv1d, 4, 4, 3, padding=1, **CIRCULAR),
        (4, 10),
        orthogonal=True,
    ),
    "orthogonal_conv1d_stride2": Case(
        *same_arguments(OrthogonalConv1d, nn.Conv1d, 3, 5, 4, stride=2, padding=1, **CIRCULAR),
        (3, 10),
        orthogonal=True,
    ),
    # residual blocks
    "sll_conv2d": Case(lambda: SLLConv2d(4, 8), _sll_plain(lambda: nn.Conv2d(4, 8, 3, padding=1)), (4, 5, 5)),
    "sll_conv1d": Case(lambda: SLLConv1d(3, 6, 5), _sll_plain(lambda: nn.Conv1d(3, 6, 5, padding=2)), (3, 8)),
    "sll_linear": Case(lambda: SLLLinear(6, 10), _sll_plain(lambda: nn.Linear(6, 10)), (6,)),
    "convex_residual": Case(
        lambda: ConvexResidual(nn.Sequential(OrthogonalConv2d(4, 4, 3, padding=1), MaxMin())),
        lambda: ConvexResidual(nn.Sequential(nn.Conv2d(4, 4, 3, padding=1), MaxMin()), parametrized=False),
        (4, 5, 5),
    ),
    # activations
    "groupsort2": Case(GroupSort2, GroupSort2, (6, 3)),
    "groupsort4": Case(*same_arguments(GroupSort, GroupSort, 4), (8, 3)),
    "fullsort": Case(FullSort, FullSort, (5, 3)),
    "maxmin": Case(MaxMin, MaxMin, (6, 3)),
    "abs": Case(Abs, Abs, (4, 3)),
    "lprelu": Case(lambda: LPReLU(4, init=0.5), lambda: nn.PReLU(4), (4, 3)),
    "householder": Case(*same_arguments(HouseHolder, HouseHolder, 6), (6, 3)),
    # pooling and resampling; overlapping windows have the larger norm their docstrings state
    "scaled_avg_pool": Case(*same_arguments(ScaledAvgPool2d, ScaledAvgPool2d, 2), (2, 6, 6)),
    "scaled_adaptive_avg_pool": Case(
        *same_arguments(ScaledAdaptiveAvgPool2d, ScaledAdaptiveAvgPool2d, 3), (2, 6, 6), orthogonal=True
    ),
    "scaled_adaptive_avg_pool_overlapping": Case(
        *same_arguments(ScaledAdaptiveAvgPool2d, ScaledAdaptiveAvgPool2d, (3, 2)),
        (2, 7, 5),
        lip=1.128,  # adaptive windows overlap: the norm of this geometry is 1.1276
    ),
    "scaled_adaptive_avg_pool_uneven": Case(
        *same_arguments(ScaledAdaptiveAvgPool2d, ScaledAdaptiveAvgPool2d, 3),
        (2, 5, 4),
        lip=1.125,  # windows of 2 and 3 columns: the norm of this geometry is 1.1245
    ),
    "scaled_l2_pool": Case(*same_arguments(ScaledL2NormPool2d, ScaledL2NormPool2d, 2), (2, 6, 6)),
    "scaled_l2_pool_overlapping": Case(
        *same_arguments(ScaledL2NormPool2d, ScaledL2NormPool2d, 3, stride=2, padding=1),
        (2, 6, 6),
        lip=2.0,  # every pixel is in at most 2 x 2 windows
    ),
    "global_l2_pool": Case(GlobalL2NormPool2d, GlobalL2NormPool2d, (3, 4, 4)),
    "invertible_down": Case(
        *same_arguments(InvertibleDownSampling, InvertibleDownSampling, 2), (2, 4, 6), orthogonal=True
    ),
    "invertible_up": Case(
        *same_arguments(InvertibleUpSampling, InvertibleUpSampling, 2), (8, 2, 3), orthogonal=True
    ),
    # normalisation (eval mode: centering is a projection plus a translation)
    "layer_centering": Case(*same_arguments(LayerCentering, LayerCentering, 3), (3, 4, 4)),
    # 1 / running scale, which stays near 1 for the unit-variance inputs of these checks
    "batch_lip_norm": Case(*same_arguments(BatchLipNorm, BatchLipNorm, 3), (3, 4, 4), lip=1.2),
    "batch_centering": Case(*same_arguments(BatchCentering, BatchCentering, 3), (3, 4, 4), orthogonal=True),
}


def build(case: Case) -> nn.Module:
    torch.manual_seed(0)
    return case.make()


def train_a_few_steps(layer: nn.Module, shape: tuple[int, ...], steps: int = 3) -> None:
    """Adam steps that push the output norm up (towards violating the constraint), in training mode."""
    parameters = list(layer.parameters())
    dtype = parameters[0].dtype if parameters else torch.float32
    optimizer = torch.optim.Adam(parameters, lr=0.05) if parameters else None
    layer.train()
    for _ in range(steps):
        output = layer(torch.randn(8, *shape, dtype=dtype))
        if optimizer is not None:
            optimizer.zero_grad()
            (-output.square().sum()).backward()
            optimizer.step()
    layer.eval()
