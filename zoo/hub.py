"""``zoo.load``: the plain model, its certificate re-computed and checked, from a file or a name.

What a load guarantees: the certificate returned is true of the weights returned (it is recomputed
from them, and the file's own certificate must not claim less); for a models.yaml name, the file is
the one models.yaml pins by sha256; for a path, the file is the one the caller pins with
``expected_sha256``, if given. A file's weights can be replaced and its certificate recomputed by
anyone, so without a pin a load says nothing about *who* made the model.

A file of unknown origin is checked before anything is allocated for it: the recorded architecture is
first built on the meta device and its tensors compared with the file's, and the input shape is held
to a size limit (:mod:`zoo.limits`).
"""

from __future__ import annotations

import contextlib
import glob
import hashlib
import http.client
import math
import os
import urllib.request
import warnings
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from rich.console import Console
from rich.progress import DownloadColumn, Progress, TransferSpeedColumn
from torch import nn

from zoo.certificate import Certificate
from zoo.certify import certify
from zoo.checkpoint import (
    TEMPORARY_NAME,
    CertifiedCheckpoint,
    CheckpointError,
    create_temporary,
    parse_checkpoint,
)
from zoo.limits import DEFAULT_MAX_ELEMENTS, SizeLimitError, check_elements
from zoo.locks import try_lock
from zoo.models import build
from zoo.prediction import Predictions, check_inputs, input_range, predictions_from_logits
from zoo.registry import get_entry

__all__ = [
    "PACKAGE_DIR",
    "CertificateMismatchError",
    "CertifiedModel",
    "cache_dir",
    "check_certificate",
    "check_sha256",
    "load",
    "load_bytes",
]

# Bounds recomputed by the same engine agree to the last bits; this only absorbs summation order.
BOUND_TOLERANCE = 1e-9


class CertificateMismatchError(ValueError):
    """The weights do not satisfy the certificate that came with them: the file is refused."""


@dataclass(frozen=True)
class CertifiedModel:
    """A plain network in eval mode with the certificate re-computed from its weights."""

    model: nn.Module
    certificate: Certificate
    architecture: dict[str, Any]

    @property
    def preprocessing(self) -> dict[str, Any]:
        """The input space the certificate is stated in (what a caller must feed the model)."""
        return dict(self.certificate.preprocessing)

    @torch.no_grad()  # not inference_mode: its tensors could not be used with autograd afterwards
    def predict(self, inputs: torch.Tensor, *, clamp: bool = False, batch_size: int = 256) -> Predictions:
        """Class, margin and certified L2 radius of each example (what ``zoo serve`` answers).

        Args:
            inputs: (N, *certificate.input_shape) examples in the certificate's input space
                (:attr:`preprocessing`); any float dtype, any device (moved to the model's).
            clamp: clamp values outside the certificate's ``input_range`` into it (the examples
                changed are marked in ``Predictions.clamped``) instead of raising.
            batch_size: most examples run through the model at once (bounds the memory used).

        Returns:
            :class:`zoo.prediction.Predictions` of CPU tensors, one row per example.

        Raises:
            ValueError: the inputs do not have the certified shape or are not finite;
                ``zoo.prediction.InputRangeError`` when values are outside the input range and
                ``clamp`` is False.
        """
        shape = tuple(self.certificate.input_shape)
        if not isinstance(inputs, torch.Tensor) or tuple(inputs.shape[1:]) != shape or inputs.dim() < 2:
            got = tuple(inputs.shape) if isinstance(inputs, torch.Tensor) else type(inputs).__name__
            raise ValueError(
                f"predict takes a batch of shape (N, {', '.join(map(str, shape))}), got {got} "
                "(one example x: pass x.unsqueeze(0))"
            )
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        bounds = input_range(self.certificate.preprocessing)
        inputs, clamped = check_inputs(inputs, bounds, clamp=clamp)
        parameter = next(self.model.parameters())
        logits = [
            self.model(batch.to(device=parameter.device, dtype=parameter.dtype)).cpu()
            for batch in inputs.split(batch_size)
        ]
        return predictions_from_logits(torch.cat(logits), self.certificate.lipschitz_bound, clamped)


