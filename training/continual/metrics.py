"""Continual-learning metrics: the accuracy matrix and what is read from it.

``a[t][i]`` is the accuracy on the test set of experience ``i`` after training experience ``t``
(``i <= t``; a row ``t`` has ``t + 1`` entries). Two readings of a prediction:

- class-incremental (class-IL): argmax over every class seen so far;
- task-incremental (task-IL): argmax over the classes of experience ``i`` only (the task is given).

From a matrix of ``T`` rows:

- final average accuracy ``= mean_i a[T-1][i]``;
- forgetting ``= mean_{i < T-1} (max_{i <= t < T-1} a[t][i] - a[T-1][i])`` (the best accuracy an
  experience had before the last one, minus its final accuracy; Chaudhry et al. 2018);
- backward transfer ``BWT = mean_{i < T-1} (a[T-1][i] - a[i][i])``.

Forgetting and BWT are None for a single experience.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from rich.console import Console
from rich.table import Table
from torch import nn

from training.continual.scenario import Experience

__all__ = ["experience_accuracy", "print_report", "report", "summarize"]

Matrix = list[list[float]]


def _accuracy(logits: torch.Tensor, labels: torch.Tensor, allowed: Sequence[int]) -> float:
    """Accuracy of the argmax over the ``allowed`` classes (the other logits masked to -inf)."""
    mask = torch.full((logits.shape[1],), float("-inf"))
    mask[list(allowed)] = 0.0
    return float(((logits + mask).argmax(1) == labels).double().mean())


@torch.no_grad()
def experience_accuracy(
    model: nn.Module, experience: Experience, seen_classes: Sequence[int], batch_size: int = 512
) -> tuple[float, float]:
    """(class-IL, task-IL) accuracy of ``model`` (put in eval mode) on ``experience``'s test set."""
    model.eval()
    device = next(model.parameters()).device
    x = experience.x_test
    logits = torch.cat([model(x[i : i + batch_size].to(device)).cpu() for i in range(0, len(x), batch_size)])
    y = experience.y_test
    return _accuracy(logits, y, seen_classes), _accuracy(logits, y, experience.classes)


def summarize(matrix: Matrix) -> dict[str, float | None]:
    """Final average accuracy, forgetting and BWT of a lower-triangular accuracy matrix."""
    last = len(matrix) - 1
    final = matrix[last]
    older = range(last)
    forgetting = [max(matrix[t][i] for t in range(i, last)) - final[i] for i in older]
    transfer = [final[i] - matrix[i][i] for i in older]
    return {
        "final_average_accuracy": sum(final) / len(final),
        "forgetting": sum(forgetting) / last if last else None,
        "backward_transfer": sum(transfer) / last if last else None,
    }


def report(experiences: Sequence[Experience], class_il: Matrix, task_il: Matrix) -> dict[str, Any]:
    """The JSON document of a run: the stream, both matrices and their summaries."""
    return {
        "experiences": [list(e.classes) for e in experiences],
        "class_il": {"accuracy_matrix": class_il, **summarize(class_il)},
        "task_il": {"accuracy_matrix": task_il, **summarize(task_il)},
    }


def _percent(value: float | None) -> str:
    return "-" if value is None else f"{100 * value:.1f}"


def print_report(console: Console, document: dict[str, Any], title: str) -> None:
    """Print the class-IL accuracy matrix (rows: after experience t) and the summaries."""
    experiences = document["experiences"]
    matrix = Table(title=f"{title}: class-IL accuracy (%) after each experience")
    matrix.add_column("after")
    for classes in experiences:
        matrix.add_column(f"exp {'/'.join(map(str, classes))}", justify="right")
    for t, row in enumerate(document["class_il"]["accuracy_matrix"]):
        matrix.add_row(str(t), *(_percent(a) for a in row), *("" for _ in experiences[t + 1 :]))
    console.print(matrix)
    summary = Table(title=f"{title}: summary (%)")
    for column in ("scenario", "final average accuracy", "forgetting", "BWT"):
        summary.add_column(column, justify="right")
    for scenario, label in (("class_il", "class-IL"), ("task_il", "task-IL")):
        values = document[scenario]
        summary.add_row(
            label,
            _percent(values["final_average_accuracy"]),
            _percent(values["forgetting"]),
            _percent(values["backward_transfer"]),
        )
    console.print(summary)
