"""What the architectures share: named activations and the choice of constraint family."""

from __future__ import annotations

from typing import Any

from torch import nn

from zoo.layers import FAMILIES, Abs, GroupSort2, HouseHolder, MaxMin

__all__ = ["ACTIVATIONS", "check_choice", "constrain", "make_activation"]

ACTIVATIONS: dict[str, type[nn.Module]] = {
    "groupsort2": GroupSort2,
    "maxmin": MaxMin,
    "abs": Abs,
    "householder": HouseHolder,
}


def check_choice(option: str, value: str, choices: Any) -> None:
    """ValueError naming ``option`` when ``value`` is not one of ``choices``."""
    if value not in choices:
        raise ValueError(f"unknown {option} {value!r}; known: {', '.join(choices)}")


def make_activation(name: str, channels: int) -> nn.Module:
    """A new activation ``name`` for ``channels`` channels (HouseHolder learns one angle per pair)."""
    check_choice("activation", name, ACTIVATIONS)
    return HouseHolder(channels) if name == "householder" else ACTIVATIONS[name]()


def constrain(layer: nn.Module, family: str, parametrized: bool, **options: Any) -> nn.Module:
    """``layer`` with the parametrization of ``family`` registered (training mode), or unchanged
    (plain mode, what a folded checkpoint loads into)."""
    check_choice("family", family, FAMILIES)
    return FAMILIES[family](layer, **options) if parametrized else layer
