"""config.pbtxt is Triton's ModelConfig in protobuf text format, read here as Triton reads it: a
false bound is caught in every spelling Triton accepts, and a repository holding anything this
cannot verify (another backend, another file served) is refused."""

from __future__ import annotations

import re
import shutil
from pathlib import Path

import pytest
from google.protobuf import text_format
from torch import nn
from tritonclient.grpc import model_config_pb2

from export.propagation import VerificationError
from export.triton import read_model_config, verify_triton_repository, write_triton_repository
from export.writers import write_onnx
from zoo.certify import certify


@pytest.fixture(scope="module")
def repository(tmp_path_factory) -> Path:
    model = nn.Sequential(nn.Flatten(), nn.Linear(16, 3)).eval()
    certificate = certify(model, (1, 4, 4))
    root = tmp_path_factory.mktemp("triton")
    onnx_file = write_onnx(model, certificate, root / "model.onnx")
    write_triton_repository(root / "repository", "tiny", {"onnx": onnx_file}, certificate, 3, instances="cpu")
    return root / "repository"


def _copy(repository: Path, target: Path) -> Path:
    return shutil.copytree(repository, target)


def test_the_written_config_is_a_model_config(repository):
    config = read_model_config(repository / "tiny_onnx" / "config.pbtxt")
    assert config.name == "tiny_onnx" and config.platform == "onnxruntime_onnx"
    assert list(config.input[0].dims) == [1, 4, 4] and list(config.output[0].dims) == [3]
    assert config.instance_group[0].kind == model_config_pb2.ModelInstanceGroup.KIND_CPU
    (report,) = verify_triton_repository(repository)
    assert report.ok
    assert float(config.parameters["zoo.lipschitz_bound"].string_value) == report.embedded.lipschitz_bound
    written = (repository / "tiny_onnx" / "config.pbtxt").read_text()
    assert text_format.MessageToString(config) == written  # writer -> reader -> writer: the same text


SPELLINGS = {  # each says the bound is 0.5 (and the list also repeats the weights hash, SHA)
    "no colon before the brace": 'parameters { key: "zoo.lipschitz_bound" value { string_value: "0.5" } }',
    "single quotes": "parameters { key: 'zoo.lipschitz_bound' value: { string_value: '0.5' } }",
    "a list": 'parameters: [ { key: "zoo.weights_sha256" value { string_value: "SHA" } },\n'
    '{ key: "zoo.lipschitz_bound" value: { string_value: "0.5" } } ]',
    "angle brackets": 'parameters < key: "zoo.lipschitz_bound" value < string_value: "0.5" > >',
}


