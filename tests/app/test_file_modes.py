"""Every file the project writes gets the permissions that ``open()`` gives under the caller's umask:
a model deployed by one user must be readable by a server running as another when the umask says so."""

from __future__ import annotations

import os
import stat
from collections.abc import Iterator
from pathlib import Path

import pytest
from typer.testing import CliRunner

from zoo.app.cli import app
from zoo.checkpoint import atomic_write_bytes

runner = CliRunner()


@pytest.fixture(params=[0o022, 0o077], ids=["umask 0022", "umask 0077"])
def umask(request) -> Iterator[int]:
    previous = os.umask(request.param)
    yield request.param
    os.umask(previous)


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_a_new_file_gets_0666_less_the_umask(tmp_path, umask):
    path = tmp_path / "new" / "file.bin"
    atomic_write_bytes(path, b"data")
    assert path.read_bytes() == b"data"
    assert _mode(path) == 0o666 & ~umask
    assert _mode(path.parent) == 0o777 & ~umask
    assert [p.name for p in path.parent.iterdir()] == ["file.bin"]  # no temporary file left behind


def test_a_replaced_file_keeps_its_permissions(tmp_path, umask):
    path = tmp_path / "file.bin"
    path.write_bytes(b"old")
    path.chmod(0o640)
    atomic_write_bytes(path, b"new")
    assert path.read_bytes() == b"new" and _mode(path) == 0o640


@pytest.mark.slow
def test_train_export_and_report_write_every_file_under_the_umask(tmp_path, umask, one_torch_thread):
    run, exported, cards = tmp_path / "run", tmp_path / "export", tmp_path / "cards"
    formats = ["--onnx", "--torchscript", "--pt2", "--triton"]
    commands = [
        ["train", "lipconv_s.digits_hkr", "--epochs", "1", "--out", str(run), "--no-progress"],
        ["export", str(run / "model.safetensors"), *formats, "--out", str(exported), "--no-progress"],
        ["report", str(run / "model.safetensors"), "--out", str(cards)],
    ]
    for command in commands:
        result = runner.invoke(app, command, catch_exceptions=False)
        assert result.exit_code == 0, result.output
    files = [p for p in tmp_path.rglob("*") if p.is_file()]
    names = {p.name for p in files}
    expected = {"model.safetensors", "metrics.json", "train_state.pt", "model.onnx", "model.ts.pt"}
    assert expected | {"model.pt2", "config.pbtxt", "model.pt", "model.safetensors.md"} <= names, names
    assert {str(p.relative_to(tmp_path)): oct(_mode(p)) for p in files if _mode(p) != 0o666 & ~umask} == {}
    directories = [p for p in tmp_path.rglob("*") if p.is_dir()]
    assert all(_mode(p) == 0o777 & ~umask for p in directories), [(p, oct(_mode(p))) for p in directories]
