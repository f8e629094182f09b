"""Frozen copies: the parts of a source model that regularizers read but never train."""

from __future__ import annotations

import copy

from torch import nn

__all__ = ["frozen_copy"]


def frozen_copy(module: nn.Module) -> nn.Module:
    """A deep copy of ``module`` in eval mode whose parameters never receive gradients."""
    copied = copy.deepcopy(module).eval()
    copied.requires_grad_(False)
    return copied
