"""The weights a network computes with, named as in its folded state dict.

A parametrized layer trains a raw tensor (``parametrizations.weight.original``) and computes with
``weight = parametrization(original)``. For the 1-Lipschitz families the map is a normalisation
(spectral + Bjorck, Frobenius, AOL, orthogonal): the raw tensor's scale, and often most of its
direction, do not reach the function. The transfer regularizers therefore act on the *effective*
tensors: what the layer computes with, and exactly what folding writes into the shipped checkpoint.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn.utils import parametrize

__all__ = ["effective_tensors"]


def effective_tensors(module: nn.Module) -> dict[str, torch.Tensor]:
    """``{name: tensor}`` of every trainable tensor of ``module`` as the forward pass uses it.

    Parametrized tensors are evaluated (``module.weight``, differentiable with respect to the raw
    tensors); plain parameters (biases, activation angles) are returned as they are. The names are
    those the folded model's state dict uses (``"3.weight"``), so a plain source model's
    ``named_parameters()`` match them one to one.
    """
    tensors: dict[str, torch.Tensor] = {}
    for path, owner in module.named_modules():
        if "parametrizations" in path.split("."):
            continue  # the raw tensors live here; they are reached through their owner below
        prefix = f"{path}." if path else ""
        for name, parameter in owner.named_parameters(recurse=False):
            tensors[prefix + name] = parameter
        if parametrize.is_parametrized(owner):
            for name in owner.parametrizations:
                tensors[prefix + name] = getattr(owner, name)
    return tensors
