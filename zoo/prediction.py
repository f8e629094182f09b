"""Predictions with certified radii: what ``CertifiedModel.predict`` and ``zoo serve`` both answer.

For a batch of logits and the certificate's bound ``L``, each example gets its predicted class
(argmax), its margin (top1 - top2) and its certified L2 radius (``zoo.robustness.certified_radius``).
The inputs are first checked against the input space the certificate is stated in: a certificate
recorded for pixels in [0, 1] says nothing useful about 255-scale pixels, whose radii would be in
the wrong units. Values outside the recorded ``input_range`` are refused, or, when the caller asks
for it, clamped into the range, and the examples that were changed are reported.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import torch

from zoo.robustness import certified_radius

__all__ = ["InputRangeError", "Predictions", "check_inputs", "input_range", "predictions_from_logits"]


class InputRangeError(ValueError):
    """Inputs hold values outside the input range the certificate is stated in."""


@dataclass(frozen=True)
class Predictions:
    """What a certified classifier answers for a batch of N examples (CPU tensors).

    Attributes:
        logits: (N, K) the network's outputs.
        predicted_class: (N,) int64 argmax of the logits.
        margin: (N,) float64 top1 - top2 logit, in output units.
        certified_radius: (N,) float64 L2 distance, in input units, within which the predicted class
            cannot change: margin / (sqrt(2) * L). 0 for a tie.
        clamped: (N,) bool, True for the examples that had values clamped into the input range
            (all False unless clamping was asked for).
    """

    logits: torch.Tensor
    predicted_class: torch.Tensor
    margin: torch.Tensor
    certified_radius: torch.Tensor
    clamped: torch.Tensor

    def __len__(self) -> int:
        return len(self.logits)


def input_range(preprocessing: Mapping[str, Any]) -> tuple[float, float] | None:
    """The ``input_range`` [low, high] a certificate's preprocessing records, or None if it records none.

    Raises ValueError when the record is malformed (not two finite numbers with low < high): a range
    that cannot be read is not silently ignored.
    """
    if "input_range" not in preprocessing:
        return None
    value = preprocessing["input_range"]
    if (
        not isinstance(value, list | tuple)
        or len(value) != 2
        or not all(isinstance(v, int | float) and not isinstance(v, bool) and math.isfinite(v) for v in value)
        or not value[0] < value[1]
    ):
        raise ValueError(
            f"the certificate's input_range {value!r} is malformed: expected [low, high], finite, low < high"
        )
    return float(value[0]), float(value[1])


def check_inputs(
    inputs: torch.Tensor, bounds: tuple[float, float] | None, *, clamp: bool = False
) -> tuple[torch.Tensor, torch.Tensor]:
    """``inputs`` (N, ...) checked to be finite and within ``bounds``; returns them and the clamped mask.

    Returns ``(inputs, clamped)``: the inputs (a clamped copy when ``clamp`` moved any value, else the
    same tensor) and a (N,) bool mask of the examples clamping changed. Raises ValueError on NaN or
    infinite values and :class:`InputRangeError` on values outside ``bounds`` unless ``clamp``.
    ``bounds`` None (the certificate records no range) checks finiteness only.
    """
    if not torch.isfinite(inputs).all():
        raise ValueError("the inputs contain NaN or infinite values")
    per_example = inputs.reshape(len(inputs), -1)
    if bounds is None or per_example.numel() == 0:
        return inputs, torch.zeros(len(inputs), dtype=torch.bool)
    low, high = bounds
    smallest, largest = per_example.min(dim=1).values, per_example.max(dim=1).values
    outside = (smallest < low) | (largest > high)
    if not outside.any():
        return inputs, outside
    if not clamp:
        raise InputRangeError(
            f"{int(outside.sum())} of {len(inputs)} examples have values outside the certificate's input "
            f"range [{low:g}, {high:g}] (the inputs span [{float(smallest.min()):g}, "
            f"{float(largest.max()):g}]): preprocess them as the certificate states, or ask for clamping"
        )
    return inputs.clamp(low, high), outside


def predictions_from_logits(
    logits: torch.Tensor, lipschitz_bound: float, clamped: torch.Tensor | None = None
) -> Predictions:
    """The :class:`Predictions` of (N, K) ``logits`` under a certified bound ``lipschitz_bound``.

    ``clamped`` is the mask :func:`check_inputs` returned (None: nothing was clamped).
    """
    logits = logits.detach().cpu()
    top2 = logits.double().topk(2, dim=1).values
    return Predictions(
        logits=logits,
        predicted_class=logits.argmax(dim=1),
        margin=top2[:, 0] - top2[:, 1],
        certified_radius=certified_radius(logits, lipschitz_bound),
        clamped=torch.zeros(len(logits), dtype=torch.bool) if clamped is None else clamped.cpu(),
    )
