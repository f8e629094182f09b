"""orthoconv: an all-orthogonal convolutional network; strided orthogonal convolutions downsample."""

from __future__ import annotations

from collections.abc import Sequence

from torch import nn

from zoo.models.common import constrain, make_activation


def orthoconv(
    *,
    input_shape: tuple[int, int, int],
    num_classes: int,
    parametrized: bool = True,
    widths: Sequence[int] = (16, 32, 64),
    depth: int = 2,
    dense: Sequence[int] = (128,),
    activation: str = "maxmin",
) -> nn.Sequential:
    """Stages of ``depth`` orthogonal 3x3 convolutions (zero padding 1), each followed by
    ``activation``. The first convolution of every stage after the first has stride 2 (a block
    orthogonal kernel composed with a reshaped-kernel orthogonal one, folded into one conv). Then
    Flatten, orthogonal dense layers and orthogonal logits.

    Args:
        input_shape: (C, H, W) of the inputs.
        num_classes: number of logits.
        parametrized: register the orthogonal parametrizations (training mode) or build plain layers.
        widths: channels of each stage.
        depth: convolutions per stage (>= 1).
        dense: hidden widths of the dense head.
        activation: 'groupsort2', 'maxmin', 'abs' or 'householder'.

    Shape: (N, *input_shape) -> (N, num_classes).
    """
    if depth < 1:
        raise ValueError(f"depth must be >= 1, got {depth}")
    channels, height, width = input_shape
    layers: list[nn.Module] = []
    for stage, out_channels in enumerate(widths):
        for index in range(depth):
            stride = 2 if stage > 0 and index == 0 and min(height, width) >= 2 else 1
            conv = nn.Conv2d(channels, out_channels, 3, stride=stride, padding=1)
            layers += [constrain(conv, "orthogonal", parametrized), make_activation(activation, out_channels)]
            channels = out_channels
            height, width = -(-height // stride), -(-width // stride)  # ceil: 3x3, padding 1
    layers.append(nn.Flatten())
    features = channels * height * width
    for hidden in dense:
        layers += [
            constrain(nn.Linear(features, hidden), "orthogonal", parametrized),
            make_activation(activation, hidden),
        ]
        features = hidden
    layers.append(constrain(nn.Linear(features, num_classes), "orthogonal", parametrized))
    return nn.Sequential(*layers)
