"""Benchmark of the continual-learning strategies on class-incremental split digits. Prints tables;
not a test.

Run: ``zoo bench continual [--epochs 8] [--seeds 0 1 2] [--only ar1 er]``

Every strategy trains the same small 1-Lipschitz lipconv (widths 8/16/32, dense 64) on scikit-learn's
digits split into 5 experiences of 2 classes, ``--epochs`` epochs per experience, with each seed;
the final model is folded and certified by ``training.trainer.train`` like any zoo model. The table
gives, mean ± std over the seeds, the class-incremental final average accuracy and forgetting, the
task-incremental final average accuracy, the certified accuracy at L2 radius 0.1 on the full test
set, and the certified Lipschitz bound of each seed's final model.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from typing import Any

import torch
from rich.console import Console
from rich.table import Table

from training.data import Dataset, load_digits
from training.trainer import RunOptions, train
from zoo.registry import ModelEntry

BUFFER = 200
LIDER = {"alpha": 0.1, "beta": 0.1}
STRATEGIES: dict[str, dict[str, Any]] = {
    "naive": {"name": "naive"},
    "si": {"name": "si", "strength": 0.1},
    "er": {"name": "er", "buffer_size": BUFFER},
    "er_lider": {"name": "er", "buffer_size": BUFFER, "lider": LIDER},
    "derpp": {"name": "derpp", "buffer_size": BUFFER, "alpha": 0.1, "beta": 0.5},
    "derpp_lider": {"name": "derpp", "buffer_size": BUFFER, "alpha": 0.1, "beta": 0.5, "lider": LIDER},
    "ar1": {
        "name": "ar1",
        "latent_layer": 4,
        "replay_size": 300,
        "inc_lr": 0.001,
        "batch_renorm": {"momentum": 0.1},
    },
}
LABELS = {
    "naive": "Naive",
    "si": "SI",
    "er": "ER",
    "er_lider": "ER + LiDER",
    "derpp": "DER++",
    "derpp_lider": "DER++ + LiDER",
    "ar1": "AR1 (CWR* + latent replay + BRN)",
}


def entry(strategy: str, epochs: int) -> ModelEntry:
    """The registry entry of one benchmark run."""
    return ModelEntry(
        name=f"lipconv_s.bench_{strategy}",
        description=f"bench_continual: {LABELS[strategy]} on split digits",
        architecture={
            "name": "lipconv",
            "input_shape": [1, 8, 8],
            "num_classes": 10,
            "options": {"widths": [8, 16, 32], "dense": [64]},
        },
        recipe={
            "dataset": "digits",
            "loss": {"name": "tau_cross_entropy", "params": {"tau": 10.0}},
            "optimizer": {"name": "adam", "lr": 0.003},
            "epochs": epochs,
            "batch_size": 32,
            "continual": {"experiences": 5, "strategy": STRATEGIES[strategy]},
        },
    )


def run(strategy: str, epochs: int, seed: int, data: Dataset) -> dict[str, float]:
    """Train one strategy with one seed; the figures of its final model."""
    with tempfile.TemporaryDirectory() as out:
        options = RunOptions(seed=seed, progress=False)
        result = train(entry(strategy, epochs), out, options, data=data, console=Console(quiet=True))
    continual = result.metrics["continual"]
    return {
        "accuracy": continual["class_il"]["final_average_accuracy"],
        "forgetting": continual["class_il"]["forgetting"],
        "task_il": continual["task_il"]["final_average_accuracy"],
        "certified": result.metrics["certified_accuracy"]["0.1"],
        "bound": result.certificate.lipschitz_bound,
    }


def mean_std(values: list[float]) -> str:
    """``mean ± std`` in percent (sample std; 0 for one value)."""
    std = statistics.stdev(values) if len(values) > 1 else 0.0
    return f"{100 * statistics.mean(values):.1f} ± {100 * std:.1f}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=8, help="epochs per experience")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--only", nargs="+", choices=list(STRATEGIES), default=list(STRATEGIES))
    args = parser.parse_args()
    torch.set_num_threads(1)  # small networks: one thread is the fastest, and fair to a shared machine

    console = Console(width=170)
    digits = load_digits()
    rows = []
    started = time.perf_counter()
    for strategy in args.only:
        runs = [run(strategy, args.epochs, seed, digits) for seed in args.seeds]
        rows.append(
            (
                LABELS[strategy],
                mean_std([r["accuracy"] for r in runs]),
                mean_std([r["forgetting"] for r in runs]),
                mean_std([r["task_il"] for r in runs]),
                mean_std([r["certified"] for r in runs]),
                " / ".join(f"{r['bound']:.3g}" for r in runs),
            )
        )
        console.print(f"{LABELS[strategy]}: done ({time.perf_counter() - started:.0f} s so far)")

    columns = (
        "strategy",
        "class-IL final avg acc (%)",
        "class-IL forgetting (%)",
        "task-IL final avg acc (%)",
        "certified acc @ eps 0.1 (%)",
        "certified bound per seed",
    )
    title = (
        f"split digits, 5 x 2 classes, {args.epochs} epochs per experience, seeds "
        f"{', '.join(map(str, args.seeds))} (mean ± std); total {time.perf_counter() - started:.0f} s"
    )
    table = Table(*columns, title=title)
    for row in rows:
        table.add_row(*row)
    console.print(table)
    print(f"\n{title}\n")  # the same table in Markdown, for the README
    print("| " + " | ".join(columns) + " |")
    print("|" + "---|" * len(columns))
    for row in rows:
        print("| " + " | ".join(row) + " |")


if __name__ == "__main__":
    main()
