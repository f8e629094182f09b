"""Write a folded, certified model as ONNX, TorchScript and torch.export files carrying its certificate.

ONNX: one file (no external data), opset 20, input ``input`` and output ``logits`` with a dynamic
batch dimension, the certificate as canonical JSON in ``metadata_props['zoo.certificate']``.
TorchScript: ``torch.jit.trace`` of the folded model with the certificate in ``_extra_files``.
"""

from __future__ import annotations

import io
import os
import warnings
from pathlib import Path

import onnx
import torch
from torch import nn

from export.archives import read_archive
from export.propagation import VerificationError
from export.pt2_loading import load_pt2
from zoo.certificate import Certificate
from zoo.checkpoint import atomic_write_bytes
from zoo.fold import is_folded

__all__ = [
    "CERTIFICATE_KEY",
    "load_torchscript",
    "read_onnx_certificate",
    "read_pt2_certificate",
    "read_torchscript_certificate",
    "write_onnx",
    "write_pt2",
    "write_torchscript",
]

CERTIFICATE_KEY = "zoo.certificate"
OPSET = 20


def _example_batch(certificate: Certificate) -> torch.Tensor:
    # A batch of 2: the exporter specialises a dimension of size 1.
    return torch.zeros(2, *certificate.input_shape)


def _require_folded(model: nn.Module) -> None:
    if not is_folded(model):
        raise ValueError("fold the model (zoo.fold) before exporting it")


def write_onnx(model: nn.Module, certificate: Certificate, path: str | os.PathLike) -> Path:
    """Export ``model`` to a single ONNX file at ``path`` with ``certificate`` embedded."""
    _require_folded(model)
    model = model.eval()
    batch = torch.export.Dim("batch", min=1)
    program = torch.onnx.export(
        model,
        (_example_batch(certificate),),
        dynamo=True,
        input_names=["input"],
        output_names=["logits"],
        dynamic_shapes=({0: batch},),
        opset_version=OPSET,
        verbose=False,
    )
    proto = program.model_proto
    entry = proto.metadata_props.add()
    entry.key, entry.value = CERTIFICATE_KEY, certificate.to_json()
    onnx.checker.check_model(proto)
    path = Path(path)
    atomic_write_bytes(path, proto.SerializeToString())
    return path


def read_onnx_certificate(path: str | os.PathLike) -> Certificate | None:
    """The certificate embedded in an ONNX file, or None when it has none."""
    proto = onnx.load(os.fspath(path), load_external_data=False)
    for entry in proto.metadata_props:
        if entry.key == CERTIFICATE_KEY:
            return Certificate.from_json(entry.value)
    return None


def write_torchscript(model: nn.Module, certificate: Certificate, path: str | os.PathLike) -> Path:
    """Trace ``model`` to TorchScript at ``path`` with ``certificate`` in ``_extra_files``.

    TorchScript is deprecated in torch >= 2.14 (its calls emit FutureWarning); it is written because
    serving stacks (Triton's pytorch backend) still load it. The warning is caught here only.
    """
    _require_folded(model)
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", category=FutureWarning, module=r"torch\.jit")
        traced = torch.jit.trace(model.eval(), _example_batch(certificate))
        buffer = io.BytesIO()
        torch.jit.save(traced, buffer, _extra_files={CERTIFICATE_KEY: certificate.to_json()})
    path = Path(path)
    atomic_write_bytes(path, buffer.getvalue())
    return path


def write_pt2(model: nn.Module, certificate: Certificate, path: str | os.PathLike) -> Path:
    """``torch.export`` the folded ``model`` (dynamic batch) to a ``.pt2`` file at ``path`` with
    ``certificate`` in its ``extra_files`` (TorchScript's successor; load with ``torch.export.load``)."""
    _require_folded(model)
    batch = torch.export.Dim("batch", min=1)
    program = torch.export.export(model.eval(), (_example_batch(certificate),), dynamic_shapes=({0: batch},))
    buffer = io.BytesIO()
    torch.export.save(program, buffer, extra_files={CERTIFICATE_KEY: certificate.to_json()})
    path = Path(path)
    atomic_write_bytes(path, buffer.getvalue())
    return path


def read_pt2_certificate(path: str | os.PathLike) -> tuple[torch.export.ExportedProgram, Certificate | None]:
    """Load a ``.pt2`` file (refusing pickled payloads, see :mod:`export.pt2_loading`) and its
    embedded certificate (None when it has none)."""
    program, text = load_pt2(path, CERTIFICATE_KEY)
    return program, (Certificate.from_json(text) if text else None)


def load_torchscript(path: str | os.PathLike) -> tuple[torch.jit.ScriptModule, str]:
    """The module of the TorchScript file at ``path`` (on the CPU) and the text of its embedded
    certificate ('' when it has none).

    The archive is checked first (:func:`export.archives.read_archive`: torch's reader, no duplicated
    entry, no deflate bomb) and torch.jit.load reads those same bytes. Loading a TorchScript file
    unpickles nothing but tensors and TorchScript values, yet its program can do what aten operators
    can (``aten::from_file`` maps files): ``zoo verify`` runs it confined (:mod:`export.sandbox`).

    Raises:
        VerificationError: an unreadable or refused file.
    """
    archive = read_archive(path, "TorchScript")
    try:
        with warnings.catch_warnings():  # TorchScript is deprecated: torch.jit.load warns
            warnings.filterwarnings("ignore", category=FutureWarning, module=r"torch\.jit")
            module = torch.jit.load(io.BytesIO(archive.data), map_location="cpu")
        entry = f"extra/{CERTIFICATE_KEY}"
        text = archive.read(entry).decode() if entry in archive.sizes else ""
    except (
        Exception
    ) as error:  # the archive passed the checks: whatever the loader raises is the file's fault
        message = " ".join(str(error).split())[:300]
        raise VerificationError(f"{path}: not a readable TorchScript file ({message})") from error
    return module, text


def read_torchscript_certificate(
    path: str | os.PathLike,
) -> tuple[torch.jit.ScriptModule, Certificate | None]:
    """Load a TorchScript file and its embedded certificate (None when it has none)."""
    module, text = load_torchscript(path)
    return module, (Certificate.from_json(text) if text else None)
