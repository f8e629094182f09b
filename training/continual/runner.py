"""The continual protocol: the stream, the strategy, the metrics of a continual recipe.

:func:`training.trainer.train` runs it when the entry's recipe has a ``continual`` block; one unit
of the run is one experience of the class-incremental stream. For each experience in turn: train it
with the strategy, then evaluate every experience seen so far (class-IL and task-IL). The trainer
saves the state after each experience (the strategy's included), so a resumed run continues after
the last finished one to the same final weights, and at the end folds, certifies and evaluates the
model on the full test set. ``continual.json`` (next to ``model.safetensors``) holds the accuracy
matrices, final average accuracy, forgetting and BWT, which are also in ``metrics.json`` under
``"continual"``.
"""

from __future__ import annotations

import json
from functools import partial
from typing import Any

import torch
from torch import nn

from training.continual.metrics import experience_accuracy, print_report, report
from training.continual.recipe import parse_continual_recipe
from training.continual.scenario import class_incremental
from training.continual.strategies import Settings, make_strategy
from training.losses import make_loss
from training.protocol import Run, StepCallback, TrainingProtocol, TrainResult
from training.recipe import build_model, make_optimizer
from zoo.checkpoint import atomic_write_bytes

__all__ = ["CONTINUAL_FILE", "ContinualProtocol"]

CONTINUAL_FILE = "continual.json"


def _experience_generator(seed: int, index: int) -> torch.Generator:
    """The source of every random draw of experience ``index``: a function of (seed, index) only."""
    return torch.Generator().manual_seed(seed * 1_000_003 + index)


class ContinualProtocol(TrainingProtocol):
    """Train a continual recipe's strategy on its stream, one experience per unit (the recipe's
    ``epochs`` are per experience)."""

    kind = "continual"
    unit = "experience"

    def __init__(self, run: Run) -> None:
        super().__init__(run)
        self.recipe = parse_continual_recipe(run.entry)
        self.stream = class_incremental(run.data, self.recipe.experiences, self.recipe.class_order)
        self.class_il: list[list[float]] = []
        self.task_il: list[list[float]] = []

    def build(self) -> nn.Module:
        run, entry = self.run, self.run.entry
        self.model = build_model(entry, run.device)
        settings = Settings(run.epochs, entry.recipe.batch_size, entry.recipe.augmentation, run.device)
        loss = make_loss(entry.recipe.loss.name, entry.recipe.loss.params)
        new_optimizer = partial(make_optimizer, entry, self.model)
        self.strategy = make_strategy(self.recipe.strategy, self.model, loss, settings, new_optimizer)
        return self.model

    def units(self) -> int:
        return len(self.stream)

    def steps(self, unit: int) -> int:
        return self.strategy.steps(self.stream[unit])

    def train_unit(self, unit: int, on_step: StepCallback) -> dict[str, Any]:
        experience = self.stream[unit]
        generator = _experience_generator(self.run.seed, unit)
        record = self.strategy.train_experience(experience, generator, on_step)
        seen_classes = [c for e in self.stream[: unit + 1] for c in e.classes]
        accuracies = [experience_accuracy(self.model, e, seen_classes) for e in self.stream[: unit + 1]]
        self.class_il.append([class_accuracy for class_accuracy, _ in accuracies])
        self.task_il.append([task_accuracy for _, task_accuracy in accuracies])
        return {"experience": unit, "classes": list(experience.classes), **record}

    def state_dict(self) -> dict[str, Any]:
        return {
            "model": self.model.state_dict(),
            "strategy": self.strategy.state_dict(),
            "class_il": self.class_il,
            "task_il": self.task_il,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.model.load_state_dict(state["model"])
        self.strategy.load_state_dict(state["strategy"])
        self.class_il, self.task_il = state["class_il"], state["task_il"]

    def metrics(self) -> dict[str, Any]:
        document: dict[str, Any] = report(self.stream, self.class_il, self.task_il)
        document["strategy"] = self.recipe.strategy.model_dump()
        return {"continual": document}

    def finish(self, result: TrainResult) -> None:
        document = result.metrics["continual"]
        atomic_write_bytes(self.run.out_dir / CONTINUAL_FILE, json.dumps(document, indent=2).encode())
        console, name = self.run.console, self.run.entry.name
        print_report(console, document, name)
        console.print(
            f"{name}: certified Lipschitz bound {result.certificate.lipschitz_bound:.4g}, clean accuracy "
            f"on all classes {result.metrics['clean_accuracy']:.3f} -> {result.checkpoint}"
        )
