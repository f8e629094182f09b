"""Folding: turn a parametrized (training) network into the plain network that ships.

Every parametrization is replaced by the weight it currently computes
(``remove_parametrizations(..., leave_parametrized=True)``), so the result is the same module tree
made of standard torch modules, whose state dict loads into the architecture built with
``parametrized=False``. Folding lives in ``zoo`` (not ``export``) because training folds its final
model too, and ``training`` must not depend on ``export``.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn.utils import parametrize

__all__ = ["fold", "is_folded"]


def fold(model: nn.Module) -> nn.Module:
    """Fold ``model`` in place and return it, in eval mode.

    In place on purpose: torch gives each parametrized module a generated class that a deep copy
    shares, so removing the parametrizations of a copy would break the original. To keep the
    trainable network, rebuild it from its state dict before folding.
    """
    folded = model.eval()
    with torch.no_grad():
        for module in folded.modules():
            if parametrize.is_parametrized(module):
                for name in list(module.parametrizations.keys()):
                    parametrize.remove_parametrizations(module, name, leave_parametrized=True)
    return folded


def is_folded(model: nn.Module) -> bool:
    """True when no module of ``model`` carries a parametrization."""
    return not any(parametrize.is_parametrized(m) for m in model.modules())
