"""One epoch of fine-tuning: task loss plus the transfer objective, batch after batch."""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn
from torch.nn.utils import parametrize

from training.augment import augment
from training.data import Dataset
from training.transfer.features import IntermediateLayerGetter
from training.transfer.objective import Step, TransferObjective
from training.transfer.source import split_head

__all__ = ["run_epoch"]


def run_epoch(
    model: nn.Module,
    loss_fn: nn.Module,
    objective: TransferObjective,
    optimizer: torch.optim.Optimizer,
    task: Dataset,
    *,
    order: torch.Tensor,
    batch_size: int,
    augmentation: str,
    generator: torch.Generator,
    on_batch: Callable[[float, float], None] | None = None,
) -> dict[str, float]:
    """Train ``model`` for one pass over ``task``'s training set in ``order``.

    Each batch computes the parametrized weights once (``parametrize.cached``), so the forward pass
    and the weight-space regularizers see the same tensors and spectral normalisation does one
    power iteration per step. Bi-Tuning's key view is a second draw of the augmentation.

    Args:
        on_batch: called after each batch with the running task loss and accuracy.

    Returns:
        ``{"loss", "penalty", "accuracy"}``: means over the examples of the task loss, of the sum of
        the weighted regularization terms, and the training accuracy.
    """
    backbone, head = split_head(model)
    getter = IntermediateLayerGetter(backbone, objective.layers)
    model.train()
    loss_sum = penalty_sum = 0.0
    correct = seen = 0
    for start in range(0, len(order), batch_size):
        index = order[start : start + batch_size]
        labels = task.y_train[index]
        inputs = augment(task.x_train[index], augmentation, generator)
        key_inputs = (
            augment(task.x_train[index], augmentation, generator) if objective.needs_key_view else None
        )
        with parametrize.cached():
            feature_maps, features = getter(inputs)
            logits = head(features)
            loss = loss_fn(logits, labels)
            terms = objective(Step(inputs, key_inputs, labels, index, features, feature_maps))
            penalty = sum(terms.values(), loss.new_zeros(()))
        optimizer.zero_grad(set_to_none=True)
        (loss + penalty).backward()
        optimizer.step()
        loss_sum += loss.item() * len(index)
        penalty_sum += penalty.item() * len(index)
        correct += int((logits.argmax(1) == labels).sum())
        seen += len(index)
        if on_batch is not None:
            on_batch(loss_sum / seen, correct / seen)
    return {"loss": loss_sum / seen, "penalty": penalty_sum / seen, "accuracy": correct / seen}
