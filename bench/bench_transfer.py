"""Transfer regularizers on digits and Fashion-MNIST: does regularizing towards a certified source
model help certified accuracy?

Source: ``lipconv_xs.digits_source04`` / ``lipconv_t.fashion_mnist_source04`` (models.yaml), trained
once on classes 0-4. Target: classes 5-9 with 10 % and with 100 % of their training labels (the
labelled subset is drawn per seed), for plain fine-tuning, each regularizer of
``lipconv_xs.digits_transfer_*``, and training from scratch for reference. On Fashion-MNIST each
method trains the source entry's network and recipe with that entry's regularizer block. Every run
ends like ``zoo train``: folded, certified from the folded weights, and evaluated on all test images
of classes 5-9 (clean accuracy, certified accuracy at ``--eps``).

    zoo bench transfer                     # prints a Markdown table for the README
    zoo bench transfer --seeds 1 --methods finetune l2sp
    zoo bench transfer --dataset fashion_mnist --weights reference

Regularizer weights (``--weights``): ``entries``, those of the digits entries, or ``reference``,
tllib's example defaults in this project's conventions (:data:`REFERENCE_WEIGHTS`): every term here
is a mean over the batch where tllib sums DELTA's and BSS's over its batch of 48, and the task loss,
tau-cross-entropy, is the cross-entropy of ``tau * logits`` divided by tau = 10, so a weight with
the reference's strength relative to the task loss is ``tllib weight * 48 / 10`` for DELTA and BSS
and ``tllib weight / 10`` for the others. The entries' DELTA and BSS weights leave out the 48.

With ``--out DIR`` the runs are kept and taken up again by a later invocation with the same options
(a finished run is read back, an unfinished one resumes; the trainer refuses another recipe's), so
an interrupted benchmark continues, and two invocations with different ``--methods`` can share one
``--out`` once the source is trained.

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

from training.data import Dataset, load_dataset
from training.trainer import RunOptions, TrainingStateError, train
from zoo.registry import ModelEntry, get_entry

SOURCE = {"digits": "lipconv_xs.digits_source04", "fashion_mnist": "lipconv_t.fashion_mnist_source04"}
METHODS = ("finetune", "l2", "l2sp", "delta", "delta_attention", "lwf", "co_tuning", "bi_tuning", "bss")
SCRATCH = "scratch"
TLLIB_BATCH = 48  # the batch size of tllib's task-adaptation examples
TAU = 10.0  # the tau of the tau-cross-entropy every entry trains with
# tllib's example defaults (--trade-off / --trade-off-backbone) converted to this project's
# conventions; the methods not listed (L2 and L2-SP at 0.01, LwF at 4, Co-Tuning at 2.3, Bi-Tuning
# at 1, the head's L2 at 0.01: batch-independent terms) already have them in their entries (/ tau).
REFERENCE_WEIGHTS = {
    "delta": 0.01 * TLLIB_BATCH / TAU,  # tllib sums the feature-map distances over the batch
    "delta_attention": 0.01 * TLLIB_BATCH / TAU,
    "bss": 0.001 * TLLIB_BATCH / TAU,  # tllib sums the squared singular values of the batch matrix
}


def target_entry(
    method: str,
    dataset: str,
    source_checkpoint: Path,
    source_scale: float,
    label_fraction: float,
    weights: str,
) -> ModelEntry:
    """The entry of ``method`` with the trained source, ``label_fraction`` and the regularizer weight
    (``weights``: 'entries' or 'reference') filled in. On digits it is the models.yaml entry; on
    another dataset, the source entry's network and recipe with that entry's transfer block.
    ``scratch`` is plain fine-tuning without a source (a class-filtered run from scratch)."""
    template = get_entry(f"lipconv_xs.digits_transfer_{'finetune' if method == SCRATCH else method}")
    transfer = {**template.recipe.transfer, "label_fraction": label_fraction}
    if weights == "reference" and method in REFERENCE_WEIGHTS:
        transfer["regularizer"] = {**transfer["regularizer"], "weight": REFERENCE_WEIGHTS[method]}
    if method == SCRATCH:
        transfer = {key: transfer[key] for key in ("classes", "label_fraction")}
    else:
        transfer |= {"source": str(source_checkpoint), "source_logit_scale": source_scale}
    base = template if dataset == "digits" else get_entry(SOURCE[dataset])
    name = f"{base.name.split('.')[0]}.{dataset}_transfer_{method}"
    recipe = base.recipe.model_copy(update={"transfer": transfer})
    return base.model_copy(update={"name": name, "recipe": recipe})


def run(
    entry: ModelEntry,
    seed: int,
    epochs: int,
    data: Dataset,
    out: Path,
    eps: str,
) -> tuple[float, float]:
    """(clean, certified) test accuracy of one fine-tuning run (taken up if ``out`` holds it)."""
    options = RunOptions(epochs=epochs, seed=seed, progress=False, resume=True)
    run_dir = out / f"{entry.name}-{entry.recipe.transfer['label_fraction']}-{seed}"
    result = train(entry, run_dir, options, data=data, console=Console(quiet=True))
    return result.metrics["clean_accuracy"], result.metrics["certified_accuracy"][eps]


def cell(values: list[float]) -> str:
    mean = 100 * statistics.fmean(values)
    spread = 100 * statistics.stdev(values) if len(values) > 1 else 0.0
    return f"{mean:.1f} ± {spread:.1f}"


def measure(
    args: argparse.Namespace, data: Dataset, out: Path, console: Console
) -> dict[tuple[str, float], list[tuple[float, float]]]:
    """Train the source, then every (method, label fraction) with each seed, into ``out``; the
    (clean, certified) accuracies of each."""
    source_entry = get_entry(SOURCE[args.dataset])
    quiet = RunOptions(progress=False, resume=True)
    source = train(source_entry, out / "source", quiet, data=data, console=Console(quiet=True))
    scale = source_entry.recipe.loss.params["tau"]
    console.print(
        f"source {source_entry.name} (classes 0-4): clean "
        f"{100 * source.metrics['clean_accuracy']:.1f} %, certified "
        f"(eps {args.eps}) {100 * source.metrics['certified_accuracy'][args.eps]:.1f} %, "
        f"bound {source.certificate.lipschitz_bound:.4f}"
    )
    results: dict[tuple[str, float], list[tuple[float, float]]] = {}
    for fraction in args.fractions:
        epochs = args.epochs_full if fraction == 1.0 else args.epochs_scarce
        for method in args.methods:
            entry = target_entry(method, args.dataset, source.checkpoint, scale, fraction, args.weights)
            runs = [run(entry, seed, epochs, data, out, args.eps) for seed in range(args.seeds)]
            results[method, fraction] = runs
            console.print(
                f"{method:>16} {fraction:>4.0%}: {cell([c for c, _ in runs])} clean", highlight=False
            )
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--dataset", choices=list(SOURCE), default="digits")
    parser.add_argument("--weights", choices=["entries", "reference"], default="entries")
    parser.add_argument("--data-dir", help="where Fashion-MNIST's idx files are (default: found)")
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
    started = time.process_time()
    data = load_dataset(args.dataset, args.data_dir)

    try:
        with tempfile.TemporaryDirectory() as scratch_dir:
            results = measure(args, data, args.out or Path(scratch_dir), console)
    except TrainingStateError as error:  # --out holds runs of other options
        raise SystemExit(f"error: {error}") from None

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
        f"\nTest accuracy (%) on {args.dataset} classes 5-9 ({args.weights} weights), mean ± std over "
        f"{args.seeds} seeds (the seed also draws the "
        f"labelled subset); {args.epochs_scarce} epochs below 100 % labels, {args.epochs_full} with all; "
        f"{time.process_time() - started:.0f} CPU s in this invocation."
    )


if __name__ == "__main__":
    main()
