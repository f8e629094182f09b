"""Dense-layer bounds: LAPACK's eigensolver on the Gram matrix against Gram iteration. Prints a table.

Run: ``zoo bench dense_bounds [--rounds 2]``

For random Gaussian weights of common dense-layer shapes, the time and the bound of
``matrix_norm_bound`` with the eigensolver (the default up to ``EXACT_MAX_DIM`` on the short side)
and with 12 Gram-iteration steps (``exact_max_dim=0``), timed in interleaved rounds; the bounds are
divided by the eigensolver's (itself ``svdvals`` to about 1e-15). A benchmark, not a test.
"""

from __future__ import annotations

import argparse
import statistics

import torch
from timing import interleaved_seconds

from zoo.bounds import matrix_norm_bound

SHAPES = [(1024, 4096), (4096, 4096), (4096, 25088)]  # the last: VGG's first classifier layer


def recording_call(weight: torch.Tensor, results: dict[str, float], name: str, **options: int):
    """A call of ``matrix_norm_bound(weight, **options)`` that stores its bound as ``results[name]``."""

    def call() -> None:
        results[name] = matrix_norm_bound(weight, **options)

    return call


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=2, help="timed calls per method")
    parser.add_argument(
        "--shapes", nargs="+", default=[f"{m}x{n}" for m, n in SHAPES], help="matrix shapes, e.g. 4096x25088"
    )
    args = parser.parse_args()
    columns = ("eigensolver s", "Gram iteration s", "time ratio", "bound ratio")
    header = f"{'shape':<14}" + "".join(f"{column:>18}" for column in columns)
    print(header)
    print("-" * len(header))
    for shape in [tuple(int(size) for size in text.split("x")) for text in args.shapes]:
        weight = torch.randn(*shape, generator=torch.Generator().manual_seed(0)) / shape[1] ** 0.5
        bounds: dict[str, float] = {}
        calls = {
            "eigensolver": recording_call(weight, bounds, "eigensolver"),
            "gram": recording_call(weight, bounds, "gram", exact_max_dim=0),
        }
        times = interleaved_seconds(calls, args.rounds, warmup=0)
        eigen, gram = statistics.median(times["eigensolver"]), statistics.median(times["gram"])
        cells = [f"{eigen:18.2f}", f"{gram:18.2f}", f"{gram / eigen:17.2f}x"]
        cells.append(f"{bounds['gram'] / bounds['eigensolver']:18.10f}")
        print(f"{'x'.join(map(str, shape)):<14}" + "".join(cells), flush=True)


if __name__ == "__main__":
    main()
