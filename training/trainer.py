"""The trainer: a models.yaml recipe in, a folded certified checkpoint out.

:func:`train` is the one entry point of training, for every kind of recipe: it picks the
recipe's :class:`~training.protocol.TrainingProtocol` (plain, transfer or continual) and runs it.
What every run shares is here, once: the options, the output directory, the training-state file
(written atomically after every unit, so ``resume`` continues to the same final weights as an
uninterrupted run), data-parallel processes, progress, and the end of the run: the model is
folded, certified from its folded weights, saved as ``model.safetensors`` (certificate embedded)
and evaluated (clean and certified accuracy, ``metrics.json``). Seeded and deterministic on the CPU.
"""

from __future__ import annotations

import io
import json
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager, nullcontext
from dataclasses import replace
from functools import partial
from pathlib import Path
from typing import Any

import torch
from rich.console import Console
from torch import nn

from training.continual.runner import ContinualProtocol
from training.data import Dataset, load_dataset
from training.distributed import DistributedContext, launch_rank, launched_by_torchrun
from training.divergence import DivergenceGuard
from training.lock import hold_run_directory
from training.own_data import is_own_data
from training.progress import RunProgress
from training.protocol import Run, RunOptions, TrainingProtocol, TrainResult
from training.supervised import SupervisedProtocol
from training.threads import chosen_thread_count, torch_threads
from training.transfer.recipe import parse_transfer
from training.transfer.tasks import class_subset
from training.transfer.train import TransferProtocol
from zoo.bounds import empirical_lipschitz
from zoo.certify import certify
from zoo.checkpoint import atomic_write_bytes, write_checkpoint
from zoo.device import resolve_device
from zoo.fold import fold
from zoo.registry import ModelEntry
from zoo.robustness import certified_accuracy, eps_key, reported_eps

__all__ = [
    "CERTIFIED_EPS",
    "CHECKPOINT_FILE",
    "METRICS_FILE",
    "STATE_FILE",
    "RunOptions",
    "TrainResult",
    "TrainingStateError",
    "evaluate",
    "evaluation_split",
    "protocol_for",
    "require_data_parallel",
    "train",
]

CERTIFIED_EPS: tuple[float, ...] = (0.1, 0.25, 0.5)
STATE_FILE = "train_state.pt"
CHECKPOINT_FILE = "model.safetensors"
METRICS_FILE = "metrics.json"
EMPIRICAL_INPUTS = 32


class TrainingStateError(RuntimeError):
    """The output directory holds a run that cannot be continued (or must not be overwritten)."""


def protocol_for(entry: ModelEntry) -> type[TrainingProtocol]:
    """The protocol that trains ``entry``'s recipe: continual, transfer, or plain supervised."""
    if entry.recipe.continual is not None:
        return ContinualProtocol
    if entry.recipe.transfer is not None:
        return TransferProtocol
    return SupervisedProtocol


def require_data_parallel(entry: ModelEntry) -> None:
    """Refuse a data-parallel run (``--nproc N``, torchrun) of a recipe that trains in one process.

    Raises:
        ValueError: naming the entry and its kind of recipe.
    """
    protocol = protocol_for(entry)
    if not protocol.data_parallel:
        raise ValueError(
            f"{entry.name}: {protocol.kind} recipes train in a single process (their state is per "
            "process: data-parallel copies would diverge); run it without --nproc / torchrun"
        )


@contextmanager
def deterministic() -> Iterator[None]:
    previous = torch.are_deterministic_algorithms_enabled()
    torch.use_deterministic_algorithms(True)
    try:
        yield
    finally:
        torch.use_deterministic_algorithms(previous)


