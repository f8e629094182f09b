"""The trainer: deterministic, resumable after a kill, folded and certified at the end."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import pytest
import torch
from rich.console import Console
from safetensors.torch import load_file

from training.trainer import STATE_FILE, TrainingStateError, train
from zoo.device import DeviceUnavailableError
from zoo.registry import get_entry

DIGITS_MODEL = "lipconv_s.digits_hkr"

EPOCHS = 6


def _train(out, digits, **kwargs):
    return train(
        get_entry(DIGITS_MODEL),
        out,
        data=digits,
        console=Console(quiet=True),
        show_progress=False,
        **kwargs,
    )


def test_the_final_model_is_folded_certified_and_evaluated(short_run):
    certificate = short_run.certificate
    assert 0 < certificate.lipschitz_bound <= 1.0
    assert certificate.layers[0].op == "Conv2d" and certificate.input_shape == (1, 8, 8)
    metrics = short_run.metrics
    assert set(metrics["certified_accuracy"]) == {"0.1", "0.25", "0.5"}
    assert metrics["clean_accuracy"] >= metrics["certified_accuracy"]["0.1"]
    assert not any("parametrizations" in k for k in load_file(short_run.checkpoint))


@pytest.mark.slow
def test_a_killed_run_resumes_to_the_same_weights(tmp_path, digits):
    reference = _train(tmp_path / "reference", digits, epochs=EPOCHS)

    out = tmp_path / "killed"
    command = [
        sys.executable,
        "-m",
        "zoo",
        "train",
        DIGITS_MODEL,
        "--epochs",
        str(EPOCHS),
        "--out",
        str(out),
        "--no-progress",
    ]
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 120
    while not (out / STATE_FILE).exists():
        assert process.poll() is None, "training ended before writing its first checkpoint"
        assert time.monotonic() < deadline
        time.sleep(0.01)
    os.kill(process.pid, signal.SIGKILL)
    process.wait()
    killed_after = torch.load(out / STATE_FILE, weights_only=True)["epoch"]
    assert killed_after < EPOCHS - 1, "the run finished before it could be killed"

    resumed = _train(out, digits, epochs=EPOCHS, resume=True)
    expected, actual = load_file(reference.checkpoint), load_file(resumed.checkpoint)
    assert expected.keys() == actual.keys()
    for name in expected:
        torch.testing.assert_close(actual[name], expected[name], rtol=0, atol=1e-7)
    assert resumed.certificate.lipschitz_bound == pytest.approx(reference.certificate.lipschitz_bound)


def test_same_seed_same_weights_and_existing_run_is_not_overwritten(tmp_path, digits):
    first = _train(tmp_path / "a", digits, epochs=1)
    second = _train(tmp_path / "b", digits, epochs=1)
    assert first.checkpoint.read_bytes() == second.checkpoint.read_bytes()
    with pytest.raises(TrainingStateError, match="--resume"):
        _train(tmp_path / "a", digits, epochs=1)
    with pytest.raises(TrainingStateError, match="different recipe"):
        _train(tmp_path / "a", digits, epochs=2, seed=5, resume=True)


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the error on machines without CUDA")
def test_cuda_without_cuda_is_a_clear_error(tmp_path, digits):
    with pytest.raises(DeviceUnavailableError, match="CUDA is not available"):
        _train(tmp_path, digits, epochs=1, device="cuda")
