"""What the `zoo` commands print: readable at 80 columns (the width when output is redirected), names
and paths whole, the same digits everywhere, and messages that say what to do."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
from rich.console import Console
from typer.testing import CliRunner

from zoo.app import cli
from zoo.registry import load_registry

runner = CliRunner()
MODEL = "lipconv_s.digits_hkr"


def invoke(*args: str):
    return runner.invoke(cli.app, list(args), catch_exceptions=False)


@pytest.fixture
def width(monkeypatch, request) -> int:
    """The CLI's console at a fixed width (80 unless parametrized), as when output is redirected."""
    columns = getattr(request, "param", 80)
    monkeypatch.setattr(cli, "console", Console(width=columns))
    return columns


def _lines(text: str) -> list[str]:
    return [line.rstrip() for line in text.splitlines()]


def test_list_redirected_is_80_columns_wide_with_every_name_whole():
    environment = {key: value for key, value in os.environ.items() if key != "COLUMNS"}
    result = subprocess.run(
        [sys.executable, "-m", "zoo", "list"], capture_output=True, text=True, env=environment, check=True
    )
    lines = _lines(result.stdout)
    assert max(map(len, lines)) <= 80
    assert "…" not in result.stdout
    registry = load_registry()
    for name, entry in registry.items():
        (row,) = [line for line in lines if line.split() and line.split()[0] == name]
        bound = (entry.certificate or {}).get("lipschitz_bound")
        assert row.split()[1] == ("-" if bound is None else f"{bound:.4f}")
    assert "digits" in lines and "cifar10" in lines  # rows grouped under their dataset


@pytest.mark.parametrize("width", [40], indirect=True)
def test_list_too_narrow_for_a_table_prints_one_block_per_model(width):
    result = invoke("list")
    assert result.exit_code == 0, result.output
    lines = _lines(result.output)
    for name, entry in load_registry().items():
        start = lines.index(name)  # the name alone on its line, whole
        clean = (entry.metrics or {}).get("clean_accuracy")
        expected = "-" if clean is None else f"{100 * clean:.1f}"
        assert f"  clean %: {expected}" in lines[start + 1 : start + 5]


def test_list_and_info_print_json_on_request():
    result = invoke("list", "--json")
    assert result.exit_code == 0
    registry = load_registry()
    assert json.loads(result.stdout) == [entry.model_dump(mode="json") for entry in registry.values()]
    result = invoke("info", MODEL, "--json")
    assert json.loads(result.stdout) == registry[MODEL].model_dump(mode="json")


def test_info_is_human_readable_by_default(width):
    entry = load_registry()[MODEL]
    result = invoke("info", MODEL)
    assert result.exit_code == 0, result.output
    lines = _lines(result.output)
    assert max(map(len, lines)) <= 80
    fields = {line[:16].strip(): line[16:] for line in lines if line[:1].strip()}
    assert lines[0] == MODEL
    assert fields["file sha256"] == entry.sha256
    assert fields["weights sha256"] == entry.certificate["weights_sha256"]
    assert fields["bound"].startswith(f"{entry.certificate['lipschitz_bound']} (certified")
    assert fields["clean accuracy"] == f"{100 * entry.metrics['clean_accuracy']:.1f} %"
    assert fields["recipe"].startswith("dataset digits, loss hkr (alpha 50.0, margin 0.2)")
    result = invoke("info", "lipconv_m.mnist_hkr")  # a recipe without weights says how to get them
    assert "none shipped: a recipe (zoo train lipconv_m.mnist_hkr trains it)" in result.output


def test_certify_fits_80_columns(width):
    result = invoke("certify", MODEL)
    assert result.exit_code == 0, result.output
    lines = _lines(result.output)
    assert max(map(len, lines)) <= 80
    assert lines[0] == f"certificate of {MODEL}: bound of each layer"
    assert [line.split()[1] for line in lines[3:15]][:2] == ["Conv2d", "GroupSort2"]


