"""Architectures built by name, in two modes with the same module tree and state-dict keys.

``parametrized=True`` gives the trainable network whose layers carry 1-Lipschitz parametrizations;
``parametrized=False`` gives the plain network of standard torch modules that a folded checkpoint
loads into. models.yaml names an architecture and its options; :func:`build` makes it.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from typing import Any

from torch import nn

from zoo.models.lipconv import lipconv
from zoo.models.lipmlp import lipmlp
from zoo.models.lipresnet import lipresnet
from zoo.models.orthoconv import orthoconv

__all__ = ["ARCHITECTURES", "build", "check_options"]

ARCHITECTURES: dict[str, Callable[..., nn.Module]] = {
    "lipconv": lipconv,
    "lipmlp": lipmlp,
    "lipresnet": lipresnet,
    "orthoconv": orthoconv,
}

# Arguments every builder takes from the registry entry rather than from its free options.
_COMMON = ("input_shape", "num_classes", "parametrized")


def _builder(name: str) -> Callable[..., nn.Module]:
    try:
        return ARCHITECTURES[name]
    except KeyError:
        known = ", ".join(sorted(ARCHITECTURES))
        raise ValueError(f"unknown architecture {name!r}; known: {known}") from None


def check_options(name: str, options: dict[str, Any]) -> None:
    """Raise ValueError naming the first option the builder of ``name`` does not accept."""
    parameters = inspect.signature(_builder(name)).parameters
    for option in options:
        if option not in parameters or option in _COMMON:
            allowed = ", ".join(p for p in parameters if p not in _COMMON)
            raise ValueError(f"architecture {name!r} has no option {option!r} (options: {allowed})")


def build(
    name: str,
    *,
    input_shape: tuple[int, ...],
    num_classes: int,
    parametrized: bool = True,
    **options: Any,
) -> nn.Module:
    """Build architecture ``name`` for inputs of shape ``input_shape`` (C, H, W) and ``num_classes``."""
    check_options(name, options)
    return _builder(name)(
        input_shape=tuple(input_shape),
        num_classes=num_classes,
        parametrized=parametrized,
        **options,
    )
