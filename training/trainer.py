"""The trainer: a models.yaml recipe in, a folded certified checkpoint out.

Seeded and deterministic on the CPU; a checkpoint of the full training state is written atomically
after every epoch, and ``resume=True`` continues from it to the same final weights as an
uninterrupted run. At the end the model is folded, certified from its folded weights, saved as
``model.safetensors`` (certificate embedded), and evaluated (clean and certified accuracy).
"""

from __future__ import annotations

import io
import json
import math
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from training.augment import augment
from training.data import Dataset, load_dataset
from training.distributed import DistributedContext
from training.losses import make_loss
from zoo.bounds import empirical_lipschitz
from zoo.certificate import Certificate
from zoo.certify import certify
from zoo.checkpoint import atomic_write_bytes, write_checkpoint
from zoo.device import resolve_device
from zoo.fold import fold
from zoo.models import build
from zoo.registry import ModelEntry
from zoo.robustness import certified_accuracy

__all__ = [
    "CERTIFIED_EPS",
    "RunSetup",
    "TrainResult",
    "TrainingStateError",
    "build_model",
    "deterministic",
    "epoch_order",
    "evaluate",
    "evaluation_split",
    "finish_run",
    "learning_rate",
    "load_state",
    "make_optimizer",
    "prepare_run",
    "progress_bar",
    "recipe_key",
    "save_state",
    "train",
]

CERTIFIED_EPS: tuple[float, ...] = (0.1, 0.25, 0.5)
STATE_FILE = "train_state.pt"
EMPIRICAL_INPUTS = 32
CHECKPOINT_FILE = "model.safetensors"
METRICS_FILE = "metrics.json"


class TrainingStateError(RuntimeError):
    """The output directory holds a run that cannot be continued (or must not be overwritten)."""


@dataclass(frozen=True)
class TrainResult:
    """What a finished run produced."""

    checkpoint: Path
    certificate: Certificate
    metrics: dict[str, Any]


@contextmanager
def deterministic() -> Iterator[None]:
    previous = torch.are_deterministic_algorithms_enabled()
    torch.use_deterministic_algorithms(True)
    try:
        yield
    finally:
        torch.use_deterministic_algorithms(previous)


def epoch_order(n: int, seed: int, epoch: int) -> torch.Tensor:
    """The shuffling of epoch ``epoch``: a function of (seed, epoch) only, so a resumed run
    visits the examples in the same order as an uninterrupted one."""
    generator = torch.Generator().manual_seed(seed * 100_003 + epoch)
    return torch.randperm(n, generator=generator)


@torch.no_grad()
def evaluate(
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    lipschitz_bound: float,
    eps: Sequence[float] = CERTIFIED_EPS,
    batch_size: int = 512,
) -> dict[str, Any]:
    """Clean accuracy and certified accuracy at each eps of ``model`` on (x, y)."""
    device = next(model.parameters()).device
    model.eval()
    logits = torch.cat([model(x[i : i + batch_size].to(device)).cpu() for i in range(0, len(x), batch_size)])
    clean = float((logits.argmax(1) == y).double().mean())
    certified = certified_accuracy(logits, y, lipschitz_bound, eps)
    return {
        "clean_accuracy": clean,
        "certified_accuracy": {str(e): acc for e, acc in certified.items()},
    }


def evaluation_split(entry: ModelEntry, data: Dataset) -> tuple[torch.Tensor, torch.Tensor]:
    """The test examples and labels a model of ``entry`` is evaluated on: the whole test set, or for
    a transfer recipe the test examples of its target classes, relabelled as its logits are."""
    if entry.recipe.transfer is None:
        return data.x_test, data.y_test
    from training.transfer.recipe import parse_transfer
    from training.transfer.tasks import class_subset

    task = class_subset(data, parse_transfer(entry).classes)
    return task.x_test, task.y_test


