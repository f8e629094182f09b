"""lipconv: a VGG-like 1-Lipschitz convolutional network (conv stages, pooling, dense head)."""

from __future__ import annotations

from collections.abc import Sequence

from torch import nn

from zoo.layers import GroupSort2, MaxMin, ScaledAvgPool2d, spectral_bjorck

ACTIVATIONS: dict[str, type[nn.Module]] = {"groupsort2": GroupSort2, "maxmin": MaxMin}


def lipconv(
    *,
    input_shape: tuple[int, int, int],
    num_classes: int,
    parametrized: bool = True,
    widths: Sequence[int] = (16, 32, 64),
    dense: Sequence[int] = (128,),
    activation: str = "groupsort2",
    bjorck_iters: int = 15,
) -> nn.Sequential:
    """Conv stages of 3x3 convolutions (zero padding 1) each followed by ``activation``; from the
    second stage on each stage ends with a 2x2 ScaledAvgPool2d; then Flatten, dense layers, logits.

    Args:
        input_shape: (C, H, W) of the inputs, e.g. (1, 8, 8) for digits.
        num_classes: number of logits.
        parametrized: register SpectralBjorck parametrizations (training mode) or build plain layers.
        widths: output channels of each conv stage.
        dense: hidden widths of the dense head.
        activation: 'groupsort2' or 'maxmin'.
        bjorck_iters: Bjorck iterations of every parametrization.

    Shape: (N, *input_shape) -> (N, num_classes).
    """
    if activation not in ACTIVATIONS:
        raise ValueError(f"unknown activation {activation!r}; known: {', '.join(ACTIVATIONS)}")
    channels, height, width = input_shape

    def constrained(layer: nn.Module) -> nn.Module:
        return spectral_bjorck(layer, bjorck_iters=bjorck_iters) if parametrized else layer

    layers: list[nn.Module] = []
    for stage, out_channels in enumerate(widths):
        layers += [
            constrained(nn.Conv2d(channels, out_channels, 3, padding=1)),
            ACTIVATIONS[activation](),
        ]
        channels = out_channels
        if stage > 0 and min(height, width) >= 2:
            layers.append(ScaledAvgPool2d(2))
            height, width = height // 2, width // 2
    layers.append(nn.Flatten())
    features = channels * height * width
    for hidden in dense:
        layers += [constrained(nn.Linear(features, hidden)), ACTIVATIONS[activation]()]
        features = hidden
    layers.append(constrained(nn.Linear(features, num_classes)))
    return nn.Sequential(*layers)
