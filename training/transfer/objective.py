"""A transfer recipe's regularizer, assembled from this package's modules and evaluated on each
training step: ``loss = task loss + sum_k weight_k * term_k``."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import nn

from training.data import Dataset
from training.transfer.bi_tuning import BiTuning
from training.transfer.bss import BatchSpectralShrinkage
from training.transfer.channel_attention import channel_attention
from training.transfer.co_tuning import CoTuning, calibrated_relationship, direct_relationship
from training.transfer.delta import AttentionRegularization, BehavioralRegularization
from training.transfer.features import IntermediateLayerGetter
from training.transfer.l2 import L2
from training.transfer.l2sp import L2SP
from training.transfer.lwf import LwF
from training.transfer.recipe import (
    BiTuningSpec,
    BSSSpec,
    CoTuningSpec,
    DeltaAttentionSpec,
    DeltaSpec,
    L2Spec,
    L2SPSpec,
    LwFSpec,
    NoRegularizer,
    RegularizerSpec,
    WithHeadL2,
)
from training.transfer.source import Source, split_head

__all__ = ["Step", "TransferObjective", "build_objective", "default_layers"]


@dataclass(frozen=True)
class Step:
    """One training batch, as the regularizers read it.

    Attributes:
        inputs: (B, *input_shape) what the model saw.
        key_inputs: (B, *input_shape) a second view for Bi-Tuning's key encoder (None otherwise).
        labels: (B,) target labels.
        index: (B,) positions of the examples in the training set.
        features: (B, D) backbone output, the head's input.
        feature_maps: outputs of the backbone layers named in ``TransferObjective.layers``.
    """

    inputs: torch.Tensor
    key_inputs: torch.Tensor | None
    labels: torch.Tensor
    index: torch.Tensor
    features: torch.Tensor
    feature_maps: dict[str, torch.Tensor]


class TransferObjective(nn.Module):
    """Named regularization terms with their weights; empty for plain fine-tuning.

    Each term is a module of this package with its own natural arguments, plus a function that
    reads them off a :class:`Step`. The terms are submodules, so their buffers (source weights,
    recorded logits, Bi-Tuning's queues) move with ``.to()`` and are saved with the training state.

    Attributes:
        layers: backbone layers whose outputs the training step must record (DELTA).
        needs_key_view: the training step must provide ``Step.key_inputs`` (Bi-Tuning).

    Shape: ``forward(step)`` -> ``{name: weight * term}`` of scalars.
    """

    def __init__(self) -> None:
        super().__init__()
        self.terms = nn.ModuleDict()
        self.weights: dict[str, float] = {}
        self.arguments: dict[str, Callable[[Step], tuple]] = {}
        self.layers: list[str] = []
        self.needs_key_view = False

    def add(self, name: str, term: nn.Module, weight: float, arguments: Callable[[Step], tuple]) -> None:
        """Add ``weight * term(*arguments(step))``; a zero weight adds nothing."""
        if weight > 0:
            self.terms[name] = term
            self.weights[name] = weight
            self.arguments[name] = arguments

    def forward(self, step: Step) -> dict[str, torch.Tensor]:
        return {
            name: self.weights[name] * term(*self.arguments[name](step)) for name, term in self.terms.items()
        }


def default_layers(backbone: nn.Module) -> list[str]:
    """Names of the convolution and linear layers of ``backbone`` (DELTA's default feature maps)."""
    return [
        name
        for name, module in backbone.named_modules()
        if isinstance(module, nn.Conv1d | nn.Conv2d | nn.Linear)
    ]


def _source_feature_maps(source: Source, layers: list[str]) -> Callable[[Step], tuple]:
    """Arguments of the DELTA terms: the step's feature maps and the source's on the same inputs."""
    getter = IntermediateLayerGetter(source.backbone, layers)

    def arguments(step: Step) -> tuple:
        with torch.no_grad():
            source_maps, _ = getter(step.inputs)
        return step.feature_maps, source_maps

    return arguments


def build_objective(
    spec: RegularizerSpec,
    model: nn.Module,
    source: Source | None,
    task: Dataset,
    *,
    loss_fn: nn.Module,
    batch_size: int,
    probe: Callable[[int], nn.Module],
) -> TransferObjective:
    """The objective of regularizer ``spec`` for ``model`` fine-tuned from ``source`` on ``task``.

    Args:
        spec: the recipe's regularizer.
        model: the network being trained (backbone + new head); the terms hold references to it.
        source: the loaded source (None only for :class:`NoRegularizer`).
        task: the training data, on the model's device (LwF records the source's logits on it,
            Co-Tuning learns the category relationship from it).
        loss_fn: the task loss (DELTA's channel attention measures its increase).
        batch_size: of the channel-attention batches.
        probe: ``probe(epochs)`` returns the network on which DELTA's channel attention is
            measured, its new head trained for ``epochs`` (called only for DELTA attention).
    """
    objective = TransferObjective()
    if isinstance(spec, NoRegularizer):
        return objective
    backbone, head = split_head(model)
    match spec:
        case L2Spec():
            objective.add("l2", L2(), spec.weight, lambda step: (backbone,))
        case L2SPSpec():
            objective.add(
                "l2sp", L2SP(dict(source.backbone.named_parameters())), spec.weight, lambda step: (backbone,)
            )
        case DeltaSpec():
            objective.layers = spec.layers or default_layers(backbone)
            arguments = _source_feature_maps(source, objective.layers)
            objective.add("delta", BehavioralRegularization(), spec.weight, arguments)
        case DeltaAttentionSpec():
            objective.layers = spec.layers or default_layers(backbone)
            attention = _attention(
                probe(spec.attention_epochs),
                objective.layers,
                task,
                loss_fn,
                batch_size,
                spec.attention_batches,
            )
            arguments = _source_feature_maps(source, objective.layers)
            objective.add("delta_attention", AttentionRegularization(attention), spec.weight, arguments)
        case LwFSpec():
            lwf = LwF(source.head, source.logits(task.x_train), source.trained_scale(), spec.temperature)
            objective.add("lwf", lwf, spec.weight, lambda step: (step.features, step.index))
        case CoTuningSpec():
            probabilities, labels = source.probabilities(task.x_train).cpu(), task.y_train.cpu()
            if spec.relationship == "direct":
                relationship = direct_relationship(probabilities, labels, task.num_classes)
            else:
                relationship = calibrated_relationship(probabilities, labels, task.num_classes, spec.C)
            co_tuning = CoTuning(source.head, relationship.to(task.x_train.device), source.trained_scale())
            objective.add("co_tuning", co_tuning, spec.weight, lambda step: (step.features, step.labels))
        case BiTuningSpec():
            bi_tuning = BiTuning(
                backbone,
                head.in_features,
                head.out_features,
                queue_size=spec.queue_size,
                momentum=spec.momentum,
                temperature=spec.temperature,
                projection_dim=spec.projection_dim,
            ).to(task.x_train.device)
            objective.needs_key_view = True
            objective.add(
                "bi_tuning",
                bi_tuning,
                spec.weight,
                lambda step: (step.features, step.key_inputs, step.labels, backbone, head),
            )
        case BSSSpec():
            objective.add("bss", BatchSpectralShrinkage(spec.k), spec.weight, lambda step: (step.features,))
    if isinstance(spec, WithHeadL2):
        objective.add("head_l2", L2(), spec.head_weight, lambda step: (head,))
    return objective


def _attention(
    probe: nn.Module, layers: list[str], task: Dataset, loss_fn: nn.Module, batch_size: int, batches: int
) -> dict[str, torch.Tensor]:
    """DELTA's channel attention of ``probe`` for the task loss, on the first ``batches`` batches of
    the training set."""
    starts = range(0, min(len(task.x_train), batches * batch_size), batch_size)
    data = [(task.x_train[i : i + batch_size], task.y_train[i : i + batch_size]) for i in starts]
    return channel_attention(probe, layers, data, loss_fn)
