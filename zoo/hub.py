"""``zoo.load``: the plain model, its certificate re-computed and checked, from a file or a name."""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from zoo.certificate import Certificate
from zoo.certify import certify
from zoo.checkpoint import CheckpointError, atomic_write_bytes, parse_checkpoint
from zoo.models import build
from zoo.prediction import Predictions, check_inputs, input_range, predictions_from_logits
from zoo.registry import get_entry

__all__ = [
    "PACKAGE_DIR",
    "CertificateMismatchError",
    "CertifiedModel",
    "cache_dir",
    "check_certificate",
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


def _download(url: str, target: Path, name: str) -> None:
    if os.environ.get("ZOO_OFFLINE") == "1":
        raise CheckpointError(
            f"{name}: not in the cache ({target}) and ZOO_OFFLINE=1 forbids downloading {url}"
        )
    import urllib.request

    try:
        with urllib.request.urlopen(url, timeout=60) as response:
            data = response.read()
    except OSError as error:
        raise CheckpointError(f"{name}: cannot download {url} ({error})") from error
    atomic_write_bytes(target, data)


def _resolve(source: str | os.PathLike) -> tuple[Path, bytes]:
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
            _download(entry.url, path, entry.name)
    else:
        raise CheckpointError(f"{entry.name}: checkpoint file {shipped} is missing")
    data = path.read_bytes()
    if hashlib.sha256(data).hexdigest() != entry.sha256:
        raise CheckpointError(
            f"{entry.name}: {path} does not have the sha256 recorded in models.yaml: corrupted or modified"
        )
    return path, data


def load(source: str | os.PathLike, *, device: str | torch.device = "cpu") -> CertifiedModel:
    """Load a certified model from a checkpoint path or a models.yaml name.

    The weights are loaded into the plain architecture (no unpickling), then the certificate is
    recomputed from them and compared with the embedded one; any mismatch refuses the file.
    """
    path, data = _resolve(source)
    return load_bytes(data, str(path), device=device)


def load_bytes(data: bytes, source: str, *, device: str | torch.device = "cpu") -> CertifiedModel:
    """:func:`load` for the bytes of a checkpoint already read; ``source`` names them in errors."""
    checkpoint = parse_checkpoint(data, source)
    arch = checkpoint.architecture
    try:
        model = build(
            arch["name"],
            input_shape=tuple(arch["input_shape"]),
            num_classes=arch["num_classes"],
            parametrized=False,
            **arch.get("options", {}),
        )
        model.load_state_dict(checkpoint.state_dict, strict=True)
    except (KeyError, TypeError, ValueError, RuntimeError) as error:
        raise CheckpointError(f"{source}: weights do not fit the recorded architecture ({error})") from error
    certificate = check_certificate(model, checkpoint.certificate, source)
    return CertifiedModel(model.to(device).eval(), certificate, arch)
