"""DELTA: keep the fine-tuned network's feature maps close to the source's (Li et al. 2019).

Both regularizers compare, layer by layer, the feature maps of the network being trained with
those of the frozen source network on the same inputs (the source side is detached). A feature map
has shape (B, C, *spatial) (a dense layer's output is (B, C), one position).

Normalisation: the reference sums over the batch, which makes the right weight depend on the
batch size; here every term is a *mean over the batch* of the per-example quantity, so a weight
means the same at any batch size (and equals the reference's weight at batch size 1).
"""

from __future__ import annotations

from collections.abc import Mapping

import torch
from torch import nn

__all__ = ["AttentionRegularization", "BehavioralRegularization"]


def _check_layers(target: Mapping[str, torch.Tensor], source: Mapping[str, torch.Tensor]) -> None:
    if target.keys() != source.keys():
        raise ValueError(f"feature maps of different layers: {sorted(target)} vs {sorted(source)}")


class BehavioralRegularization(nn.Module):
    """``sum_l mean_b 0.5 * ||FM_t[l, b] - FM_s[l, b]||^2``, the squared distance summed over the
    channels and positions of each example.

    Shape: ``forward({layer: (B, C, *)}, {layer: (B, C, *)})`` -> scalar.
    """

    def forward(self, target: Mapping[str, torch.Tensor], source: Mapping[str, torch.Tensor]) -> torch.Tensor:
        _check_layers(target, source)
        return sum(
            0.5 * (target[name] - source[name].detach()).square().flatten(1).sum(1).mean() for name in target
        )


class AttentionRegularization(nn.Module):
    """``sum_l mean_b 0.5 * sum_c C_l * a_lc * D_lbc^2 / HW_l`` with
    ``D_lbc = ||FM_t[l, b, c] - FM_s[l, b, c]||_2`` over the HW_l positions of channel c.

    ``a_l`` is the channel attention of layer l (non-negative, summing to 1, see
    :mod:`training.transfer.channel_attention`), so ``C_l * a_lc`` averages to 1 over the channels:
    uniform attention is the behavioural term divided by the number of positions.

    Args:
        attention: ``{layer: (C_l,)}``; kept as buffers (dots in names written ``-``).

    Shape: ``forward({layer: (B, C_l, *)}, {layer: (B, C_l, *)})`` -> scalar.
    """

    def __init__(self, attention: Mapping[str, torch.Tensor]) -> None:
        super().__init__()
        self.layers = list(attention)
        for name, weights in attention.items():
            self.register_buffer(name.replace(".", "-"), weights.detach().clone())

    def attention(self, layer: str) -> torch.Tensor:
        """The channel attention (C_l,) of ``layer``."""
        return self.get_buffer(layer.replace(".", "-"))

    def forward(self, target: Mapping[str, torch.Tensor], source: Mapping[str, torch.Tensor]) -> torch.Tensor:
        _check_layers(target, source)
        if set(target) != set(self.layers):
            raise ValueError(f"attention is known for {self.layers}, feature maps given for {sorted(target)}")
        total = 0.0
        for name in self.layers:
            difference = target[name] - source[name].detach()
            difference = difference.reshape(*difference.shape[:2], -1)  # (B, C, HW)
            channels, positions = difference.shape[1], difference.shape[2]
            squared_distance = difference.square().sum(2)  # (B, C): D_bc^2
            weighted = channels * self.attention(name) * squared_distance / positions
            total = total + 0.5 * weighted.sum(1).mean()
        return total
