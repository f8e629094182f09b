"""The model a server serves: a verified ONNX artifact, its certificate, and what it answers per example.

Whatever the user names (an ``.onnx`` file written by the zoo, a checkpoint, a models.yaml name), the
server runs an ONNX file, and only one that certifies itself: :func:`_check_artifact` recomputes the
Lipschitz bound from the file (``export.verify``) and refuses a file without a certificate, or whose
graph has a larger bound than its certificate claims. The certified radii the server reports are
only as true as that check.
"""

from __future__ import annotations

import math
import os
from pathlib import Path

import numpy as np
import onnxruntime as ort
import torch
from onnxruntime.capi import onnxruntime_pybind11_state as ort_state

from export.runtime import onnx_session
from export.verify import VerificationError, verify_onnx
from export.writers import write_onnx
from zoo.app import PROGRAM_SUFFIXES
from zoo.certificate import Certificate
from zoo.hub import check_sha256, load
from zoo.limits import DEFAULT_MAX_ELEMENTS
from zoo.prediction import input_range, predictions_from_logits

__all__ = ["ArtifactError", "ServedModel", "open_model"]

VERSION = "1"
# What onnxruntime raises for a file it cannot load (its exceptions derive from Exception directly).
RUNTIME_ERRORS = (
    ort_state.Fail,
    ort_state.InvalidArgument,
    ort_state.InvalidGraph,
    ort_state.InvalidProtobuf,
    ort_state.NoSuchFile,
    ort_state.NotImplemented,
    ort_state.RuntimeException,
)


class ArtifactError(ValueError):
    """The file cannot be served: no certificate, a certificate it does not satisfy, or a bad graph."""


def _check_artifact(path: Path, max_elements: int, shown: str) -> Certificate:
    """The certificate embedded in the ONNX file at ``path``, once the file is shown to satisfy it
    (an input example declaring more than ``max_elements`` elements is refused before anything runs);
    errors name the file ``shown`` (what the user gave, of which ``path`` may be a private copy)."""
    try:
        report = verify_onnx(path, max_elements=max_elements)
    except VerificationError as error:
        raise type(error)(str(error).replace(str(path), shown)) from None
    if report.embedded is None:
        raise ArtifactError(
            f"{shown}: the file carries no Lipschitz certificate, so no certified radius can be given; "
            "serve a file written by `zoo export --onnx`"
        )
    if not report.ok:
        raise ArtifactError(f"{shown}: refused, {'; '.join(report.problems)}")
    return report.embedded


class ServedModel:
    """An onnxruntime session of a certified classifier, with the outputs the server derives from it.

    For each example the server answers the logits and, from the certificate's bound ``L``, what
    ``CertifiedModel.predict`` answers (``zoo.prediction.predictions_from_logits``):
    ``predicted_class`` (argmax), ``margin`` (top1 - top2) and ``certified_radius``
    ((top1 - top2) / (sqrt(2) * L), the L2 distance within which the prediction cannot change).
    """

    def __init__(self, name: str, session: ort.InferenceSession, certificate: Certificate) -> None:
        (graph_input,) = session.get_inputs()
        (graph_output,) = session.get_outputs()
        num_classes = graph_output.shape[-1]
        if len(graph_output.shape) != 2 or not isinstance(num_classes, int) or num_classes < 2:
            raise ArtifactError(
                f"model {name}: its output {graph_output.name!r} has shape {graph_output.shape}, "
                "expected [batch, classes] logits with at least 2 classes"
            )
        if not (math.isfinite(certificate.lipschitz_bound) and certificate.lipschitz_bound > 0):
            raise ArtifactError(
                f"model {name}: its certificate's Lipschitz bound is {certificate.lipschitz_bound!r}, "
                "not a finite positive number: no radius can be computed from it"
            )
        self.name = name
        self.version = VERSION
        self.session = session
        self.certificate = certificate
        self.input_name: str = graph_input.name
        self.logits_name: str = graph_output.name
        self.input_shape: tuple[int, ...] = tuple(certificate.input_shape)
        self.num_classes: int = num_classes
        try:  # the [low, high] inputs must lie in, or None when the certificate records no range
            self.input_range: tuple[float, float] | None = input_range(certificate.preprocessing)
        except ValueError as error:
            raise ArtifactError(f"model {name}: {error}") from None

    @property
    def provider(self) -> str:
        """The onnxruntime execution provider actually running the model."""
        return self.session.get_providers()[0]

    def output_specs(self) -> dict[str, tuple[np.dtype, tuple[int, ...]]]:
        """Every output the server can answer: name -> (dtype, shape of one example)."""
        return {
            self.logits_name: (np.dtype(np.float32), (self.num_classes,)),
            "predicted_class": (np.dtype(np.int64), ()),
            "margin": (np.dtype(np.float64), ()),
            "certified_radius": (np.dtype(np.float64), ()),
        }

    def predict(self, inputs: np.ndarray) -> dict[str, np.ndarray]:
        """All outputs of :meth:`output_specs` for a float32 batch of shape (N, *input_shape)."""
        (logits,) = self.session.run([self.logits_name], {self.input_name: inputs})
        predictions = predictions_from_logits(torch.from_numpy(logits), self.certificate.lipschitz_bound)
        return {
            self.logits_name: logits,
            "predicted_class": predictions.predicted_class.numpy(),
            "margin": predictions.margin.numpy(),
            "certified_radius": predictions.certified_radius.numpy(),
        }