def check_certificate(model: nn.Module, embedded: Certificate, source: str) -> Certificate:
    """Recompute the certificate of ``model`` and compare it with ``embedded``.

    Returns the recomputed certificate; raises :class:`CertificateMismatchError` when the weights
    are not the ones the embedded certificate speaks for, or when its bound is lower than the bound
    the weights actually have.
    """
    computed = certify(model, embedded.input_shape, dict(embedded.preprocessing))
    if computed.weights_sha256 != embedded.weights_sha256:
        raise CertificateMismatchError(
            f"{source}: the weights do not match their certificate (sha256 {computed.weights_sha256[:12]}"
            f" != {embedded.weights_sha256[:12]}): the file was modified after it was certified"
        )
    if computed.lipschitz_bound > embedded.lipschitz_bound * (1 + BOUND_TOLERANCE):
        raise CertificateMismatchError(
            f"{source}: the certificate claims a Lipschitz bound of {embedded.lipschitz_bound:.6g} "
            f"but the weights have a bound of {computed.lipschitz_bound:.6g}"
        )
    return computed


PACKAGE_DIR = Path(__file__).parent
"""Shipped checkpoints live inside the package (``zoo/weights/``), so they load after ``pip install``."""


def cache_dir() -> Path:
    """Where downloaded checkpoints are kept: ``$TORCH_HOME/hub/checkpoints`` (torch's convention)."""
    torch_home = Path(os.environ.get("TORCH_HOME", Path.home() / ".cache" / "torch"))
    return torch_home / "hub" / "checkpoints"


DOWNLOAD_TIMEOUT = 60.0
"""Seconds a download may wait for the server (to connect, or between two chunks)."""

MAX_DOWNLOAD_BYTES = 2**31
"""Largest checkpoint downloaded (2 GiB): a server that sends more is cut off."""


def _download(url: str, target: Path, name: str, sha256: str, progress: bool) -> None:
    """Stream ``url`` into ``target`` with a progress bar (stderr), its sha256 computed on the way.

    The bytes go to a partial file beside ``target`` that becomes ``target`` only once complete and
    of hash ``sha256``: a failed, cut or mismatching download leaves nothing in the cache. A download
    killed outright leaves its partial file; it is removed by the next download of ``target``, which
    tells it from the partial file of a download still running by its lock (:mod:`zoo.locks`).
    """
    if os.environ.get("ZOO_OFFLINE") == "1":
        raise CheckpointError(
            f"{name}: not in the cache ({target}) and ZOO_OFFLINE=1 forbids downloading {url}"
        )
    digest = hashlib.sha256()
    partial = None
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        _remove_orphan_partials(target)
        fd, partial = _new_partial(target)
        with os.fdopen(fd, "wb") as file, urllib.request.urlopen(url, timeout=DOWNLOAD_TIMEOUT) as response:
            length = response.headers.get("Content-Length")
            total = int(length) if length and length.isdigit() else None
            if total is not None and total > MAX_DOWNLOAD_BYTES:
                raise CheckpointError(f"{name}: {url} is {total:,} bytes, above {MAX_DOWNLOAD_BYTES:,}")
            columns = (*Progress.get_default_columns()[:-1], DownloadColumn(), TransferSpeedColumn())
            console = Console(stderr=True, quiet=not progress)
            with Progress(*columns, console=console, transient=True) as bar:
                task = bar.add_task(f"downloading {name}", total=total)
                while chunk := response.read1(1 << 20):  # what has arrived, up to 1 MiB
                    file.write(chunk)
                    digest.update(chunk)
                    bar.advance(task, len(chunk))
                    if file.tell() > MAX_DOWNLOAD_BYTES:
                        raise CheckpointError(f"{name}: {url} sends more than {MAX_DOWNLOAD_BYTES:,} bytes")
            if total is not None and file.tell() != total:
                raise CheckpointError(f"{name}: {url} ended after {file.tell():,} of {total:,} bytes")
            file.flush()
            os.fsync(file.fileno())
        if digest.hexdigest() != sha256:
            raise CheckpointError(
                f"{name}: the file downloaded from {url} has sha256 {digest.hexdigest()}, "
                f"not the {sha256} recorded in models.yaml: refused (nothing was cached)"
            )
        # Closed, the partial file is unlocked (Windows cannot rename an open file): a sweep by another
        # process in this instant would make the rename fail, cleanly.
        os.replace(partial, target)
    except (OSError, http.client.HTTPException) as error:  # HTTPException: a malformed HTTP answer
        reason = str(error) if isinstance(error, OSError) else f"{type(error).__name__}: {error}"
        raise CheckpointError(f"{name}: cannot download {url} ({' '.join(reason.split())})") from error
    finally:
        if partial is not None:
            partial.unlink(missing_ok=True)


