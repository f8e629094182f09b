"""Every benchmark script runs to the end with tiny settings and prints its table (slow: about two
minutes in all). The figures are not checked: benchmarks measure, tests do not time."""

from __future__ import annotations

import shlex

import pytest

from training.data import find_mnist_dir
from zoo.app.benches import find_benchmarks, run_benchmark

# name -> (tiny arguments, a fragment of the table it prints)
SMOKE_RUNS = {
    "conv_bounds": ("", "bound/lower"),
    "continual": ("--epochs 1 --seeds 0 --only naive er", "| ER |"),
    "dense_bounds": ("--rounds 1 --shapes 40x90", "40x90"),
    "export": ("--repeats 1", "lipresnet 3x32x32"),
    "fashion_mnist": (
        "--epochs 1 --limit 300 --only deel-torchlip orthogonium lipconv_s.fashion_mnist_spectral",
        "| lipconv_s.fashion_mnist_spectral |",
    ),
    "layers": ("--steps 1 --warmup 0", "sll residual"),
    "main_job": ("--epochs 1", "total"),
    "sandbox": ("--model lipmlp_s.digits_hkr --repeats 1", "peak resident memory of a confined verifier"),
    "serve": ("--seconds 0.3 --clients 2", "server CPU ms/request"),
    "transfer": ("--seeds 1 --methods l2sp --fractions 1.0 --epochs-scarce 1 --epochs-full 1", "| l2sp |"),
}


def test_every_benchmark_has_a_smoke_run():
    assert set(SMOKE_RUNS) == set(find_benchmarks())


@pytest.mark.slow
@pytest.mark.parametrize("name", SMOKE_RUNS)
def test_benchmark_runs_with_tiny_settings(name, capfd):
    if name == "fashion_mnist":
        try:
            find_mnist_dir("fashion_mnist")
        except FileNotFoundError as error:
            pytest.skip(str(error))
    arguments, expected = SMOKE_RUNS[name]
    assert run_benchmark(name, shlex.split(arguments)) == 0
    assert expected in capfd.readouterr().out
