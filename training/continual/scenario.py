"""Class-incremental scenarios: a dataset's classes split into a sequence of experiences.

Experience ``t`` holds the train and test examples of its classes only. Labels keep their original
values, so one output layer over all classes is shared by every experience (class-incremental
learning); the task-incremental metric masks the logits to an experience's classes at test time.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch

from training.data import Dataset

__all__ = ["Experience", "class_incremental"]


@dataclass(frozen=True)
class Experience:
    """One step of the stream.

    Attributes:
        index: position in the stream (0-based).
        classes: the labels it introduces.
        x_train, y_train: its training examples (N, C, H, W) and labels (N,).
        x_test, y_test: its test examples and labels.
    """

    index: int
    classes: tuple[int, ...]
    x_train: torch.Tensor
    y_train: torch.Tensor
    x_test: torch.Tensor
    y_test: torch.Tensor


def _of_classes(
    x: torch.Tensor, y: torch.Tensor, classes: Sequence[int]
) -> tuple[torch.Tensor, torch.Tensor]:
    keep = torch.isin(y, torch.tensor(classes, dtype=y.dtype))
    return x[keep], y[keep]


def class_incremental(
    data: Dataset, experiences: int, class_order: Sequence[int] | None = None
) -> list[Experience]:
    """Split ``data`` into ``experiences`` experiences of ``num_classes / experiences`` classes each.

    Args:
        data: any :class:`~training.data.Dataset` (digits, MNIST, CIFAR-10, ...).
        experiences: number of experiences; must divide the number of classes.
        class_order: the order in which classes arrive (default 0, 1, ..., num_classes - 1).

    Returns:
        The experiences in stream order; within one, examples keep the dataset's order.
    """
    order = list(class_order) if class_order is not None else list(range(data.num_classes))
    if sorted(order) != list(range(data.num_classes)):
        raise ValueError(f"class_order must list each of the {data.num_classes} classes once, got {order}")
    if experiences < 1 or data.num_classes % experiences:
        raise ValueError(f"{data.num_classes} classes do not split evenly into {experiences} experiences")
    size = data.num_classes // experiences
    stream = []
    for index in range(experiences):
        classes = tuple(order[index * size : (index + 1) * size])
        x_train, y_train = _of_classes(data.x_train, data.y_train, classes)
        x_test, y_test = _of_classes(data.x_test, data.y_test, classes)
        stream.append(Experience(index, classes, x_train, y_train, x_test, y_test))
    return stream