def recipe_key(entry: ModelEntry, epochs: int, seed: int) -> str:
    recipe = entry.recipe.model_dump() | {"epochs": epochs, "seed": seed}
    return json.dumps(
        {"architecture": entry.architecture.model_dump(mode="json"), "recipe": recipe},
        sort_keys=True,
    )


def make_optimizer(entry: ModelEntry, model: nn.Module) -> torch.optim.Optimizer:
    spec = entry.recipe.optimizer
    if spec.name == "adam":
        return torch.optim.Adam(model.parameters(), lr=spec.lr, weight_decay=spec.weight_decay)
    return torch.optim.SGD(
        model.parameters(), lr=spec.lr, momentum=spec.momentum, weight_decay=spec.weight_decay
    )


def learning_rate(entry: ModelEntry, epoch: int, epochs: int) -> float:
    base = entry.recipe.optimizer.lr
    if entry.recipe.lr_schedule == "cosine":
        return base * 0.5 * (1 + math.cos(math.pi * epoch / epochs))
    return base


def save_state(path: Path, **state: Any) -> None:
    buffer = io.BytesIO()
    torch.save(state, buffer)
    atomic_write_bytes(path, buffer.getvalue())


def load_state(path: Path, key: str) -> dict[str, Any]:
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # torch raises several types for a corrupted file
        raise TrainingStateError(f"{path}: unreadable training checkpoint ({error})") from error
    if state.get("recipe") != key:
        raise TrainingStateError(
            f"{path} was written by a different recipe, seed or number of epochs; "
            "resume with the same options or choose another --out"
        )
    return state


def progress_bar(console: Console) -> Progress:
    return Progress(
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("loss {task.fields[loss]:.4f}  acc {task.fields[acc]:.3f}"),
        TimeElapsedColumn(),
        console=console,
        transient=False,
    )


def build_model(entry: ModelEntry, device: torch.device) -> nn.Module:
    arch = entry.architecture
    model = build(
        arch.name,
        input_shape=arch.input_shape,
        num_classes=arch.num_classes,
        parametrized=True,
        **arch.options,
    )
    return model.to(device)


@dataclass(frozen=True)
class RunSetup:
    """What every kind of run (plain, transfer, continual) settles before training.

    Attributes:
        epochs, seed: the recipe's values or their overrides.
        device: the resolved torch device.
        out_dir, state_path: the output directory and its training-state file.
        key: the recipe key a resumed state must carry (see :func:`recipe_key`).
        data: the dataset, checked against the architecture's input shape.
    """

    epochs: int
    seed: int
    device: torch.device
    out_dir: Path
    state_path: Path
    key: str
    data: Dataset


def prepare_run(
    entry: ModelEntry,
    out_dir: str | Path,
    *,
    epochs: int | None,
    seed: int | None,
    device: str,
    resume: bool,
    data: Dataset | None,
    data_dir: str | Path | None,
    download: bool = False,
) -> RunSetup:
    """Resolve overrides and the device, refuse to overwrite a run unless resuming, load the data.

    Raises:
        ValueError: epochs < 1, or data whose shape does not fit the architecture.
        TrainingStateError: ``out_dir`` already holds a run and ``resume`` is false.
        DeviceUnavailableError: the device cannot be used.
    """
    epochs = epochs if epochs is not None else entry.recipe.epochs
    seed = seed if seed is not None else entry.recipe.seed
    if epochs < 1:
        raise ValueError(f"epochs must be >= 1, got {epochs}")
    torch_device = resolve_device(device)
    out_dir = Path(out_dir)
    state_path = out_dir / STATE_FILE
    if state_path.exists() and not resume:
        raise TrainingStateError(
            f"{out_dir} already holds a training run ({STATE_FILE}); pass --resume to continue it "
            "or choose another --out"
        )
    data = data if data is not None else load_dataset(entry.recipe.dataset, data_dir, download)
    if tuple(entry.architecture.input_shape) != data.input_shape:
        raise ValueError(
            f"{entry.name}: architecture.input_shape {tuple(entry.architecture.input_shape)} does not "
            f"match the {entry.recipe.dataset} data shape {data.input_shape}"
        )
    return RunSetup(epochs, seed, torch_device, out_dir, state_path, recipe_key(entry, epochs, seed), data)


