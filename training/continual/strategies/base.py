"""What every strategy shares: the loop over one experience's epochs and batches, and its hooks.

A strategy trains the model on one experience at a time (:meth:`Strategy.train_experience`). The
loop is the same for all of them; what differs goes through hooks, each a no-op by default:

- ``before_experience`` / ``after_experience``: set up (LiDER's budget, AR1's CWR* rows) and
  consolidate (AR1's latent memory);
- ``make_optimizer``: a new optimizer per experience (its state does not carry across experiences);
- ``current_batch_size``: how many current examples per step (AR1 leaves room for replay);
- ``train_mode``: which modules train (AR1 keeps the frozen lower part in eval mode);
- ``batch_loss`` (required): the loss of one step, given the augmented current batch;
- ``after_step``: what is remembered (the rehearsal buffers).

All randomness of an experience comes from the generator the runner gives it, so a run resumed at an
experience boundary redraws exactly what an uninterrupted run draws.
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn
from torch.nn.utils import parametrize

from training.augment import augment
from training.continual.scenario import Experience
from training.continual.si import SynapticIntelligence

__all__ = ["Settings", "StepCallback", "Strategy"]

StepCallback = Callable[..., object]
"""Called after every step as ``on_step(loss=..., acc=...)``: the running mean loss and accuracy on the
current examples of the experience."""


@dataclass(frozen=True)
class Settings:
    """The recipe values every strategy uses.

    Attributes:
        epochs: epochs per experience.
        batch_size: minibatch size.
        augmentation: augmentation of the inputs ('none', 'crop', 'crop_flip').
        device: where the model and the data live.
    """

    epochs: int
    batch_size: int
    augmentation: str
    device: torch.device


class Strategy(ABC):
    """A continual-learning strategy.

    Args:
        model: the network (modified in place).
        loss: the recipe's task loss, ``loss(logits (N, K), labels (N,)) -> scalar``.
        settings: epochs, batch size, augmentation, device.
        new_optimizer: builds the recipe's optimizer over ``model``'s parameters.
        si: the Synaptic Intelligence penalty, if the strategy uses it.
    """

    def __init__(
        self,
        model: nn.Module,
        loss: nn.Module,
        settings: Settings,
        new_optimizer: Callable[[], torch.optim.Optimizer],
        si: SynapticIntelligence | None = None,
    ) -> None:
        self.model = model
        self.loss = loss
        self.settings = settings
        self.new_optimizer = new_optimizer
        self.si = si

    def before_experience(self, experience: Experience, generator: torch.Generator) -> None:  # noqa: B027
        """Prepare for ``experience`` (called before its optimizer is built)."""

    def make_optimizer(self, experience: Experience) -> torch.optim.Optimizer:
        return self.new_optimizer()

    def current_batch_size(self, experience: Experience) -> int:
        return self.settings.batch_size

    def train_mode(self) -> None:
        self.model.train()

    @abstractmethod
    def batch_loss(
        self, x: torch.Tensor, y: torch.Tensor, generator: torch.Generator
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """(loss, logits of ``x``) for one step on the augmented current batch ``x`` (N, C, H, W)."""

    def after_step(  # noqa: B027
        self, raw: torch.Tensor, y: torch.Tensor, logits: torch.Tensor, generator: torch.Generator
    ) -> None:
        """After the optimizer step; ``raw`` is the un-augmented batch, ``logits`` its (detached)
        logits as computed for the step."""

    def after_experience(self, experience: Experience, generator: torch.Generator) -> None:  # noqa: B027
        """Consolidate after training on ``experience``."""

    def steps(self, experience: Experience) -> int:
        """Number of optimizer steps :meth:`train_experience` takes on ``experience``."""
        return self.settings.epochs * math.ceil(len(experience.y_train) / self.current_batch_size(experience))

    def optimize(self, loss: torch.Tensor, optimizer: torch.optim.Optimizer) -> None:
        """One optimizer step on ``loss`` (plus the SI penalty when the strategy has one)."""
        if self.si is not None:
            self.si.optimize(loss, optimizer)
            return
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()

    def train_experience(
        self, experience: Experience, generator: torch.Generator, on_step: StepCallback
    ) -> dict[str, float]:
        """Train on ``experience`` for ``settings.epochs`` epochs; returns its mean loss and accuracy
        on the current examples."""
        device = self.settings.device
        self.before_experience(experience, generator)
        optimizer = self.make_optimizer(experience)
        if self.si is not None:
            self.si.begin_experience()
        x_all, y_all = experience.x_train.to(device), experience.y_train.to(device)
        batch_size = self.current_batch_size(experience)
        loss_sum, correct, seen = 0.0, 0, 0
        for _ in range(self.settings.epochs):
            self.train_mode()
            order = torch.randperm(len(x_all), generator=generator).to(device)
            for index in order.split(batch_size):
                raw, y = x_all[index], y_all[index]
                x = augment(raw, self.settings.augmentation, generator)
                # Each parametrized weight is computed once per step, however many forward passes
                # the step makes (replay, DER++, LiDER): faster, and a parametrization that updates
                # a buffer in place (power iteration) does not invalidate the first pass's graph.
                with parametrize.cached():
                    loss, logits = self.batch_loss(x, y, generator)
                    self.optimize(loss, optimizer)
                self.after_step(raw, y, logits.detach(), generator)
                loss_sum += loss.item() * len(y)
                correct += int((logits.argmax(1) == y).sum())
                seen += len(y)
                on_step(loss=loss_sum / seen, acc=correct / seen)
        if self.si is not None:
            self.si.end_experience()
        self.after_experience(experience, generator)
        return {"loss": loss_sum / max(seen, 1), "accuracy": correct / max(seen, 1)}

    def state_dict(self) -> dict[str, Any]:
        """Everything but the model a resumed run needs (tensors and plain values only)."""
        return {"si": self.si.state_dict()} if self.si is not None else {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if self.si is not None:
            self.si.load_state_dict(state["si"])
