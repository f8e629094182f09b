"""Batch renormalisation for AR1: a ``BatchReNorm2d`` (zoo.layers) after every convolution, its
``r_max`` / ``d_max`` schedule, and the fold into the preceding convolution.

Schedule (as AR1's reference): after ``n`` training samples have gone through the network,
``r_max = min(1 + inc_step * n, max_r_max)`` and ``d_max = min(inc_step * n, max_d_max)``: plain
batch normalisation at the start, batch renormalisation once running statistics are meaningful.

Folding: in eval mode ``BatchReNorm2d`` is a per-channel affine map, so ``norm(conv(x))`` is one
convolution (``zoo.layers.fold_batchrenorm``); :class:`RenormalizedConv` exposes that as the
``zoo.fold`` hook, so a folded AR1 network has exactly the modules (and state-dict keys) of the
plain architecture, and the certificate bounds the merged convolution from its weights.
"""

from __future__ import annotations

import torch
from torch import nn

from zoo.layers import BatchReNorm2d, fold_batchrenorm

__all__ = ["RenormSchedule", "RenormalizedConv", "add_batch_renorm"]


class RenormalizedConv(nn.Module):
    """``norm(conv(x))``, folded by ``zoo.fold`` into one plain ``nn.Conv2d``.

    Shape: (N, C_in, H, W) -> (N, C_out, H', W').
    """

    def __init__(self, conv: nn.Conv2d, norm: BatchReNorm2d) -> None:
        super().__init__()
        self.conv = conv
        self.norm = norm

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.norm(self.conv(x))

    def folded(self) -> nn.Conv2d:
        """The ``zoo.fold`` hook: the convolution computing the eval-mode ``norm(conv(x))``."""
        return fold_batchrenorm(self.conv, self.norm)


def add_batch_renorm(model: nn.Module, momentum: float) -> list[BatchReNorm2d]:
    """Put a ``BatchReNorm2d`` after every ``nn.Conv2d`` of ``model`` (in place, each conv replaced
    by a :class:`RenormalizedConv` at the same position); returns the new norms."""
    norms = []
    for name, child in model.named_children():
        if isinstance(child, nn.Conv2d):
            norm = BatchReNorm2d(child.out_channels, momentum=momentum).to(child.weight.device)
            setattr(model, name, RenormalizedConv(child, norm))
            norms.append(norm)
        else:
            norms += add_batch_renorm(child, momentum)
    return norms


class RenormSchedule:
    """Drives ``r_max`` / ``d_max`` of ``norms`` from the number of training samples seen.

    Args:
        norms: the BatchReNorm2d layers.
        inc_step: growth of both limits per training sample.
        max_r_max, max_d_max: where the limits stop.
    """

    def __init__(
        self, norms: list[BatchReNorm2d], inc_step: float, max_r_max: float, max_d_max: float
    ) -> None:
        self.norms = norms
        self.inc_step = inc_step
        self.max_r_max = max_r_max
        self.max_d_max = max_d_max
        self.samples = 0

    def limits(self) -> tuple[float, float]:
        """(r_max, d_max) after :attr:`samples` training samples."""
        growth = self.inc_step * self.samples
        return min(1.0 + growth, self.max_r_max), min(growth, self.max_d_max)

    def step(self, batch: int) -> None:
        """Before a training forward of ``batch`` samples: set the current limits on every norm,
        then count the batch."""
        r_max, d_max = self.limits()
        for norm in self.norms:
            norm.r_max, norm.d_max = r_max, d_max
        self.samples += batch