@pytest.mark.parametrize("spelling", SPELLINGS)
def test_a_false_bound_is_caught_in_every_spelling_triton_accepts(repository, tmp_path, spelling):
    copy = _copy(repository, tmp_path / "repository")
    path = copy / "tiny_onnx" / "config.pbtxt"
    config = read_model_config(path)
    sha = config.parameters["zoo.weights_sha256"].string_value
    del config.parameters["zoo.lipschitz_bound"]
    text = text_format.MessageToString(config) + SPELLINGS[spelling].replace("SHA", sha)
    path.write_text(text)
    config.parameters["zoo.lipschitz_bound"].string_value = "0.5"
    assert read_model_config(path) == config  # every spelling: the same message, holding the lie
    (report,) = verify_triton_repository(copy)
    assert not report.ok
    assert report.problems == (
        f"{path} says a bound of 0.5, the file's certificate {report.embedded.lipschitz_bound!r}",
    )


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        (
            lambda c: setattr(c, "backend", "python"),
            r"platform 'onnxruntime_onnx', backend 'python': not an ONNX",
        ),
        (lambda c: (c.ClearField("platform"), setattr(c, "backend", "python")), "backend 'python'"),
        (lambda c: setattr(c, "platform", "tensorrt_plan"), "platform 'tensorrt_plan'"),
        (
            lambda c: setattr(c, "default_model_filename", "other.onnx"),
            r"1/other\.onnx: missing, and .* serves it",
        ),
        (
            lambda c: setattr(c, "default_model_filename", "model.py"),
            r"serves 'model\.py', not a \.onnx file",
        ),
        (lambda c: setattr(c, "default_model_filename", "../x.onnx"), r"serves '\.\./x\.onnx'"),
        (lambda c: c.cc_model_filenames.update({"7.5": "other.onnx"}), "cc_model_filenames"),
        (
            lambda c: setattr(c, "runtime", "libtriton_evil.so"),
            r"runtime 'libtriton_evil\.so' names the backend",
        ),
        (lambda c: c.model_repository_agents.agents.add(name="checksum"), "repository agents change"),
        (
            lambda c: c.model_operations.op_library_filename.append("libops.so"),
            r"custom operation libraries \['libops\.so'\] load native code",
        ),
    ],
)
def test_a_model_triton_would_serve_from_another_file_or_backend_is_refused(
    repository, tmp_path, edit, message
):
    copy = _copy(repository, tmp_path / "repository")
    path = copy / "tiny_onnx" / "config.pbtxt"
    config = read_model_config(path)
    edit(config)
    path.write_text(text_format.MessageToString(config))
    with pytest.raises(VerificationError, match=message):
        verify_triton_repository(copy)


def test_the_file_triton_serves_is_the_one_verified(repository, tmp_path):
    copy = _copy(repository, tmp_path / "repository")
    path = copy / "tiny_onnx" / "config.pbtxt"
    config = read_model_config(path)
    config.default_model_filename = "served.onnx"
    path.write_text(text_format.MessageToString(config))
    (copy / "tiny_onnx" / "1" / "model.onnx").rename(copy / "tiny_onnx" / "1" / "served.onnx")
    (report,) = verify_triton_repository(copy)
    assert report.ok and report.artifact.endswith("served.onnx")


@pytest.mark.parametrize(
    ("text", "message"),
    [
        (b'name: "x"\nno_such_field: 3\n', r'no field named "no_such_field"'),
        (b'parameters {\n  key: "zoo.lipschitz_bound"\n', r"Expected"),
        (b'name: "\xff"\n', r"can't decode byte 0xff"),
    ],
    ids=["unknown field", "unclosed brace", "not UTF-8"],
)
def test_an_unreadable_config_is_one_line_naming_it(repository, tmp_path, text, message):
    copy = _copy(repository, tmp_path / "repository")
    path = copy / "tiny_onnx" / "config.pbtxt"
    path.write_bytes(text)
    with pytest.raises(VerificationError) as error:
        verify_triton_repository(copy)
    assert str(error.value).startswith(f"{path}: not a valid Triton model configuration (")
    assert re.search(message, str(error.value)) and "\n" not in str(error.value)


def test_unreadable_configs_and_model_directories_without_one_are_refused(repository, tmp_path):
    copy = _copy(repository, tmp_path / "repository")
    path = copy / "tiny_onnx" / "config.pbtxt"
    (copy / "tiny_onnx" / "configs" / "folder.pbtxt").mkdir(parents=True)
    with pytest.raises(VerificationError, match=r"configs/folder\.pbtxt: not a regular file"):
        verify_triton_repository(copy)
    path.unlink()
    with pytest.raises(VerificationError, match=r"tiny_onnx: a model directory without config\.pbtxt"):
        verify_triton_repository(copy)


def _custom_config(repository: Path, tmp_path: Path, edit) -> tuple[Path, Path]:
    """A copy of ``repository`` whose model has ``configs/h100.pbtxt``: its config.pbtxt changed by
    ``edit`` (what Triton serves when started with ``--model-config-name h100``)."""
    copy = _copy(repository, tmp_path / "repository")
    config = read_model_config(copy / "tiny_onnx" / "config.pbtxt")
    edit(config)
    custom = copy / "tiny_onnx" / "configs" / "h100.pbtxt"
    custom.parent.mkdir()
    custom.write_text(text_format.MessageToString(config))
    return copy, custom