def _autocast(device: torch.device, precision: str):
    """bf16 autocast on CUDA when asked; the certificate is computed afterwards in float64 on the
    folded float32 weights, so reduced precision can cost accuracy but never soundness."""
    if precision == "fp32":
        return nullcontext()
    if device.type != "cuda":
        raise ValueError("--precision bf16 is for CUDA training; on the CPU use fp32")
    return torch.autocast(device_type="cuda", dtype=torch.bfloat16)


def train(
    entry: ModelEntry,
    out_dir: str | Path,
    *,
    epochs: int | None = None,
    seed: int | None = None,
    device: str = "cpu",
    resume: bool = False,
    data: Dataset | None = None,
    data_dir: str | Path | None = None,
    download: bool = False,
    precision: str = "fp32",
    console: Console | None = None,
    show_progress: bool = True,
) -> TrainResult | None:
    """Train ``entry``'s recipe and write ``model.safetensors`` (folded, certified) to ``out_dir``.

    Under ``torchrun`` every process calls this; rank 0 alone writes files and returns the result,
    the other ranks return None.

    Args:
        entry: the models.yaml entry whose architecture and recipe to use.
        out_dir: directory for ``train_state.pt`` (each epoch), the final checkpoint and metrics.
        epochs, seed: override the recipe's values.
        device: 'cpu' or 'cuda' (an error if CUDA is not available).
        resume: continue from ``out_dir/train_state.pt`` (written by any number of processes).
        data: the dataset (default: the recipe's, loaded from ``data_dir``).
        data_dir, download: where MNIST / Fashion-MNIST / CIFAR-10 live; fetch them only if asked.
        precision: 'fp32', or 'bf16' autocast on CUDA.
        console: where to print progress and the summary.
        show_progress: draw the progress bar.
    """
    console = console or Console()
    if entry.recipe.continual is not None or entry.recipe.transfer is not None:
        options = dict(epochs=epochs, seed=seed, device=device, resume=resume, data=data, data_dir=data_dir)
        options |= dict(console=console, show_progress=show_progress)
        if entry.recipe.continual is not None:
            from training.continual import train_continual

            return train_continual(entry, out_dir, **options)
        from training.transfer import train_transfer

        return train_transfer(entry, out_dir, **options)
    run = prepare_run(
        entry,
        out_dir,
        epochs=epochs,
        seed=seed,
        device=device,
        resume=resume,
        data=data,
        data_dir=data_dir,
        download=download,
    )
    epochs, seed, out_dir, state_path, key, data = (
        run.epochs,
        run.seed,
        run.out_dir,
        run.state_path,
        run.key,
        run.data,
    )
    torch_device = run.device
    context = DistributedContext.from_environment(torch_device)
    if context.enabled and torch_device.type == "cuda":
        torch_device = torch.device("cuda", torch.cuda.current_device())
    console = console if context.is_main else Console(quiet=True)

    with deterministic():
        torch.manual_seed(seed)
        model = build_model(entry, torch_device)
        loss_fn = make_loss(entry.recipe.loss.name, entry.recipe.loss.params)
        optimizer = make_optimizer(entry, model)
        start_epoch, history = 0, []
        if resume and state_path.exists():
            state = load_state(state_path, key)
            model.load_state_dict(state["model"])
            optimizer.load_state_dict(state["optimizer"])
            start_epoch, history = state["epoch"] + 1, list(state["history"])
            console.print(f"resuming {entry.name} from {state_path} after epoch {start_epoch}")
        elif resume:
            console.print(f"no {STATE_FILE} in {out_dir}: starting {entry.name} from scratch")
        trained = DistributedDataParallel(model) if context.enabled else model

        x_train, y_train = data.x_train.to(torch_device), data.y_train.to(torch_device)
        batch_size = entry.recipe.batch_size
        batches = math.ceil(len(x_train) / batch_size)
        started = time.perf_counter()
        with progress_bar(console) as progress:
            task = progress.add_task(
                entry.name,
                total=epochs * batches,
                completed=start_epoch * batches,
                loss=float("nan"),
                acc=float("nan"),
                visible=show_progress and context.is_main,
            )
            for epoch in range(start_epoch, epochs):
                for group in optimizer.param_groups:
                    group["lr"] = learning_rate(entry, epoch, epochs)
                trained.train()
                order = epoch_order(len(x_train), seed, epoch).to(torch_device)
                augmentation = torch.Generator().manual_seed(seed * 100_003 + epoch + 1)
                loss_sum, correct, seen = 0.0, 0, 0
                for start in range(0, len(order), batch_size):
                    global_batch = order[start : start + batch_size]
                    index = context.shard(global_batch)
                    x = augment(x_train[global_batch], entry.recipe.augmentation, augmentation)
                    x = x[context.rank :: context.world_size]
                    with _autocast(torch_device, precision):
                        logits = trained(x).float()
                    if len(index):
                        loss = loss_fn(logits, y_train[index])
                        weighted = loss * context.loss_weight(len(index), len(global_batch))
                    else:  # an empty shard still joins the gradient all-reduce
                        loss = weighted = logits.sum() * 0.0
                    optimizer.zero_grad(set_to_none=True)
                    weighted.backward()
                    optimizer.step()
                    loss_sum += loss.item() * len(index)
                    correct += int((logits.argmax(1) == y_train[index]).sum())
                    seen += len(index)
                    progress.update(task, advance=1, loss=loss_sum / max(seen, 1), acc=correct / max(seen, 1))
                history.append(
                    {"epoch": epoch, "loss": loss_sum / max(seen, 1), "accuracy": correct / max(seen, 1)}
                )
                if context.is_main:
                    save_state(
                        state_path,
                        epoch=epoch,
                        model=model.state_dict(),
                        optimizer=optimizer.state_dict(),
                        recipe=key,
                        history=history,
                    )
                context.barrier()
    # Release DDP (its reducer holds gloo / nccl work) before the process group goes away: destroying
    # the group under a live reducer can abort a rank at exit ("terminate called ...").
    del trained
    context.close()
    if not context.is_main:
        return None
    return finish_run(entry, model, data, out_dir, epochs, seed, history, time.perf_counter() - started)


