"""1-Lipschitz residual blocks and the plain modules they fold into.

* :class:`Residual` ``y = x + branch(x)``: the plain form of an SLL block (its branch is a layer, a ReLU
  and the adjoint layer). Its certificate is computed from the weights by ``zoo.certify``.
* :class:`ConvexResidual` ``y = (1 - alpha) x + alpha branch(x)``: 1-Lipschitz for ``alpha`` in [0, 1]
  and a 1-Lipschitz branch (deel-torchlip's LipResidual); ``alpha`` is trained through a sigmoid.
* :class:`SLL` (Araujo et al. 2023): ``y = x - 2 W T^-1 relu(W^T x + b)`` with
  ``T = diag(sum_j |W^T W|_ij q_j / q_i)``, ``q > 0`` learnt. Its Jacobian
  ``I - 2 W T^-1 L W^T`` (``L`` the ReLU slopes, in [0, 1]) is symmetric with eigenvalues in
  [-1, 1] because ``T >= W^T W`` (weighted Schur test), so the block is 1-Lipschitz for every weight.
  ``W^T`` is a dense layer or a stride-1 "same" convolution and ``W`` its adjoint (the convolution
  with channels swapped and the kernel flipped, ``zoo.bounds.adjoint_kernel``). The block folds
  (``zoo.fold`` hook :meth:`SLL.folded`) into a :class:`Residual` whose branch is
  ``Sequential(layer, ReLU, adjoint layer computing -2 W T^-1)``.
"""

from __future__ import annotations

import copy

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.utils import parametrize

from zoo.bounds.residual import adjoint_kernel
from zoo.layers.aol import gram_abs_row_sums

__all__ = [
    "SLL",
    "ConvexResidual",
    "Residual",
    "SLLConv1d",
    "SLLConv2d",
    "SLLLinear",
    "UnitInterval",
    "sll_residual",
]

SLLInner = nn.Linear | nn.Conv1d | nn.Conv2d
_CONV = {nn.Conv1d: F.conv1d, nn.Conv2d: F.conv2d}


class Residual(nn.Module):
    """``y = x + branch(x)``; the branch must keep the shape. Shape: (N, *) -> (N, *)."""

    def __init__(self, branch: nn.Module) -> None:
        super().__init__()
        self.branch = branch

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.branch(x)


class UnitInterval(nn.Module):
    """Parametrization ``logit -> sigmoid(logit)`` in (0, 1); ``right_inverse`` is the logit."""

    def forward(self, logit: torch.Tensor) -> torch.Tensor:
        return torch.sigmoid(logit)

    def right_inverse(self, value: torch.Tensor) -> torch.Tensor:
        return torch.logit(value)


class ConvexResidual(nn.Module):
    """``y = (1 - alpha) x + alpha branch(x)``: ``|1 - alpha| + |alpha| Lip(branch)``-Lipschitz, so
    1-Lipschitz when ``alpha`` is in [0, 1] and the branch is 1-Lipschitz.

    Args:
        branch: a module that keeps the shape.
        alpha: initial weight of the branch, in (0, 1).
        parametrized: train ``alpha`` through :class:`UnitInterval` (it then stays in (0, 1));
            False gives the plain module a folded checkpoint loads into.

    Shape: (N, *) -> (N, *).
    """

    def __init__(self, branch: nn.Module, alpha: float = 0.5, *, parametrized: bool = True) -> None:
        super().__init__()
        if not 0 < alpha < 1:
            raise ValueError(f"alpha must be in (0, 1), got {alpha}")
        self.branch = branch
        self.alpha = nn.Parameter(torch.tensor(alpha))
        if parametrized:
            parametrize.register_parametrization(self, "alpha", UnitInterval())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (1 - self.alpha) * x + self.alpha * self.branch(x)


