"""DER++ (Buzzega et al. 2020): the buffer also keeps the logits each example had when it was seen;
the loss adds ``alpha * MSE(logits(buffer x), stored logits) + beta * loss(buffer x, buffer y)``,
each on its own buffer draw (and LiDER on a third one when enabled)."""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F

from training.continual.strategies.er import ExperienceReplay

__all__ = ["DERPlusPlus"]


class DERPlusPlus(ExperienceReplay):
    """DER++ over a reservoir buffer of (un-augmented input, label, logits).

    Args:
        alpha: weight of the logit-matching term.
        beta: weight of the replayed-label term.
        args, kwargs: the arguments of :class:`~training.continual.strategies.er.ExperienceReplay`.
    """

    def __init__(self, *args: Any, alpha: float, beta: float, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.alpha = alpha
        self.beta = beta

    def batch_loss(
        self, x: torch.Tensor, y: torch.Tensor, generator: torch.Generator
    ) -> tuple[torch.Tensor, torch.Tensor]:
        logits = self.model(x)
        loss = self.loss(logits, y)
        if len(self.buffer) > 0:
            matched = self.draw(generator)
            loss = loss + self.alpha * F.mse_loss(self.model(matched["x"]), matched["logits"])
            labelled = self.draw(generator)
            loss = loss + self.beta * self.loss(self.model(labelled["x"]), labelled["y"])
        return loss + self.lider_loss(generator), logits

    def after_step(
        self, raw: torch.Tensor, y: torch.Tensor, logits: torch.Tensor, generator: torch.Generator
    ) -> None:
        self.buffer.add(generator, x=raw, y=y, logits=logits)