@torch.no_grad()
def evaluate(
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    lipschitz_bound: float,
    eps: Sequence[float] = CERTIFIED_EPS,
    batch_size: int = 512,
) -> dict[str, Any]:
    """Clean accuracy and certified accuracy at each eps of ``model`` on (x, y), the latter keyed by
    :func:`zoo.robustness.eps_key`."""
    device = next(model.parameters()).device
    model.eval()
    logits = torch.cat([model(x[i : i + batch_size].to(device)).cpu() for i in range(0, len(x), batch_size)])
    clean = float((logits.argmax(1) == y).double().mean())
    certified = certified_accuracy(logits, y, lipschitz_bound, eps)
    return {
        "clean_accuracy": clean,
        "certified_accuracy": {eps_key(e): acc for e, acc in certified.items()},
    }


def evaluation_split(entry: ModelEntry, data: Dataset) -> tuple[torch.Tensor, torch.Tensor]:
    """The test examples and labels a model of ``entry`` is evaluated on: the whole test set, or for
    a transfer recipe the test examples of its target classes, relabelled as its logits are."""
    if entry.recipe.transfer is None:
        return data.x_test, data.y_test
    task = class_subset(data, parse_transfer(entry).classes)
    return task.x_test, task.y_test


def _recipe_key(entry: ModelEntry, epochs: int, seed: int, data: Dataset | None) -> str:
    """What a resumed training state must have been written for: architecture, recipe, epochs, seed,
    and for the user's own data its preprocessing record (file, resize, split...)."""
    recipe = entry.recipe.model_dump() | {"epochs": epochs, "seed": seed}
    key = {"architecture": entry.architecture.model_dump(mode="json"), "recipe": recipe}
    if data is not None and is_own_data(data):
        key["data"] = data.preprocessing
    return json.dumps(key, sort_keys=True)


def save_state(path: Path, **state: Any) -> None:
    buffer = io.BytesIO()
    torch.save(state, buffer)
    atomic_write_bytes(path, buffer.getvalue())


def load_state(path: Path, key: str) -> dict[str, Any]:
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # torch raises several types for a corrupted file
        raise TrainingStateError(f"{path}: unreadable training checkpoint ({error})") from error
    if not isinstance(state, dict) or state.get("recipe") != key:
        raise TrainingStateError(
            f"{path} was written by a different recipe, seed or number of epochs; "
            "resume with the same options or choose another --out"
        )
    if not {"unit", "history", "protocol"} <= state.keys():
        raise TrainingStateError(
            f"{path} was written by an older version of the trainer and cannot be resumed; "
            "choose another --out"
        )
    return state


def _resolve(
    entry: ModelEntry, options: RunOptions, protocol: type[TrainingProtocol]
) -> tuple[int, int, torch.device]:
    """The run's epochs, seed and device; refuses what the options or the protocol cannot do, before
    anything is written.

    Raises:
        ValueError: epochs < 1, bf16 off CUDA or for a protocol without it, torchrun for a
            single-process protocol.
        DeviceUnavailableError: the device cannot be used.
    """
    epochs = options.epochs if options.epochs is not None else entry.recipe.epochs
    seed = options.seed if options.seed is not None else entry.recipe.seed
    if epochs < 1:
        raise ValueError(f"epochs must be >= 1, got {epochs}")
    device = resolve_device(options.device)
    if options.precision != "fp32":
        if device.type != "cuda":
            raise ValueError(f"--precision {options.precision} is for CUDA training; on the CPU use fp32")
        if not protocol.mixed_precision:
            raise ValueError(f"{entry.name}: {protocol.kind} recipes train in fp32 only")
    if launched_by_torchrun():
        require_data_parallel(entry)
    return epochs, seed, device


