"""The CLI facing files of unknown origin: pins by sha256, and every refusal is one line naming the file."""

from __future__ import annotations

import hashlib
import json
import sys

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


def _one_line_error(result, *, mentions: str) -> str:
    """The single stderr line of a refused command (exit code 1)."""
    assert result.exit_code == 1, result.output
    (line,) = result.stderr.strip().splitlines()
    assert line.startswith("error: ") and mentions in line, line
    return line


def _tiny_onnx(path):
    from torch import nn

    from export.writers import write_onnx
    from zoo.certify import certify

    model = nn.Sequential(nn.Flatten(), nn.Linear(16, 3)).eval()
    return write_onnx(model, certify(model, (1, 4, 4)), path)


def test_verify_expect_sha256_pins_the_file(tmp_path):
    path = _tiny_onnx(tmp_path / "model.onnx")
    sha = hashlib.sha256(path.read_bytes()).hexdigest()
    result = runner.invoke(app, ["verify", str(path), "--expect-sha256", sha, "--json", "--no-progress"])
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["artifact"] == str(path)  # the private copy verified is not named
    line = _one_line_error(
        runner.invoke(app, ["verify", str(path), "--expect-sha256", "0" * 64]), mentions=str(path)
    )
    assert "its sha256 is" in line and f"not the expected {'0' * 64}" in line
    line = _one_line_error(
        runner.invoke(app, ["verify", str(tmp_path), "--expect-sha256", "0" * 64]), mentions="--expect-sha256"
    )
    assert "are for one file, not a repository" in line


def test_serve_refuses_garbage_and_nan_certificates_at_startup_in_one_line(tmp_path):
    import re

    import onnx

    garbage = tmp_path / "garbage.onnx"
    garbage.write_bytes(b"garbage")
    line = _one_line_error(runner.invoke(app, ["serve", str(garbage)]), mentions=str(garbage))
    assert "not a readable ONNX file" in line
    model = onnx.load(_tiny_onnx(tmp_path / "model.onnx"))
    (entry,) = model.metadata_props
    entry.value = re.sub(r'"lipschitz_bound":[^,]+', '"lipschitz_bound":NaN', entry.value)
    nan = tmp_path / "nan.onnx"
    nan.write_bytes(model.SerializeToString())
    line = _one_line_error(runner.invoke(app, ["serve", str(nan)]), mentions=str(nan))
    assert "the certificate holds NaN, which is not a number" in line


def test_triton_commands_name_the_triton_extra_when_it_is_missing(tmp_path, monkeypatch):
    for module in ("tritonclient", "tritonclient.grpc", "tritonclient.grpc.model_config_pb2"):
        monkeypatch.setitem(sys.modules, module, None)  # as if tritonclient were not installed
    out = tmp_path / "out"
    result = runner.invoke(app, ["export", "lipmlp_s.digits_hkr", "--onnx", "--triton", "--out", str(out)])
    assert result.exit_code == 1 and not out.exists()  # refused before anything was written
    assert "zoo export needs the 'triton' extra" in result.stderr and "lipschitz-zoo[triton]" in result.stderr
    result = runner.invoke(app, ["verify", str(tmp_path)])
    assert result.exit_code == 1 and "zoo verify needs the 'triton' extra" in result.stderr
