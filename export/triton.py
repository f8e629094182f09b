"""Triton Inference Server model repositories for certified artifacts.

Layout (one model per format, version 1)::

    <repo>/<name>_onnx/config.pbtxt         platform "onnxruntime_onnx", tensors input / logits
    <repo>/<name>_onnx/1/model.onnx
    <repo>/<name>_torchscript/config.pbtxt  platform "pytorch_libtorch", tensors INPUT__0 / OUTPUT__0
    <repo>/<name>_torchscript/1/model.pt

``max_batch_size`` > 0, so ``dims`` exclude the batch dimension; dynamic batching is on and the
instance group asks for GPUs (``instances="gpu"``, ``KIND_GPU``) or CPUs (``"cpu"``, a CPU-only
server). The certificate's bound and weights hash are repeated as model parameters so a client can
read them from the model configuration; the authoritative certificate stays inside each model file,
and :func:`verify_triton_repository` checks a deployed repository: every model file from the file
alone, and the configuration's copies against the file's certificate.

config.pbtxt is Triton's ``ModelConfig`` protobuf message in text format, written and read with
protobuf's own text format and the message definition of ``tritonclient`` (the ``triton`` extra):
whatever spelling Triton accepts is read the same here (``value {`` or ``value: {``, single or double
quotes, ``parameters [ ... ]`` lists, ``< >`` for braces).
"""

from __future__ import annotations

import dataclasses
import math
import re
import shutil
from collections.abc import Callable
from pathlib import Path
from types import ModuleType

from google.protobuf import text_format

from export.propagation import Progress, VerificationError
from export.verify import VerificationReport, verify_artifact
from zoo.certificate import Certificate

__all__ = [
    "INSTANCE_KINDS",
    "check_triton_options",
    "read_model_config",
    "verify_triton_repository",
    "write_triton_repository",
]

INSTANCE_KINDS = {"gpu": "KIND_GPU", "cpu": "KIND_CPU"}
"""Where Triton runs the model's instances -> the instance group's kind."""

MAX_CONFIG_BYTES = 2**20
"""Largest config.pbtxt read (1 MiB; the zoo's are under 1 KB)."""

BOUND_PARAMETER = "zoo.lipschitz_bound"
SHA256_PARAMETER = "zoo.weights_sha256"


@dataclasses.dataclass(frozen=True)
class _Format:
    directory: str  # suffix of the model directory
    filename: str  # the model file in each version directory
    platform: str  # what a config written here names
    backend: str  # the backend's name: a config may name the platform, the backend or both
    input_name: str
    output_name: str


_FORMATS = {
    "onnx": _Format("onnx", "model.onnx", "onnxruntime_onnx", "onnxruntime", "input", "logits"),
    "torchscript": _Format("torchscript", "model.pt", "pytorch_libtorch", "pytorch", "INPUT__0", "OUTPUT__0"),
}


def _model_config_pb2() -> ModuleType:
    """Triton's ModelConfig messages, from the ``triton`` extra (tritonclient[grpc])."""
    from tritonclient.grpc import model_config_pb2

    return model_config_pb2


def _config(
    name: str, fmt: str, certificate: Certificate, num_classes: int, max_batch_size: int, kind: str
) -> str:
    """config.pbtxt of one model: Triton's ModelConfig message in protobuf text format."""
    pb = _model_config_pb2()
    spec = _FORMATS[fmt]
    config = pb.ModelConfig(name=name, platform=spec.platform, max_batch_size=max_batch_size)
    config.input.add(name=spec.input_name, data_type=pb.TYPE_FP32, dims=certificate.input_shape)
    config.output.add(name=spec.output_name, data_type=pb.TYPE_FP32, dims=[num_classes])
    config.dynamic_batching.max_queue_delay_microseconds = 100
    config.instance_group.add(count=1, kind=pb.ModelInstanceGroup.Kind.Value(kind))
    config.parameters[BOUND_PARAMETER].string_value = repr(certificate.lipschitz_bound)
    config.parameters[SHA256_PARAMETER].string_value = certificate.weights_sha256
    return text_format.MessageToString(config)


def read_model_config(path: Path):  # -> model_config_pb2.ModelConfig (from the triton extra)
    """The ModelConfig of the config.pbtxt at ``path``, parsed as Triton parses it (protobuf text
    format: any spelling Triton accepts, and nothing it refuses).

    Raises:
        VerificationError: not a regular file, unreadable, too large, or not a valid ModelConfig
            (one line naming the file).
    """
    pb = _model_config_pb2()
    if not path.is_file():  # a directory, a pipe, a device would not be read as a configuration
        raise VerificationError(f"{path}: not a regular file")
    try:
        if path.stat().st_size > MAX_CONFIG_BYTES:
            raise VerificationError(f"{path}: larger than {MAX_CONFIG_BYTES:,} bytes, not read")
        data = path.read_bytes()
    except OSError as error:
        raise VerificationError(f"{path}: cannot be read ({error.strerror or error})") from None
    try:
        return text_format.Parse(data.decode(), pb.ModelConfig())
    except (text_format.ParseError, UnicodeDecodeError) as error:
        message = " ".join(str(error).split())
        raise VerificationError(f"{path}: not a valid Triton model configuration ({message})") from None


