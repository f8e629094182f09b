"""Benchmark of the continual-learning strategies on class-incremental split digits and split
Fashion-MNIST. Prints tables; not a test.

Run: ``zoo bench continual [--dataset digits|fashion_mnist] [--epochs N] [--seeds 0 1 2] [--only ar1 er]``
(``--only`` also takes the AR1 ablations, not run by default: ``ar1_latent4``, ``ar1_plain_head``,
``ar1_no_norm``, ``ar1_hkr_replay``).

Every strategy trains the network of the dataset's certified AR1 entry of models.yaml
(``lipconv_s.digits_ar1``, ``lipconv_t.fashion_mnist_ar1``) with that entry's loss, optimizer and
batch size, on the dataset split into 5 experiences of 2 classes, ``--epochs`` epochs per experience
(default: the entry's), with each seed; the final model is folded and certified by
``training.trainer.train`` like any zoo model, and evaluated on the full test set. The table gives, mean ±
std over the seeds: the class-incremental final average accuracy and forgetting, the certified
accuracy at L2 radius 0.1 / 0.25 / 0.5, the largest certified Lipschitz bound over the seeds, and
the CPU seconds of one run (one thread). A second table gives LiDER's effect on its base method,
paired by seed (same seed, same stream, same initialisation).

With ``--out DIR`` the runs are kept, one directory per strategy and seed, and an interrupted or
split-up benchmark takes them up again: a finished run is read back (with the CPU seconds it took),
an unfinished one resumes where it stopped (its CPU seconds then count the resumed part only, marked
``*``), and the trainer refuses a directory written by another recipe or seed. Two invocations may
share one ``--out`` with different ``--only`` strategies; a third over all of them prints the whole
table.
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import torch
from rich.console import Console
from rich.table import Table

from training.data import Dataset, load_dataset
from training.trainer import STATE_FILE, RunOptions, TrainingStateError, train
from zoo.checkpoint import atomic_write_bytes
from zoo.registry import ModelEntry, get_entry, load_registry

# The entry whose architecture and training recipe every strategy of a dataset uses.
BASE_ENTRY = {"digits": "lipconv_s.digits_ar1", "fashion_mnist": "lipconv_t.fashion_mnist_ar1"}
BUFFER = {"digits": 200, "fashion_mnist": 500}
LIDER = {"alpha": 0.1, "beta": 0.1, "learn_budget": True}
EPSILONS = ("0.1", "0.25", "0.5")
LABELS = {
    "naive": "Naive",
    "si": "SI",
    "er": "ER",
    "er_lider": "ER + LiDER",
    "derpp": "DER++",
    "derpp_lider": "DER++ + LiDER",
    "ar1": "AR1 certified (BatchReCentering, projected CWR* head)",
    "ar1_original": "AR1 original (BatchReNorm, plain CWR* head)",
}
ABLATIONS = {
    "ar1_latent4": "AR1 certified, latent replay after the second conv stage (layer 4)",
    "ar1_plain_head": "AR1 certified, plain CWR* head (not projected)",
    "ar1_no_norm": "AR1 certified, no normalisation",
    "ar1_hkr_replay": "AR1 certified, HKR (alpha 50, margin 0.2) in the latent-replay phase",
}
LIDER_PAIRS = (("er", "er_lider"), ("derpp", "derpp_lider"))
CPU_FILE = "bench_cpu.json"  # a finished run's CPU seconds, beside its checkpoint and metrics


def strategies(base: ModelEntry, dataset: str) -> dict[str, dict[str, Any]]:
    """The strategy block of each benchmark row; the AR1 rows are the base entry's AR1, its original
    design (BatchReNorm, plain head) with the same latent layer, memory and learning rates, and the
    ablations, each the base entry's AR1 with one thing changed."""
    buffer = BUFFER[dataset]
    derpp = {"name": "derpp", "buffer_size": buffer, "alpha": 0.1, "beta": 0.5}
    ar1 = dict(base.recipe.continual["strategy"])
    original = {key: ar1[key] for key in ("name", "latent_layer", "replay_size", "inc_lr")}
    original |= {"normalization": {"name": "batch_renorm", "momentum": 0.1}, "lipschitz_head": False}
    return {
        "ar1_latent4": ar1 | {"latent_layer": 4},
        "ar1_plain_head": ar1 | {"lipschitz_head": False},
        "ar1_no_norm": ar1 | {"normalization": None},
        "ar1_hkr_replay": ar1 | {"replay_loss": {"name": "hkr", "params": {"alpha": 50.0, "margin": 0.2}}},
        "naive": {"name": "naive"},
        "si": {"name": "si", "strength": 0.1},
        "er": {"name": "er", "buffer_size": buffer},
        "er_lider": {"name": "er", "buffer_size": buffer, "lider": LIDER},
        "derpp": derpp,
        "derpp_lider": derpp | {"lider": LIDER},
        "ar1": ar1,
        "ar1_original": original,
    }


def entry(base: ModelEntry, row: str, strategy: dict[str, Any], epochs: int) -> ModelEntry:
    """``base`` with the strategy of benchmark row ``row`` and ``epochs``; named after the models.yaml
    entry with this network and recipe if there is one (whose runs ``zoo ship`` then accepts for that
    entry), else after ``base`` and the row."""
    continual = {**base.recipe.continual, "strategy": strategy}
    recipe = base.recipe.model_copy(update={"continual": continual, "epochs": epochs})
    registered = (
        other.name
        for other in load_registry().values()
        if other.architecture == base.architecture and other.recipe == recipe
    )
    name = next(registered, f"{base.name}_bench_{row}")
    return base.model_copy(update={"name": name, "recipe": recipe})


