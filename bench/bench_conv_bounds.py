"""Benchmark of ``zoo.bounds.conv_bound``: tightness and speed. Prints tables; not a test.

Run: ``zoo bench conv_bounds``

1. Tightness: bound / exact on small layers, where the exact norm is the largest singular value of
   the dense operator (``conv_operator_matrix`` + ``svdvals`` in float64).
2. Speed: a 64 -> 64 3x3 zero-padded conv on 32 x 32 inputs, our fft bound against orthogonium's
   ``get_conv_sv`` (Delattre et al. 2024 zero-padding bound, ``n_iter=4``, valid for every input
   size) if orthogonium is installed. The dense operator (65536 x 65536) is too big for an SVD, so
   the reference is a *lower* bound: 200 power iterations on the operator itself in float64. The
   true norm lies between that lower bound and our fft bound.
"""

from __future__ import annotations

import argparse
import os
from collections.abc import Callable

import torch
from timing import interleaved_seconds

from zoo.bounds import conv_bound, conv_operator_matrix

ORTHOGONIUM = "orthogonium get_conv_sv n_iter=4"
TIGHTNESS_CASES = [  # (label, weight shape, input size, conv keyword arguments)
    ("circular 3x3", (8, 8, 3, 3), (10, 10), {"padding": 1, "padding_mode": "circular"}),
    (
        "circular 3x3 stride 2",
        (8, 8, 3, 3),
        (10, 10),
        {"padding": 1, "stride": 2, "padding_mode": "circular"},
    ),
    ("zeros 3x3", (8, 8, 3, 3), (10, 10), {"padding": 1}),
    ("zeros 3x3 n=16", (4, 4, 3, 3), (16, 16), {"padding": 1}),
    ("zeros 3x3 stride 2", (8, 8, 3, 3), (12, 12), {"padding": 1, "stride": 2}),
    ("zeros 3x3 groups 4", (16, 4, 3, 3), (10, 10), {"padding": 1, "groups": 4}),
    ("zeros 5x5 dilation 2", (4, 4, 5, 5), (14, 14), {"padding": "same", "dilation": 2}),
    ("zeros 1-D k=5 stride 2", (8, 8, 5), (128,), {"padding": 2, "stride": 2}),
    ("reflect 3x3", (8, 8, 3, 3), (10, 10), {"padding": 1, "padding_mode": "reflect"}),
    ("replicate 3x3", (8, 8, 3, 3), (10, 10), {"padding": 1, "padding_mode": "replicate"}),
]


def best_times(methods: dict[str, Callable[[], float]], repeats: int) -> dict[str, tuple[float, float]]:
    """{name: (fastest wall time in seconds, value)}; one warm-up round, then ``repeats`` interleaved
    rounds (bench/timing.py), so that all methods see the same machine load."""
    values: dict[str, float] = {}

    def recording(name: str) -> Callable[[], None]:
        return lambda: values.__setitem__(name, methods[name]())

    times = interleaved_seconds({name: recording(name) for name in methods}, repeats, warmup=1)
    return {name: (min(times[name]), values[name]) for name in methods}


def tightness_table() -> None:
    print("1. Tightness: bound / exact norm (exact = svd of the dense operator, float64)")
    columns = ["exact", "fft", "fft/exact", "all sizes/exact"]
    header = f"{'layer':26} {'input':>9} " + " ".join(f"{c:>15}" for c in columns)
    print(header)
    print("-" * len(header))
    for label, shape, input_size, conv in TIGHTNESS_CASES:
        weight = torch.randn(shape, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
        matrix = conv_operator_matrix(weight, input_size=input_size, **conv)
        exact = float(torch.linalg.svdvals(matrix)[0])
        fft = conv_bound(weight, input_size=input_size, method="fft", **conv)
        everywhere = conv_bound(weight, input_size=None, **conv)
        size = "x".join(map(str, input_size))
        values = [f"{exact:15.4f}", f"{fft:15.4f}", f"{fft / exact:15.5f}"]
        values.append(f"{everywhere / exact:15.5f}")
        print(f"{label:26} {size:>9} " + " ".join(values))


def power_iteration_lower_bound(weight: torch.Tensor, input_size: tuple[int, int], steps: int) -> float:
    """``||conv(v)||`` for the unit ``v`` after ``steps`` power iterations on ``conv^T conv``."""
    vector = torch.randn(
        1,
        weight.shape[1],
        *input_size,
        generator=torch.Generator().manual_seed(1),
        dtype=torch.float64,
    )
    for _ in range(steps):
        vector = vector / vector.norm()
        image = torch.nn.functional.conv2d(vector, weight, padding=1)
        vector = torch.nn.functional.conv_transpose2d(image, weight, padding=1)
    vector = vector / vector.norm()
    return float(torch.nn.functional.conv2d(vector, weight, padding=1).norm())


def speed_table() -> None:
    print("\n2. Speed: 64 -> 64 3x3 conv, zero padding 1, 32 x 32 inputs, random N(0, 1) weights")
    weight = torch.randn(64, 64, 3, 3, generator=torch.Generator().manual_seed(0))
    methods = {
        "zoo fft, input 32x32": lambda: conv_bound(weight, input_size=(32, 32), padding=1, method="fft"),
        "zoo fft, every input size": lambda: conv_bound(weight, input_size=None, padding=1),
    }
    try:
        from orthogonium.layers.conv.singular_values.get_sv import get_conv_sv
    except ImportError:
        print("   orthogonium is not installed: its row is skipped (pip install orthogonium)")
    else:
        layer = torch.nn.Conv2d(64, 64, 3, padding=1, bias=False)
        with torch.no_grad():
            layer.weight.copy_(weight)
        methods[ORTHOGONIUM] = lambda: float(get_conv_sv(layer, n_iter=4, return_stab_rank=False))
    repeats = 5
    print(
        f"   torch threads: {torch.get_num_threads()}; load average: {os.getloadavg()[0]:.1f}; "
        f"best of {repeats} interleaved rounds after a warm-up"
    )
    results = best_times(methods, repeats)
    lower = power_iteration_lower_bound(weight.double(), (32, 32), steps=200)
    header = f"{'method':34} {'time (s)':>9} {'bound':>10} {'bound/lower':>12}"
    print(header)
    print("-" * len(header))
    print(f"{'power iteration (lower bound)':34} {'':>9} {lower:10.4f} {1:12.5f}")
    for name, (seconds, value) in results.items():
        print(f"{name:34} {seconds:9.4f} {value:10.4f} {value / lower:12.5f}")
    if ORTHOGONIUM in results:
        (ours, our_bound), (theirs, their_bound) = (
            results["zoo fft, input 32x32"],
            results[ORTHOGONIUM],
        )
        print(
            f"   orthogonium / zoo fft: {theirs / ours:.1f}x the time, "
            f"{their_bound / our_bound:.4f}x the bound"
        )


if __name__ == "__main__":
    argparse.ArgumentParser(description=__doc__.splitlines()[0]).parse_args()  # --help, and no options
    tightness_table()
    speed_table()
