"""Experience replay (ER): every step trains on the current batch concatenated with a batch drawn
from a reservoir buffer of past examples; optionally LiDER on separate buffer draws."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import nn

from training.augment import augment
from training.continual.buffer import ReservoirBuffer
from training.continual.lider import LiDER
from training.continual.scenario import Experience
from training.continual.strategies.base import Settings, Strategy

__all__ = ["ExperienceReplay"]


class ExperienceReplay(Strategy):
    """ER over a :class:`~training.continual.buffer.ReservoirBuffer` of un-augmented inputs.

    Args:
        model, loss, settings, new_optimizer: as for :class:`~training.continual.strategies.base.Strategy`.
        buffer_size: slots of the buffer.
        replay_batch_size: examples per buffer draw.
        lider: the LiDER regulariser, applied to its own buffer draw as soon as the buffer is
            non-empty (None: plain ER).
    """

    def __init__(
        self,
        model: nn.Module,
        loss: nn.Module,
        settings: Settings,
        new_optimizer: Callable[[], torch.optim.Optimizer],
        *,
        buffer_size: int,
        replay_batch_size: int,
        lider: LiDER | None = None,
    ) -> None:
        super().__init__(model, loss, settings, new_optimizer)
        self.buffer = ReservoirBuffer(buffer_size)
        self.replay_batch_size = replay_batch_size
        self.lider = lider

    def before_experience(self, experience: Experience, generator: torch.Generator) -> None:
        if self.lider is not None and experience.index == 0:
            self.lider.initialize_budget(self.model, experience.x_train, generator)

    def make_optimizer(self, experience: Experience) -> torch.optim.Optimizer:
        optimizer = super().make_optimizer(experience)
        if self.lider is not None and self.lider.budget.requires_grad:
            optimizer.add_param_group({"params": [self.lider.budget], "weight_decay": 0.0})
        return optimizer

    def draw(self, generator: torch.Generator) -> dict[str, torch.Tensor]:
        """A buffer batch with its inputs augmented (the buffer keeps them un-augmented)."""
        batch = self.buffer.sample(self.replay_batch_size, generator)
        batch["x"] = augment(batch["x"], self.settings.augmentation, generator)
        return batch

    def lider_loss(self, generator: torch.Generator) -> torch.Tensor | float:
        """LiDER's loss on a fresh buffer draw (0 without LiDER or while the buffer is empty)."""
        if self.lider is None or len(self.buffer) == 0:
            return 0.0
        return self.lider.loss(self.model, self.draw(generator)["x"], generator)

    def batch_loss(
        self, x: torch.Tensor, y: torch.Tensor, generator: torch.Generator
    ) -> tuple[torch.Tensor, torch.Tensor]:
        if len(self.buffer) == 0:
            logits = self.model(x)
            return self.loss(logits, y) + self.lider_loss(generator), logits
        replay = self.draw(generator)
        logits = self.model(torch.cat([x, replay["x"]]))
        loss = self.loss(logits, torch.cat([y, replay["y"]]))
        return loss + self.lider_loss(generator), logits[: len(x)]

    def after_step(
        self, raw: torch.Tensor, y: torch.Tensor, logits: torch.Tensor, generator: torch.Generator
    ) -> None:
        self.buffer.add(generator, x=raw, y=y)

    def state_dict(self) -> dict[str, Any]:
        state = super().state_dict() | {"buffer": self.buffer.state_dict()}
        if self.lider is not None:
            state["lider"] = self.lider.state_dict()
        return state

    def load_state_dict(self, state: dict[str, Any]) -> None:
        super().load_state_dict(state)
        self.buffer.load_state_dict(state["buffer"], self.settings.device)
        if self.lider is not None:
            self.lider.load_state_dict(state["lider"])
