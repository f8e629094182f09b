"""The CLI facing files of unknown origin: pins by sha256, and every refusal is one line naming the file."""

from __future__ import annotations

import hashlib

from typer.testing import CliRunner

from zoo.app.cli import app

runner = CliRunner()


def test_certify_expect_sha256_pins_the_file(short_run):
    path = str(short_run.checkpoint)
    sha = hashlib.sha256(short_run.checkpoint.read_bytes()).hexdigest()
    result = runner.invoke(app, ["certify", path, "--json", "--expect-sha256", sha])
    assert result.exit_code == 0, result.output
    result = runner.invoke(app, ["certify", path, "--expect-sha256", "ab" * 32])
    assert result.exit_code == 1
    assert result.stderr.strip().splitlines() == [
        f"error: {path}: its sha256 is {sha}, not the expected {'ab' * 32}"
    ]


def test_a_refusal_is_one_line_and_markup_in_it_is_printed_as_is(tmp_path):
    import torch
    from safetensors.torch import save_file

    path = tmp_path / "[bold]odd.safetensors"
    save_file({"w": torch.zeros(1)}, path, metadata={"zoo": "{\n"})
    result = runner.invoke(app, ["certify", str(path)])
    assert result.exit_code == 1
    (line,) = result.stderr.strip().splitlines()
    assert line.startswith(f"error: {path}: malformed 'zoo' metadata (the 'zoo' metadata is not valid JSON")
