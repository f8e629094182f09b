"""Transfer regularizers on digits: does regularizing towards a certified source model help?

Source: ``lipconv_xs.digits_source04`` (models.yaml), trained once on digits 0-4. Target: digits
5-9 with 10 % and with 100 % of their training labels (the labelled subset is drawn per seed), for
plain fine-tuning, each regularizer of ``lipconv_xs.digits_transfer_*``, and training from scratch
for reference. Every run ends like ``zoo train``: folded, certified from the folded weights, and
evaluated on all test images of digits 5-9 (clean accuracy, certified accuracy at ``--eps``).

    zoo bench transfer                     # prints a Markdown table for the README
    zoo bench transfer --seeds 1 --methods finetune l2sp

Schedules are short (``--epochs-scarce`` / ``--epochs-full``) so the whole run fits in minutes on a
CPU; intra-op threads default to 1 (small tensors gain nothing from more, and a shared machine loses).
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import torch
from rich.console import Console

from training.data import Dataset, load_digits
from training.trainer import RunOptions, train
from zoo.registry import ModelEntry, get_entry

SOURCE = "lipconv_xs.digits_source04"
METHODS = ("finetune", "l2", "l2sp", "delta", "delta_attention", "lwf", "co_tuning", "bi_tuning", "bss")
SCRATCH = "scratch"


def target_entry(
    method: str, source_checkpoint: Path, source_scale: float, label_fraction: float
) -> ModelEntry:
    """The models.yaml entry of ``method`` with the trained source and ``label_fraction`` filled in;
    ``scratch`` is plain fine-tuning's entry without a source (a class-filtered run from scratch)."""
    entry = get_entry(f"lipconv_xs.digits_transfer_{'finetune' if method == SCRATCH else method}")
    transfer = {**entry.recipe.transfer, "label_fraction": label_fraction}
    if method == SCRATCH:
        transfer = {key: transfer[key] for key in ("classes", "label_fraction")}
    else:
        transfer |= {"source": str(source_checkpoint), "source_logit_scale": source_scale}
    return entry.model_copy(update={"recipe": entry.recipe.model_copy(update={"transfer": transfer})})


def run(
    method: str,
    fraction: float,
    seed: int,
    epochs: int,
    source: tuple[Path, float],
    data: Dataset,
    out: Path,
    eps: str,
) -> tuple[float, float]:
    """(clean, certified) test accuracy of one fine-tuning run."""
    entry = target_entry(method, *source, fraction)
    options = RunOptions(epochs=epochs, seed=seed, progress=False)
    run_dir = out / f"{method}-{fraction}-{seed}"
    result = train(entry, run_dir, options, data=data, console=Console(quiet=True))
    return result.metrics["clean_accuracy"], result.metrics["certified_accuracy"][eps]


def cell(values: list[float]) -> str:
    mean = 100 * statistics.fmean(values)
    spread = 100 * statistics.stdev(values) if len(values) > 1 else 0.0
    return f"{mean:.1f} ± {spread:.1f}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--methods", nargs="+", default=[*METHODS, SCRATCH], choices=[*METHODS, SCRATCH])
    parser.add_argument("--fractions", nargs="+", type=float, default=[0.1, 1.0])
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--epochs-scarce", type=int, default=40, help="epochs when labels are below 100 %%")
    parser.add_argument("--epochs-full", type=int, default=15, help="epochs with all labels")
    parser.add_argument("--eps", default="0.25", choices=["0.1", "0.25", "0.5"])
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--out", type=Path, help="keep the runs here (default: a temporary directory)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    console = Console()
    started = time.perf_counter()
    data = load_digits()

    with tempfile.TemporaryDirectory() as scratch_dir:
        out = args.out or Path(scratch_dir)
        source_entry = get_entry(SOURCE)
        quiet = RunOptions(progress=False)
        source = train(source_entry, out / "source", quiet, data=data, console=Console(quiet=True))
        scale = source_entry.recipe.loss.params["tau"]
        console.print(
            f"source {SOURCE} (digits 0-4): clean {100 * source.metrics['clean_accuracy']:.1f} %, certified "
            f"(eps {args.eps}) {100 * source.metrics['certified_accuracy'][args.eps]:.1f} %, "
            f"bound {source.certificate.lipschitz_bound:.4f}"
        )
        results: dict[tuple[str, float], list[tuple[float, float]]] = {}
        for fraction in args.fractions:
            epochs = args.epochs_full if fraction == 1.0 else args.epochs_scarce
            for method in args.methods:
                runs = [
                    run(method, fraction, seed, epochs, (source.checkpoint, scale), data, out, args.eps)
                    for seed in range(args.seeds)
                ]
                results[method, fraction] = runs
                console.print(
                    f"{method:>16} {fraction:>4.0%}: {cell([c for c, _ in runs])} clean", highlight=False
                )

    header = ["method"]
    for fraction in args.fractions:
        header += [f"{fraction:.0%} labels: clean", f"{fraction:.0%}: certified (eps {args.eps})"]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for method in args.methods:
        row = [method]
        for fraction in args.fractions:
            runs = results[method, fraction]
            row += [cell([clean for clean, _ in runs]), cell([certified for _, certified in runs])]
        lines.append("| " + " | ".join(row) + " |")
    print()
    print("\n".join(lines))
    print(
        f"\nTest accuracy (%) on digits 5-9, mean ± std over {args.seeds} seeds (the seed also draws the "
        f"labelled subset); {args.epochs_scarce} epochs below 100 % labels, {args.epochs_full} with all; "
        f"total {time.perf_counter() - started:.0f} s."
    )


if __name__ == "__main__":
    main()