def run(run_entry: ModelEntry, seed: int, data: Dataset, out: Path) -> dict[str, float]:
    """Train one entry with one seed into ``out``, or take up the run ``out`` holds; the figures of its
    final model, ``cpu`` (seconds, one thread) and ``resumed`` (1.0 if the run was resumed midway,
    so that ``cpu`` misses the part before the interruption).

    Raises:
        TrainingStateError: ``out`` holds a run of another recipe or seed.
    """
    cpu_file = out / CPU_FILE
    unfinished = (out / STATE_FILE).exists() and not cpu_file.exists()
    started = time.process_time()
    options = RunOptions(seed=seed, progress=False, resume=True)
    result = train(run_entry, out, options, data=data, console=Console(quiet=True))
    if cpu_file.exists():
        cpu = json.loads(cpu_file.read_text())
    else:
        cpu = {"cpu": time.process_time() - started, "resumed": float(unfinished)}
        atomic_write_bytes(cpu_file, json.dumps(cpu).encode())
    class_il = result.metrics["continual"]["class_il"]
    return {
        "accuracy": class_il["final_average_accuracy"],
        "forgetting": class_il["forgetting"],
        **{eps: result.metrics["certified_accuracy"][eps] for eps in EPSILONS},
        "bound": result.certificate.lipschitz_bound,
        **cpu,
    }


def mean_std(values: list[float], scale: float = 100.0) -> str:
    """``mean ± std`` (sample std; 0 for one value), in percent by default."""
    std = statistics.stdev(values) if len(values) > 1 else 0.0
    return f"{scale * statistics.mean(values):.1f} ± {scale * std:.1f}"


def print_table(console: Console, title: str, columns: tuple[str, ...], rows: list[tuple[str, ...]]) -> None:
    """The table on the console, then in Markdown for the README."""
    table = Table(*columns, title=title)
    for row in rows:
        table.add_row(*row)
    console.print(table)
    print(f"\n{title}\n")
    print("| " + " | ".join(columns) + " |")
    print("|" + "---|" * len(columns))
    for row in rows:
        print("| " + " | ".join(row) + " |")
    print()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dataset", choices=list(BASE_ENTRY), default="digits")
    parser.add_argument("--epochs", type=int, help="epochs per experience (default: the base entry's)")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--only", nargs="+", choices=[*LABELS, *ABLATIONS], default=list(LABELS))
    parser.add_argument("--data-dir", help="where Fashion-MNIST's idx files are (default: found)")
    parser.add_argument("--out", type=Path, help="keep the runs here, one directory per strategy and seed")
    args = parser.parse_args()
    torch.set_num_threads(1)  # small networks: one thread is the fastest, and fair to a shared machine

    console = Console(width=190)
    base = get_entry(BASE_ENTRY[args.dataset])
    epochs = args.epochs or base.recipe.epochs
    data = load_dataset(args.dataset, args.data_dir)
    blocks = strategies(base, args.dataset)
    results: dict[str, list[dict[str, float]]] = {}
    started = time.process_time()
    with tempfile.TemporaryDirectory() as scratch:
        out = args.out or Path(scratch)
        for name in args.only:
            run_entry = entry(base, name, blocks[name], epochs)
            try:
                results[name] = [
                    run(run_entry, seed, data, out / f"{name}-seed{seed}") for seed in args.seeds
                ]
            except TrainingStateError as error:
                raise SystemExit(f"error: {error}") from None
            console.print(
                f"{(LABELS | ABLATIONS)[name]}: done ({time.process_time() - started:.0f} CPU s so far)"
            )

    columns = (
        "strategy",
        "class-IL final acc (%)",
        "forgetting (%)",
        *(f"certified @ {eps} (%)" for eps in EPSILONS),
        "bound (max over seeds)",
        "CPU s / run",
    )
    rows = [
        (
            (LABELS | ABLATIONS)[name],
            mean_std([r["accuracy"] for r in runs]),
            mean_std([r["forgetting"] for r in runs]),
            *(mean_std([r[eps] for r in runs]) for eps in EPSILONS),
            f"{max(r['bound'] for r in runs):.3f}",
            f"{statistics.mean(r['cpu'] for r in runs):.0f}"
            + ("*" if any(r["resumed"] for r in runs) else ""),
        )
        for name, runs in results.items()
    ]
    title = (
        f"split {args.dataset}, 5 x 2 classes, {base.architecture.name} "
        f"{base.architecture.options}, {epochs} epochs per experience, seeds "
        f"{', '.join(map(str, args.seeds))} (mean ± std); {time.process_time() - started:.0f} CPU s in all"
        " (this invocation)"
    )
    if any(r["resumed"] for runs in results.values() for r in runs):
        title += "; * runs resumed midway: their CPU seconds count the resumed part only"
    print_table(console, title, columns, rows)

    pairs = [(plain, lider) for plain, lider in LIDER_PAIRS if plain in results and lider in results]
    if pairs:
        columns = ("LiDER on", "Δ final acc (points)", *(f"Δ certified @ {eps} (points)" for eps in EPSILONS))
        rows = []
        for plain, lider in pairs:
            deltas = [
                {key: with_lider[key] - without[key] for key in ("accuracy", *EPSILONS)}
                for without, with_lider in zip(results[plain], results[lider], strict=True)
            ]
            rows.append(
                (
                    LABELS[plain],
                    mean_std([d["accuracy"] for d in deltas]),
                    *(mean_std([d[eps] for d in deltas]) for eps in EPSILONS),
                )
            )
        print_table(console, f"LiDER minus its base method, paired by seed ({args.dataset})", columns, rows)


if __name__ == "__main__":
    main()
