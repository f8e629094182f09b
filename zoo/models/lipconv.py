"""lipconv: a VGG-like 1-Lipschitz convolutional network (conv stages, pooling, dense head)."""

from __future__ import annotations

from collections.abc import Sequence

from torch import nn

from zoo.layers import CONV_NORMS, ScaledAvgPool2d, ScaledL2NormPool2d
from zoo.models.common import check_choice, layer_constraint, make_activation

POOLS: dict[str, type[nn.Module]] = {"avg": ScaledAvgPool2d, "l2": ScaledL2NormPool2d}


def lipconv(
    *,
    input_shape: tuple[int, int, int],
    num_classes: int,
    parametrized: bool = True,
    widths: Sequence[int] = (16, 32, 64),
    dense: Sequence[int] = (128,),
    activation: str = "groupsort2",
    family: str = "spectral",
    init: str = "torch",
    bjorck_iters: int = 15,
    bjorck_tol: float | None = None,
    conv_norm: str = "overlap",
    pool: str = "avg",
    pool_from: int = 1,
) -> nn.Sequential:
    """Conv stages of 3x3 convolutions (zero padding 1) each followed by ``activation``; from stage
    ``pool_from`` on each stage ends with a 2x2 pool; then Flatten, dense layers, logits.

    Args:
        input_shape: (C, H, W) of the inputs, e.g. (1, 8, 8) for digits.
        num_classes: number of logits.
        parametrized: register the family's parametrizations (training mode) or build plain layers.
        widths: output channels of each conv stage.
        dense: hidden widths of the dense head.
        activation: 'groupsort2', 'maxmin', 'abs' or 'householder'.
        family: constraint of every conv and dense layer: 'spectral' (spectral normalisation +
            Bjorck), 'aol', 'orthogonal' or 'frobenius'.
        init: 'torch' (the layers' own initialisation) or 'orthogonal' (see ``constrain``).
        bjorck_iters: Bjorck iterations of the 'spectral' family (ignored by the others).
        bjorck_tol: stop Bjorck early at this distance to orthonormal ('spectral' family; None: never).
        conv_norm: how a 'spectral' conv is scaled: 'overlap' (by 1/3, the worst case of a 3x3
            kernel) or 'operator' (by its operator norm on its input size; see ``spectral_bjorck``).
        pool: 'avg' (ScaledAvgPool2d) or 'l2' (ScaledL2NormPool2d, deel-torchlip's).
        pool_from: index of the first stage that ends with a pool (0: every stage).

    Shape: (N, *input_shape) -> (N, num_classes).
    """
    check_choice("conv_norm", conv_norm, CONV_NORMS)
    check_choice("pool", pool, POOLS)
    if conv_norm != "overlap" and family != "spectral":
        raise ValueError(f"conv_norm {conv_norm!r} is an option of the 'spectral' family, not {family!r}")
    channels, height, width = input_shape
    constrained = layer_constraint(family, parametrized, init, bjorck_iters, bjorck_tol)

    layers: list[nn.Module] = []
    for stage, out_channels in enumerate(widths):
        conv_options = (
            {"conv_norm": conv_norm, "input_size": (height, width)} if conv_norm != "overlap" else {}
        )
        layers += [
            constrained(nn.Conv2d(channels, out_channels, 3, padding=1), **conv_options),
            make_activation(activation, out_channels),
        ]
        channels = out_channels
        if stage >= pool_from and min(height, width) >= 2:
            layers.append(POOLS[pool](2))
            height, width = height // 2, width // 2
    layers.append(nn.Flatten())
    features = channels * height * width
    for hidden in dense:
        layers += [constrained(nn.Linear(features, hidden)), make_activation(activation, hidden)]
        features = hidden
    layers.append(constrained(nn.Linear(features, num_classes)))
    return nn.Sequential(*layers)
