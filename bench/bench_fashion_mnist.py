"""Fashion-MNIST: the zoo's recipes against deel-torchlip's and orthogonium's example nets, trained
side by side (same data, epochs, optimiser, batches and thread count); prints clean and certified
accuracy at each radius and the CPU seconds per epoch. Not a test.

Run: ``zoo bench fashion_mnist [--epochs 10] [--limit N] [--only NAME ...] [--data-dir DIR] [--runs DIR]``

Every network trains on the 60,000 training images (pixel / 255) for ``--epochs`` epochs with Adam
(lr 1e-3, cosine schedule per epoch, batch 256, the same shuffling: ``training.recipe.epoch_order``)
in one torch thread; "CPU s / epoch" is the process CPU time of those epochs (no evaluation). The
peers (``pip install deel-torchlip orthogonium``, which the ``test`` extra installs):

* deel-torchlip 1.0.5's Fashion-MNIST example: SpectralConv2d 1-16 and 16-32 (3x3, 'same'), each
  followed by GroupSort2 and ScaledL2NormPool2d(2), SpectralLinear 1568-64, GroupSort2,
  SpectralLinear 64-10 (no bias); HKRMulticlassLoss(alpha=100, min_margin=0.25);
* orthogonium 0.0.4: AdaptiveOrthoConv2d 1-16, 16-32 stride 2, 32-32 stride 2 (3x3, its default
  circular padding), each followed by MaxMin, OrthoLinear 1568-64, MaxMin, OrthoLinear 64-10;
  tau-cross-entropy ``CE(8 z, y) / 8``.

Every network is certified the zoo's way: folded to plain layers (the peers' own export, their
activations and pools replaced by the zoo's identical modules, checked equal on test images) and
bounded by ``zoo.certify`` (sound, float64); certified accuracy is the fraction of the 10,000 test
images classified correctly with ``(top1 - top2) / (sqrt(2) L) > eps``. The zoo's nets are the
models.yaml recipes of ``ZOO_RECIPES``, trained by ``training.trainer.train`` (what ``zoo train``
runs) with ``--epochs`` epochs; with ``--runs DIR``, a recipe that ``zoo train NAME --out DIR/NAME
--threads 1`` already trained in one go for ``--epochs`` epochs (same seed, full data) is read from
its ``metrics.json`` (the same trainer, so the same figures) instead of being trained again.
"""

from __future__ import annotations

import argparse
import json
import math
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from rich.console import Console
from rich.table import Table
from torch import nn
from torch.nn.utils import parametrize

from training.data import Dataset, load_dataset
from training.recipe import epoch_order
from training.trainer import RunOptions, evaluate
from training.trainer import train as train_recipe
from zoo.certify import certify
from zoo.layers import GroupSort2, MaxMin, ScaledL2NormPool2d
from zoo.registry import get_entry
from zoo.robustness import eps_key, eps_name, reported_eps

ZOO_RECIPES = (
    "orthoconv_xs.fashion_mnist",
    "orthoconv_s.fashion_mnist",
    "lipresnet_s.fashion_mnist_sll",
    "lipconv_s.fashion_mnist_spectral",
)
EPS = reported_eps("fashion_mnist")
LR, BATCH_SIZE, SEED = 1e-3, 256, 0


@dataclass
class Result:
    """One trained network: its certificate and measured figures."""

    bound: float
    clean: float
    certified: dict[str, float]
    cpu_per_epoch: float


def deel_torchlip() -> tuple[nn.Module, Callable]:
    from deel import torchlip

    model = torchlip.Sequential(
        torchlip.SpectralConv2d(1, 16, (3, 3), padding="same"),
        torchlip.GroupSort2(),
        torchlip.ScaledL2NormPool2d(kernel_size=(2, 2)),
        torchlip.SpectralConv2d(16, 32, (3, 3), padding="same"),
        torchlip.GroupSort2(),
        torchlip.ScaledL2NormPool2d(kernel_size=(2, 2)),
        nn.Flatten(),
        torchlip.SpectralLinear(1568, 64),
        torchlip.GroupSort2(),
        torchlip.SpectralLinear(64, 10, bias=False),
    )
    hkr = torchlip.HKRMulticlassLoss(alpha=100 / 101, min_margin=0.25)  # alpha=100, as a fraction
    return model, lambda logits, labels: hkr(logits, F.one_hot(labels, 10))


