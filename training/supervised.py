"""The plain recipe: supervised training on the whole dataset, epoch after epoch.

The one protocol that trains data-parallel: under torchrun every rank draws the same shuffled
global batches, takes its own interleaved shard of each, and DDP averages the gradients, weighted
so that the step is the step of the global-batch mean (:mod:`training.distributed`). The one that
honours ``precision='bf16'`` (autocast on CUDA for the forward pass).
"""

from __future__ import annotations

import math
from contextlib import AbstractContextManager, nullcontext
from typing import Any

import torch
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from training.augment import augment
from training.losses import make_loss
from training.protocol import StepCallback, TrainingProtocol
from training.recipe import build_model, epoch_schedule, make_optimizer, set_learning_rate

__all__ = ["SupervisedProtocol"]


def _autocast(device: torch.device, precision: str) -> AbstractContextManager[Any]:
    """bf16 autocast on CUDA when asked; the certificate is computed afterwards in float64 on the
    folded float32 weights, so reduced precision can cost accuracy but never soundness."""
    if precision == "fp32":
        return nullcontext()
    return torch.autocast(device_type=device.type, dtype=torch.bfloat16)


class SupervisedProtocol(TrainingProtocol):
    """Train the recipe's network on the dataset's training split, one epoch per unit."""

    kind = "plain"
    data_parallel = True
    mixed_precision = True

    def build(self) -> nn.Module:
        run, entry = self.run, self.run.entry
        self.model = build_model(entry, run.device)
        self.loss_fn = make_loss(entry.recipe.loss.name, entry.recipe.loss.params)
        self.optimizer = make_optimizer(entry, self.model)
        # DDP broadcasts rank 0's weights now; a resumed state is then loaded alike on every rank.
        self.trained = DistributedDataParallel(self.model) if run.context.enabled else self.model
        self.x_train, self.y_train = run.data.x_train.to(run.device), run.data.y_train.to(run.device)
        return self.model

    def units(self) -> int:
        return self.run.epochs

    def steps(self, unit: int) -> int:
        return math.ceil(len(self.x_train) / self.run.entry.recipe.batch_size)

    def train_unit(self, unit: int, on_step: StepCallback) -> dict[str, Any]:
        run, recipe, context = self.run, self.run.entry.recipe, self.run.context
        set_learning_rate(self.optimizer, run.entry, unit, run.epochs)
        self.trained.train()
        order, augmentation = epoch_schedule(len(self.x_train), run.seed, unit, run.device)
        loss_sum, correct, seen = 0.0, 0, 0
        for start in range(0, len(order), recipe.batch_size):
            global_batch = order[start : start + recipe.batch_size]
            index = context.shard(global_batch)
            x = augment(self.x_train[global_batch], recipe.augmentation, augmentation)
            x = x[context.rank :: context.world_size]
            with _autocast(run.device, run.options.precision):
                logits = self.trained(x).float()
            if len(index):
                loss = self.loss_fn(logits, self.y_train[index])
                weighted = loss * context.loss_weight(len(index), len(global_batch))
            else:  # an empty shard still joins the gradient all-reduce
                loss = weighted = logits.sum() * 0.0
            self.optimizer.zero_grad(set_to_none=True)
            weighted.backward()
            self.optimizer.step()
            loss_sum += loss.item() * len(index)
            correct += int((logits.argmax(1) == self.y_train[index]).sum())
            seen += len(index)
            on_step(loss_sum / max(seen, 1), correct / max(seen, 1))
        return {"epoch": unit, "loss": loss_sum / max(seen, 1), "accuracy": correct / max(seen, 1)}

    def state_dict(self) -> dict[str, Any]:
        return {"model": self.model.state_dict(), "optimizer": self.optimizer.state_dict()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.model.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])

    def end_training(self) -> None:
        # DDP's reducer holds gloo / nccl work: release it before the process group goes away
        # (destroying the group under a live reducer can abort a rank at exit).
        del self.trained
