"""``train_transfer``: fine-tune a certified source model onto a new task, certified at the end.

The network is the entry's architecture, built with its parametrizations; its backbone starts
from the source's folded weights and its head, a new 1-Lipschitz layer of the architecture, from
scratch. So the fine-tuned model is folded and certified by ``finish_run`` like any other: the
regularizers change how it is trained, never what is certified.
"""

from __future__ import annotations

import math
import time
from dataclasses import replace
from pathlib import Path

import torch
from rich.console import Console
from torch import nn

from training.data import Dataset
from training.losses import make_loss
from training.trainer import (
    TrainResult,
    build_model,
    deterministic,
    epoch_order,
    finish_run,
    learning_rate,
    load_state,
    make_optimizer,
    prepare_run,
    progress_bar,
    save_state,
)
from training.transfer.loop import run_epoch
from training.transfer.objective import TransferObjective, build_objective
from training.transfer.recipe import parse_transfer
from training.transfer.source import Source, initialise_backbone, load_source, split_head
from training.transfer.tasks import class_subset
from zoo.registry import ModelEntry

__all__ = ["train_transfer"]

# Training inputs on which the re-parametrized source backbone is compared with the source.
PROBE_EXAMPLES = 256


def _epoch_schedule(
    n: int, seed: int, epoch: int, device: torch.device
) -> tuple[torch.Tensor, torch.Generator]:
    """The example order (n,) and the augmentation generator of one epoch: functions of (seed, epoch)
    only, as in the trainer, so a resumed run repeats them."""
    return epoch_order(n, seed, epoch).to(device), torch.Generator().manual_seed(seed * 100_003 + epoch + 1)


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
        order, generator = _epoch_schedule(len(task.x_train), seed + 1, epoch, device)
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


def train_transfer(
    entry: ModelEntry,
    out_dir: str | Path,
    *,
    epochs: int | None = None,
    seed: int | None = None,
    device: str = "cpu",
    resume: bool = False,
    data: Dataset | None = None,
    data_dir: str | Path | None = None,
    console: Console | None = None,
    show_progress: bool = True,
) -> TrainResult:
    """Train ``entry``'s transfer recipe and write ``model.safetensors`` (folded, certified).

    With a source: load it (training it first into ``out_dir/source`` when it is a models.yaml
    entry without weights), copy its backbone, then fine-tune on ``recipe.transfer.classes`` with
    ``label_fraction`` of their training labels and the recipe's regularizer. Without a source:
    train from scratch on those classes. The test set holds every test example of the classes.

    Args and the training-state file (``out_dir/train_state.pt``, ``resume``) are as in
    :func:`training.trainer.train`; ``data`` is the whole dataset the classes are taken from.

    Raises:
        ValueError: an invalid transfer block (naming the entry and field), or a source that does
            not fit the architecture.
        TrainingStateError: ``out_dir`` holds a run and ``resume`` is false, or a different run.
    """
    spec = parse_transfer(entry)
    console = console or Console()
    run = prepare_run(
        entry, out_dir, epochs=epochs, seed=seed, device=device, resume=resume, data=data, data_dir=data_dir
    )
    epochs, seed, torch_device, out_dir, state_path, key, data = (
        run.epochs,
        run.seed,
        run.device,
        run.out_dir,
        run.state_path,
        run.key,
        run.data,
    )
    cpu_task = class_subset(data, spec.classes, spec.label_fraction, seed)
    task = replace(
        cpu_task, x_train=cpu_task.x_train.to(torch_device), y_train=cpu_task.y_train.to(torch_device)
    )
    source = None
    if spec.source is not None:
        source = load_source(
            spec,
            entry,
            out_dir,
            data=data,
            data_dir=data_dir,
            device=torch_device,
            console=console,
            show_progress=show_progress,
        )
    loss_fn = make_loss(entry.recipe.loss.name, entry.recipe.loss.params)
    batch_size = entry.recipe.batch_size

    with deterministic():
        torch.manual_seed(seed)
        model = build_model(entry, torch_device)
        if source is not None:
            deviation = initialise_backbone(model, source.model, task.x_train[:PROBE_EXAMPLES])
            console.print(
                f"{entry.name}: backbone copied from {source.origin} (certified bound "
                f"{source.certificate_bound:.4g}; features reproduced to {deviation:.1e}, relative)"
            )
        objective = build_objective(
            spec.regularizer,
            model,
            source,
            task,
            loss_fn=loss_fn,
            batch_size=batch_size,
            probe=lambda probe_epochs: _trained_head_probe(
                entry, source, task, loss_fn, epochs=probe_epochs, seed=seed, device=torch_device
            ),
        )
        optimizer = make_optimizer(entry, nn.ModuleList([model, objective]))
        start_epoch, history = 0, []
        if resume and state_path.exists():
            state = load_state(state_path, key)
            model.load_state_dict(state["model"])
            objective.load_state_dict(state["objective"])
            optimizer.load_state_dict(state["optimizer"])
            start_epoch, history = state["epoch"] + 1, list(state["history"])
            console.print(f"resuming {entry.name} from {state_path} after epoch {start_epoch}")

        batches = math.ceil(len(task.x_train) / batch_size)
        started = time.perf_counter()
        with progress_bar(console) as progress:
            bar = progress.add_task(
                entry.name,
                total=epochs * batches,
                completed=start_epoch * batches,
                loss=float("nan"),
                acc=float("nan"),
                visible=show_progress,
            )
            for epoch in range(start_epoch, epochs):
                for group in optimizer.param_groups:
                    group["lr"] = learning_rate(entry, epoch, epochs)
                order, generator = _epoch_schedule(len(task.x_train), seed, epoch, torch_device)
                summary = run_epoch(
                    model,
                    loss_fn,
                    objective,
                    optimizer,
                    task,
                    order=order,
                    batch_size=batch_size,
                    augmentation=entry.recipe.augmentation,
                    generator=generator,
                    on_batch=lambda loss, accuracy: progress.update(bar, advance=1, loss=loss, acc=accuracy),
                )
                history.append({"epoch": epoch, **summary})
                save_state(
                    state_path,
                    epoch=epoch,
                    model=model.state_dict(),
                    objective=objective.state_dict(),
                    optimizer=optimizer.state_dict(),
                    recipe=key,
                    history=history,
                )
    return finish_run(entry, model, cpu_task, out_dir, epochs, seed, history, time.perf_counter() - started)
