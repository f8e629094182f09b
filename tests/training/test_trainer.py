"""The trainer: one entry point for every kind of recipe; deterministic, resumable after a kill,
folded and certified at the end."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time

import pytest
import torch
from rich.console import Console
from safetensors.torch import load_file
from typer.testing import CliRunner

from training import trainer
from training.recipe import build_model
from training.trainer import STATE_FILE, RunOptions, TrainingStateError, train
from zoo.app.cli import app
from zoo.device import DeviceUnavailableError
from zoo.layers import GroupSort, MaxMin
from zoo.registry import get_entry

DIGITS_MODEL = "lipconv_s.digits_hkr"

EPOCHS = 6


def _train(out, digits, **options):
    options = RunOptions(progress=False, **options)
    return train(get_entry(DIGITS_MODEL), out, options, data=digits, console=Console(quiet=True))


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
    killed_after = torch.load(out / STATE_FILE, weights_only=True)["unit"]
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


# One entry point for every kind of recipe: what the command line passes reaches each of them.
CONTINUAL_MODEL, TRANSFER_MODEL = "lipconv_s.digits_ar1", "lipconv_xs.digits_transfer_l2"


@pytest.mark.parametrize("name", [CONTINUAL_MODEL, TRANSFER_MODEL])
def test_data_parallel_runs_of_single_process_recipes_are_refused(name, tmp_path, monkeypatch):
    """Before: `zoo train CONTINUAL --nproc 2` launched two uncoordinated full runs into one
    directory (each printed its own result). Now refused before anything starts."""
    kind = "continual" if get_entry(name).recipe.continual is not None else "transfer"
    out = tmp_path / "run"
    result = CliRunner().invoke(app, ["train", name, "--nproc", "2", "--out", str(out)])
    assert result.exit_code == 1
    message = " ".join(result.stderr.split())
    assert f"{name}: {kind} recipes train in a single process" in message and "without --nproc" in message
    assert not out.exists()

    # Launched by torchrun directly: refused before joining the process group.
    monkeypatch.setenv("WORLD_SIZE", "2")
    with pytest.raises(ValueError, match=f"{kind} recipes train in a single process"):
        train(get_entry(name), out, RunOptions(progress=False), console=Console(quiet=True))


class DataRequested(Exception):
    pass


@pytest.mark.parametrize("name", [DIGITS_MODEL, CONTINUAL_MODEL, TRANSFER_MODEL])
def test_download_and_precision_reach_every_kind_of_recipe(name, tmp_path, monkeypatch):
    requests = []

    def load_dataset(dataset, data_dir, download):
        requests.append((dataset, data_dir, download))
        raise DataRequested

    monkeypatch.setattr(trainer, "load_dataset", load_dataset)
    options = RunOptions(data_dir=tmp_path / "data", download=True, progress=False)
    with pytest.raises(DataRequested):
        train(get_entry(name), tmp_path / "run", options, console=Console(quiet=True))
    assert requests == [("digits", tmp_path / "data", True)]

    bf16 = RunOptions(precision="bf16", progress=False)
    with pytest.raises(ValueError, match="--precision bf16 is for CUDA training"):
        train(get_entry(name), tmp_path / "run", bf16, console=Console(quiet=True))
    if name != DIGITS_MODEL:  # bf16 autocast is for plain recipes: the others say so on CUDA
        monkeypatch.setattr(trainer, "resolve_device", lambda device: torch.device("cuda"))
        with pytest.raises(ValueError, match=f"{name}: (continual|transfer) recipes train in fp32 only"):
            train(get_entry(name), tmp_path / "run", bf16, console=Console(quiet=True))


def test_progress_is_one_line_per_epoch_when_stderr_is_not_a_terminal(tmp_path):
    result = CliRunner().invoke(app, ["train", DIGITS_MODEL, "--epochs", "2", "--out", str(tmp_path)])
    assert result.exit_code == 0, result.output
    note, *lines = result.stderr.splitlines()
    assert note == f"{DIGITS_MODEL}: 1 torch thread(s), as the shipped {DIGITS_MODEL} (--threads to change)"
    figures = r"loss \d\.\d{4}, accuracy \d+\.\d\d %, \d+\.\d s, ETA \d:\d\d:\d\d"
    pattern = rf"{DIGITS_MODEL} epoch (\d)/2: {figures}"
    assert [re.fullmatch(pattern, line).group(1) for line in lines] == ["1", "2"], lines
    history = json.loads((tmp_path / "metrics.json").read_text())["history"]
    assert f"loss {history[1]['loss']:.4f}, accuracy {100 * history[1]['accuracy']:.2f} %" in lines[1]
    assert "clean accuracy" in result.stdout and "clean accuracy" not in result.stderr


def test_the_recorded_thread_count_is_applied_and_restored(tmp_path, digits, monkeypatch):
    """The shipped model was trained with 1 thread: `zoo train NAME` uses 1 whatever torch's default;
    a resumed run uses its own count; --threads overrides both; the caller's count is restored."""
    assert get_entry(DIGITS_MODEL).metrics["torch_threads"] == 1
    previous = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        console = Console(record=True, width=300)
        options = RunOptions(epochs=1, progress=False)
        shipped = train(get_entry(DIGITS_MODEL), tmp_path / "a", options, data=digits, console=console)
        assert shipped.metrics["torch_threads"] == 1 and torch.get_num_threads() == 2
        assert f"{DIGITS_MODEL}: 1 torch thread(s), as the shipped {DIGITS_MODEL}" in console.export_text()

        real_save = trainer.save_state

        def save_then_stop(*args, **state):
            real_save(*args, **state)
            raise KeyboardInterrupt

        monkeypatch.setattr(trainer, "save_state", save_then_stop)
        two = RunOptions(epochs=2, threads=2, progress=False)
        with pytest.raises(KeyboardInterrupt):
            train(get_entry(DIGITS_MODEL), tmp_path / "b", two, data=digits, console=Console(quiet=True))
        assert torch.get_num_threads() == 2
        monkeypatch.setattr(trainer, "save_state", real_save)
        torch.set_num_threads(1)
        console = Console(record=True, width=300)
        resume = RunOptions(epochs=2, resume=True, progress=False)
        resumed = train(get_entry(DIGITS_MODEL), tmp_path / "b", resume, data=digits, console=console)
        assert resumed.metrics["torch_threads"] == 2 and torch.get_num_threads() == 1
        assert "2 torch thread(s), as the run being resumed" in console.export_text()
    finally:
        torch.set_num_threads(previous)


def test_a_recipe_chooses_how_its_activations_compute_min_max():
    """Bit-for-bit reproduction of a shipped model needs the min / max its recipe was trained with."""
    for name, expected in [("orthoconv_xs.fashion_mnist", True), ("lipconv_s.digits_ar1", False)]:
        entry = get_entry(name)
        assert entry.recipe.minmax_through_relu is expected
        sorting = [m for m in build_model(entry).modules() if isinstance(m, GroupSort | MaxMin)]
        assert sorting and all(m.minmax_through_relu is expected for m in sorting)
