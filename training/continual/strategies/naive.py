"""Naive fine-tuning: train on each experience in turn, with nothing against forgetting.

With a Synaptic Intelligence penalty (``si``) this is the "SI alone" strategy."""

from __future__ import annotations

import torch

from training.continual.strategies.base import Strategy

__all__ = ["Naive"]


class Naive(Strategy):
    """The loss of the current batch only (plus the SI penalty if one is given)."""

    def batch_loss(
        self, x: torch.Tensor, y: torch.Tensor, generator: torch.Generator
    ) -> tuple[torch.Tensor, torch.Tensor]:
        logits = self.model(x)
        return self.loss(logits, y), logits
