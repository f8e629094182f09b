"""Triton Inference Server model repositories for certified artifacts.

Layout (one model per format, version 1)::

    <repo>/<name>_onnx/config.pbtxt         platform "onnxruntime_onnx", tensors input / logits
    <repo>/<name>_onnx/1/model.onnx
    <repo>/<name>_torchscript/config.pbtxt  backend "pytorch", tensors INPUT__0 / OUTPUT__0
    <repo>/<name>_torchscript/1/model.pt

``max_batch_size`` > 0, so ``dims`` exclude the batch dimension; dynamic batching is on and the
instance group asks for GPUs (``instances="gpu"``, ``KIND_GPU``) or CPUs (``"cpu"``, a CPU-only
server). The
certificate's bound and weights hash are repeated as model parameters so a client can read them
from the model configuration; the authoritative certificate stays inside each model file.
"""

from __future__ import annotations

import shutil
from pathlib import Path

from zoo.certificate import Certificate

__all__ = ["INSTANCE_KINDS", "check_triton_options", "write_triton_repository"]

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
