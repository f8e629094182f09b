"""Run a continual recipe: the stream, the strategy, the metrics, and the certified final model.

``train_continual`` is what ``zoo train NAME`` runs (through ``training.trainer.train``) when the
entry's recipe has a ``continual`` block. For each experience in turn: train it with the strategy,
evaluate every experience seen so far (class-IL and task-IL), and save the whole state atomically,
so ``resume=True`` continues after the last finished experience to the same final weights. At the
end the model is folded, certified from its folded weights and evaluated on the full test set by
``training.trainer.finish_run``; ``continual.json`` (next to ``model.safetensors``) holds the
accuracy matrices, final average accuracy, forgetting and BWT, which are also in ``metrics.json``
under ``"continual"``.
"""

from __future__ import annotations

import json
import time
from functools import partial
from pathlib import Path
from typing import Any

import torch
from rich.console import Console

from training.continual.metrics import experience_accuracy, print_report, report
from training.continual.recipe import parse_continual_recipe
from training.continual.scenario import class_incremental
from training.continual.strategies import Settings, make_strategy
from training.data import Dataset
from training.losses import make_loss
from training.trainer import (
    METRICS_FILE,
    STATE_FILE,
    TrainResult,
    build_model,
    deterministic,
    finish_run,
    load_state,
    make_optimizer,
    prepare_run,
    progress_bar,
    save_state,
)
from zoo.checkpoint import atomic_write_bytes
from zoo.registry import ModelEntry

__all__ = ["CONTINUAL_FILE", "train_continual"]

CONTINUAL_FILE = "continual.json"


def _experience_generator(seed: int, index: int) -> torch.Generator:
    """The source of every random draw of experience ``index``: a function of (seed, index) only."""
    return torch.Generator().manual_seed(seed * 1_000_003 + index)


def train_continual(
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
    """Train ``entry``'s continual recipe; write the folded certified checkpoint, ``metrics.json`` and
    ``continual.json`` to ``out_dir``.

    Args:
        entry: a models.yaml entry whose recipe has a ``continual`` block.
        out_dir: directory for ``train_state.pt`` (after each experience) and the results.
        epochs: epochs per experience (default: the recipe's ``epochs``).
        seed: overrides the recipe's seed.
        device: 'cpu' or 'cuda'.
        resume: continue from ``out_dir/train_state.pt`` after its last finished experience.
        data: the dataset (default: the recipe's, loaded from ``data_dir``).
        data_dir: where MNIST / Fashion-MNIST / CIFAR-10 live.
        console: where to print progress and the tables.
        show_progress: draw the progress bars.

    Returns:
        The checkpoint, its certificate, and the metrics (with ``"continual"``).
    """
    console = console or Console()
    recipe = parse_continual_recipe(entry)
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
    stream = class_incremental(data, recipe.experiences, recipe.class_order)

    with deterministic():
        torch.manual_seed(seed)
        model = build_model(entry, torch_device)
        settings = Settings(epochs, entry.recipe.batch_size, entry.recipe.augmentation, torch_device)
        loss = make_loss(entry.recipe.loss.name, entry.recipe.loss.params)
        new_optimizer = partial(make_optimizer, entry, model)
        strategy = make_strategy(recipe.strategy, model, loss, settings, new_optimizer)
        start, class_il, task_il, history = 0, [], [], []
        if resume and state_path.exists():
            state = load_state(state_path, key)
            model.load_state_dict(state["model"])
            strategy.load_state_dict(state["strategy"])
            start = state["experience"] + 1
            class_il, task_il, history = state["class_il"], state["task_il"], state["history"]
            console.print(f"resuming {entry.name} from {state_path} after experience {start}")
        elif resume:
            console.print(f"no {STATE_FILE} in {out_dir}: starting {entry.name} from scratch")

        started = time.perf_counter()
        with progress_bar(console) as progress:
            for experience in stream[start:]:
                t = experience.index
                task = progress.add_task(
                    f"{entry.name} {t + 1}/{len(stream)}",
                    total=strategy.steps(experience),
                    loss=float("nan"),
                    acc=float("nan"),
                    visible=show_progress,
                )
                record = strategy.train_experience(
                    experience, _experience_generator(seed, t), partial(progress.update, task, advance=1)
                )
                seen_classes = [c for e in stream[: t + 1] for c in e.classes]
                accuracies = [experience_accuracy(model, e, seen_classes) for e in stream[: t + 1]]
                class_il.append([class_accuracy for class_accuracy, _ in accuracies])
                task_il.append([task_accuracy for _, task_accuracy in accuracies])
                history.append({"experience": t, "classes": list(experience.classes), **record})
                save_state(
                    state_path,
                    experience=t,
                    model=model.state_dict(),
                    strategy=strategy.state_dict(),
                    recipe=key,
                    class_il=class_il,
                    task_il=task_il,
                    history=history,
                )

    document: dict[str, Any] = report(stream, class_il, task_il)
    document["strategy"] = recipe.strategy.model_dump()
    result = finish_run(entry, model, data, out_dir, epochs, seed, history, time.perf_counter() - started)
    atomic_write_bytes(out_dir / CONTINUAL_FILE, json.dumps(document, indent=2).encode())
    metrics = result.metrics | {"continual": document}
    atomic_write_bytes(out_dir / METRICS_FILE, json.dumps(metrics, indent=2).encode())
    print_report(console, document, entry.name)
    console.print(
        f"{entry.name}: certified Lipschitz bound {result.certificate.lipschitz_bound:.4g}, clean accuracy "
        f"on all classes {metrics['clean_accuracy']:.3f} -> {result.checkpoint}"
    )
    return TrainResult(result.checkpoint, result.certificate, metrics)
