"""``zoo export``: write the requested artifacts of a certified model, then check what was written.

Each written file is read back: its embedded certificate must be the model's, its outputs on a
probe batch must equal the PyTorch model's within ``OUTPUT_TOLERANCE``, and the Lipschitz bound
recomputed from the file alone (``export.verify``) must not exceed the certificate's. Any failure is
an error.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from export.propagation import Progress
from export.runtime import onnx_session
from export.triton import check_triton_options, write_triton_repository
from export.verify import VerificationError, verify_artifact
from export.writers import (
    read_onnx_certificate,
    read_pt2_certificate,
    read_torchscript_certificate,
    write_onnx,
    write_pt2,
    write_torchscript,
)
from zoo.certificate import Certificate
from zoo.hub import CertifiedModel

__all__ = ["OUTPUT_TOLERANCE", "ArtifactCheck", "ExportError", "export_model", "probe_batch"]

OUTPUT_TOLERANCE = 1e-5
PROBE_SIZE = 16


class ExportError(RuntimeError):
    """A written artifact does not behave like, or does not carry the certificate of, its model."""


@dataclass(frozen=True)
class ArtifactCheck:
    """Result of re-reading one artifact (``max_abs_diff`` is None for a Triton model directory:
    copies of files checked before)."""

    format: str
    path: Path
    max_abs_diff: float | None
    notes: list[str] = field(default_factory=list)


def probe_batch(input_shape: tuple[int, ...], seed: int = 0) -> torch.Tensor:
    """(PROBE_SIZE, *input_shape) uniform inputs in [0, 1], from a fixed seed."""
    return torch.rand(PROBE_SIZE, *input_shape, generator=torch.Generator().manual_seed(seed))


def _check(
    fmt: str, path: Path, expected: torch.Tensor, actual: np.ndarray, notes: list[str] | None = None
) -> ArtifactCheck:
    diff = float(np.max(np.abs(actual - expected.numpy())))
    if not diff <= OUTPUT_TOLERANCE:
        raise ExportError(f"{path}: {fmt} outputs differ from PyTorch's by {diff:.3g} (> {OUTPUT_TOLERANCE})")
    return ArtifactCheck(fmt, path, diff, notes or [])


def _verified(path: Path, progress: Progress | None) -> list[str]:
    """Recompute the bound of the written file from the file alone; it must satisfy the embedded
    certificate (checked equal to the model's before)."""
    try:
        report = verify_artifact(path, progress)
    except VerificationError as error:
        raise ExportError(f"the written file cannot be verified: {error}") from error
    if not report.ok:
        raise ExportError(f"{path}: {'; '.join(report.problems)}")
    return [f"bound recomputed from the file: {report.lipschitz_bound:.6f}"]


def export_model(
    certified: CertifiedModel,
    out_dir: str | Path,
    *,
    onnx: bool = True,
    torchscript: bool = True,
    pt2: bool = False,
    triton: bool = False,
    triton_instances: str = "gpu",
    triton_max_batch: int = 256,
    stem: str = "model",
    progress: Progress | None = None,
) -> list[ArtifactCheck]:
    """Write the requested formats of ``certified`` into ``out_dir`` and check each written file.

    ``triton`` adds a Triton model repository (``out_dir/triton``) built from the ONNX and
    TorchScript files after they passed their checks (so it needs at least one of them), its model
    instances on ``triton_instances`` ('gpu' or 'cpu'), batches of up to ``triton_max_batch``.
    ``progress`` is told of each op the verification of a written file bounds.
    """
    if not (onnx or torchscript or pt2):
        raise ValueError("choose at least one format to export")
    if triton and not (onnx or torchscript):
        raise ValueError("a Triton repository is built from the ONNX or TorchScript export: add one of them")
    if triton:
        check_triton_options(triton_instances, triton_max_batch)  # before anything is written
    out_dir = Path(out_dir)
    model, certificate = certified.model.cpu().eval(), certified.certificate
    probe = probe_batch(certificate.input_shape)
    with torch.no_grad():
        expected = model(probe)
    checks: list[ArtifactCheck] = []
    if onnx:
        path = write_onnx(model, certificate, out_dir / f"{stem}.onnx")
        _same_certificate(path, read_onnx_certificate(path), certificate)
        session = onnx_session(path, "cpu")
        (logits,) = session.run(["logits"], {"input": probe.numpy()})
        checks.append(_check("onnx", path, expected, logits, _verified(path, progress)))
    if torchscript:
        path = write_torchscript(model, certificate, out_dir / f"{stem}.ts.pt")
        module, embedded = read_torchscript_certificate(path)
        _same_certificate(path, embedded, certificate)
        with torch.no_grad():
            checks.append(
                _check("torchscript", path, expected, module(probe).numpy(), _verified(path, progress))
            )
    if pt2:
        path = write_pt2(model, certificate, out_dir / f"{stem}.pt2")
        program, embedded = read_pt2_certificate(path)
        _same_certificate(path, embedded, certificate)
        with torch.no_grad():
            checks.append(
                _check("pt2", path, expected, program.module()(probe).numpy(), _verified(path, progress))
            )
    if triton:
        artifacts = {check.format: check.path for check in checks if check.format in ("onnx", "torchscript")}
        num_classes = int(expected.shape[1])
        for model_dir in write_triton_repository(
            out_dir / "triton",
            stem,
            artifacts,
            certificate,
            num_classes,
            max_batch_size=triton_max_batch,
            instances=triton_instances,
        ):
            checks.append(
                ArtifactCheck("triton", model_dir, None, ["copies of the verified files + config.pbtxt"])
            )
    return checks


def _same_certificate(path: Path, embedded: Certificate | None, certificate: Certificate) -> None:
    if embedded != certificate:
        raise ExportError(f"{path}: the embedded certificate does not read back identically")
