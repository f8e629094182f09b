"""``zoo verify``: the deployed file certifies itself.

The Lipschitz bound of an artifact is recomputed from the file alone (its graph and its weights, no
PyTorch model and no trust in the embedded numbers) and compared with the certificate embedded in it:

* ONNX (``.onnx``): the graph is walked op by op (:mod:`export.onnx_graph`).
* TorchScript (``.pt``, e.g. ``model.ts.pt``) and torch.export (``.pt2``): the file's program runs
  on a tracked input and every aten op it executes is bounded (:mod:`export.torch_graph`). A
  TorchScript file does not record its input shape: it is taken from the embedded certificate.

The report is ``ok`` when the recomputed bound is at most the embedded ``lipschitz_bound`` times
``1 + BOUND_TOLERANCE`` and the certificate's input shape is the graph's. Both sides are computed by
the same bound engine from the same float32 weights (and for the zoo's ops by the same calls), so
they agree to rounding (about 1e-15 relative); the tolerance only absorbs a different order of the
multiplications, and is far below what tampering with a weight changes. A file without a certificate
is reported with its bound and ``embedded = None``: nothing is claimed, so nothing is violated.
A malformed certificate, an unreadable file or an unsupported op is an error
(:class:`~export.propagation.VerificationError`), never a report.

The contract
    A bound reported for a file holds, per example, for the L2 norm of all the file's outputs taken
    together with respect to its one input, for every pair of finite inputs of the input shape the
    file records (or that the certificate or ``--input-shape`` gives a TorchScript file), as a bound
    of the function the file defines in real arithmetic, with each layer's weights as stored in the
    file; the runtime's float32 rounding is not part of it (for the usual layers its effect is far
    below the certificate's safety margin; a hostile parameter, a CELU alpha of 1e4 say, makes it
    visible at small distances). It holds at every batch size
    the file accepts: a dynamic batch axis is analysed at 1, 2 and 5 examples, and no value of the
    graph may compute with the batch size (only keep it, as ``x.view(x.size(0), -1)`` does), so
    every op acts on each example alike whatever the batch size. For ONNX files it is the function
    the ONNX specification defines, as onnxruntime (CPU) computes it; for TorchScript and .pt2
    files, the program as torch runs it, with gradients enabled or not and, when the program reads
    ``self.training``, in training and in eval mode alike.

Default-deny
    A value is a constant only when the verifier proves it is one whatever the input and the batch
    size, and whichever runtime computes it: an initializer (taken at its stored value, also when it
    is listed as a graph input a runtime would let a caller override), or the output of an op of
    constants whose result every conforming runtime computes bit for bit (moves, comparisons,
    integer arithmetic, correctly rounded float arithmetic; :data:`export.onnx_graph.FOLDABLE`).
    Everything else depends on the input, and reaches only the rules proven for it; an op without a
    rule, a parameter outside the domain of its rule's proof (NaN, a negative CELU alpha, repeated
    axes...) is an error naming the op and the reason. Refused, among others: random ops, control
    flow (If, Loop), values computed from the batch size, products and quotients of input-dependent
    tensors (but SiLU, softsign), comparisons of them (but torch's softplus), squares other than on
    their way to the root of their pooled sum, ops that mix the examples of a batch, programs that
    write into their parameters, buffers or ``out=`` arguments, and programs that read a size that
    may be the batch size for anything but keeping that axis.

Trust: an ONNX file is only parsed (protobuf); its nodes are evaluated, on constants, by
``onnx.reference`` (and, for Resize, by onnxruntime too: the larger bound is kept where the two
disagree). A TorchScript or .pt2 file is *run* (by the TorchScript interpreter, or as the exported
aten graph), which executes no Python code from the file but does execute its program: for files of
unknown origin prefer the ONNX form. A .pt2 file is checked before torch.export.load reads it, which
would otherwise unpickle some payloads without restriction (:mod:`export.pt2_loading`).
"""

from __future__ import annotations

import functools
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from export.onnx_graph import graph_bound
from export.onnx_loading import load_onnx
from export.propagation import GraphBound, Progress, UnsupportedOpError, VerificationError
from export.pt2_loading import load_pt2
from export.torch_graph import exported_program_bound, torchscript_bound
from export.writers import CERTIFICATE_KEY, load_torchscript
from zoo.certificate import Certificate, LayerBound
from zoo.limits import DEFAULT_MAX_ELEMENTS, SizeLimitError, check_elements

__all__ = [
    "BOUND_TOLERANCE",
    "UnsupportedOpError",
    "VerificationError",
    "VerificationReport",
    "verify_artifact",
    "verify_onnx",
    "verify_pt2",
    "verify_torchscript",
]