def _setup(
    entry: ModelEntry,
    out_dir: Path,
    options: RunOptions,
    epochs: int,
    seed: int,
    device: torch.device,
    data: Dataset | None,
    console: Console,
) -> Run:
    """Load the data, join the data-parallel job.

    Raises:
        ValueError: data that does not fit the architecture.
    """
    if data is None:
        data = load_dataset(entry.recipe.dataset, options.data_dir, options.download)
    if tuple(entry.architecture.input_shape) != data.input_shape:
        raise ValueError(
            f"{entry.name}: architecture.input_shape {tuple(entry.architecture.input_shape)} does not "
            f"match the {entry.recipe.dataset} data shape {data.input_shape}"
        )
    context = DistributedContext.from_environment(device)
    if context.enabled and device.type == "cuda":
        device = torch.device("cuda", torch.cuda.current_device())

    def train_prerequisite(other: ModelEntry, other_dir: Path, other_data: Dataset | None) -> TrainResult:
        prerequisite = replace(options, epochs=None, seed=None, resume=True)
        result = train(other, other_dir, prerequisite, data=other_data, console=console)
        assert result is not None  # prerequisites train in one process
        return result

    return Run(
        entry,
        options,
        epochs,
        seed,
        device,
        out_dir,
        data,
        console if context.is_main else Console(quiet=True),
        context,
        train_prerequisite,
    )


def train(
    entry: ModelEntry,
    out_dir: str | Path,
    options: RunOptions = RunOptions(),  # noqa: B008 (frozen: the default is never mutated)
    *,
    data: Dataset | None = None,
    console: Console | None = None,
) -> TrainResult | None:
    """Train ``entry``'s recipe and write ``model.safetensors`` (folded, certified) to ``out_dir``.

    The output directory is held for the whole run (:mod:`training.lock`): a second run into it is
    refused, and what a killed run left there (its lock, unfinished writes) is cleaned first. Under
    ``torchrun`` every process calls this; rank 0 alone holds the directory, writes files and
    returns the result, the other ranks return None (plain recipes only: the others are refused).

    Args:
        entry: the models.yaml entry whose architecture and recipe to use.
        out_dir: directory for ``train_state.pt`` (after each unit), the final checkpoint and metrics.
        options: epochs, seed, device, resume, data location, precision, progress.
        data: the dataset (default: the recipe's, loaded from ``options.data_dir``).
        console: where to print progress and messages.

    Raises:
        ValueError: an invalid option or recipe, or data that does not fit.
        RunDirectoryError: another run holds ``out_dir``, or it cannot be written.
        TrainingStateError: ``out_dir`` holds a run and ``options.resume`` is false, or a different run.
        TrainingDivergedError: the loss became non-finite or exploded.
        DeviceUnavailableError: the device cannot be used.
    """
    console = console or Console()
    out_dir = Path(out_dir)
    protocol_type = protocol_for(entry)
    epochs, seed, device = _resolve(entry, options, protocol_type)
    key = _recipe_key(entry, epochs, seed, data)
    with hold_run_directory(out_dir, console) if launch_rank() == 0 else nullcontext():
        state = _previous_state(out_dir, options.resume, key)
        threads, source = chosen_thread_count(options.threads, state, entry)
        with torch_threads(threads):
            run = _setup(entry, out_dir, options, epochs, seed, device, data, console)
            if threads is not None and source != "--threads":
                run.console.print(
                    f"{entry.name}: {threads} torch thread(s), as {source} (--threads to change)"
                )
            protocol = protocol_type(run)
            model, history, seconds, cpu_seconds = _train_units(run, protocol, state, key)
            protocol.end_training()
            run.context.close()
            if not run.context.is_main:
                return None
            return _finish(run, protocol, model, history, seconds, cpu_seconds)


def _previous_state(out_dir: Path, resume: bool, key: str) -> dict[str, Any] | None:
    """The training state ``out_dir`` holds, to resume (None if there is none).

    Raises:
        TrainingStateError: there is one and ``resume`` is false, or it is unreadable or another run's.
    """
    state_path = out_dir / STATE_FILE
    if not state_path.exists():
        return None
    if not resume:
        raise TrainingStateError(
            f"{out_dir} already holds a training run ({STATE_FILE}); pass --resume to continue it "
            "or choose another --out"
        )
    return load_state(state_path, key)