def check_triton_options(instances: str, max_batch_size: int) -> None:
    """ValueError naming the option when ``instances`` or ``max_batch_size`` cannot be written;
    ModuleNotFoundError (``tritonclient``) without the ``triton`` extra, before anything is written."""
    _model_config_pb2()
    if instances not in INSTANCE_KINDS:
        raise ValueError(f"Triton instances run on {' or '.join(INSTANCE_KINDS)}, got {instances!r}")
    if max_batch_size < 1:
        raise ValueError(f"the Triton max batch size must be at least 1, got {max_batch_size}")


def write_triton_repository(
    repository: str | Path,
    name: str,
    artifacts: dict[str, Path],
    certificate: Certificate,
    num_classes: int,
    *,
    max_batch_size: int = 256,
    instances: str = "gpu",
) -> list[Path]:
    """Copy verified ``artifacts`` ({'onnx': path, 'torchscript': path}) into a Triton repository.

    ``max_batch_size`` is the largest batch Triton's dynamic batcher forms; ``instances`` 'gpu' or
    'cpu' is where the model instances run. Returns the model directories written.
    """
    check_triton_options(instances, max_batch_size)
    kind = INSTANCE_KINDS[instances]
    unknown = set(artifacts) - set(_FORMATS)
    if unknown or not artifacts:
        raise ValueError(
            f"Triton models are written from {sorted(_FORMATS)} artifacts, got {sorted(artifacts)}"
        )
    written = []
    for fmt, source in artifacts.items():
        model_dir = Path(repository) / f"{name}_{_FORMATS[fmt].directory}"
        (model_dir / "1").mkdir(parents=True, exist_ok=True)
        shutil.copyfile(source, model_dir / "1" / _FORMATS[fmt].filename)
        config = _config(model_dir.name, fmt, certificate, num_classes, max_batch_size, kind)
        (model_dir / "config.pbtxt").write_text(config)
        written.append(model_dir)
    return written


def verify_triton_repository(
    repository: str | Path,
    progress: Progress | None = None,
    verify_file: Callable[[Path, Progress | None], VerificationReport] = verify_artifact,
) -> list[VerificationReport]:
    """Verify every model of a Triton repository, one report per model file.

    Each model directory's configurations (config.pbtxt, and the ``configs/NAME.pbtxt`` Triton
    serves instead when started with ``--model-config-name NAME``) must describe an ONNX or
    TorchScript model; the file each one has Triton load from each version directory (its
    ``default_model_filename``, else ``model.onnx`` / ``model.pt``) is verified from the file alone
    with ``verify_file`` (e.g. confined: :func:`export.sandbox.verify_confined`), once; and the bound
    and weights hash each configuration repeats (the ``zoo.*`` parameters, when present) must be the
    file's.

    Raises:
        VerificationError: ``repository`` holds no model, a model this cannot verify (another
            backend, no config, no version, a version directory Triton reads as another one, a
            missing file), or a file that cannot be verified.
    """
    _model_config_pb2()  # the triton extra, before anything else is read
    repository = Path(repository)
    reports: dict[Path, VerificationReport] = {}
    for model_dir in sorted(d for d in repository.iterdir() if d.is_dir()):
        config_path = model_dir / "config.pbtxt"
        if not config_path.is_file():
            raise VerificationError(f"{model_dir}: a model directory without config.pbtxt")
        versions = _version_directories(model_dir)
        paths = [config_path, *sorted((model_dir / CUSTOM_CONFIGS).glob("*.pbtxt"))]
        configs = {path: read_model_config(path) for path in paths}
        served = {path: _served_file(path, config) for path, config in configs.items()}
        labels = {output.label_filename for config in configs.values() for output in config.output}
        _check_contents(model_dir, versions, served, labels - {""})
        for path, config in configs.items():
            parameters = {key: value.string_value for key, value in config.parameters.items()}
            for version in versions:
                model_file = version / served[path]
                report = reports.get(model_file) or verify_file(model_file, progress)
                problems = report.problems + _config_problems(path, parameters, report.embedded)
                reports[model_file] = dataclasses.replace(report, problems=problems)
    if not reports:
        raise VerificationError(
            f"{repository}: no Triton model in it (<model>/config.pbtxt with <version>/model.onnx or "
            "<version>/model.pt)"
        )
    return list(reports.values())


CUSTOM_CONFIGS = "configs"
"""The folder of a model's custom configurations (``configs/NAME.pbtxt``, ``--model-config-name``)."""

_NOT_VERSIONS = frozenset({"warmup", "initial_state", CUSTOM_CONFIGS})
"""Folders of a model directory that Triton never reads as versions."""

_NUMBER_START = re.compile(r"\s*[+-]?[0-9]")
"""A name from which ``std::stoll``, Triton's parser of version directories, reads a number."""

