"""What a models.yaml recipe builds: the parametrized network, its optimizer, the learning rate of
an epoch, and the example order and augmentation draws of an epoch.

Every kind of training (plain, transfer, continual) builds its pieces here, so that one recipe
means the same network and optimizer whichever protocol trains it.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from zoo.layers import GroupSort, MaxMin
from zoo.models import build
from zoo.registry import ModelEntry

__all__ = ["build_model", "epoch_order", "epoch_schedule", "make_optimizer", "set_learning_rate"]


def build_model(
    entry: ModelEntry, device: torch.device | str = "cpu", *, parametrized: bool = True
) -> nn.Module:
    """``entry``'s architecture on ``device``: parametrized (trainable, 1-Lipschitz by construction)
    or, with ``parametrized=False``, plain (as it is after folding)."""
    arch = entry.architecture
    model = build(
        arch.name,
        input_shape=arch.input_shape,
        num_classes=arch.num_classes,
        parametrized=parametrized,
        **arch.options,
    )
    for module in model.modules():
        if isinstance(module, GroupSort | MaxMin):
            module.minmax_through_relu = entry.recipe.minmax_through_relu
    return model.to(device)


def make_optimizer(entry: ModelEntry, model: nn.Module) -> torch.optim.Optimizer:
    """The recipe's optimizer over ``model``'s parameters."""
    spec = entry.recipe.optimizer
    if spec.name == "adam":
        return torch.optim.Adam(model.parameters(), lr=spec.lr, weight_decay=spec.weight_decay)
    return torch.optim.SGD(
        model.parameters(), lr=spec.lr, momentum=spec.momentum, weight_decay=spec.weight_decay
    )


def set_learning_rate(optimizer: torch.optim.Optimizer, entry: ModelEntry, epoch: int, epochs: int) -> None:
    """Set the recipe's learning rate of ``epoch`` (0-based) of ``epochs``: constant, or cosine from
    the recipe's lr towards 0."""
    lr = entry.recipe.optimizer.lr
    if entry.recipe.lr_schedule == "cosine":
        lr = lr * 0.5 * (1 + math.cos(math.pi * epoch / epochs))
    for group in optimizer.param_groups:
        group["lr"] = lr


def epoch_order(n: int, seed: int, epoch: int) -> torch.Tensor:
    """The shuffling (n,) of epoch ``epoch``: a function of (seed, epoch) only, so a resumed run
    visits the examples in the same order as an uninterrupted one."""
    generator = torch.Generator().manual_seed(seed * 100_003 + epoch)
    return torch.randperm(n, generator=generator)


def epoch_schedule(
    n: int, seed: int, epoch: int, device: torch.device
) -> tuple[torch.Tensor, torch.Generator]:
    """The example order (n,) on ``device`` and the generator of the augmentation draws of one
    epoch: functions of (seed, epoch) only."""
    return epoch_order(n, seed, epoch).to(device), torch.Generator().manual_seed(seed * 100_003 + epoch + 1)
