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

from export.runtime import onnx_session
from export.verify import VerificationError, verify_artifact
from export.writers import (
    read_onnx_certificate,
    read_torchscript_certificate,
    write_onnx,
    write_torchscript,
)
from zoo.hub import CertifiedModel

__all__ = ["OUTPUT_TOLERANCE", "ArtifactCheck", "ExportError", "export_model", "probe_batch"]

OUTPUT_TOLERANCE = 1e-5
PROBE_SIZE = 16


class ExportError(RuntimeError):
    """A written artifact does not behave like, or does not carry the certificate of, its model."""


@dataclass(frozen=True)
class ArtifactCheck:
    """Result of re-reading one artifact."""

    format: str
    path: Path
    max_abs_diff: float
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


def _verified(path: Path) -> list[str]:
    """Recompute the bound of the written file from the file alone; it must satisfy the embedded
    certificate (checked equal to the model's before)."""
    try:
        report = verify_artifact(path)
    except VerificationError as error:
        raise ExportError(f"the written file cannot be verified: {error}") from error
    if not report.ok:
        raise ExportError(f"{path}: {'; '.join(report.problems)}")
    return [f"bound recomputed from the file: {report.lipschitz_bound:.6g}"]


def export_model(
    certified: CertifiedModel,
    out_dir: str | Path,
    *,
    onnx: bool = True,
    torchscript: bool = True,
    stem: str = "model",
) -> list[ArtifactCheck]:
    """Write the requested formats of ``certified`` into ``out_dir`` and check each written file."""
    if not (onnx or torchscript):
        raise ValueError("choose at least one format to export")
    out_dir = Path(out_dir)
    model, certificate = certified.model.cpu().eval(), certified.certificate
    probe = probe_batch(certificate.input_shape)
    with torch.no_grad():
        expected = model(probe)
    checks: list[ArtifactCheck] = []
    if onnx:
        path = write_onnx(model, certificate, out_dir / f"{stem}.onnx")
        if read_onnx_certificate(path) != certificate:
            raise ExportError(f"{path}: the embedded certificate does not read back identically")
        session = onnx_session(path, "cpu")
        (logits,) = session.run(["logits"], {"input": probe.numpy()})
        checks.append(_check("onnx", path, expected, logits, _verified(path)))
    if torchscript:
        path = write_torchscript(model, certificate, out_dir / f"{stem}.ts.pt")
        module, embedded = read_torchscript_certificate(path)
        if embedded != certificate:
            raise ExportError(f"{path}: the embedded certificate does not read back identically")
        with torch.no_grad():
            checks.append(_check("torchscript", path, expected, module(probe).numpy(), _verified(path)))
    return checks
