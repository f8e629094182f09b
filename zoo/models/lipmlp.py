"""lipmlp: a 1-Lipschitz multilayer perceptron on flattened inputs."""

from __future__ import annotations

import math
from collections.abc import Sequence

from torch import nn

from zoo.models.common import layer_constraint, make_activation


def lipmlp(
    *,
    input_shape: tuple[int, ...],
    num_classes: int,
    parametrized: bool = True,
    widths: Sequence[int] = (256, 256),
    activation: str = "groupsort2",
    family: str = "spectral",
    init: str = "torch",
    bjorck_iters: int = 15,
    bjorck_tol: float | None = None,
) -> nn.Sequential:
    """Flatten, then one constrained dense layer and ``activation`` per hidden width, then the logits.

    Args:
        input_shape: (C, H, W) of the inputs.
        num_classes: number of logits.
        parametrized: register the family's parametrizations (training mode) or build plain layers.
        widths: hidden widths (their number is the depth).
        activation: 'groupsort2', 'maxmin', 'abs' or 'householder'.
        family: 'spectral', 'aol', 'orthogonal' or 'frobenius'.
        init: 'torch' (the layers' own initialisation) or 'orthogonal' (see ``constrain``).
        bjorck_iters: Bjorck iterations of the 'spectral' family (ignored by the others).
        bjorck_tol: stop Bjorck early at this distance to orthonormal ('spectral' family; None: never).

    Shape: (N, *input_shape) -> (N, num_classes).
    """
    constrained = layer_constraint(family, parametrized, init, bjorck_iters, bjorck_tol)

    layers: list[nn.Module] = [nn.Flatten()]
    features = math.prod(input_shape)
    for hidden in widths:
        layers += [
            constrained(nn.Linear(features, hidden)),
            make_activation(activation, hidden),
        ]
        features = hidden
    layers.append(constrained(nn.Linear(features, num_classes)))
    return nn.Sequential(*layers)