def orthogonium() -> tuple[nn.Module, Callable]:
    from orthogonium.layers import AdaptiveOrthoConv2d, OrthoLinear
    from orthogonium.layers import MaxMin as OrthogoniumMaxMin

    model = nn.Sequential(
        AdaptiveOrthoConv2d(1, 16, 3, padding=1),
        OrthogoniumMaxMin(),
        AdaptiveOrthoConv2d(16, 32, 3, stride=2, padding=1),
        OrthogoniumMaxMin(),
        AdaptiveOrthoConv2d(32, 32, 3, stride=2, padding=1),
        OrthogoniumMaxMin(),
        nn.Flatten(),
        OrthoLinear(1568, 64),
        OrthogoniumMaxMin(),
        OrthoLinear(64, 10),
    )
    return model, lambda logits, labels: F.cross_entropy(8 * logits, labels) / 8


PEERS: dict[str, Callable[[], tuple[nn.Module, Callable]]] = {
    "deel-torchlip": deel_torchlip,
    "orthogonium": orthogonium,
}
# The peers' parameter-free modules, by class name, and the zoo module computing the same function.
SAME_FUNCTION: dict[str, Callable[[nn.Module], nn.Module]] = {
    "GroupSort2": lambda module: GroupSort2(),
    "MaxMin": lambda module: MaxMin(),
    "LPPool2d": lambda module: ScaledL2NormPool2d(module.kernel_size, module.stride),
    "ScaledL2NormPool2d": lambda module: ScaledL2NormPool2d(module.kernel_size, module.stride),
    "Flatten": lambda module: nn.Flatten(),
}


def plain_layer(module: nn.Module) -> nn.Module:
    """A standard torch layer holding the weight ``module`` computes (parametrizations evaluated),
    or the zoo's module computing a parameter-free peer module's function."""
    if isinstance(module, nn.Conv2d):
        plain = nn.Conv2d(
            module.in_channels,
            module.out_channels,
            module.kernel_size,
            module.stride,
            module.padding,
            module.dilation,
            module.groups,
            module.bias is not None,
            module.padding_mode,
        )
    elif isinstance(module, nn.Linear):
        plain = nn.Linear(module.in_features, module.out_features, module.bias is not None)
    else:
        name = type(module).__name__
        if name not in SAME_FUNCTION:
            raise TypeError(f"no plain equivalent for the peer module {name}")
        return SAME_FUNCTION[name](module)
    with torch.no_grad(), parametrize.cached():
        plain.weight.copy_(module.weight)
        if module.bias is not None:
            plain.bias.copy_(module.bias)
    return plain


def fold_peer(model: nn.Module, probe: torch.Tensor) -> nn.Sequential:
    """The peer's network as plain torch + zoo modules, checked to compute the same logits."""
    model.eval()
    folded = nn.Sequential(*(plain_layer(module) for module in model.children())).eval()
    with torch.no_grad():
        difference = float((folded(probe) - model(probe)).abs().max())
    if difference > 1e-4:
        raise RuntimeError(f"the folded peer network differs from the trained one by {difference:.2e}")
    return folded


def train_peer(model: nn.Module, loss_fn: Callable, data: Dataset, epochs: int) -> float:
    """Train as ``zoo train`` does (same batches and schedule); returns the CPU seconds of the epochs."""
    optimizer = torch.optim.Adam(model.parameters(), lr=LR)
    started = time.process_time()
    for epoch in range(epochs):
        for group in optimizer.param_groups:
            group["lr"] = LR * 0.5 * (1 + math.cos(math.pi * epoch / epochs))
        model.train()
        order = epoch_order(len(data.x_train), SEED, epoch)
        for start in range(0, len(order), BATCH_SIZE):
            batch = order[start : start + BATCH_SIZE]
            loss = loss_fn(model(data.x_train[batch]), data.y_train[batch])
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
    return time.process_time() - started


def run_peer(name: str, data: Dataset, epochs: int) -> Result:
    torch.manual_seed(SEED)
    model, loss_fn = PEERS[name]()
    cpu = train_peer(model, loss_fn, data, epochs)
    folded = fold_peer(model, data.x_test[:256])
    bound = certify(folded, data.input_shape).lipschitz_bound
    metrics = evaluate(folded, data.x_test, data.y_test, bound, EPS)
    return Result(bound, metrics["clean_accuracy"], metrics["certified_accuracy"], cpu / epochs)


