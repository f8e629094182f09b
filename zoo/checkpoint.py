"""Certified checkpoints: plain weights in safetensors with one canonical JSON metadata value.

The single metadata key ``zoo`` holds ``{"architecture": ..., "certificate": ...}`` as canonical JSON,
so the same weights always give the same file bytes. Nothing here unpickles anything, and the metadata
is parsed strictly (:func:`zoo.certificate.parse_json`): a file of unknown origin gets a
:class:`CheckpointError` naming what is wrong, never another exception.
"""

from __future__ import annotations

import json
import os
import re
import secrets
import stat
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load as safetensors_load
from safetensors.torch import save as safetensors_save

from zoo.certificate import Certificate, parse_json, parse_shape

__all__ = [
    "METADATA_KEY",
    "TEMPORARY_NAME",
    "CertifiedCheckpoint",
    "CheckpointError",
    "atomic_write_bytes",
    "create_temporary",
    "parse_checkpoint",
    "read_checkpoint",
    "remove_orphan_temporaries",
    "write_checkpoint",
]

METADATA_KEY = "zoo"


class CheckpointError(ValueError):
    """A checkpoint file is missing, corrupted, or not a certified zoo checkpoint."""


@dataclass(frozen=True)
class CertifiedCheckpoint:
    """Contents of a certified checkpoint.

    Attributes:
        state_dict: plain (folded) weights.
        architecture: ``{"name", "input_shape", "num_classes", "options"}`` to rebuild the network.
        certificate: the certificate embedded when the file was written (to be re-checked).
    """

    state_dict: dict[str, torch.Tensor]
    architecture: dict[str, Any]
    certificate: Certificate


TEMPORARY_TOKEN_BYTES = 6
TEMPORARY_NAME = re.compile(rf"\..+\.[0-9a-f]{{{2 * TEMPORARY_TOKEN_BYTES}}}\.tmp")


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> None:
    """Write ``data`` to ``path`` so that a crash leaves either the old file or the new one.

    The bytes go to a temporary file in the same directory, are flushed to disk, then renamed over
    ``path`` (``os.replace`` is atomic on POSIX and Windows). The file gets the permissions that
    ``open(path, "wb")`` would give it: those of the file it replaces, or for a new file 0o666 less
    the umask (``tempfile.mkstemp`` would make every file owner-only, 0o600).
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = create_temporary(path)
    try:
        with os.fdopen(fd, "wb") as file:
            if path.exists():
                os.chmod(file.fileno(), stat.S_IMODE(path.stat().st_mode))
            file.write(data)
            file.flush()
            os.fsync(file.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def create_temporary(path: Path) -> tuple[int, Path]:
    """A new file beside ``path`` (``.NAME.<random>.tmp``), opened for writing, created with mode
    0o666 so that the kernel applies the umask exactly as for ``open()``."""
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_BINARY", 0)
    while True:
        tmp = path.with_name(f".{path.name}.{secrets.token_hex(TEMPORARY_TOKEN_BYTES)}.tmp")
        try:
            return os.open(tmp, flags, 0o666), tmp
        except FileExistsError:
            continue


def remove_orphan_temporaries(directory: str | os.PathLike) -> list[Path]:
    """Delete the temporary files of :func:`atomic_write_bytes` that a killed writer left in
    ``directory`` (``.NAME.<12 hex digits>.tmp``); returns them. Only for a directory the caller
    owns (no writer may be active in it)."""
    orphans = sorted(path for path in Path(directory).glob(".*.tmp") if TEMPORARY_NAME.fullmatch(path.name))
    for path in orphans:
        path.unlink(missing_ok=True)
    return orphans


def write_checkpoint(
    path: str | os.PathLike,
    state_dict: dict[str, torch.Tensor],
    architecture: dict[str, Any],
    certificate: Certificate,
) -> None:
    """Write plain weights with their architecture and certificate, atomically."""
    metadata = json.dumps(
        {"architecture": architecture, "certificate": certificate.to_dict()},
        sort_keys=True,
        separators=(",", ":"),
        allow_nan=False,
    )
    tensors = {name: t.detach().cpu().contiguous() for name, t in state_dict.items()}
    atomic_write_bytes(path, safetensors_save(tensors, metadata={METADATA_KEY: metadata}))


def read_checkpoint(path: str | os.PathLike) -> CertifiedCheckpoint:
    """Read a certified checkpoint; raises :class:`CheckpointError` saying what is wrong with it."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: no such checkpoint file")
    return parse_checkpoint(path.read_bytes(), str(path))


def parse_checkpoint(data: bytes, source: str) -> CertifiedCheckpoint:
    """A certified checkpoint from the bytes of its file (named ``source`` in errors)."""
    try:
        state_dict = safetensors_load(data)
        header_size = int.from_bytes(data[:8], "little")
        header = parse_json(data[8 : 8 + header_size], "the safetensors header")
    except (SafetensorError, ValueError) as error:
        raise CheckpointError(f"{source}: not a readable safetensors file ({error})") from error
    metadata = (header.get("__metadata__") or {}).get(METADATA_KEY)
    if metadata is None:
        raise CheckpointError(f"{source}: no '{METADATA_KEY}' metadata: not a certified zoo checkpoint")
    try:
        document = parse_json(metadata, f"the '{METADATA_KEY}' metadata")
        if not isinstance(document, dict):
            raise ValueError(f"it must be a JSON object, got {type(document).__name__}")
        architecture = _architecture(document.get("architecture"))
        certificate = Certificate.from_dict(document.get("certificate"))
    except ValueError as error:
        raise CheckpointError(f"{source}: malformed '{METADATA_KEY}' metadata ({error})") from error
    if certificate.input_shape != tuple(architecture["input_shape"]):
        raise CheckpointError(
            f"{source}: the certificate is for inputs of shape {certificate.input_shape}, the recorded "
            f"architecture takes {tuple(architecture['input_shape'])}"
        )
    return CertifiedCheckpoint(state_dict, architecture, certificate)


def _architecture(data: Any) -> dict[str, Any]:
    """The recorded architecture, its fields checked: ``name`` (text), ``input_shape`` (positive
    sizes), ``num_classes`` (a positive integer), ``options`` (an object, optional)."""
    if not isinstance(data, dict):
        raise ValueError(f"architecture must be a JSON object, got {data!r}")
    if not isinstance(data.get("name"), str):
        raise ValueError(f"architecture.name must be a string, got {data.get('name')!r}")
    parse_shape(data.get("input_shape"), "architecture.input_shape")
    classes = data.get("num_classes")
    if not isinstance(classes, int) or isinstance(classes, bool) or classes < 1:
        raise ValueError(f"architecture.num_classes must be a positive integer, got {classes!r}")
    if not isinstance(data.get("options", {}), dict):
        raise ValueError(f"architecture.options must be an object, got {data['options']!r}")
    return dict(data)