@pytest.mark.slow
def test_export_and_verify_print_whole_paths_and_the_same_digits(width, tmp_path):
    out = tmp_path / ("a-directory-name-long-enough-that-no-table-row-could-hold-it-at-80-columns" * 2)
    formats = ["--onnx", "--torchscript", "--triton"]
    result = invoke("export", MODEL, *formats, "--out", str(out), "--no-progress")
    assert result.exit_code == 0, result.output
    lines = _lines(result.output)
    written = [out / "model.onnx", out / "model.ts.pt", out / "triton" / "model_onnx"]
    for path in written:
        assert str(path) in lines  # the path whole on its own line
    certified = cli.load(MODEL)
    bound = f"{certified.certificate.lipschitz_bound:.6f}"
    assert (
        lines.count(f"  checks: certificate embedded, read back; bound recomputed from the file: {bound}")
        == 2
    )

    result = invoke("verify", str(out / "model.onnx"), "--no-progress")
    assert result.exit_code == 0, result.output
    lines = _lines(result.output)
    assert lines[0] == f"{out / 'model.onnx'}: bounds recomputed from the file (cumulative, from the input)"
    recomputed = lines[-2].split()[-1]  # the last layer's cumulative bound is the file's bound
    assert lines[-1] == f"verified: bound {recomputed} recomputed from the file <= certificate {bound}"
    assert float(recomputed) <= float(bound)

    result = invoke("verify", str(out / "triton"), "--no-progress")
    assert result.exit_code == 0, result.output
    message = f"verified: the 2 model files of {out / 'triton'}, each within its certificate"
    assert _lines(result.output)[-1] == message


def test_triton_alone_says_it_needs_onnx_or_torchscript(tmp_path):
    for formats in (["--triton"], ["--triton", "--pt2"]):
        result = invoke("export", MODEL, *formats, "--out", str(tmp_path))
        assert result.exit_code == 2
        expected = "--triton builds its repository from the verified ONNX or TorchScript file: add --onnx"
        assert expected in result.stderr
    assert not any(tmp_path.iterdir())


@pytest.mark.parametrize("command", ["certify", "export"])
def test_an_exported_file_given_for_a_checkpoint_points_to_verify(command, tmp_path):
    exported = tmp_path / "model.onnx"
    exported.write_bytes(b"\x08\x07")  # the start of an ONNX protobuf; never read
    result = invoke(
        command, str(exported), *(["--onnx", "--out", str(tmp_path)] if command == "export" else [])
    )
    assert result.exit_code == 1
    assert result.stderr.strip() == (
        f"error: {exported} is an exported model, not a checkpoint (zoo {command} reads a .safetensors "
        f"checkpoint or a model name): `zoo verify {exported}` recomputes its bound"
    )
    result = invoke(
        command, str(tmp_path), *(["--onnx", "--out", str(tmp_path)] if command == "export" else [])
    )
    assert result.exit_code == 1 and "is an exported model" in result.stderr  # a Triton repository


@pytest.mark.parametrize(
    ("command", "usage"),
    [
        ("info", "{NAME}"),
        ("train", "{NAME}"),
        ("certify", "{NAME|CHECKPOINT}"),
        ("export", "{NAME|CHECKPOINT}"),
        ("verify", "{ARTIFACT}"),
        ("report", "{NAME|CHECKPOINT|ARTIFACT}"),
        ("serve", "{ARTIFACT|CHECKPOINT|NAME}"),
        ("ship", "{NAME} {RUN_DIR}"),
        ("bench", "[NAME]"),
    ],
)
def test_usage_lines_name_the_arguments(command, usage):
    result = runner.invoke(cli.app, [command, "--help"], prog_name="zoo")
    assert result.exit_code == 0
    (line,) = [line for line in result.output.splitlines() if "Usage:" in line]
    assert line.split() == ["Usage:", "zoo", command, "[OPTIONS]", *usage.split()]


def test_help_reflows_docstring_paragraphs_to_the_terminal():
    """The docstrings are wrapped at the source's line length; the terminal's width decides the help's."""
    result = runner.invoke(cli.app, ["verify", "--help"], prog_name="zoo", env={"COLUMNS": "300"})
    assert result.exit_code == 0
    assert "no file can be written (Landlock), and it is stopped at --timeout seconds" in result.output
