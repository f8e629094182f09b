"""The output directory of `zoo train`: one run at a time (the lock names its holder; a killed
holder's lock is taken over), a read-only --out fails before training, what killed writes left is
cleaned, and a diverged loss stops the run with a clear error."""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import textwrap
import time
from pathlib import Path

import pytest
import yaml
from rich.console import Console
from typer.testing import CliRunner

from training import trainer
from training.divergence import DivergenceGuard, TrainingDivergedError
from training.lock import LOCK_FILE, RunDirectoryError
from training.trainer import STATE_FILE, RunOptions, train
from zoo.app.cli import app
from zoo.registry import get_entry

DIGITS_MODEL = "lipconv_s.digits_hkr"


def invoke(*args: str):
    result = CliRunner().invoke(app, list(args))
    return result.exit_code, " ".join(result.stderr.split())


class DataRequested(Exception):
    """Raised by a stand-in data loader: the run got past everything it does before loading data."""


@pytest.fixture
def stop_at_data(monkeypatch):
    def load_dataset(*args):
        raise DataRequested

    monkeypatch.setattr(trainer, "load_dataset", load_dataset)


def holder_pid(out: Path) -> int | None:
    try:
        return json.loads((out / LOCK_FILE).read_text())["pid"]
    except (OSError, ValueError, KeyError):
        return None


