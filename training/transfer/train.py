"""The transfer protocol: fine-tune a certified source model onto a new task, certified at the end.

:func:`training.trainer.train` runs it when the entry's recipe has a ``transfer`` block; one unit
of the run is one epoch. The network is the entry's architecture, built with its
parametrizations; its backbone starts from the source's folded weights and its head, a new
1-Lipschitz layer of the architecture, from scratch. So the fine-tuned model is folded and
certified by the trainer like any other: the regularizers change how it is trained, never what is
certified.
"""

from __future__ import annotations

import math
from dataclasses import replace
from typing import Any

import torch
from torch import nn

from training.data import Dataset
from training.losses import make_loss
from training.protocol import Run, StepCallback, TrainingProtocol
from training.recipe import build_model, epoch_schedule, make_optimizer, set_learning_rate
from training.transfer.loop import run_epoch
from training.transfer.objective import TransferObjective, build_objective
from training.transfer.recipe import parse_transfer
from training.transfer.source import Source, initialise_backbone, load_source, split_head
from training.transfer.tasks import class_subset
from zoo.registry import ModelEntry

__all__ = ["TransferProtocol"]

# Training inputs on which the re-parametrized source backbone is compared with the source.
PROBE_EXAMPLES = 256


def _trained_head_probe(
    entry: ModelEntry,
    source: Source,
    task: Dataset,
    loss_fn: nn.Module,
    *,
    epochs: int,
    seed: int,
    device: torch.device,
) -> nn.Module:
    """The source backbone (frozen) with a new head trained ``epochs`` epochs on ``task``: the
    network on which DELTA measures how much the target loss needs each channel."""
    probe = build_model(entry, device)
    initialise_backbone(probe, source.model, task.x_train[:PROBE_EXAMPLES])
    backbone, head = split_head(probe)
    backbone.requires_grad_(False)
    optimizer = make_optimizer(entry, head)
    for epoch in range(epochs):
        order, generator = epoch_schedule(len(task.x_train), seed + 1, epoch, device)
        run_epoch(
            probe,
            loss_fn,
            TransferObjective(),
            optimizer,
            task,
            order=order,
            batch_size=entry.recipe.batch_size,
            augmentation=entry.recipe.augmentation,
            generator=generator,
        )
    return probe


class TransferProtocol(TrainingProtocol):
    """Fine-tune on ``recipe.transfer.classes`` with ``label_fraction`` of their training labels and
    the recipe's regularizer, one epoch per unit.

    With a source: load it (trained first into ``out_dir/source`` when it is a models.yaml entry
    without weights), copy its backbone. Without a source: train from scratch on those classes.
    The test set holds every test example of the classes.

    Raises (from the constructor):
        ValueError: an invalid transfer block (naming the entry and field), or a source that does
            not fit the architecture.
    """

    kind = "transfer"

    def __init__(self, run: Run) -> None:
        super().__init__(run)
        entry = run.entry
        self.spec = parse_transfer(entry)
        self.cpu_task = class_subset(run.data, self.spec.classes, self.spec.label_fraction, run.seed)
        self.task = replace(
            self.cpu_task,
            x_train=self.cpu_task.x_train.to(run.device),
            y_train=self.cpu_task.y_train.to(run.device),
        )
        self.source = None
        if self.spec.source is not None:
            self.source = load_source(
                self.spec,
                entry,
                run.out_dir,
                data=run.data,
                device=run.device,
                console=run.console,
                train=run.train_prerequisite,
            )
        self.loss_fn = make_loss(entry.recipe.loss.name, entry.recipe.loss.params)

    def build(self) -> nn.Module:
        run, entry, source, task = self.run, self.run.entry, self.source, self.task
        self.model = build_model(entry, run.device)
        if source is not None:
            deviation = initialise_backbone(self.model, source.model, task.x_train[:PROBE_EXAMPLES])
            run.console.print(
                f"{entry.name}: backbone copied from {source.origin} (certified bound "
                f"{source.certificate_bound:.4g}; features reproduced to {deviation:.1e}, relative)"
            )
        self.objective = build_objective(
            self.spec.regularizer,
            self.model,
            source,
            task,
            loss_fn=self.loss_fn,
            batch_size=entry.recipe.batch_size,
            probe=lambda probe_epochs: _trained_head_probe(
                entry, source, task, self.loss_fn, epochs=probe_epochs, seed=run.seed, device=run.device
            ),
        )
        self.optimizer = make_optimizer(entry, nn.ModuleList([self.model, self.objective]))
        return self.model

    def units(self) -> int:
        return self.run.epochs

    def steps(self, unit: int) -> int:
        return math.ceil(len(self.task.x_train) / self.run.entry.recipe.batch_size)

    def train_unit(self, unit: int, on_step: StepCallback) -> dict[str, Any]:
        run, recipe = self.run, self.run.entry.recipe
        set_learning_rate(self.optimizer, run.entry, unit, run.epochs)
        order, generator = epoch_schedule(len(self.task.x_train), run.seed, unit, run.device)
        summary = run_epoch(
            self.model,
            self.loss_fn,
            self.objective,
            self.optimizer,
            self.task,
            order=order,
            batch_size=recipe.batch_size,
            augmentation=recipe.augmentation,
            generator=generator,
            on_batch=on_step,
        )
        return {"epoch": unit, **summary}

    def state_dict(self) -> dict[str, Any]:
        return {
            "model": self.model.state_dict(),
            "objective": self.objective.state_dict(),
            "optimizer": self.optimizer.state_dict(),
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.model.load_state_dict(state["model"])
        self.objective.load_state_dict(state["objective"])
        self.optimizer.load_state_dict(state["optimizer"])

    def evaluation_data(self) -> Dataset:
        return self.cpu_task
