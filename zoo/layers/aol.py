"""Almost-orthogonal layers (AOL, Prach & Lampert 2022): rescale the input channels of ``W``.

With ``P = W^T W`` (for a convolution: the Gram *operator*, one (in, in) matrix per relative shift of
two kernel windows), the diagonal ``D_ii = (sum_j sum_shifts |P_ij|)^(-1/2)`` makes ``W D`` a
contraction: ``D P D`` has absolute row sums at most 1 after symmetric scaling (Schur's test), so its
largest eigenvalue, ``||W D||^2``, is at most 1. It holds for every kernel, stride (a strided
convolution subsamples the stride-1 one), dilation (a dilated convolution is the undilated one on
each coset of pixels), group count (block diagonal: per-group Gram) and zero or circular padding. No
iteration and no state; the rescaling is close to orthogonal when ``W`` already is.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.utils import parametrize

from zoo.layers.parametrizations import check_layer, layer_constructor

__all__ = ["AOLConv1d", "AOLConv2d", "AOLLinear", "AOLRescale", "aol", "gram_abs_row_sums"]

_CONV = {1: F.conv1d, 2: F.conv2d, 3: F.conv3d}


def gram_abs_row_sums(weight: torch.Tensor, groups: int = 1, q: torch.Tensor | None = None) -> torch.Tensor:
    """Weighted absolute row sums of the Gram operator of a dense or convolution weight.

    For every input channel ``i``: ``sum_j sum_shifts |P_ij(shift)| * q_j / q_i`` where ``P(shift)``
    is the (in, in) Gram matrix of the kernel taps ``shift`` apart, within ``i``'s group (a grouped
    convolution is block diagonal). The full correlation of the kernel with itself gives every
    ``P(shift)`` at once.

    Args:
        weight: (out, in / groups) dense weight, or (out, in / groups, *kernel) convolution weight.
        groups: the layer's groups.
        q: optional (in,) positive weights of the rescaled Schur test (SLL); None means all ones.

    Returns:
        (in,) tensor, differentiable with respect to ``weight`` and ``q``.
    """
    kernel = weight if weight.dim() > 2 else weight.unsqueeze(-1)  # a dense layer is a 1-tap conv
    out_channels, in_per_group, *taps = kernel.shape
    out_per_group = out_channels // groups
    # Batch i (input channel in its group) and channels (g, o): x[i, (g, o)] = K[(g, o), i].
    x = kernel.transpose(0, 1)
    # Filters (g, j) over channels o: w[(g, j), o] = K[(g, o), j].
    w = kernel.unflatten(0, (groups, out_per_group)).transpose(1, 2).flatten(0, 1)
    gram = _CONV[len(taps)](x, w, padding=[t - 1 for t in taps], groups=groups)
    sums = gram.abs().flatten(2).sum(-1).view(in_per_group, groups, in_per_group).transpose(0, 1)
    if q is None:
        return sums.sum(-1).flatten()  # (groups, i) -> (in,)
    q = q.view(groups, 1, in_per_group)
    return ((sums * q).sum(-1) / q.squeeze(1)).flatten()


class AOLRescale(nn.Module):
    """``W -> lip * W * D`` with the AOL diagonal ``D`` acting on the input channels (dim 1 of ``W``).

    Args:
        groups: the convolution's groups (1 for a dense layer).
        lip: the Lipschitz coefficient the layer should have.
    """

    def __init__(self, *, groups: int = 1, lip: float = 1.0) -> None:
        super().__init__()
        if lip <= 0:
            raise ValueError(f"lip must be positive, got {lip}")
        self.groups = groups
        self.lip = lip

    def forward(self, weight: torch.Tensor) -> torch.Tensor:
        sums = gram_abs_row_sums(weight, self.groups)
        # A zero input channel has a zero sum and a zero column: any finite scale keeps it zero.
        scale = sums.clamp_min(torch.finfo(sums.dtype).tiny).rsqrt()
        in_per_group = weight.shape[1]
        kernel_dims = (1,) * (weight.dim() - 2)
        scale = scale.view(self.groups, 1, in_per_group, *kernel_dims)
        return (self.lip * weight.unflatten(0, (self.groups, -1)) * scale).flatten(0, 1)

    def extra_repr(self) -> str:
        return f"groups={self.groups}, lip={self.lip}"


def aol(module: nn.Module, *, lip: float = 1.0) -> nn.Module:
    """Register :class:`AOLRescale` on ``module.weight`` (in place) and return ``module``.

    Accepts ``nn.Linear`` and ``nn.Conv1d`` / ``nn.Conv2d`` with any groups, stride and dilation, and
    zero or circular padding.
    """
    check_layer(module, "aol")
    groups = 1 if isinstance(module, nn.Linear) else module.groups
    parametrize.register_parametrization(module, "weight", AOLRescale(groups=groups, lip=lip))
    return module


AOLLinear = layer_constructor(nn.Linear, aol, "AOLLinear")
AOLConv1d = layer_constructor(nn.Conv1d, aol, "AOLConv1d")
AOLConv2d = layer_constructor(nn.Conv2d, aol, "AOLConv2d")