def finish_run(
    entry: ModelEntry,
    model: nn.Module,
    data: Dataset,
    out_dir: Path,
    epochs: int,
    seed: int,
    history: list[dict[str, Any]],
    seconds: float,
) -> TrainResult:
    """Fold, certify from the folded weights, write the checkpoint and the metrics."""
    folded = fold(model).cpu()
    certificate = certify(folded, data.input_shape, data.preprocessing)
    checkpoint = out_dir / CHECKPOINT_FILE
    write_checkpoint(checkpoint, folded.state_dict(), entry.architecture.model_dump(mode="json"), certificate)
    metrics = {
        "model": entry.name,
        "lipschitz_bound": certificate.lipschitz_bound,
        # A lower bound found by attack on test inputs: lower / upper says how tight the certificate is.
        "empirical_lipschitz": empirical_lipschitz(folded, data.x_test[:EMPIRICAL_INPUTS], steps=50),
        **evaluate(folded, data.x_test, data.y_test, certificate.lipschitz_bound),
        "epochs": epochs,
        "seed": seed,
        # Float sums depend on the thread count: reproducing a run bit for bit needs the same one.
        "torch_threads": torch.get_num_threads(),
        "train_seconds_this_run": round(seconds, 2),
        "history": history,
    }
    atomic_write_bytes(out_dir / METRICS_FILE, json.dumps(metrics, indent=2).encode())
    return TrainResult(checkpoint, certificate, metrics)