def _new_partial(target: Path) -> tuple[int, Path]:
    """A new partial file beside ``target`` (:func:`zoo.checkpoint.create_temporary`: the permissions
    ``open()`` gives), open for writing and locked for as long as it is open."""
    while True:
        fd, partial = create_temporary(target)
        # A sweep by another process may lock it first, then remove it: only a file still there is ours.
        try:
            if try_lock(fd) and os.path.samestat(os.fstat(fd), os.stat(partial)):
                return fd, partial
        except FileNotFoundError:
            pass
        os.close(fd)


def _remove_orphan_partials(target: Path) -> None:
    """Remove the partial files of downloads of ``target`` that were killed (no process holds their lock)."""
    for path in target.parent.glob(f".{glob.escape(target.name)}.*.tmp"):
        if not TEMPORARY_NAME.fullmatch(path.name):
            continue
        with contextlib.suppress(OSError):  # gone already, or held open (Windows): not an orphan to remove
            fd = os.open(path, os.O_RDWR)
            try:
                if try_lock(fd):
                    path.unlink()
            finally:
                os.close(fd)


def check_sha256(data: bytes, expected: str, source: str) -> None:
    """:class:`CheckpointError` unless the sha256 of ``data`` (the bytes of ``source``) is ``expected``
    (64 hex digits, case ignored)."""
    actual = hashlib.sha256(data).hexdigest()
    if actual != expected.strip().lower():
        raise CheckpointError(f"{source}: its sha256 is {actual}, not the expected {expected}")


def _resolve(source: str | os.PathLike, progress: bool) -> tuple[Path, bytes]:
    """The path and bytes of an existing checkpoint, or of the checkpoint of a registry entry: the
    shipped file, else the cache, else a download from its url. A registry entry's file is read once
    and those bytes are checked against the sha256 of models.yaml on every load, wherever they come
    from."""
    path = Path(source)
    if path.is_file():
        return path, path.read_bytes()
    if path.suffix == ".safetensors" or os.sep in str(source):
        raise CheckpointError(f"{source}: no such checkpoint file")
    entry = get_entry(str(source))
    if not entry.has_weights:
        raise CheckpointError(f"{entry.name} has no shipped weights: train it with `zoo train {entry.name}`")
    shipped = PACKAGE_DIR / entry.checkpoint if entry.checkpoint else None
    if shipped is not None and shipped.is_file():
        path = shipped
    elif entry.url is not None:
        path = cache_dir() / f"{entry.name}-{entry.sha256[:10]}.safetensors"
        if not path.is_file():
            _download(entry.url, path, entry.name, entry.sha256, progress)
    else:
        raise CheckpointError(f"{entry.name}: checkpoint file {shipped} is missing")
    data = path.read_bytes()
    if hashlib.sha256(data).hexdigest() != entry.sha256:
        raise CheckpointError(
            f"{entry.name}: {path} does not have the sha256 recorded in models.yaml: corrupted or modified"
        )
    return path, data