def test_a_second_run_into_the_same_out_is_refused_naming_the_first_and_a_killed_one_is_taken_over(
    tmp_path, stop_at_data
):
    out = tmp_path / "run"
    first = subprocess.Popen(
        [sys.executable, "-m", "zoo", "train", DIGITS_MODEL, "--out", str(out)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + 120
        while holder_pid(out) != first.pid:
            assert first.poll() is None and time.monotonic() < deadline, "the first run never held --out"
            time.sleep(0.02)
        code, message = invoke("train", DIGITS_MODEL, "--out", str(out), "--resume")
        assert code == 1
        holder = f"(pid {first.pid} on host {socket.gethostname()}, since"
        assert f"error: {out} is in use by another zoo train {holder}" in message
        assert "choose another --out" in message
    finally:
        os.kill(first.pid, signal.SIGKILL)
        first.wait()

    # The killed run's lock file is still there, but no process holds it any more.
    assert holder_pid(out) == first.pid
    console = Console(record=True, width=300)
    with pytest.raises(DataRequested):
        train(get_entry(DIGITS_MODEL), out, RunOptions(resume=True), console=console)
    text = console.export_text()
    assert f"the run that held it (pid {first.pid} on host" in text and "ended without releasing it" in text
    assert not (out / LOCK_FILE).exists()  # released on the way out


def test_one_process_cannot_hold_a_run_directory_twice(tmp_path, digits, monkeypatch):
    """The lock is per open file: a second run in the same process (a test, a notebook) is refused too."""
    inner = []

    def load_dataset(*args):
        try:
            train(
                get_entry(DIGITS_MODEL),
                tmp_path,
                RunOptions(epochs=1),
                data=digits,
                console=Console(quiet=True),
            )
        except RunDirectoryError as error:
            inner.append(str(error))
        raise KeyboardInterrupt

    monkeypatch.setattr(trainer, "load_dataset", load_dataset)
    with pytest.raises(KeyboardInterrupt):
        train(get_entry(DIGITS_MODEL), tmp_path, RunOptions(epochs=1), console=Console(quiet=True))
    assert len(inner) == 1 and f"(pid {os.getpid()} on host" in inner[0]
    assert not (tmp_path / LOCK_FILE).exists()  # released by the outer run on its way out


def _attempt_in_unprivileged_child(function) -> str:
    """Run ``function`` in a forked child that cannot override file permissions (root drops to
    nobody there); returns the message of the exception it raised, or '' if none."""
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: report, then leave without running pytest's exit handlers
        os.close(read)
        message = ""
        try:
            if os.geteuid() == 0:
                os.setgid(65534)
                os.setuid(65534)
            function()
        except BaseException as error:
            message = f"{type(error).__name__}: {error}"
        os.write(write, message.encode())
        os._exit(0)
    os.close(write)
    with os.fdopen(read, "rb") as pipe:
        message = pipe.read().decode()
    os.waitpid(pid, 0)
    return message


@pytest.fixture
def world_reachable_dir():
    """A directory every user can reach (pytest's tmp_path is under a root-only directory)."""
    path = Path(tempfile.mkdtemp())
    path.chmod(0o755)
    yield path
    for child in path.iterdir():
        child.chmod(0o755)
    shutil.rmtree(path)


def test_a_read_only_out_fails_before_training(world_reachable_dir, stop_at_data):
    out = world_reachable_dir / "read_only"
    out.mkdir()
    out.chmod(0o555)
    message = _attempt_in_unprivileged_child(
        lambda: train(get_entry(DIGITS_MODEL), out, RunOptions(epochs=1), console=Console(quiet=True))
    )
    assert message == f"RunDirectoryError: cannot write to {out}: Permission denied"
    assert list(out.iterdir()) == []


def test_the_unfinished_writes_of_a_killed_run_are_removed(tmp_path, stop_at_data):
    # Kill a process in the middle of writing the training state (after the bytes, before the rename).
    killed_write = textwrap.dedent(
        f"""
        import os, signal
        from zoo.checkpoint import atomic_write_bytes
        os.replace = lambda *args: os.kill(os.getpid(), signal.SIGKILL)
        atomic_write_bytes({str(tmp_path / STATE_FILE)!r}, b"partial")
        """
    )
    assert subprocess.run([sys.executable, "-c", killed_write]).returncode == -signal.SIGKILL
    (orphan,) = tmp_path.glob(f".{STATE_FILE}.*.tmp")
    unrelated = tmp_path / ".notes.tmp"  # not a name the atomic writer makes: left alone
    unrelated.write_text("mine")

    console = Console(record=True, width=300)
    with pytest.raises(DataRequested):
        train(get_entry(DIGITS_MODEL), tmp_path, console=console)
    assert f"removed the unfinished writes of a killed run: {orphan.name}" in console.export_text()
    assert not orphan.exists() and unrelated.read_text() == "mine"


def test_a_diverging_loss_stops_the_run_with_one_clear_line(tmp_path, monkeypatch):
    entry = get_entry(DIGITS_MODEL).model_dump(mode="json", exclude={"name"})
    entry["recipe"]["optimizer"]["lr"] = 1e30
    for shipped in ("checkpoint", "sha256", "certificate", "metrics"):
        entry.pop(shipped, None)
    registry = tmp_path / "models.yaml"
    registry.write_text(yaml.safe_dump({"models": {"lipconv_s.digits_lr1e30": entry}}))
    monkeypatch.setenv("ZOO_MODELS_YAML", str(registry))

    code, message = invoke(
        "train", "lipconv_s.digits_lr1e30", "--out", str(tmp_path / "run"), "--no-progress"
    )
    assert code == 1
    assert message.startswith("error: lipconv_s.digits_lr1e30: training diverged in epoch 1: loss ")
    assert "lower the learning rate (the recipe's is 1e+30)" in message
    assert not (tmp_path / "run" / "model.safetensors").exists()


def test_the_divergence_guard():
    guard = DivergenceGuard("m", lr=0.1)
    for loss in (12.0, 30.0, -5.0, 11_999.0):  # up to 1000 times the first loss
        guard.check(loss, "epoch 1")
    with pytest.raises(
        TrainingDivergedError, match=r"m: training diverged in epoch 2: loss 1\.2e\+04 \(it started at 12"
    ):
        guard.check(12_001.0, "epoch 2")
    with pytest.raises(TrainingDivergedError, match="loss nan"):
        guard.check(float("nan"), "epoch 2")
    small = DivergenceGuard("m", lr=0.1)
    small.check(-0.001, "epoch 1")
    small.check(999.0, "epoch 1")  # the limit is at least 1000
    never = DivergenceGuard("m", lr=0.1)
    with pytest.raises(TrainingDivergedError, match="it was never finite"):
        never.check(float("inf"), "experience 1")
