"""The .pt2 writer and the Triton model repository, from a certified digits checkpoint."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
from google.protobuf import text_format
from tritonclient.grpc import model_config_pb2
from typer.testing import CliRunner

import zoo
from export.pipeline import export_model
from export.triton import verify_triton_repository
from export.verify import VerificationError, verify_pt2
from zoo.app.cli import app


@pytest.fixture(scope="module")
def exported(short_run, tmp_path_factory):
    out = tmp_path_factory.mktemp("formats")
    certified = zoo.load(short_run.checkpoint)
    return certified, export_model(certified, out, onnx=True, torchscript=True, pt2=True, triton=True)


def test_pt2_round_trip_and_verification(exported, digits):
    certified, checks = exported
    (pt2,) = [c for c in checks if c.format == "pt2"]
    program = torch.export.load(pt2.path)
    with torch.no_grad():
        torch.testing.assert_close(program.module()(digits.x_test[:37]), certified.model(digits.x_test[:37]))
    report = verify_pt2(pt2.path)
    assert report.ok and report.lipschitz_bound == pytest.approx(
        certified.certificate.lipschitz_bound, rel=1e-9
    )


def test_triton_repository_layout_and_config(exported):
    certified, checks = exported
    model_dirs = {c.path.name: c.path for c in checks if c.format == "triton"}
    assert set(model_dirs) == {"model_onnx", "model_torchscript"}
    sources = {c.format: c.path for c in checks}
    assert (model_dirs["model_onnx"] / "1" / "model.onnx").read_bytes() == sources["onnx"].read_bytes()
    assert (model_dirs["model_torchscript"] / "1" / "model.pt").read_bytes() == sources[
        "torchscript"
    ].read_bytes()
    for name, platform, tensors in [
        ("model_onnx", "onnxruntime_onnx", ("input", "logits")),
        ("model_torchscript", "pytorch_libtorch", ("INPUT__0", "OUTPUT__0")),
    ]:
        config = text_format.Parse(
            (model_dirs[name] / "config.pbtxt").read_text(), model_config_pb2.ModelConfig()
        )
        assert config.name == name and config.platform == platform and config.max_batch_size == 256
        assert (config.input[0].name, config.output[0].name) == tensors
        assert list(config.input[0].dims) == [1, 8, 8] and list(config.output[0].dims) == [10]
        assert config.input[0].data_type == model_config_pb2.TYPE_FP32
        assert config.dynamic_batching.max_queue_delay_microseconds == 100
        assert config.instance_group[0].kind == model_config_pb2.ModelInstanceGroup.KIND_GPU
        bound = float(config.parameters["zoo.lipschitz_bound"].string_value)
        assert bound == certified.certificate.lipschitz_bound


def test_triton_needs_a_servable_format(short_run, tmp_path):
    with pytest.raises(ValueError, match="Triton repository"):
        export_model(
            zoo.load(short_run.checkpoint), tmp_path, onnx=False, torchscript=False, pt2=True, triton=True
        )


def test_triton_options_from_the_command_line(short_run, tmp_path):
    out = tmp_path / "cpu"
    command = ["export", str(short_run.checkpoint), "--onnx", "--triton", "--out", str(out)]
    result = CliRunner().invoke(app, [*command, "--triton-instances", "cpu", "--triton-max-batch", "64"])
    assert result.exit_code == 0, result.output
    config = text_format.Parse(
        (out / "triton" / "model_onnx" / "config.pbtxt").read_text(), model_config_pb2.ModelConfig()
    )
    assert config.instance_group[0].kind == model_config_pb2.ModelInstanceGroup.KIND_CPU
    assert config.max_batch_size == 64

    command[-1] = str(tmp_path / "tpu")
    result = CliRunner().invoke(app, [*command, "--triton-instances", "tpu"], env={"COLUMNS": "200"})
    assert result.exit_code == 2 and "'tpu' is not one of 'gpu', 'cpu'" in result.stderr
    assert not (tmp_path / "tpu").exists()  # refused before anything was written


def test_choice_options_are_listed_in_the_help_and_checked():
    help_text = CliRunner().invoke(app, ["train", "--help"], env={"COLUMNS": "200"}).output
    assert "<cpu|cuda>" in help_text and "<fp32|bf16>" in help_text
    result = CliRunner().invoke(
        app, ["train", "lipconv_s.digits_hkr", "--precision", "fp16"], env={"COLUMNS": "200"}
    )
    assert result.exit_code == 2 and "'fp16' is not one of 'fp32', 'bf16'" in result.stderr


def test_a_triton_repository_is_verified_file_by_file_with_its_configs(exported, tmp_path):
    certified, checks = exported
    repository = next(c.path for c in checks if c.format == "triton").parent
    reports = verify_triton_repository(repository)
    assert [Path(r.artifact).relative_to(repository).as_posix() for r in reports] == [
        "model_onnx/1/model.onnx",
        "model_torchscript/1/model.pt",
    ]
    assert all(r.ok and r.embedded == certified.certificate for r in reports)

    copy = shutil.copytree(repository, tmp_path / "repository")
    config = copy / "model_torchscript" / "config.pbtxt"
    bound = repr(certified.certificate.lipschitz_bound)
    config.write_text(config.read_text().replace(f'"{bound}"', '"0.5"'))
    result = CliRunner().invoke(app, ["verify", str(copy), "--json", "--no-progress"])
    assert result.exit_code == 1
    answer = json.loads(result.stdout)
    assert answer["ok"] is False and [m["ok"] for m in answer["models"]] == [True, False]
    assert f"says a bound of 0.5, the file's certificate {bound}" in " ".join(result.stderr.split())

    with pytest.raises(VerificationError, match="no Triton model in it"):
        verify_triton_repository(tmp_path / "repository" / "model_onnx" / "1")