def _export_to_onnx(
    source: str, workdir: Path, expected_sha256: str | None, max_elements: int
) -> tuple[Path, str]:
    """Load a checkpoint path or models.yaml name with ``zoo.load`` and write it as ONNX in ``workdir``."""
    name = Path(source).stem if Path(source).is_file() else source
    certified = load(source, expected_sha256=expected_sha256, max_elements=max_elements)
    path = write_onnx(certified.model.cpu(), certified.certificate, workdir / f"{name}.onnx")
    return path, name


def _private_copy(source: Path, workdir: Path, expected_sha256: str | None) -> Path:
    """A copy of the ONNX file ``source`` in ``workdir``, its sha256 checked: the file verified and
    run is the one whose bytes were checked, whatever happens to ``source`` meanwhile."""
    try:
        data = source.read_bytes()
    except OSError as error:
        raise ArtifactError(f"{source}: cannot be read ({error.strerror or error})") from None
    if expected_sha256 is not None:
        check_sha256(data, expected_sha256, str(source))
    workdir.mkdir(parents=True, exist_ok=True)
    copy = workdir / source.name
    copy.write_bytes(data)
    return copy


def open_model(
    source: str | os.PathLike,
    device: str,
    workdir: Path,
    expected_sha256: str | None = None,
    max_elements: int = DEFAULT_MAX_ELEMENTS,
) -> ServedModel:
    """The model to serve for ``source``: an ``.onnx`` file, a checkpoint path or a models.yaml name.

    A checkpoint or a name is exported to ONNX in ``workdir`` first; an ``.onnx`` file is copied
    there (the caller owns that directory). ``expected_sha256`` pins the bytes of the file given (or,
    for a name, of its checkpoint). The model is named after the registry name, or the file's stem.
    Raises :class:`ArtifactError` (or the loader's or verifier's own error) saying why a source cannot
    be served, and ``DeviceUnavailableError`` when ``device`` is 'cuda' and CUDA cannot be used.
    """
    source = os.fspath(source)
    if Path(source).suffix in PROGRAM_SUFFIXES:
        raise ArtifactError(
            f"{source}: zoo serve runs an ONNX file, a checkpoint or a model name, never the program of a "
            "TorchScript / .pt2 file: serve its ONNX form (`zoo verify` checks this one, confined)"
        )
    if Path(source).suffix == ".onnx":
        path, name = _private_copy(Path(source), workdir, expected_sha256), Path(source).stem
    else:
        path, name = _export_to_onnx(source, workdir, expected_sha256, max_elements)
    certificate = _check_artifact(path, max_elements, source)  # first: onnxruntime sees only a verified file
    options = ort.SessionOptions()
    # Idle intra-op threads would spin after every call (about 1 ms of CPU per batch-1 request,
    # measured by bench/bench_serve.py): between requests a server should leave the CPU alone.
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    try:
        session = onnx_session(path, device, options)
    except RUNTIME_ERRORS as error:
        raise ArtifactError(f"{source}: onnxruntime cannot run it ({str(error).splitlines()[0]})") from None
    return ServedModel(name, session, certificate)