def load(
    source: str | os.PathLike,
    *,
    device: str | torch.device = "cpu",
    expected_sha256: str | None = None,
    max_elements: int = DEFAULT_MAX_ELEMENTS,
    progress: bool = True,
) -> CertifiedModel:
    """Load a certified model from a checkpoint path or a models.yaml name.

    The weights are loaded into the plain architecture (no unpickling), then the certificate is
    recomputed from them and compared with the embedded one; any mismatch refuses the file.

    Args:
        source: a checkpoint path, or a models.yaml name (its file is pinned by the registry's sha256).
        device: where the model is put.
        expected_sha256: the sha256 the file's bytes must have (pin a file obtained elsewhere).
        max_elements: largest input example (elements) the recorded architecture may declare.
        progress: draw a progress bar on stderr while downloading a registry checkpoint.

    Raises:
        CheckpointError: a missing, unreadable, malformed or unpinned file, or one too large.
        CertificateMismatchError: weights that do not satisfy the file's certificate.
    """
    path, data = _resolve(source, progress)
    if expected_sha256 is not None:
        check_sha256(data, expected_sha256, str(path))
    return load_bytes(data, str(path), device=device, max_elements=max_elements)


def load_bytes(
    data: bytes,
    source: str,
    *,
    device: str | torch.device = "cpu",
    max_elements: int = DEFAULT_MAX_ELEMENTS,
) -> CertifiedModel:
    """:func:`load` for the bytes of a checkpoint already read; ``source`` names them in errors."""
    checkpoint = parse_checkpoint(data, source)
    arch = checkpoint.architecture
    try:
        check_elements(arch["input_shape"], "the recorded input", max_elements)
    except SizeLimitError as error:
        raise CheckpointError(f"{source}: {error}") from None
    with torch.device("meta"), warnings.catch_warnings():
        warnings.simplefilter("ignore")  # e.g. "Initializing zero-element tensors": refused just below
        _check_tensors(_build(checkpoint, source), checkpoint.state_dict, source)
    model = _build(checkpoint, source)
    model.load_state_dict(checkpoint.state_dict, strict=True)
    try:
        certificate = check_certificate(model, checkpoint.certificate, source)
    except (RuntimeError, ValueError) as error:
        if isinstance(error, CertificateMismatchError):
            raise
        raise CheckpointError(f"{source}: the weights cannot be certified ({error})") from error
    return CertifiedModel(model.to(device).eval(), certificate, arch)


def _build(checkpoint: CertifiedCheckpoint, source: str) -> nn.Module:
    """The plain network of the checkpoint's recorded architecture (on the default device)."""
    arch = checkpoint.architecture
    try:
        return build(
            arch["name"],
            input_shape=tuple(arch["input_shape"]),
            num_classes=arch["num_classes"],
            parametrized=False,
            **arch.get("options", {}),
        )
    except Exception as error:  # options come from the file: whatever they break is the file's fault
        message = " ".join(str(error).split())
        raise CheckpointError(f"{source}: the recorded architecture cannot be built ({message})") from error


def _check_tensors(model: nn.Module, tensors: Mapping[str, torch.Tensor], source: str) -> None:
    """:class:`CheckpointError` unless the file holds exactly the tensors ``model`` (built on the meta
    device, so at no cost) has, name by name and shape by shape: an architecture recorded with huge
    widths is refused before it is built for real."""
    expected = {name: tuple(t.shape) for name, t in model.state_dict().items()}
    found = {name: tuple(t.shape) for name, t in tensors.items()}
    for name in sorted(expected.keys() | found.keys()):
        if expected.get(name) != found.get(name):
            size = sum(math.prod(shape) for shape in expected.values())
            raise CheckpointError(
                f"{source}: the recorded architecture ({size:,} weights) does not fit the file's "
                f"tensors: {name} is {_describe(expected.get(name))} in the architecture, "
                f"{_describe(found.get(name))} in the file"
            )


def _describe(shape: tuple[int, ...] | None) -> str:
    return "absent" if shape is None else f"of shape {shape}"
