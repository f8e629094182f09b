"""Inference latency of a certified model, folded and exported, against the plain network.

For each architecture and batch size (1 and 256), prints the median latency of
  - plain:    the same architecture built from plain torch.nn layers (random weights), PyTorch;
  - folded:   the trained-style parametrized model after zoo.fold, PyTorch;
  - unfolded: the parametrized model itself (weights recomputed every call), PyTorch;
  - onnx:     the folded model exported by export.writers.write_onnx, in onnxruntime (CPU),
  - onnx plain: the plain network exported the same way, in onnxruntime (CPU),
and the ratios to plain, all measured side by side in one run; the onnx column also gives its ratio
to onnx plain (the cost of the exported graph within one runtime). The goal is the physical limit:
folded / plain = 1 and onnx / onnx plain = 1. The last column is the time ``zoo verify`` takes to
recompute the bound from the ONNX file alone (once per model).

    zoo bench export [--repeats 50]
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from collections.abc import Callable
from functools import partial
from pathlib import Path

import onnxruntime as ort
import torch
from rich.console import Console
from rich.table import Table
from timing import interleaved_seconds

from export.runtime import onnx_session
from export.verify import verify_onnx
from export.writers import write_onnx
from zoo.certify import certify
from zoo.fold import fold
from zoo.models import build

CASES = [
    ("lipconv", (1, 8, 8), {}),
    ("lipconv", (3, 32, 32), {"widths": [32, 64, 128], "dense": [256]}),
    ("lipmlp", (1, 8, 8), {}),
    ("orthoconv", (1, 8, 8), {}),
    ("lipresnet", (1, 8, 8), {}),
    ("lipresnet", (3, 32, 32), {}),
]
COLUMNS = ("model", "batch", "plain", "folded", "unfolded", "onnx plain (ORT)", "onnx (ORT)", "verify (s)")


def median_ms(runs: dict[str, Callable[[], object]], repeats: int) -> dict[str, float]:
    """Median wall time (ms) of each call over ``repeats`` interleaved rounds (bench/timing.py)."""
    times = interleaved_seconds(runs, repeats, warmup=3)
    return {name: 1000 * statistics.median(values) for name, values in times.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=50)
    args = parser.parse_args()
    torch.manual_seed(0)
    table = Table(title="median latency (ms) and ratio to the plain network")
    for column in COLUMNS:
        table.add_column(column, justify="right")
    for name, shape, options in CASES:
        plain = build(name, input_shape=shape, num_classes=10, parametrized=False, **options).eval()
        unfolded = build(name, input_shape=shape, num_classes=10, parametrized=True, **options).eval()
        folded = fold(build(name, input_shape=shape, num_classes=10, parametrized=True, **options))
        with tempfile.TemporaryDirectory() as tmp:
            path = write_onnx(folded, certify(folded, shape), Path(tmp) / "model.onnx")
            plain_path = write_onnx(plain, certify(plain, shape), Path(tmp) / "plain.onnx")
            start = time.perf_counter()
            verify_onnx(path)
            verify_seconds = time.perf_counter() - start
            session_options = ort.SessionOptions()
            # ORT's idle threads spin after each run by default, which would slow down the next
            # variant measured in the round-robin; without spinning every variant runs on a quiet CPU.
            session_options.add_session_config_entry("session.intra_op.allow_spinning", "0")
            session = onnx_session(path, "cpu", session_options)
            plain_session = onnx_session(plain_path, "cpu", session_options)
            for batch in (1, 256):
                x = torch.rand(batch, *shape)
                feed = {"input": x.numpy()}
                with torch.inference_mode():
                    times = median_ms(
                        {
                            "plain": partial(plain, x),
                            "folded": partial(folded, x),
                            "unfolded": partial(unfolded, x),
                            "onnx plain": partial(plain_session.run, ["logits"], feed),
                            "onnx": partial(session.run, ["logits"], feed),
                        },
                        args.repeats,
                    )
                base = times["plain"]
                cells = [
                    f"{times[k]:.3f} ({times[k] / base:.2f}x)"
                    for k in ("plain", "folded", "unfolded", "onnx plain")
                ]
                onnx = times["onnx"]
                cells.append(f"{onnx:.3f} ({onnx / base:.2f}x; {onnx / times['onnx plain']:.2f}x)")
                verify = f"{verify_seconds:.2f}" if batch == 1 else ""
                table.add_row(f"{name} {'x'.join(map(str, shape))}", str(batch), *cells, verify)
    Console(width=200).print(table)


if __name__ == "__main__":
    main()
