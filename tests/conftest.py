"""Shared fixtures: a short digits run trained once per test session."""

from __future__ import annotations

import dataclasses
import math
import os

import pytest
import torch
from rich.console import Console

from training.data import load_digits
from training.trainer import RunOptions, TrainResult, train
from zoo.registry import get_entry

DIGITS_MODEL = "lipconv_s.digits_hkr"


def pytest_configure(config):
    """Run by pytest-xdist (``-n 2``), each worker takes one core: one torch thread per worker, or the
    workers' threads wait for each other on a machine with as many cores as workers."""
    if os.environ.get("PYTEST_XDIST_WORKER"):
        torch.set_num_threads(1)


@pytest.fixture
def one_torch_thread():
    """For tests that train tiny networks: intra-op threads gain nothing there, and on a busy machine
    their synchronisation costs several times the work itself."""
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


@pytest.fixture(scope="session")
def same_certificate():
    """``same_certificate(a, b)``: certificates of the same weights, every field equal and the bounds
    to 1e-12 relative (recomputed with another torch thread count, a bound may differ in its last
    bits: training computes with the thread count its recipe records, a test with the default)."""

    def without_bounds(certificate):
        layers = tuple(dataclasses.replace(layer, bound=0.0) for layer in certificate.layers)
        return dataclasses.replace(certificate, lipschitz_bound=0.0, layers=layers)

    def bounds(certificate):
        return [certificate.lipschitz_bound, *(layer.bound for layer in certificate.layers)]

    def same(a, b) -> bool:
        close = all(math.isclose(x, y, rel_tol=1e-12) for x, y in zip(bounds(a), bounds(b), strict=True))
        return without_bounds(a) == without_bounds(b) and close

    return same


@pytest.fixture(scope="session")
def digits():
    return load_digits()


@pytest.fixture(scope="session")
def short_run(tmp_path_factory, digits) -> TrainResult:
    """Two epochs of the digits recipe: a real folded, certified checkpoint in a few seconds."""
    out = tmp_path_factory.mktemp("short_run")
    options = RunOptions(epochs=2, progress=False)
    return train(get_entry(DIGITS_MODEL), out, options, data=digits, console=Console(quiet=True))
