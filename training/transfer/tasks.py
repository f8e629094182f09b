"""Transfer tasks carved out of a dataset: a subset of its classes and of their training labels."""

from __future__ import annotations

from collections.abc import Sequence

import torch

from training.data import Dataset

__all__ = ["class_subset"]


def _relabel(
    x: torch.Tensor, y: torch.Tensor, classes: Sequence[int], num_classes: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """The examples of ``classes``, with label ``classes[i]`` renamed ``i``."""
    lookup = torch.full((num_classes,), -1, dtype=torch.long)
    lookup[torch.tensor(classes, dtype=torch.long)] = torch.arange(len(classes))
    selected = lookup[y] >= 0
    return x[selected], lookup[y[selected]]


def class_subset(
    data: Dataset, classes: Sequence[int], label_fraction: float = 1.0, seed: int = 0
) -> Dataset:
    """The task "tell ``classes`` apart" on ``data``.

    The logit i stands for dataset class ``classes[i]``. The test set keeps every example of those
    classes; the training set keeps, per class, ``max(1, round(label_fraction * n_class))`` examples
    drawn without replacement with ``seed`` (in dataset order), so every class stays represented and
    the same seed always gives the same labelled examples.
    """
    if not 0 < label_fraction <= 1:
        raise ValueError(f"label_fraction must be in (0, 1], got {label_fraction}")
    out_of_range = [c for c in classes if not 0 <= c < data.num_classes]
    if out_of_range:
        raise ValueError(f"classes {out_of_range} are not classes of a {data.num_classes}-class dataset")
    x_train, y_train = _relabel(data.x_train, data.y_train, classes, data.num_classes)
    x_test, y_test = _relabel(data.x_test, data.y_test, classes, data.num_classes)
    generator = torch.Generator().manual_seed(seed)
    kept = []
    for label in range(len(classes)):
        members = torch.nonzero(y_train == label).flatten()
        count = max(1, round(label_fraction * len(members))) if len(members) else 0
        kept.append(members[torch.randperm(len(members), generator=generator)[:count]])
    index = torch.cat(kept).sort().values
    return Dataset(
        x_train[index],
        y_train[index],
        x_test,
        y_test,
        num_classes=len(classes),
        preprocessing=dict(data.preprocessing),
    )
