"""The cost of confinement: ``zoo verify`` runs each file's verification in a confined child process
(export.sandbox); this measures it against the same verification in this process, side by side.

For one model exported to ONNX, TorchScript and .pt2, prints the median wall time of each way over
interleaved rounds, the overhead (the child's start and its torch import), the CPU seconds of both
processes (this one and the child) and their ratio, and the child's peak resident memory.

    zoo bench sandbox [--model lipconv_s.digits_hkr --repeats 3]
"""

from __future__ import annotations

import argparse
import resource
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from rich.console import Console
from rich.table import Table

import zoo
from export.sandbox import verify_confined
from export.verify import verify_artifact
from export.writers import write_onnx, write_pt2, write_torchscript

WRITERS = {
    "onnx": (write_onnx, "model.onnx"),
    "torchscript": (write_torchscript, "model.pt"),
    "pt2": (write_pt2, "model.pt2"),
}


def cpu_seconds() -> float:
    """CPU time (user + system) of this process and of its children waited for so far."""
    own, children = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + children.ru_utime + children.ru_stime


def measure(calls: dict[str, Callable[[], object]], rounds: int) -> dict[str, tuple[float, float]]:
    """Median (wall, CPU) seconds of each call over ``rounds`` rounds, the calls alternating."""
    samples: dict[str, list[tuple[float, float]]] = {name: [] for name in calls}
    for round_number in range(rounds):
        for name in calls if round_number % 2 == 0 else reversed(list(calls)):
            wall, cpu = time.perf_counter(), cpu_seconds()
            calls[name]()
            samples[name].append((time.perf_counter() - wall, cpu_seconds() - cpu))
    return {
        name: tuple(statistics.median(s[i] for s in values) for i in (0, 1))
        for name, values in samples.items()
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="lipconv_s.digits_hkr", help="a models.yaml name with weights")
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()

    certified = zoo.load(args.model)
    table = Table(title=f"zoo verify of {args.model}: in this process vs confined (median of {args.repeats})")
    for column in (
        "format",
        "in-process s",
        "confined s",
        "overhead s",
        "in-process CPU s",
        "confined CPU s",
        "CPU ratio",
    ):
        table.add_column(column, justify="right")
    with tempfile.TemporaryDirectory() as directory:
        for fmt, (write, name) in WRITERS.items():
            path = write(certified.model, certified.certificate, Path(directory) / name)
            times = measure(
                {"in": lambda p=path: verify_artifact(p), "confined": lambda p=path: verify_confined(p)},
                args.repeats,
            )
            (wall_in, cpu_in), (wall_out, cpu_out) = times["in"], times["confined"]
            table.add_row(
                fmt,
                f"{wall_in:.2f}",
                f"{wall_out:.2f}",
                f"{wall_out - wall_in:+.2f}",
                f"{cpu_in:.2f}",
                f"{cpu_out:.2f}",
                f"{cpu_out / cpu_in:.1f}x",
            )
    Console().print(table)
    peak = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 2**10
    print(f"peak resident memory of a confined verifier: {peak:.0f} MiB")


if __name__ == "__main__":
    main()