def run_recipe(name: str, data: Dataset, epochs: int) -> Result:
    with tempfile.TemporaryDirectory() as out:
        options = RunOptions(epochs=epochs, progress=False, threads=1)
        result = train_recipe(get_entry(name), out, options, data=data, console=Console(quiet=True))
    return recipe_result(result.metrics, epochs)


def recipe_result(metrics: dict, epochs: int) -> Result:
    """A recipe's figures from the trainer's metrics (``metrics.json``) of a run of ``epochs`` epochs."""
    cpu = metrics["train_cpu_seconds_this_run"] / epochs
    return Result(metrics["lipschitz_bound"], metrics["clean_accuracy"], metrics["certified_accuracy"], cpu)


def finished_run(runs: Path, name: str, epochs: int) -> dict | None:
    """The metrics of ``zoo train NAME --out RUNS/NAME`` when that run follows this bench's protocol
    (``epochs`` epochs, the recipe's seed, one thread, the full training set), else None. The run must
    have trained in one go: a resumed run's CPU seconds count its last part only."""
    path = runs / name / "metrics.json"
    if not path.is_file():
        return None
    metrics = json.loads(path.read_text())
    protocol = {"model": name, "epochs": epochs, "seed": get_entry(name).recipe.seed, "torch_threads": 1}
    if {key: metrics.get(key) for key in protocol} != protocol:
        return None
    return metrics


def limited(data: Dataset, limit: int | None) -> Dataset:
    """The first ``limit`` training and test images (all of them for None): smoke runs."""
    if limit is None:
        return data
    return Dataset(
        data.x_train[:limit],
        data.y_train[:limit],
        data.x_test[:limit],
        data.y_test[:limit],
        data.num_classes,
        data.preprocessing,
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=10)
    parser.add_argument("--limit", type=int, default=None, help="use the first N train and test images")
    parser.add_argument("--only", nargs="+", choices=[*PEERS, *ZOO_RECIPES], default=[*PEERS, *ZOO_RECIPES])
    parser.add_argument("--data-dir", default=None, help="Fashion-MNIST idx files (default: Debian's)")
    parser.add_argument(
        "--runs", type=Path, default=None, help="read recipes already trained by zoo train --out RUNS/NAME"
    )
    args = parser.parse_args()
    torch.set_num_threads(1)  # the protocol: one thread for every network

    console = Console(width=170)
    data = limited(load_dataset("fashion_mnist", args.data_dir), args.limit)
    results: dict[str, Result] = {}
    for name in args.only:
        if name in PEERS and not _installed(name):
            console.print(f"{name}: not installed, skipped (pip install deel-torchlip orthogonium)")
            continue
        trained = finished_run(args.runs, name, args.epochs) if args.runs and args.limit is None else None
        if trained is not None:
            results[name] = recipe_result(trained, args.epochs)
            console.print(f"{name}: read from {args.runs / name / 'metrics.json'}")
            continue
        started = time.perf_counter()
        results[name] = (run_peer if name in PEERS else run_recipe)(name, data, args.epochs)
        console.print(f"{name}: done in {time.perf_counter() - started:.0f} s")

    columns = ["net", "bound", "clean %", *(f"@{eps_name(e)}" for e in EPS), "CPU s / epoch"]
    title = (
        f"Fashion-MNIST, {args.epochs} epochs, Adam 1e-3 cosine, batch {BATCH_SIZE}, one thread, "
        f"{len(data.x_train)} train / {len(data.x_test)} test images"
    )
    rows = [
        [
            name,
            f"{result.bound:.4f}",
            f"{100 * result.clean:.1f}",
            *(f"{100 * result.certified[eps_key(e)]:.1f}" for e in EPS),
            f"{result.cpu_per_epoch:.1f}",
        ]
        for name, result in results.items()
    ]
    table = Table(*columns, title=title)
    for row in rows:
        table.add_row(*row)
    console.print(table)
    print(f"\n{title}\n")  # the same table in Markdown, for the README
    print("| " + " | ".join(columns) + " |")
    print("|" + "---|" * len(columns))
    for row in rows:
        print("| " + " | ".join(row) + " |")


def _installed(peer: str) -> bool:
    import importlib.util

    module = {"deel-torchlip": "deel.torchlip", "orthogonium": "orthogonium"}[peer]
    try:
        return importlib.util.find_spec(module) is not None
    except ModuleNotFoundError:  # the parent package "deel" is missing
        return False


if __name__ == "__main__":
    main()