def test_a_custom_config_is_checked_like_config_pbtxt(repository, tmp_path):
    copy, custom = _custom_config(repository, tmp_path, lambda c: None)
    (report,) = verify_triton_repository(copy)  # one report per file, whatever serves it
    assert report.ok

    def lie(config) -> None:
        config.parameters["zoo.lipschitz_bound"].string_value = "0.5"

    copy, custom = _custom_config(repository, tmp_path / "lie", lie)
    (report,) = verify_triton_repository(copy)
    assert report.problems == (
        f"{custom} says a bound of 0.5, the file's certificate {report.embedded.lipschitz_bound!r}",
    )


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        (
            lambda c: setattr(c, "backend", "python"),
            r"h100\.pbtxt: platform 'onnxruntime_onnx', backend 'python'",
        ),
        (
            lambda c: setattr(c, "default_model_filename", "other.onnx"),
            r"1/other\.onnx: missing, and .*configs/h100\.pbtxt serves it",
        ),
    ],
    ids=["python backend", "another file"],
)
def test_a_custom_config_serving_something_else_is_refused(repository, tmp_path, edit, message):
    copy, _ = _custom_config(repository, tmp_path, edit)
    with pytest.raises(VerificationError, match=message):
        verify_triton_repository(copy)


@pytest.mark.parametrize("name", ["-1", "2x", "+3", " 4", "5.0"])
def test_a_folder_triton_reads_as_another_version_is_refused(repository, tmp_path, name):
    """Triton reads a version from a folder name with std::stoll ("2x" is 2) and loads version N from
    the folder named N: such a folder's files are not what a version of that number serves."""
    copy = _copy(repository, tmp_path / "repository")
    shutil.copytree(copy / "tiny_onnx" / "1", copy / "tiny_onnx" / name)
    with pytest.raises(VerificationError, match=r"Triton reads a version number from this name"):
        verify_triton_repository(copy)


@pytest.mark.parametrize("name", ["01", "warmup", "initial_state", "notes", "v2"])
def test_folders_triton_never_reads_as_versions_are_left_alone(repository, tmp_path, name):
    copy = _copy(repository, tmp_path / "repository")
    (copy / "tiny_onnx" / name).mkdir()  # no model file in it: it must not be looked for
    (report,) = verify_triton_repository(copy)
    assert report.ok


@pytest.mark.parametrize(
    "where",
    [
        "tiny_onnx/libtriton_onnxruntime.so",  # Triton loads it as the ONNX backend: native code
        "tiny_onnx/1/libtriton_onnxruntime.so",
        "tiny_onnx/1/notes.txt",
        "tiny_onnx/README.md",
    ],
)
def test_a_file_triton_does_not_serve_beside_the_model_is_refused(repository, tmp_path, where):
    copy = _copy(repository, tmp_path / "repository")
    (copy / where).write_bytes(b"\x7fELF")
    with pytest.raises(VerificationError, match=rf"{re.escape(where)}: not a file Triton serves here"):
        verify_triton_repository(copy)


def test_label_files_the_config_names_and_other_folders_are_accepted(repository, tmp_path):
    copy = _copy(repository, tmp_path / "repository")
    path = copy / "tiny_onnx" / "config.pbtxt"
    config = read_model_config(path)
    config.output[0].label_filename = "labels.txt"
    path.write_text(text_format.MessageToString(config))
    (copy / "tiny_onnx" / "labels.txt").write_text("zero\none\ntwo\n")
    (copy / "tiny_onnx" / "warmup").mkdir()
    (copy / "tiny_onnx" / "warmup" / "input").write_bytes(bytes(64))
    (report,) = verify_triton_repository(copy)
    assert report.ok
