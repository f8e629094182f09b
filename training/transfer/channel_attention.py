"""DELTA's channel attention: how much the target loss needs each channel of a layer.

For channel j of a layer, the importance is the increase of the target loss when that channel's
output is switched off, averaged over a few batches. The channel is masked with a forward hook on
the layer's output: zeroing a row of a parametrized weight instead would change the whole
normalised weight (a spectral or Bjorck normalisation couples all rows). Per layer, the
importances are z-scored and turned into attention weights by ``softmax(z / 5)``.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence

import torch
from torch import nn
from torch.nn.utils import parametrize

from training.transfer.features import IntermediateLayerGetter

__all__ = ["ATTENTION_TEMPERATURE", "attention_from_importance", "channel_attention", "channel_importance"]

ATTENTION_TEMPERATURE = 5.0


def _masked_channel(channel: int):
    """A forward hook that zeroes channel ``channel`` (dim 1) of a layer's output."""

    def hook(module: nn.Module, args: object, output: torch.Tensor) -> torch.Tensor:
        mask = torch.ones(output.shape[1], dtype=output.dtype, device=output.device)
        mask[channel] = 0
        return output * mask.view(1, -1, *([1] * (output.dim() - 2)))

    return hook


@torch.no_grad()
def channel_importance(
    model: nn.Module,
    layers: Sequence[str],
    batches: Iterable[tuple[torch.Tensor, torch.Tensor]],
    loss_fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
) -> dict[str, torch.Tensor]:
    """Mean over ``batches`` of ``loss(channel j masked) - loss(nothing masked)``.

    The model is run in eval mode with its parametrized weights computed once
    (``parametrize.cached``), one forward pass per channel and batch.

    Returns:
        ``{layer: (C_layer,)}`` float64 importances.
    """
    model.eval()
    getter = IntermediateLayerGetter(model, layers)
    totals: dict[str, torch.Tensor] = {}
    count = 0
    with parametrize.cached():
        for x, y in batches:
            feature_maps, logits = getter(x)
            base = float(loss_fn(logits, y))
            for name, feature_map in feature_maps.items():
                increases = torch.zeros(feature_map.shape[1], dtype=torch.float64)
                for channel in range(feature_map.shape[1]):
                    handle = getter.layers[name].register_forward_hook(_masked_channel(channel))
                    try:
                        increases[channel] = float(loss_fn(model(x), y)) - base
                    finally:
                        handle.remove()
                totals[name] = totals.get(name, 0) + increases
            count += 1
    if count == 0:
        raise ValueError("channel_importance needs at least one batch")
    return {name: total / count for name, total in totals.items()}


def attention_from_importance(
    importance: torch.Tensor, temperature: float = ATTENTION_TEMPERATURE
) -> torch.Tensor:
    """``softmax(z / temperature)`` of the z-scored importances (population standard deviation;
    a layer whose channels all matter equally gets uniform attention).

    Shape: (C,) -> (C,) float32, non-negative, summing to 1.
    """
    importance = importance.double()
    spread = importance.std(unbiased=False)
    z = (importance - importance.mean()) / spread if spread > 0 else torch.zeros_like(importance)
    return torch.softmax(z / temperature, dim=0).float()


def channel_attention(
    model: nn.Module,
    layers: Sequence[str],
    batches: Iterable[tuple[torch.Tensor, torch.Tensor]],
    loss_fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
) -> dict[str, torch.Tensor]:
    """The channel attention ``{layer: (C_layer,)}`` of ``model`` for the target loss."""
    importance = channel_importance(model, layers, batches, loss_fn)
    return {name: attention_from_importance(value) for name, value in importance.items()}
