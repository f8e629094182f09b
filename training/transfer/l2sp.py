"""L2-SP: L2 regularization towards the source (starting point) weights (Li et al. 2018)."""

from __future__ import annotations

from collections.abc import Mapping

import torch
from torch import nn

from training.transfer.weights import effective_tensors

__all__ = ["L2SP"]


class L2SP(nn.Module):
    """``0.5 * sum_p ||w_p - w0_p||^2`` over the source tensors ``w0``, matched by name with the
    effective tensors of the regularised module.

    Effective tensors (see :mod:`training.transfer.weights`): the distance is measured between the
    weights the two networks compute with, which for a folded source are exactly its checkpoint
    tensors. The source tensors are registered buffers, so ``.to()`` moves them and the state dict
    holds them; their names are the parameter names with ``.`` written ``-`` (a buffer name cannot
    hold a dot). Every source tensor must have a partner of the same shape. The value does not
    depend on the batch.

    Args:
        source: ``{name: tensor}``, e.g. ``dict(source_backbone.named_parameters())``.

    Shape: ``forward(module)`` -> scalar.
    """

    def __init__(self, source: Mapping[str, torch.Tensor]) -> None:
        super().__init__()
        if not source:
            raise ValueError("L2SP needs at least one source tensor")
        self.names = list(source)
        for name, tensor in source.items():
            self.register_buffer(name.replace(".", "-"), tensor.detach().clone())

    def starting_point(self, name: str) -> torch.Tensor:
        """The source tensor called ``name``."""
        return self.get_buffer(name.replace(".", "-"))

    def forward(self, module: nn.Module) -> torch.Tensor:
        tensors = effective_tensors(module)
        total = torch.zeros((), device=self.starting_point(self.names[0]).device)
        for name in self.names:
            start = self.starting_point(name)
            if name not in tensors or tensors[name].shape != start.shape:
                found = tuple(tensors[name].shape) if name in tensors else "nothing"
                raise ValueError(f"L2SP: source tensor {name} {tuple(start.shape)} has no partner ({found})")
            total = total + 0.5 * (tensors[name] - start).square().sum()
        return total
