"""Normalise a convolution by its operator norm, estimated by power iteration on the convolution itself.

A convolution's L2 operator norm on inputs of a given size (its Lipschitz constant) lies between the
norm of its (out, in * prod(kernel)) matrix view and ``sqrt(conv_overlap_factor)`` times it (3 for a
3x3 stride-1 kernel). Dividing by the worst case makes a typical trained conv 2-3 times smaller than
it may be. :class:`ConvOperatorNorm` divides by the norm of the operator itself: power iteration
with the convolution and its adjoint on an input-shaped vector kept between steps, as
torch's ``spectral_norm`` keeps its vector for matrices (Miyato et al. 2018; Gouk et al. 2021 for
convolutions).

In training mode the norm is that estimate, differentiable in the weight; it approaches the norm
from below, so a training step can see the layer slightly above ``lip``. In eval mode (in which
models are folded) the weight is divided by the sound bound that the certificate itself computes
(:func:`zoo.bounds.conv_bound`), so the folded convolution is certified at ``lip``: the estimate only
has to be good enough to train with, never to be trusted.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from zoo.bounds import conv_bound

__all__ = ["WARMUP_ITERATIONS", "ConvOperatorNorm"]

# Power iterations of the first training forward (the vector starts random).
WARMUP_ITERATIONS = 20


class ConvOperatorNorm(nn.Module):
    """``W -> lip * W / sigma(W)``, ``sigma`` the operator norm of ``conv(., W)`` on ``input_size`` inputs.

    In training mode ``sigma`` is ``||conv(v, W)||`` for the unit input ``v`` (a buffer of shape
    ``(1, in_channels, *input_size)``), differentiable in ``W``, after ``v`` takes ``power_iters``
    steps ``v <- conv^T(conv(v)) / ||.||`` (``WARMUP_ITERATIONS`` at the first forward, recorded in
    the ``warmed`` buffer so that a resumed run repeats the same steps). In eval mode ``sigma`` is
    :func:`zoo.bounds.conv_bound` of ``W`` on ``input_size`` (float64, no gradient), so the weight
    that folds has a certified norm of ``lip``.

    Args:
        conv: the ``nn.Conv1d`` / ``nn.Conv2d`` whose geometry (stride, padding and its mode,
            dilation, groups) defines the operator; only its settings are kept.
        input_size: spatial size of the layer's inputs, e.g. (28, 28).
        lip: the operator norm the layer should have.
        power_iters: power iterations per training forward (>= 1).
        generator: optional generator for the random start of ``v`` (seeded runs).
    """

    def __init__(
        self,
        conv: nn.Conv1d | nn.Conv2d,
        input_size: Sequence[int],
        *,
        lip: float = 1.0,
        power_iters: int = 1,
        generator: torch.Generator | None = None,
    ) -> None:
        super().__init__()
        dims = len(conv.kernel_size)
        input_size = tuple(int(n) for n in input_size)
        if len(input_size) != dims or min(input_size) < 1:
            raise ValueError(f"input_size must be {dims} positive sizes for this conv, got {input_size}")
        if lip <= 0:
            raise ValueError(f"lip must be positive, got {lip}")
        if power_iters < 1:
            raise ValueError(f"power_iters must be >= 1, got {power_iters}")
        self.convolve = F.conv1d if dims == 1 else F.conv2d
        self.stride, self.dilation, self.groups = conv.stride, conv.dilation, conv.groups
        self.padding, self.padding_mode = conv.padding, conv.padding_mode
        circular = conv.padding_mode == "circular"
        self.circular_padding = conv._reversed_padding_repeated_twice if circular else None
        self.input_size = input_size
        self.lip = lip
        self.power_iters = power_iters
        v = torch.randn(1, conv.in_channels, *input_size, generator=generator)
        self.register_buffer("v", v / torch.linalg.vector_norm(v))
        self.register_buffer("warmed", torch.tensor(False))

    def operator(self, x: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
        """The convolution without bias: (N, in, *input_size) -> (N, out, *output_size)."""
        padding = self.padding
        if self.circular_padding is not None:
            x, padding = F.pad(x, self.circular_padding, mode="circular"), 0
        return self.convolve(x, weight, None, self.stride, padding, self.dilation, self.groups)

    def adjoint(self, y: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
        """The adjoint of :meth:`operator` applied to ``y`` (the gradient of ``<y, conv(x)>`` in ``x``)."""
        x = torch.zeros_like(self.v, requires_grad=True)
        with torch.enable_grad():
            (grad,) = torch.autograd.grad(self.operator(x, weight), x, y)
        return grad

    def certified_norm(self, weight: torch.Tensor) -> float:
        """The sound bound of the convolution's norm that ``zoo.certify`` computes for it."""
        return conv_bound(
            weight.detach(),
            input_size=self.input_size,
            stride=self.stride,
            padding=self.padding,
            dilation=self.dilation,
            groups=self.groups,
            padding_mode=self.padding_mode,
        )

    def forward(self, weight: torch.Tensor) -> torch.Tensor:
        if not self.training:
            return weight * (self.lip / self.certified_norm(weight))
        with torch.no_grad():
            steps = self.power_iters if bool(self.warmed) else WARMUP_ITERATIONS
            v, detached = self.v, weight.detach()
            for _ in range(steps):
                v = self.adjoint(self.operator(v, detached), detached)
                v = v / torch.linalg.vector_norm(v).clamp_min(torch.finfo(v.dtype).tiny)
            self.v.copy_(v)
            self.warmed.fill_(True)
        sigma = torch.linalg.vector_norm(self.operator(self.v, weight))
        return weight * (self.lip / sigma.clamp_min(torch.finfo(sigma.dtype).tiny))

    def extra_repr(self) -> str:
        return f"input_size={self.input_size}, lip={self.lip}, power_iters={self.power_iters}"
