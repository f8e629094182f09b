"""lipresnet: a 1-Lipschitz residual network of SLL blocks (or convex residual blocks)."""

from __future__ import annotations

from collections.abc import Sequence

from torch import nn

from zoo.layers import SLL, ConvexResidual, sll_residual
from zoo.models.common import check_choice, constrain, make_activation

BLOCKS = ("sll", "convex")


def lipresnet(
    *,
    input_shape: tuple[int, int, int],
    num_classes: int,
    parametrized: bool = True,
    widths: Sequence[int] = (16, 32),
    depth: int = 2,
    hidden_ratio: int = 2,
    block: str = "sll",
    activation: str = "maxmin",
    stem_stride: int = 1,
) -> nn.Sequential:
    """An orthogonal 3x3 stem (stride ``stem_stride``), then stages of ``depth`` residual blocks at a
    constant width, stages joined by an orthogonal 2x2 stride-2 convolution; then Flatten and
    orthogonal logits.

    Args:
        input_shape: (C, H, W) of the inputs.
        num_classes: number of logits.
        parametrized: training mode (parametrizations, SLL blocks) or the plain modules a folded
            checkpoint loads into (SLL blocks as ``Residual(Sequential(conv, ReLU, adjoint conv))``).
        widths: channels of each stage.
        depth: residual blocks per stage.
        hidden_ratio: SLL hidden channels per channel.
        block: 'sll' (``x - 2 W T^-1 relu(W^T x + b)``, 3x3) or 'convex'
            (``(1 - alpha) x + alpha act(conv(x))`` with an orthogonal 3x3 conv, ``alpha`` learnt).
        activation: the 'convex' block's activation ('groupsort2', 'maxmin', 'abs', 'householder').
        stem_stride: 1, or 2 to halve the resolution at the stem (the blocks then cost a quarter).

    Shape: (N, *input_shape) -> (N, num_classes).
    """
    check_choice("block", block, BLOCKS)
    channels, height, width = input_shape

    def orthogonal(layer: nn.Module) -> nn.Module:
        return constrain(layer, "orthogonal", parametrized)

    def residual_block(channels: int) -> nn.Module:
        if block == "convex":
            branch = nn.Sequential(
                orthogonal(nn.Conv2d(channels, channels, 3, padding=1)), make_activation(activation, channels)
            )
            return ConvexResidual(branch, parametrized=parametrized)
        inner = nn.Conv2d(channels, channels * hidden_ratio, 3, padding=1)
        return SLL(inner) if parametrized else sll_residual(inner)

    if stem_stride not in (1, 2):
        raise ValueError(f"stem_stride must be 1 or 2, got {stem_stride}")
    layers: list[nn.Module] = [orthogonal(nn.Conv2d(channels, widths[0], 3, stride=stem_stride, padding=1))]
    channels, height, width = widths[0], -(-height // stem_stride), -(-width // stem_stride)
    for stage, out_channels in enumerate(widths):
        if stage > 0:
            stride = 2 if min(height, width) >= 2 else 1
            layers.append(orthogonal(nn.Conv2d(channels, out_channels, stride, stride=stride)))
            channels, height, width = out_channels, height // stride, width // stride
        layers += [residual_block(channels) for _ in range(depth)]
    layers += [nn.Flatten(), orthogonal(nn.Linear(channels * height * width, num_classes))]
    return nn.Sequential(*layers)