BOUND_TOLERANCE = 1e-6


@dataclass(frozen=True)
class VerificationReport:
    """What ``zoo verify`` found in one artifact.

    Attributes:
        artifact: path of the file.
        format: ``'onnx'``, ``'torchscript'`` or ``'pt2'``.
        lipschitz_bound: the sound bound recomputed from the file.
        input_shape: shape of one input example of the file's graph.
        layers: per-node bounds of the file's graph (cumulative: each is the bound of the node's
            output with respect to the graph input).
        embedded: the certificate embedded in the file, or None.
        problems: why the file does not satisfy its certificate (empty when it does).
    """

    artifact: str
    format: str
    lipschitz_bound: float
    input_shape: tuple[int, ...]
    layers: tuple[LayerBound, ...]
    embedded: Certificate | None
    problems: tuple[str, ...]

    @property
    def ok(self) -> bool:
        return not self.problems

    def to_dict(self) -> dict[str, Any]:
        """The JSON object of ``zoo verify --json``."""
        return {
            "artifact": self.artifact,
            "format": self.format,
            "lipschitz_bound": self.lipschitz_bound,
            "input_shape": list(self.input_shape),
            "layers": [
                {
                    "name": layer.name,
                    "op": layer.op,
                    "bound": layer.bound,
                    "input_shape": list(layer.input_shape),
                }
                for layer in self.layers
            ],
            "embedded": None if self.embedded is None else self.embedded.to_dict(),
            "ok": self.ok,
            "problems": list(self.problems),
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> VerificationReport:
        """The report :meth:`to_dict` describes (how a confined verification reports back)."""
        return cls(
            artifact=data["artifact"],
            format=data["format"],
            lipschitz_bound=float(data["lipschitz_bound"]),
            input_shape=tuple(data["input_shape"]),
            layers=tuple(
                LayerBound(layer["name"], layer["op"], float(layer["bound"]), tuple(layer["input_shape"]))
                for layer in data["layers"]
            ),
            embedded=None if data["embedded"] is None else Certificate.from_dict(data["embedded"]),
            problems=tuple(data["problems"]),
        )


def _problems(computed: GraphBound, embedded: Certificate | None) -> tuple[str, ...]:
    if embedded is None:
        return ()
    problems = []
    if computed.lipschitz_bound > embedded.lipschitz_bound * (1 + BOUND_TOLERANCE):
        problems.append(
            f"the file's graph has a Lipschitz bound of {computed.lipschitz_bound:.9g}, above the "
            f"{embedded.lipschitz_bound:.9g} its certificate claims"
        )
    if tuple(embedded.input_shape) != computed.input_shape:
        problems.append(
            f"the certificate is for inputs of shape {tuple(embedded.input_shape)}, the graph takes "
            f"{computed.input_shape}"
        )
    return tuple(problems)


def _parse_certificate(text: str, path: Path) -> Certificate:
    try:
        return Certificate.from_json(text)
    except ValueError as error:
        raise VerificationError(f"{path}: the embedded certificate is malformed: {error}") from error


def _existing(path: str | os.PathLike) -> Path:
    path = Path(path)
    if not path.is_file():
        raise VerificationError(f"{path}: no such file")
    return path


def _report(
    path: Path,
    fmt: str,
    embedded: Certificate | None,
    compute: Callable[[], GraphBound],
    input_shape: Sequence[int] | None,
) -> VerificationReport:
    """Run ``compute`` (errors name the file) and compare its bound with ``embedded``; the graph
    must take inputs of ``input_shape`` when one is given."""
    try:
        computed = compute()
    except VerificationError as error:
        raise type(error)(f"{path}: {error}") from error
    if input_shape is not None and tuple(input_shape) != computed.input_shape:
        raise VerificationError(
            f"{path}: the file's graph takes inputs of shape {computed.input_shape}, not {tuple(input_shape)}"
        )
    return VerificationReport(
        artifact=str(path),
        format=fmt,
        lipschitz_bound=computed.lipschitz_bound,
        input_shape=computed.input_shape,
        layers=computed.layers,
        embedded=embedded,
        problems=_problems(computed, embedded),
    )


def verify_onnx(
    path: str | os.PathLike,
    progress: Progress | None = None,
    input_shape: Sequence[int] | None = None,
    max_elements: int = DEFAULT_MAX_ELEMENTS,
) -> VerificationReport:
    """Recompute the bound of the ONNX file at ``path`` from its graph and initializers and compare
    it with the certificate in its ``metadata_props``; ``progress`` is told of each node, and the
    graph must take ``input_shape`` when it is given. What the file declares is checked first
    (:func:`export.onnx_loading.load_onnx`, one example of at most ``max_elements`` elements).

    Raises:
        VerificationError: unreadable, invalid or refused file, malformed certificate, or a graph that
            cannot be bounded (:class:`UnsupportedOpError` for an op without a rule, naming it).
    """
    path = _existing(path)
    model = load_onnx(path, max_elements)
    texts = [entry.value for entry in model.metadata_props if entry.key == CERTIFICATE_KEY]
    if len(texts) > 1:
        raise VerificationError(f"{path}: {len(texts)} certificates are embedded, expected one")
    embedded = _parse_certificate(texts[0], path) if texts else None
    return _report(path, "onnx", embedded, functools.partial(graph_bound, model, progress), input_shape)


def verify_torchscript(
    path: str | os.PathLike,
    progress: Progress | None = None,
    input_shape: Sequence[int] | None = None,
    max_elements: int = DEFAULT_MAX_ELEMENTS,
) -> VerificationReport:
    """Recompute the bound of the TorchScript file at ``path`` by running its program on a tracked
    input of one example's shape, and compare with the certificate in its ``_extra_files``;
    ``progress`` is told of each aten op.

    A TorchScript file does not record its input shape: it is the embedded certificate's, or
    ``input_shape`` for a file without one (a model not made here); both given must agree.

    Raises:
        VerificationError: unreadable file, malformed certificate, no input shape, or a program that
            cannot be bounded (:class:`UnsupportedOpError` naming the aten op).
    """
    path = _existing(path)
    module, text = load_torchscript(path)
    embedded = _parse_certificate(text, path) if text else None
    if embedded is None and input_shape is None:
        raise VerificationError(
            f"{path}: no embedded certificate, and a TorchScript file does not record the input shape "
            "its bound depends on: give it (--input-shape C,H,W)"
        )
    shape = embedded.input_shape if embedded is not None else tuple(input_shape)
    try:
        check_elements(shape, "one input example", max_elements)
    except SizeLimitError as error:
        raise VerificationError(f"{path}: refused: {error}") from None
    compute = functools.partial(torchscript_bound, module, shape, torch.float32, progress)
    return _report(path, "torchscript", embedded, compute, input_shape)


def verify_pt2(
    path: str | os.PathLike,
    progress: Progress | None = None,
    input_shape: Sequence[int] | None = None,
    max_elements: int = DEFAULT_MAX_ELEMENTS,
) -> VerificationReport:
    """Recompute the bound of the torch.export file at ``path`` by running its program on a tracked
    input of the shape its graph records, and compare with the certificate in its ``extra_files``;
    ``progress`` is told of each aten op, and the graph must take ``input_shape`` when it is given.

    Raises:
        VerificationError: as :func:`verify_torchscript`, and for a program with several inputs or
            a fixed batch larger than 1.
    """
    path = _existing(path)
    program, text = load_pt2(path, CERTIFICATE_KEY, max_elements)
    embedded = _parse_certificate(text, path) if text else None
    return _report(
        path, "pt2", embedded, functools.partial(exported_program_bound, program, progress), input_shape
    )


_VERIFIERS: dict[
    str, Callable[[str | os.PathLike, Progress | None, Sequence[int] | None, int], VerificationReport]
] = {
    ".onnx": verify_onnx,
    ".pt": verify_torchscript,
    ".pt2": verify_pt2,
}


def verify_artifact(
    path: str | os.PathLike,
    progress: Progress | None = None,
    input_shape: Sequence[int] | None = None,
    max_elements: int = DEFAULT_MAX_ELEMENTS,
) -> VerificationReport:
    """Verify the artifact at ``path``, chosen by its suffix: ``.onnx``, ``.pt`` (TorchScript) or
    ``.pt2`` (torch.export); ``progress`` is told of each op (see :data:`Progress`). ``input_shape``
    (one example's) is needed for a TorchScript file without a certificate, the only case where the
    file does not record it; otherwise the file's must equal it. A file declaring an input example of
    more than ``max_elements`` elements is refused before anything is allocated for it.

    This runs the file's program in this process: for files of unknown origin use
    :func:`export.sandbox.verify_confined`.
    """
    suffix = Path(path).suffix
    if suffix not in _VERIFIERS:
        raise VerificationError(
            f"{path}: unknown artifact type {suffix!r} (expected one of {list(_VERIFIERS)})"
        )
    return _VERIFIERS[suffix](path, progress, input_shape, max_elements)
