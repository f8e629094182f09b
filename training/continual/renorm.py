"""Batch renormalisation for AR1: a normalisation after every convolution, its ``r_max`` / ``d_max``
schedule, and the fold into the preceding convolution.

Two normalisations (zoo.layers): ``BatchReNorm2d``, AR1's original, which divides by the running
standard deviation (an unbounded per-channel scale ``gamma / sigma``: 12.5 on the first convolution
of a small 1-Lipschitz net, whose features have small deviations), and ``BatchReCentering2d``, its
mean correction with a per-channel scale bounded by 1, 1-Lipschitz in both modes. Both keep what
AR1 uses batch renormalisation for: training-mode outputs that follow the running statistics, so
that the frozen lower part computes in eval mode what it learned, and the upper part is not thrown
off by minibatches mixing current and replayed patterns.

Schedule (as AR1's reference): after ``n`` training samples have gone through the network,
``r_max = min(1 + inc_step * n, max_r_max)`` (BatchReNorm2d only) and
``d_max = min(inc_step * n, max_d_max)``: plain batch statistics at the start, renormalisation once
the running statistics are meaningful.

Folding: in eval mode either norm is a per-channel affine map, so ``norm(conv(x))`` is one
convolution (``zoo.layers.fold_batchrenorm``); :class:`RenormalizedConv` exposes that as the
``zoo.fold`` hook, so a folded AR1 network has exactly the modules (and state-dict keys) of the
plain architecture, and the certificate bounds the merged convolution from its weights.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn

from zoo.layers import BatchReCentering2d, BatchReNorm2d, fold_batchrenorm

__all__ = ["ChannelNorm", "RenormSchedule", "RenormalizedConv", "add_batch_renorm"]

ChannelNorm = BatchReNorm2d | BatchReCentering2d


class RenormalizedConv(nn.Module):
    """``norm(conv(x))``, folded by ``zoo.fold`` into one plain ``nn.Conv2d``.

    Shape: (N, C_in, H, W) -> (N, C_out, H', W').
    """

    def __init__(self, conv: nn.Conv2d, norm: ChannelNorm) -> None:
        super().__init__()
        self.conv = conv
        self.norm = norm

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.norm(self.conv(x))

    def folded(self) -> nn.Conv2d:
        """The ``zoo.fold`` hook: the convolution computing the eval-mode ``norm(conv(x))``."""
        return fold_batchrenorm(self.conv, self.norm)


def add_batch_renorm(model: nn.Module, make_norm: Callable[[int], ChannelNorm]) -> list[ChannelNorm]:
    """Put ``make_norm(out_channels)`` after every ``nn.Conv2d`` of ``model`` (in place, each conv
    replaced by a :class:`RenormalizedConv` at the same position); returns the new norms."""
    norms = []
    for name, child in model.named_children():
        if isinstance(child, nn.Conv2d):
            norm = make_norm(child.out_channels).to(child.weight.device)
            setattr(model, name, RenormalizedConv(child, norm))
            norms.append(norm)
        else:
            norms += add_batch_renorm(child, make_norm)
    return norms


class RenormSchedule:
    """Drives ``r_max`` / ``d_max`` of ``norms`` from the number of training samples seen.

    Args:
        norms: the normalisation layers (``r_max`` is set on the BatchReNorm2d ones only).
        inc_step: growth of both limits per training sample.
        max_r_max, max_d_max: where the limits stop.
    """

    def __init__(self, norms: list[ChannelNorm], inc_step: float, max_r_max: float, max_d_max: float) -> None:
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
            norm.d_max = d_max
            if isinstance(norm, BatchReNorm2d):
                norm.r_max = r_max
        self.samples += batch
