"""Triton Inference Server model repositories for certified artifacts.

Layout (one model per format, version 1)::

    <repo>/<name>_onnx/config.pbtxt         platform "onnxruntime_onnx", tensors input / logits
    <repo>/<name>_onnx/1/model.onnx
    <repo>/<name>_torchscript/config.pbtxt  backend "pytorch", tensors INPUT__0 / OUTPUT__0
    <repo>/<name>_torchscript/1/model.pt

``max_batch_size`` > 0, so ``dims`` exclude the batch dimension; dynamic batching is on and the
instance group asks for GPUs (``instances="gpu"``, ``KIND_GPU``) or CPUs (``"cpu"``, a CPU-only
server). The certificate's bound and weights hash are repeated as model parameters so a client can
read them from the model configuration; the authoritative certificate stays inside each model file,
and :func:`verify_triton_repository` checks a deployed repository: every model file from the file
alone, and the configuration's copies against the file's certificate.
"""

from __future__ import annotations

import dataclasses
import re
import shutil
from pathlib import Path

from export.propagation import Progress, VerificationError
from export.verify import VerificationReport, verify_artifact
from zoo.certificate import Certificate

__all__ = ["INSTANCE_KINDS", "check_triton_options", "verify_triton_repository", "write_triton_repository"]

_ZOO_PARAMETER = re.compile(r'key:\s*"(zoo\.\w+)"\s*value:\s*\{\s*string_value:\s*"([^"]*)"\s*\}')
"""A ``parameters`` entry of config.pbtxt as this module writes it: (key, string value)."""

INSTANCE_KINDS = {"gpu": "KIND_GPU", "cpu": "KIND_CPU"}
"""Where Triton runs the model's instances -> the instance group's kind."""

_FORMATS = {
    # format: (directory suffix, file name, platform / backend line, input name, output name)
    "onnx": ("onnx", "model.onnx", 'platform: "onnxruntime_onnx"', "input", "logits"),
    "torchscript": (
        "torchscript",
        "model.pt",
        'backend: "pytorch"\nplatform: "pytorch_libtorch"',
        "INPUT__0",
        "OUTPUT__0",
    ),
}


def _dims(shape: tuple[int, ...]) -> str:
    return "[ " + ", ".join(str(d) for d in shape) + " ]"


def _config(
    name: str, fmt: str, certificate: Certificate, num_classes: int, max_batch_size: int, kind: str
) -> str:
    _, _, runtime, input_name, output_name = _FORMATS[fmt]
    return f"""name: "{name}"
{runtime}
max_batch_size: {max_batch_size}
input [
  {{
    name: "{input_name}"
    data_type: TYPE_FP32
    dims: {_dims(certificate.input_shape)}
  }}
]
output [
  {{
    name: "{output_name}"
    data_type: TYPE_FP32
    dims: {_dims((num_classes,))}
  }}
]
dynamic_batching {{
  max_queue_delay_microseconds: 100
}}
instance_group [
  {{
    count: 1
    kind: {kind}
  }}
]
parameters {{
  key: "zoo.lipschitz_bound"
  value: {{ string_value: "{certificate.lipschitz_bound!r}" }}
}}
parameters {{
  key: "zoo.weights_sha256"
  value: {{ string_value: "{certificate.weights_sha256}" }}
}}
"""


def check_triton_options(instances: str, max_batch_size: int) -> None:
    """ValueError naming the option when ``instances`` or ``max_batch_size`` cannot be written."""
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
        suffix, filename, *_ = _FORMATS[fmt]
        model_dir = Path(repository) / f"{name}_{suffix}"
        (model_dir / "1").mkdir(parents=True, exist_ok=True)
        shutil.copyfile(source, model_dir / "1" / filename)
        config = _config(model_dir.name, fmt, certificate, num_classes, max_batch_size, kind)
        (model_dir / "config.pbtxt").write_text(config)
        written.append(model_dir)
    return written


def verify_triton_repository(
    repository: str | Path, progress: Progress | None = None
) -> list[VerificationReport]:
    """Verify every model file of a Triton repository (``<model>/<version>/model.onnx`` or
    ``model.pt``) from the file alone, and check that the bound and weights hash its config.pbtxt
    repeats (the ``zoo.*`` parameters, when present) are those of the file's certificate.

    Raises:
        VerificationError: ``repository`` holds no such model, or a file cannot be verified.
    """
    repository = Path(repository)
    reports = []
    for config in sorted(repository.glob("*/config.pbtxt")):
        parameters = dict(_ZOO_PARAMETER.findall(config.read_text()))
        versions = sorted(d for d in config.parent.iterdir() if d.is_dir() and d.name.isdigit())
        for model_file in (v / name for v in versions for name in ("model.onnx", "model.pt")):
            if model_file.is_file():
                report = verify_artifact(model_file, progress)
                problems = report.problems + _config_problems(config, parameters, report.embedded)
                reports.append(dataclasses.replace(report, problems=problems))
    if not reports:
        raise VerificationError(
            f"{repository}: no Triton model in it "
            "(<model>/config.pbtxt with <version>/model.onnx or <version>/model.pt)"
        )
    return reports


def _number(text: str) -> float | None:
    try:
        return float(text)
    except ValueError:
        return None


def _config_problems(
    config: Path, parameters: dict[str, str], embedded: Certificate | None
) -> tuple[str, ...]:
    """Where the copies of the certificate in ``config`` differ from the file's ``embedded`` one."""
    if embedded is None:
        return ()
    problems = []
    bound = parameters.get("zoo.lipschitz_bound")
    if bound is not None and _number(bound) != embedded.lipschitz_bound:
        problems.append(
            f"{config} says a bound of {bound}, the file's certificate {embedded.lipschitz_bound!r}"
        )
    digest = parameters.get("zoo.weights_sha256")
    if digest is not None and digest != embedded.weights_sha256:
        problems.append(f"{config} names weights {digest}, the file's certificate {embedded.weights_sha256}")
    return tuple(problems)
