"""Folding: turn a parametrized (training) network into the plain network that ships.

Every parametrization is replaced by the weight it currently computes
(``remove_parametrizations(..., leave_parametrized=True)``), so the result is the same module tree
made of standard torch modules, whose state dict loads into the architecture built with
``parametrized=False``. Folding lives in ``zoo`` (not ``export``) because training folds its final
model too, and ``training`` must not depend on ``export``.

The folding hook: a module that is not a single weight transform (an SLL block, BatchReNorm2d)
defines ``folded(self) -> nn.Module``, returning standard torch modules that compute its eval-mode
function; :func:`fold` puts that module in its place. The architecture built with
``parametrized=False`` builds the same plain modules directly.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn.utils import parametrize

__all__ = ["fold", "has_fold_hook", "is_folded"]


def has_fold_hook(module: nn.Module) -> bool:
    """True when ``module`` defines the folding hook ``folded()``."""
    return callable(getattr(module, "folded", None))


def _replace_hooked(module: nn.Module) -> nn.Module:
    """``module`` with every module that has a folding hook replaced by its folded form."""
    if has_fold_hook(module):
        return module.folded()
    for name, child in module.named_children():
        replacement = _replace_hooked(child)
        if replacement is not child:
            setattr(module, name, replacement)
    return module


def fold(model: nn.Module) -> nn.Module:
    """Fold ``model`` in place and return it, in eval mode.

    In place on purpose: torch gives each parametrized module a generated class that a deep copy
    shares, so removing the parametrizations of a copy would break the original. To keep the
    trainable network, rebuild it from its state dict before folding. Only a model that itself has
    a folding hook is not changed in place: the returned module replaces it.
    """
    model.eval()
    with torch.no_grad():
        folded = _replace_hooked(model).eval()
        for module in folded.modules():
            if parametrize.is_parametrized(module):
                for name in list(module.parametrizations.keys()):
                    parametrize.remove_parametrizations(module, name, leave_parametrized=True)
    return folded


def is_folded(model: nn.Module) -> bool:
    """True when no module of ``model`` carries a parametrization or a folding hook."""
    return not any(parametrize.is_parametrized(m) or has_fold_hook(m) for m in model.modules())
