"""Normalisation layers for Lipschitz networks.

Centering (subtracting a mean) is an orthogonal projection plus a translation, so LayerCentering and
BatchCentering are 1-Lipschitz in both modes, with no scaling to undo the constraint. BatchLipNorm
divides the centred input by one standard deviation shared by all channels, and BatchReNorm2d by
per-channel ones: in eval mode they are affine maps whose Lipschitz factors (``1 / scale`` and
``max |gamma| / sqrt(running_var + eps)``) the certificate computes from the buffers and weights.
BatchReCentering2d is BatchReNorm2d's centering without its division: running-statistics
correction as in batch renormalisation, and a learned per-channel scale bounded by 1, so it is
1-Lipschitz in both modes.
"""

from __future__ import annotations

import torch
from torch import nn

__all__ = [
    "BatchCentering",
    "BatchLipNorm",
    "BatchReCentering2d",
    "BatchReNorm2d",
    "LayerCentering",
    "fold_batchrenorm",
]


def _channel_view(vector: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """(C,) -> (1, C, 1, ...) broadcasting over the (N, C, *) tensor ``x``."""
    return vector.view(1, -1, *(1,) * (x.dim() - 2))


class LayerCentering(nn.Module):
    """``y = x - mean(x) + beta``, the mean taken per example and channel over the spatial dims
    (over the features for a (N, C) input). Same in training and eval mode.

    Args:
        num_features: C.
        bias: learn the per-channel ``beta`` (otherwise 0).

    Shape: (N, C, *) -> (N, C, *).
    """

    def __init__(self, num_features: int, bias: bool = True) -> None:
        super().__init__()
        self.bias = nn.Parameter(torch.zeros(num_features)) if bias else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        dims = tuple(range(2, x.dim())) or (1,)
        y = x - x.mean(dim=dims, keepdim=True)
        return y if self.bias is None else y + _channel_view(self.bias, y)


class BatchCentering(nn.Module):
    """``y = x - mean + beta`` per channel: the batch mean (over N and the spatial dims) while
    training, the running mean (a buffer, updated with ``momentum``) in eval mode.

    Args:
        num_features: C.
        momentum: weight of the new batch mean in the running mean.
        bias: learn the per-channel ``beta`` (otherwise 0).

    Shape: (N, C, *) -> (N, C, *).
    """

    def __init__(self, num_features: int, momentum: float = 0.1, bias: bool = True) -> None:
        super().__init__()
        self.momentum = momentum
        self.bias = nn.Parameter(torch.zeros(num_features)) if bias else None
        self.register_buffer("running_mean", torch.zeros(num_features))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = x - _channel_view(self._mean(x), x)
        return y if self.bias is None else y + _channel_view(self.bias, y)

    def _mean(self, x: torch.Tensor) -> torch.Tensor:
        """(C,) batch mean while training (folded into the running mean), the running mean in eval."""
        if not self.training:
            return self.running_mean
        mean = x.mean(dim=_non_channel_dims(x))
        with torch.no_grad():
            self.running_mean.lerp_(mean, self.momentum)
        return mean


def _non_channel_dims(x: torch.Tensor) -> list[int]:
    return [d for d in range(x.dim()) if d != 1]


class BatchLipNorm(BatchCentering):
    """``y = (x - mean) / scale + beta`` with one ``scale = max_c sqrt(var_c + eps)`` for all channels
    (deel-torchlip's BatchLipNorm): batch statistics while training, running ones (buffers, updated
    with ``momentum``) in eval mode, where the layer is ``1 / scale``-Lipschitz. Dividing every
    channel by the largest deviation keeps their relative scales, unlike batch norm.

    Args:
        num_features: C.
        eps: added to the variances.
        momentum: weight of the new batch statistics in the running ones.
        bias: learn the per-channel ``beta`` (otherwise 0).

    Shape: (N, C, *) -> (N, C, *).
    """

    def __init__(
        self, num_features: int, eps: float = 1e-5, momentum: float = 0.1, bias: bool = True
    ) -> None:
        super().__init__(num_features, momentum=momentum, bias=bias)
        self.eps = eps
        self.register_buffer("running_scale", torch.ones(()))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = (x - _channel_view(self._mean(x), x)) / self._scale(x)
        return y if self.bias is None else y + _channel_view(self.bias, y)

    def _scale(self, x: torch.Tensor) -> torch.Tensor:
        """The shared deviation: of the batch while training (folded into the running one), the
        running one in eval."""
        if not self.training:
            return self.running_scale
        scale = (x.var(dim=_non_channel_dims(x), unbiased=False) + self.eps).sqrt().max()
        with torch.no_grad():
            self.running_scale.lerp_(scale, self.momentum)
        return scale


class _RenormalizedChannels(nn.Module):
    """What BatchReNorm2d and BatchReCentering2d share: a per-channel ``weight`` and ``bias``, running
    statistics of the batches seen in training mode, a per-channel affine map in eval mode
    (:meth:`affine`, from the subclass) and its folding into a depthwise 1x1 convolution.

    Shape: (N, C, H, W) -> (N, C, H, W).
    """

    def __init__(self, num_features: int, eps: float, momentum: float, d_max: float) -> None:
        super().__init__()
        self.eps = eps
        self.momentum = momentum
        self.d_max = d_max
        self.weight = nn.Parameter(torch.ones(num_features))
        self.bias = nn.Parameter(torch.zeros(num_features))
        self.register_buffer("running_mean", torch.zeros(num_features))
        self.register_buffer("running_var", torch.ones(num_features))

    def affine(self) -> tuple[torch.Tensor, torch.Tensor]:
        """(scale, shift), both (C,): the eval-mode map is ``y = scale * x + shift`` per channel."""
        raise NotImplementedError

    def _running_std(self) -> torch.Tensor:
        return (self.running_var + self.eps).sqrt()

    def _batch_statistics(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(mean, biased variance) of ``x`` per channel, both (C,), folded into the running
        statistics (the variance unbiased there) after being read."""
        dims = [0, 2, 3]
        mean, var = x.mean(dim=dims), x.var(dim=dims, unbiased=False)
        with torch.no_grad():
            count = x.numel() // x.shape[1]
            self.running_mean.lerp_(mean, self.momentum)
            self.running_var.lerp_(var * count / max(count - 1, 1), self.momentum)
        return mean, var

    def _eval_forward(self, x: torch.Tensor) -> torch.Tensor:
        scale, shift = self.affine()
        return x * _channel_view(scale, x) + _channel_view(shift, x)

    @property
    def lipschitz_factor(self) -> float:
        """Lipschitz constant of the eval-mode map: ``max_c |scale_c|``."""
        return float(self.affine()[0].detach().abs().max())

    def folded(self) -> nn.Conv2d:
        """The eval-mode map as a depthwise 1x1 ``nn.Conv2d`` (the ``zoo.fold`` hook), weight and bias
        from :meth:`affine`."""
        scale, shift = self.affine()
        conv = nn.Conv2d(scale.numel(), scale.numel(), 1, groups=scale.numel())
        conv = conv.to(device=scale.device, dtype=scale.dtype)
        with torch.no_grad():
            conv.weight.copy_(scale.view(-1, 1, 1, 1))
            conv.bias.copy_(shift)
        return conv


class BatchReNorm2d(_RenormalizedChannels):
    """Batch renormalisation (Ioffe 2017) of (N, C, H, W) inputs.

    Training: ``x_hat = (x - mu_B) / sigma_B * r + d`` with ``r = clip(sigma_B / sigma, 1/r_max, r_max)``
    and ``d = clip((mu_B - mu) / sigma, -d_max, d_max)`` (no gradient through r, d), where mu, sigma
    come from the running statistics; then ``y = gamma * x_hat + beta``. Eval: the running statistics,
    ``y = gamma * (x - mu) / sigma + beta``, a per-channel affine map (see :meth:`folded`), whose
    Lipschitz constant is ``max_c |gamma_c| / sigma_c``.

    ``r_max`` and ``d_max`` are plain attributes meant to follow a schedule: 1 and 0 (batch norm) at
    the start, relaxed during training (the paper goes to 3 and 5); set them between steps.

    Args:
        num_features: C.
        eps: added to the variances.
        momentum: weight of the new batch statistics in the running ones (the paper uses 0.01).
        r_max, d_max: initial clipping limits.

    Shape: (N, C, H, W) -> (N, C, H, W).
    """

    def __init__(
        self,
        num_features: int,
        eps: float = 1e-5,
        momentum: float = 0.01,
        r_max: float = 1.0,
        d_max: float = 0.0,
    ) -> None:
        super().__init__(num_features, eps, momentum, d_max)
        self.r_max = r_max

    def affine(self) -> tuple[torch.Tensor, torch.Tensor]:
        """(scale, shift), both (C,): the eval-mode map is ``y = scale * x + shift`` per channel, with
        ``scale = gamma / sigma`` and ``shift = beta - scale * mu``."""
        scale = self.weight / self._running_std()
        return scale, self.bias - scale * self.running_mean

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training:
            return self._eval_forward(x)
        with torch.no_grad():
            running_mean, running_std = self.running_mean.clone(), self._running_std()
        mean, var = self._batch_statistics(x)
        std = (var + self.eps).sqrt()
        with torch.no_grad():
            r = (std / running_std).clamp(1 / self.r_max, self.r_max)
            d = ((mean - running_mean) / running_std).clamp(-self.d_max, self.d_max)
        x_hat = (x - _channel_view(mean, x)) * _channel_view(r / std, x) + _channel_view(d, x)
        return x_hat * _channel_view(self.weight, x) + _channel_view(self.bias, x)

    def extra_repr(self) -> str:
        return (
            f"{self.weight.numel()}, eps={self.eps}, momentum={self.momentum}, "
            f"r_max={self.r_max}, d_max={self.d_max}"
        )


class BatchReCentering2d(_RenormalizedChannels):
    """Batch re-centering of (N, C, H, W) inputs: batch renormalisation's mean correction with a
    bounded scale instead of the division by a standard deviation.

    Training: ``y = s * (x - mu_B + d) + beta`` with ``d = clip(mu_B - mu, -d_max * sigma, d_max * sigma)``
    (no gradient through d), where mu, sigma come from the running statistics: the batch mean
    while ``d_max = 0``, the running mean once d is unclipped. Eval: ``y = s * (x - mu) + beta``. The
    per-channel scale is ``s = weight / max(1, max_c |weight_c|)``: the diagonal map's spectral
    normalisation, through which every channel's weight keeps its gradient (a clamp would stop it
    at the bound, where the weights start).

    Both modes are ``max_c |s_c|``-Lipschitz, so at most 1: per channel, the training map is ``s``
    times ``x - mean(x) + clip(mean(x) - mu)``, the identity minus a part of the projection on the
    batch mean (the clip has slope 0 or 1). The running variance only gives d its unit (as in
    BatchReNorm2d, ``d_max`` counts running standard deviations).

    Args:
        num_features: C.
        eps: added to the running variance.
        momentum: weight of the new batch statistics in the running ones.
        d_max: initial clipping limit of the correction (0: batch centering; follow a schedule).

    Shape: (N, C, H, W) -> (N, C, H, W).
    """

    def __init__(
        self, num_features: int, eps: float = 1e-5, momentum: float = 0.01, d_max: float = 0.0
    ) -> None:
        super().__init__(num_features, eps, momentum, d_max)

    def scale(self) -> torch.Tensor:
        """(C,) the per-channel scale ``s = weight / max(1, max_c |weight_c|)``."""
        return self.weight / self.weight.abs().max().clamp_min(1.0)

    def affine(self) -> tuple[torch.Tensor, torch.Tensor]:
        """(scale, shift), both (C,): the eval-mode map is ``y = scale * x + shift`` per channel, with
        ``shift = beta - scale * mu``."""
        scale = self.scale()
        return scale, self.bias - scale * self.running_mean

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training:
            return self._eval_forward(x)
        with torch.no_grad():
            running_mean, limit = self.running_mean.clone(), self.d_max * self._running_std()
        mean, _ = self._batch_statistics(x)
        with torch.no_grad():
            d = torch.minimum(torch.maximum(mean - running_mean, -limit), limit)
        centred = x - _channel_view(mean - d, x)
        return centred * _channel_view(self.scale(), x) + _channel_view(self.bias, x)

    def extra_repr(self) -> str:
        return f"{self.weight.numel()}, eps={self.eps}, momentum={self.momentum}, d_max={self.d_max}"


def fold_batchrenorm(conv: nn.Conv2d, norm: BatchReNorm2d | BatchReCentering2d) -> nn.Conv2d:
    """One plain ``nn.Conv2d`` computing ``norm(conv(x))`` with ``norm`` in eval mode.

    The per-channel scale (``gamma / sigma``, or the bounded ``s``) multiplies the conv's output
    channels and the shift goes into the bias, so the certificate bounds the product as one
    convolution (tighter than the product of two bounds). ``conv`` may be parametrized: its current
    weight is used.
    """
    scale, shift = norm.affine()
    merged = nn.Conv2d(
        conv.in_channels,
        conv.out_channels,
        conv.kernel_size,
        conv.stride,
        conv.padding,
        conv.dilation,
        conv.groups,
        bias=True,
        padding_mode=conv.padding_mode,
    ).to(device=scale.device, dtype=scale.dtype)
    with torch.no_grad():
        bias = conv.bias if conv.bias is not None else torch.zeros_like(scale)
        merged.weight.copy_(conv.weight * scale.view(-1, 1, 1, 1))
        merged.bias.copy_(scale * bias + shift)
    return merged