def _on_step(guard: DivergenceGuard, progress: RunProgress, where: str, loss: float, acc: float) -> None:
    guard.check(loss, where)
    progress.step(loss, acc)


def _train_units(
    run: Run, protocol: TrainingProtocol, state: dict[str, Any] | None, key: str
) -> tuple[nn.Module, list[dict[str, Any]], float, float]:
    """Build the protocol's model under the run's seed, load ``state`` into it if resuming, train
    the remaining units (saving the state, recipe ``key``, after each); returns the model, the
    history, and the wall-clock and CPU seconds (this process, all threads) it took."""
    entry, console = run.entry, run.console
    state_path = run.out_dir / STATE_FILE
    guard = DivergenceGuard(entry.name, entry.recipe.optimizer.lr)
    with deterministic():
        torch.manual_seed(run.seed)
        model = protocol.build()
        start, history = 0, []
        if state is not None:
            protocol.load_state_dict(state["protocol"])
            start, history = state["unit"] + 1, list(state["history"])
            console.print(f"resuming {entry.name} from {state_path} after {protocol.unit} {start}")
        elif run.options.resume:
            console.print(f"no {STATE_FILE} in {run.out_dir}: starting {entry.name} from scratch")
        started, cpu_started = time.perf_counter(), time.process_time()
        units = protocol.units()
        with RunProgress(console, entry.name, protocol.unit, units, start, run.options.progress) as progress:
            for unit in range(start, units):
                progress.begin_unit(unit, sum(protocol.steps(u) for u in range(unit, units)))
                on_step = partial(_on_step, guard, progress, f"{protocol.unit} {unit + 1}")
                history.append(protocol.train_unit(unit, on_step))
                if run.context.is_main:
                    save_state(
                        state_path,
                        recipe=key,
                        unit=unit,
                        history=history,
                        protocol=protocol.state_dict(),
                        torch_threads=torch.get_num_threads(),
                    )
                run.context.barrier()
                progress.end_unit(unit, history[-1])
    return model, history, time.perf_counter() - started, time.process_time() - cpu_started


def _finish(
    run: Run,
    protocol: TrainingProtocol,
    model: nn.Module,
    history: list[dict[str, Any]],
    seconds: float,
    cpu_seconds: float,
) -> TrainResult:
    """Fold, certify from the folded weights, write the checkpoint, evaluate, write the metrics."""
    data = protocol.evaluation_data()
    folded = fold(model).cpu()
    certificate = certify(folded, data.input_shape, data.preprocessing)
    checkpoint = run.out_dir / CHECKPOINT_FILE
    write_checkpoint(
        checkpoint, folded.state_dict(), run.entry.architecture.model_dump(mode="json"), certificate
    )
    metrics = {
        "model": run.entry.name,
        "lipschitz_bound": certificate.lipschitz_bound,
        # A lower bound found by attack on test inputs: lower / upper says how tight the certificate is.
        "empirical_lipschitz": empirical_lipschitz(folded, data.x_test[:EMPIRICAL_INPUTS], steps=50),
        **evaluate(
            folded,
            data.x_test,
            data.y_test,
            certificate.lipschitz_bound,
            reported_eps(run.entry.recipe.dataset),
        ),
        "epochs": run.epochs,
        "seed": run.seed,
        # Float sums depend on the thread count: reproducing a run bit for bit needs the same one
        # (training.threads applies it again).
        "torch_threads": torch.get_num_threads(),
        "train_seconds_this_run": round(seconds, 2),
        # CPU time of the epochs (all threads of this process): steadier than wall time on a busy machine.
        "train_cpu_seconds_this_run": round(cpu_seconds, 2),
        "history": history,
        **protocol.metrics(),
    }
    atomic_write_bytes(run.out_dir / METRICS_FILE, json.dumps(metrics, indent=2).encode())
    result = TrainResult(checkpoint, certificate, metrics)
    protocol.finish(result)
    return result