def _check_sll_inner(inner: nn.Module) -> None:
    if type(inner) not in (nn.Linear, *_CONV):
        raise TypeError(f"SLL needs an nn.Linear, nn.Conv1d or nn.Conv2d, got {type(inner).__name__}")
    if inner.bias is None:
        raise ValueError("SLL needs a layer with a bias")
    if isinstance(inner, nn.Linear):
        return
    same = all(k % 2 == 1 and p == k // 2 for k, p in zip(inner.kernel_size, inner.padding, strict=True))
    plain = all(s == 1 for s in inner.stride) and all(d == 1 for d in inner.dilation)
    if not (same and plain and inner.groups == 1 and inner.padding_mode == "zeros"):
        raise ValueError(
            "SLL needs a convolution with an odd kernel, padding kernel_size // 2 (zeros), stride 1, "
            "dilation 1 and groups=1"
        )


def sll_residual(inner: nn.Module, outer_weight: torch.Tensor | None = None) -> Residual:
    """The plain form of an SLL block: ``Residual(Sequential(inner, ReLU(), adjoint))``.

    Args:
        inner: the plain ``nn.Linear`` / ``nn.Conv1d`` / ``nn.Conv2d`` computing ``W^T x + b`` (used
            as is, not copied).
        outer_weight: ``-2 W T^-1`` in ``inner``'s layout (hidden, in, *kernel); None leaves the
            adjoint layer's default initialisation (for a model that loads a checkpoint).

    Returns:
        the :class:`Residual`; its adjoint layer, of ``inner``'s type with the hidden and input
        channels swapped (no bias), holds ``zoo.bounds.adjoint_kernel(outer_weight)``: a plain
        convolution rather than a transposed one, which ONNX Runtime runs 2.5 times faster.
    """
    _check_sll_inner(inner)
    hidden, features = inner.weight.shape[:2]
    if isinstance(inner, nn.Linear):
        adjoint = nn.Linear(hidden, features, bias=False)
    else:
        adjoint = type(inner)(hidden, features, inner.kernel_size, padding=inner.padding, bias=False)
    adjoint = adjoint.to(device=inner.weight.device, dtype=inner.weight.dtype)
    if outer_weight is not None:
        with torch.no_grad():
            adjoint.weight.copy_(adjoint_kernel(outer_weight))
    return Residual(nn.Sequential(inner, nn.ReLU(), adjoint))


class SLL(nn.Module):
    """SDP-based Lipschitz residual block ``y = x - 2 W T^-1 relu(W^T x + b)`` (see the module doc).

    Args:
        inner: the layer computing ``W^T x + b``: an ``nn.Linear`` (in -> hidden features), or an
            ``nn.Conv1d`` / ``nn.Conv2d`` (in -> hidden channels) with an odd kernel, padding
            ``kernel_size // 2``, stride 1. Use :func:`SLLLinear`, :func:`SLLConv1d`, :func:`SLLConv2d`.

    Trained: the inner weight and bias, and ``log_q`` (hidden,), with ``q = exp(log_q)``.

    Shape: (N, in, *) -> (N, in, *).
    """

    def __init__(self, inner: SLLInner) -> None:
        super().__init__()
        _check_sll_inner(inner)
        self.inner = inner
        self.log_q = nn.Parameter(torch.zeros(inner.weight.shape[0]))

    def outer_weight(self) -> torch.Tensor:
        """``-2 W T^-1`` in the inner weight's layout (hidden, in, *kernel): hidden channel ``h`` of the
        inner weight divided by ``T_h`` and multiplied by -2."""
        kernel = self.inner.weight
        t = gram_abs_row_sums(kernel.transpose(0, 1), q=self.log_q.exp())  # Gram over hidden channels
        t = t.clamp_min(torch.finfo(t.dtype).tiny).view(-1, *(1,) * (kernel.dim() - 1))
        return -2 * kernel / t

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        hidden = F.relu(self.inner(x))
        weight = adjoint_kernel(self.outer_weight())
        if isinstance(self.inner, nn.Linear):
            return x + F.linear(hidden, weight)
        return x + _CONV[type(self.inner)](hidden, weight, padding=self.inner.padding)

    def folded(self) -> Residual:
        """The ``zoo.fold`` hook: the plain :class:`Residual` computing the same function."""
        return sll_residual(copy.deepcopy(self.inner), self.outer_weight().detach())


def SLLLinear(features: int, hidden_features: int) -> SLL:
    """SLL block on (N, features) inputs with ``hidden_features`` ReLU units."""
    return SLL(nn.Linear(features, hidden_features))


def SLLConv1d(channels: int, hidden_channels: int, kernel_size: int = 3) -> SLL:
    """SLL block on (N, channels, L) inputs with a ``kernel_size`` convolution to ``hidden_channels``."""
    return SLL(nn.Conv1d(channels, hidden_channels, kernel_size, padding=kernel_size // 2))


def SLLConv2d(channels: int, hidden_channels: int, kernel_size: int = 3) -> SLL:
    """SLL block on (N, channels, H, W) inputs with a ``kernel_size`` convolution to ``hidden_channels``."""
    return SLL(nn.Conv2d(channels, hidden_channels, kernel_size, padding=kernel_size // 2))
