"""The `zoo` command line end to end: train a short run, certify, export, run the ONNX file."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest
import torch
from typer.testing import CliRunner

import zoo
from zoo.app.benches import BenchmarkNotFoundError, find_benchmarks
from zoo.app.cli import app

runner = CliRunner()


def invoke(*args: str):
    return runner.invoke(app, list(args), catch_exceptions=False)


def test_train_certify_export_and_run_in_onnxruntime(tmp_path, digits):
    out = tmp_path / "run"
    result = invoke("train", "lipconv_s.digits_hkr", "--epochs", "2", "--out", str(out), "--no-progress")
    assert result.exit_code == 0, result.output
    assert "clean accuracy" in result.output and "certified accuracy, eps 0.5" in result.output
    checkpoint = out / "model.safetensors"

    result = invoke("certify", str(checkpoint), "--json")
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    loaded = zoo.load(checkpoint)
    assert report["lipschitz_bound"] == loaded.certificate.lipschitz_bound
    assert [layer["op"] for layer in report["layers"]][:2] == ["Conv2d", "GroupSort2"]

    result = invoke("export", str(checkpoint), "--onnx", "--torchscript", "--out", str(tmp_path / "art"))
    assert result.exit_code == 0, result.output
    onnx_path = tmp_path / "art" / "model.onnx"
    session = ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
    assert [i.name for i in session.get_inputs()] == ["input"]
    assert [o.name for o in session.get_outputs()] == ["logits"]
    metadata = session.get_modelmeta().custom_metadata_map
    assert json.loads(metadata["zoo.certificate"])["lipschitz_bound"] == report["lipschitz_bound"]
    (onnx_logits,) = session.run(["logits"], {"input": digits.x_test.numpy()})  # batch 450: dynamic
    with torch.no_grad():
        torch_logits = loaded.model(digits.x_test).numpy()
    np.testing.assert_allclose(onnx_logits, torch_logits, atol=1e-5, rtol=0)
    assert np.array_equal(onnx_logits.argmax(1), torch_logits.argmax(1))


def test_list_and_info_read_the_registry():
    result = invoke("list")
    assert result.exit_code == 0 and "lipconv_s.digits_hkr" in result.output
    result = invoke("info", "lipconv_s.digits_hkr", "--json")
    assert result.exit_code == 0
    assert json.loads(result.stdout)["recipe"]["dataset"] == "digits"


def test_errors_are_one_clear_line_and_a_non_zero_exit(tmp_path):
    result = invoke("info", "no.such_model")
    assert result.exit_code == 1 and "no model named 'no.such_model'" in result.stderr
    result = invoke("certify", str(tmp_path / "missing.safetensors"))
    assert result.exit_code == 1 and "no such checkpoint" in result.stderr
    result = invoke("export", "lipconv_s.digits_hkr", "--out", str(tmp_path))
    assert result.exit_code == 2 and "choose at least one format" in result.stderr
    if not torch.cuda.is_available():
        result = invoke("train", "lipconv_s.digits_hkr", "--device", "cuda", "--out", str(tmp_path))
        assert result.exit_code == 1 and "CUDA is not available" in result.stderr


def test_bench_lists_the_scripts_of_bench_and_runs_one_with_its_arguments(capfd):
    scripts = sorted(
        p.stem.removeprefix("bench_") for p in (Path(__file__).parents[2] / "bench").glob("bench_*.py")
    )
    result = invoke("bench")
    assert result.exit_code == 0, result.output
    listed = [line.split("│")[1].strip() for line in result.output.splitlines() if line.startswith("│ ")]
    assert [name for name in listed if name] == scripts
    assert "Training-step time of each 1-Lipschitz layer family" in " ".join(result.output.split())
    capfd.readouterr()

    result = invoke("bench", "conv_bounds", "--", "--help")  # the script's own help, through argparse
    assert result.exit_code == 0
    assert "usage: bench_conv_bounds.py" in capfd.readouterr().out
    result = invoke("bench", "conv_bounds", "--bogus")  # the script's exit code is the command's
    assert result.exit_code == 2
    assert "unrecognized arguments: --bogus" in capfd.readouterr().err

    result = invoke("bench", "nope")
    assert result.exit_code == 1
    assert f"no benchmark 'nope'; known: {', '.join(scripts)}" in " ".join(result.stderr.split())


def test_bench_outside_a_source_checkout_says_so(tmp_path):
    with pytest.raises(BenchmarkNotFoundError, match="runs the scripts of a source checkout"):
        find_benchmarks(tmp_path / "bench")
