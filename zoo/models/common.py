"""What the architectures share: named activations and the choice of constraint family."""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any

import torch
from torch import nn

from zoo.layers import FAMILIES, Abs, GroupSort2, HouseHolder, MaxMin

__all__ = ["ACTIVATIONS", "INITS", "check_choice", "constrain", "layer_constraint", "make_activation"]

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


INITS = ("torch", "orthogonal")


def constrain(
    layer: nn.Module, family: str, parametrized: bool, init: str = "torch", **options: Any
) -> nn.Module:
    """``layer`` with the parametrization of ``family`` registered (training mode), or unchanged
    (plain mode, what a folded checkpoint loads into).

    ``init`` 'torch' keeps the layer's own initialisation; 'orthogonal' first makes the weight's
    matrix view (out, in * prod(kernel)) orthogonal, as deel-torchlip does: Bjorck iterations then
    start next to their fixed point, and with a ``bjorck_tol`` stop after a few (spectral family).
    """
    check_choice("family", family, FAMILIES)
    check_choice("init", init, INITS)
    if not parametrized:
        return layer
    if init == "orthogonal":
        with torch.no_grad():
            nn.init.orthogonal_(layer.weight)
    return FAMILIES[family](layer, **options)


def layer_constraint(
    family: str, parametrized: bool, init: str, bjorck_iters: int, bjorck_tol: float | None
) -> Callable[[nn.Module], nn.Module]:
    """``layer -> constrain(layer, ...)`` for an architecture whose layers all share ``family`` and
    ``init``; the Bjorck options go to the 'spectral' family only (the others have no Bjorck)."""
    options = {"bjorck_iters": bjorck_iters, "bjorck_tol": bjorck_tol} if family == "spectral" else {}
    return functools.partial(constrain, family=family, parametrized=parametrized, init=init, **options)
