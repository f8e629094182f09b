"""Data-parallel training under torchrun (2 processes, gloo on the CPU) follows the single-process
run with the same global batch."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
import torch
import yaml
from rich.console import Console
from safetensors.torch import load_file

from training.trainer import RunOptions, train
from zoo.registry import load_registry

ENTRY = {
    "description": "DDP test model",
    "architecture": {
        "name": "lipconv",
        "input_shape": [1, 8, 8],
        "num_classes": 10,
        "options": {"widths": [8, 16], "dense": [32]},
    },
    "recipe": {
        "dataset": "digits",
        # A mean over examples: the gradient of the global batch is the average of the shards'.
        "loss": {"name": "tau_cross_entropy", "params": {"tau": 5.0}},
        "optimizer": {"name": "sgd", "lr": 0.05},
        "epochs": 2,
        "batch_size": 100,
        "seed": 3,
    },
}


@pytest.mark.slow
def test_two_gloo_processes_match_one_process(tmp_path, digits):
    registry = tmp_path / "models.yaml"
    registry.write_text(yaml.safe_dump({"models": {"lipconv.ddp_test": ENTRY}}))
    entry = load_registry(registry)["lipconv.ddp_test"]
    quiet = RunOptions(progress=False)
    single = train(entry, tmp_path / "single", quiet, data=digits, console=Console(quiet=True))

    command = [
        sys.executable,
        "-m",
        "zoo",
        "train",
        "lipconv.ddp_test",
        "--nproc",
        "2",
        "--out",
        str(tmp_path / "ddp"),
        "--no-progress",
    ]
    env = {**os.environ, "ZOO_MODELS_YAML": str(registry), "OMP_NUM_THREADS": "1"}
    result = subprocess.run(command, env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "clean accuracy" in result.stdout

    expected, actual = load_file(single.checkpoint), load_file(tmp_path / "ddp" / "model.safetensors")
    assert expected.keys() == actual.keys()
    # The shards' gradients are summed in another order than the global batch's. Float summation order
    # alone moves these weights (largest about 0.4) by up to 1.6e-4 after the 28 steps: one-process runs
    # with 1 and 2 torch threads differ by that much. So the check is at 1e-3.
    for name in expected:
        torch.testing.assert_close(actual[name], expected[name], rtol=0, atol=1e-3)
