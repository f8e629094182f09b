"""L2 regularization towards zero (weight decay written as a loss term)."""

from __future__ import annotations

import torch
from torch import nn

from training.transfer.weights import effective_tensors

__all__ = ["L2"]


class L2(nn.Module):
    """``0.5 * sum_p ||p||^2`` over the effective tensors of a module (biases included).

    Effective tensors, not raw ones (see :mod:`training.transfer.weights`). A consequence worth
    knowing: a spectral + Bjorck weight is orthonormal, so its Frobenius norm is fixed
    (``||W||^2 = min(out, in)`` times its scale) and the penalty only moves the biases and the
    tensors of the families that do not fix the norm (AOL). The value does not depend on the batch.

    Shape: ``forward(module)`` -> scalar.
    """

    def forward(self, module: nn.Module) -> torch.Tensor:
        return 0.5 * sum(tensor.square().sum() for tensor in effective_tensors(module).values())
