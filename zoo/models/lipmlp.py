"""lipmlp: a 1-Lipschitz multilayer perceptron on flattened inputs."""

from __future__ import annotations

import math
from collections.abc import Sequence

from torch import nn

from zoo.models.common import constrain, make_activation


def lipmlp(
    *,
    input_shape: tuple[int, ...],
    num_classes: int,
    parametrized: bool = True,
    widths: Sequence[int] = (256, 256),
    activation: str = "groupsort2",
    family: str = "spectral",
) -> nn.Sequential:
    """Flatten, then one constrained dense layer and ``activation`` per hidden width, then the logits.

    Args:
        input_shape: (C, H, W) of the inputs.
        num_classes: number of logits.
        parametrized: register the family's parametrizations (training mode) or build plain layers.
        widths: hidden widths (their number is the depth).
        activation: 'groupsort2', 'maxmin', 'abs' or 'householder'.
        family: 'spectral', 'aol', 'orthogonal' or 'frobenius'.

    Shape: (N, *input_shape) -> (N, num_classes).
    """
    layers: list[nn.Module] = [nn.Flatten()]
    features = math.prod(input_shape)
    for hidden in widths:
        layers += [
            constrain(nn.Linear(features, hidden), family, parametrized),
            make_activation(activation, hidden),
        ]
        features = hidden
    layers.append(constrain(nn.Linear(features, num_classes), family, parametrized))
    return nn.Sequential(*layers)