_VERSION_NAME = re.compile(r"0|[1-9][0-9]*")


def _version_directories(model_dir: Path) -> list[Path]:
    """The version directories of ``model_dir``, as Triton finds them: every other folder whose name
    starts with a number (what ``std::stoll`` reads: leading space, a sign, digits, anything after)
    except names with leading zeros; it loads version N from the folder named N. A folder Triton
    reads as a version other than its name (``-1``, ``2x``, ``+3``) is refused: it could stand for a
    version that is served, holding files that are not."""
    versions = []
    for folder in sorted(d for d in model_dir.iterdir() if d.is_dir()):
        name = folder.name
        if name in _NOT_VERSIONS or (len(name) > 1 and name[0] == "0") or not _NUMBER_START.match(name):
            continue
        if not _VERSION_NAME.fullmatch(name):
            raise VerificationError(
                f"{folder}: Triton reads a version number from this name and loads that version from "
                "the folder named by the number alone: rename or remove it"
            )
        versions.append(folder)
    if not versions:
        raise VerificationError(f"{model_dir}: no version directory (1/, 2/...)")
    return versions


def _check_contents(model_dir: Path, versions: list[Path], served: dict[Path, str], labels: set[str]) -> None:
    """Every version folder holds the file each configuration (``served``: config path -> file
    name) serves, and no file Triton could load beside it. Triton looks for a backend's shared
    library (``libtriton_<backend>.so``) in the version folder, then the model folder, before its
    own backend folder: a library there runs as native code. So a model folder may hold only
    config.pbtxt and the label files its configurations name (besides folders), and a version folder
    only the model files they serve."""
    for version in versions:
        for path, name in served.items():
            if not (version / name).is_file():
                raise VerificationError(f"{version / name}: missing, and {path} serves it")
    served_names = set(served.values())
    allowed = {model_dir: {"config.pbtxt", *labels}, **{version: served_names for version in versions}}
    for folder, names in allowed.items():
        for entry in sorted(folder.iterdir()):
            if entry.name not in names and not (folder == model_dir and entry.is_dir()):
                raise VerificationError(
                    f"{entry}: not a file Triton serves here (it loads a backend library found beside the "
                    "model, libtriton_<backend>.so, as native code): only config.pbtxt, label files and "
                    "the served model files are accepted"
                )


def _served_file(path: Path, config) -> str:
    """The file name Triton loads for the model of ``config`` (read from ``path``); an error for a
    backend this cannot verify (a ``python`` model, for one, is code), or a configuration that has
    Triton load other code or files (a runtime library, custom operations, repository agents,
    per-GPU model files)."""
    spec = next((f for f in _FORMATS.values() if _runs(config, f.platform, f.backend)), None)
    if spec is None:
        runtime = f"platform {config.platform!r}, backend {config.backend!r}"
        raise VerificationError(f"{path}: {runtime}: not an ONNX or TorchScript model, not verified")
    if config.cc_model_filenames:
        raise VerificationError(f"{path}: cc_model_filenames serve other files per GPU: not verified")
    if config.runtime:
        raise VerificationError(
            f"{path}: runtime {config.runtime!r} names the backend library Triton loads: not verified"
        )
    if config.model_repository_agents.agents:
        raise VerificationError(
            f"{path}: repository agents change the model files before Triton loads them: not verified"
        )
    if config.model_operations.op_library_filename:
        libraries = list(config.model_operations.op_library_filename)
        raise VerificationError(
            f"{path}: custom operation libraries {libraries} load native code: not verified"
        )
    filename = config.default_model_filename or spec.filename
    if Path(filename).suffix != Path(spec.filename).suffix or Path(filename).name != filename:
        raise VerificationError(f"{path}: serves {filename!r}, not a {Path(spec.filename).suffix} file")
    return filename


def _runs(config, platform: str, backend: str) -> bool:
    """Whether ``config`` names the runtime ``platform`` / ``backend`` (one or both, nothing else)."""
    return (
        (config.platform or config.backend) != ""
        and config.platform in ("", platform)
        and (config.backend in ("", backend))
    )


def _number(text: str) -> float | None:
    try:
        number = float(text)
    except ValueError:
        return None
    return number if math.isfinite(number) else None


def _config_problems(
    config: Path, parameters: dict[str, str], embedded: Certificate | None
) -> tuple[str, ...]:
    """Where the copies of the certificate in ``config`` differ from the file's ``embedded`` one."""
    if embedded is None:
        return ()
    problems = []
    bound = parameters.get(BOUND_PARAMETER)
    if bound is not None and _number(bound) != embedded.lipschitz_bound:
        problems.append(
            f"{config} says a bound of {bound}, the file's certificate {embedded.lipschitz_bound!r}"
        )
    digest = parameters.get(SHA256_PARAMETER)
    if digest is not None and digest != embedded.weights_sha256:
        problems.append(f"{config} names weights {digest}, the file's certificate {embedded.weights_sha256}")
    return tuple(problems)
