"""The contract between the trainer and what each kind of recipe supplies.

:func:`training.trainer.train` is the one entry point of training. It owns what every run shares:
the options (:class:`RunOptions`), the output directory, the training-state file and resume,
data-parallel processes, progress, and the end of a run (fold, certify, write, evaluate). A
:class:`TrainingProtocol` supplies only what differs between a plain supervised recipe
(:mod:`training.supervised`), a transfer recipe (:mod:`training.transfer.train`) and a continual
one (:mod:`training.continual.runner`): the network and what trains it, what one *unit* of the run
is (an epoch, or an experience of the stream), the state a resumed run restores, and what it adds
to the metrics.

The trainer calls, in this order: the constructor (unseeded: parse the recipe block, load or train
what the run starts from), :meth:`~TrainingProtocol.build` (under the run's seed),
:meth:`~TrainingProtocol.load_state_dict` when resuming, :meth:`~TrainingProtocol.train_unit` for
each remaining unit (the state is saved after each), :meth:`~TrainingProtocol.end_training` on
every process, then, on the main process only, :meth:`~TrainingProtocol.metrics` and
:meth:`~TrainingProtocol.finish`.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar, Protocol

import torch
from rich.console import Console
from torch import nn

from training.data import Dataset
from training.distributed import DistributedContext
from zoo.certificate import Certificate
from zoo.registry import ModelEntry

__all__ = ["Run", "RunOptions", "StepCallback", "TrainResult", "TrainingProtocol"]


@dataclass(frozen=True)
class RunOptions:
    """How to run a recipe: the options of ``zoo train``, for every kind of recipe.

    Attributes:
        epochs, seed: override the recipe's values (a continual recipe's epochs are per experience).
        device: 'cpu' or 'cuda' (an error if CUDA is not available).
        resume: continue from the output directory's training state.
        data_dir, download: where MNIST / Fashion-MNIST / CIFAR-10 live; fetch them only if asked.
        precision: 'fp32', or 'bf16' autocast (CUDA, plain recipes).
        progress: show progress (a bar on a terminal, one line per epoch otherwise).
        threads: torch threads to compute with (default: the count recorded by the run being
            resumed or by the entry's shipped model, else torch's; see :mod:`training.threads`).
    """

    epochs: int | None = None
    seed: int | None = None
    device: str = "cpu"
    resume: bool = False
    data_dir: Path | None = None
    download: bool = False
    precision: str = "fp32"
    progress: bool = True
    threads: int | None = None


@dataclass(frozen=True)
class TrainResult:
    """What a finished run produced: the checkpoint, its certificate and the metrics."""

    checkpoint: Path
    certificate: Certificate
    metrics: dict[str, Any]


class TrainPrerequisite(Protocol):
    def __call__(self, entry: ModelEntry, out_dir: Path, data: Dataset | None) -> TrainResult:
        """Train (or resume, or only re-certify a finished run of) ``entry`` into ``out_dir``,
        with the options of the current run but the entry's own epochs and seed."""
        ...


@dataclass(frozen=True)
class Run:
    """What the trainer settled before training, for the protocol to use.

    Attributes:
        entry: the models.yaml entry.
        options: the run's options.
        epochs, seed: the recipe's values or their overrides.
        device: the resolved torch device (this process's GPU in a data-parallel CUDA run).
        out_dir: the output directory.
        data: the dataset, checked against the architecture's input shape.
        console: where messages go (quiet on the non-main processes).
        context: this process's place in a data-parallel job (alone: rank 0 of 1).
        train_prerequisite: trains another entry the run starts from (a transfer source).
    """

    entry: ModelEntry
    options: RunOptions
    epochs: int
    seed: int
    device: torch.device
    out_dir: Path
    data: Dataset
    console: Console
    context: DistributedContext
    train_prerequisite: TrainPrerequisite


StepCallback = Callable[..., object]
"""Called after every optimizer step as ``on_step(loss, acc)`` (positional or keyword): the running
mean loss and training accuracy of the current unit."""


class TrainingProtocol(ABC):
    """What one kind of recipe does inside the run the trainer drives.

    Class attributes:
        kind: the name of the kind of recipe, for messages.
        unit: what one saved step of the run is ('epoch', 'experience').
        data_parallel: whether it trains under torchrun with several processes (otherwise refused).
        mixed_precision: whether it honours ``precision='bf16'`` (otherwise refused).
    """

    kind: ClassVar[str]
    unit: ClassVar[str] = "epoch"
    data_parallel: ClassVar[bool] = False
    mixed_precision: ClassVar[bool] = False

    def __init__(self, run: Run) -> None:
        self.run = run

    @abstractmethod
    def build(self) -> nn.Module:
        """Build the network (returned: what is folded and certified at the end) and what trains it.
        Called under the run's seed, with deterministic algorithms on."""

    @abstractmethod
    def units(self) -> int:
        """Number of units of the whole run."""

    @abstractmethod
    def steps(self, unit: int) -> int:
        """Number of optimizer steps of ``unit`` (an estimate for the progress display)."""

    @abstractmethod
    def train_unit(self, unit: int, on_step: StepCallback) -> dict[str, Any]:
        """Train unit ``unit``; returns its history record, with its mean ``loss`` and ``accuracy``."""

    @abstractmethod
    def state_dict(self) -> dict[str, Any]:
        """Everything a resumed run needs (tensors and plain values only), the model's weights included."""

    @abstractmethod
    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore what :meth:`state_dict` returned."""

    def end_training(self) -> None:  # noqa: B027
        """Release what training held (a data-parallel wrapper), on every process, before the
        process group closes."""

    def evaluation_data(self) -> Dataset:
        """The data the final model is evaluated on (its test split)."""
        return self.run.data

    def metrics(self) -> dict[str, Any]:
        """Metrics of this kind of run, added to ``metrics.json``."""
        return {}

    def finish(self, result: TrainResult) -> None:  # noqa: B027
        """After the checkpoint and metrics are written: write this kind's own files, print its report."""
