"""The certificate document: what it records, its canonical JSON form, the hash of the weights.

A certificate is stored as one canonical JSON string (sorted keys, no whitespace) so that a file that
embeds it has reproducible bytes. It is always *computed* (see ``zoo.certify``); this module only
describes and serialises it.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from collections.abc import Mapping
from typing import Any

import torch

__all__ = ["FORMAT_VERSION", "Certificate", "LayerBound", "weights_sha256"]

FORMAT_VERSION = 1


@dataclasses.dataclass(frozen=True)
class LayerBound:
    """Sound upper bound of one layer's L2 Lipschitz constant.

    Attributes:
        name: module path in the network (``"3"``, ``"blocks.0.conv"``), or a node name in an artifact.
        op: the operation (``"Conv2d"``, ``"Linear"``, ``"GroupSort2"``...).
        bound: float64 upper bound, safety margin included.
        input_shape: shape of one input example of this layer (no batch dimension).
    """

    name: str
    op: str
    bound: float
    input_shape: tuple[int, ...]


@dataclasses.dataclass(frozen=True)
class Certificate:
    """A sound upper bound of a network's L2 Lipschitz constant and how it was obtained.

    Attributes:
        lipschitz_bound: global bound (output L2 change per unit of input L2 change).
        layers: per-layer bounds, in computation order.
        method: how the per-layer bounds were combined and computed.
        relative_margin: relative safety margin already included in every bound.
        input_shape: shape (C, H, W) of one input example the bound is valid for.
        preprocessing: the input space the bound is stated in (e.g. pixel range, normalisation).
        weights_sha256: sha256 of the weights the certificate speaks for (see :func:`weights_sha256`).
        library_version: version of lipschitz-zoo that computed it.
    """

    lipschitz_bound: float
    layers: tuple[LayerBound, ...]
    method: str
    relative_margin: float
    input_shape: tuple[int, ...]
    preprocessing: Mapping[str, Any]
    weights_sha256: str
    library_version: str

    def to_dict(self) -> dict[str, Any]:
        data = dataclasses.asdict(self)
        data["format"] = FORMAT_VERSION
        return data

    def to_json(self) -> str:
        """Canonical JSON: sorted keys, compact separators, floats as shortest round-trip reprs."""
        return json.dumps(self.to_dict(), sort_keys=True, separators=(",", ":"), allow_nan=False)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Certificate:
        """Parse a certificate dict; raises ValueError naming the missing or malformed field."""
        if data.get("format") != FORMAT_VERSION:
            raise ValueError(
                f"certificate format {data.get('format')!r} is not supported (expected {FORMAT_VERSION})"
            )
        try:
            layers = tuple(
                LayerBound(
                    name=str(layer["name"]),
                    op=str(layer["op"]),
                    bound=float(layer["bound"]),
                    input_shape=tuple(int(d) for d in layer["input_shape"]),
                )
                for layer in data["layers"]
            )
            return cls(
                lipschitz_bound=float(data["lipschitz_bound"]),
                layers=layers,
                method=str(data["method"]),
                relative_margin=float(data["relative_margin"]),
                input_shape=tuple(int(d) for d in data["input_shape"]),
                preprocessing=dict(data["preprocessing"]),
                weights_sha256=str(data["weights_sha256"]),
                library_version=str(data["library_version"]),
            )
        except (KeyError, TypeError, ValueError) as error:
            raise ValueError(f"malformed certificate: {error!r}") from error

    @classmethod
    def from_json(cls, text: str) -> Certificate:
        try:
            data = json.loads(text)
        except json.JSONDecodeError as error:
            raise ValueError(f"certificate is not valid JSON: {error}") from error
        if not isinstance(data, dict):
            raise ValueError("certificate JSON must be an object")
        return cls.from_dict(data)


def weights_sha256(state_dict: Mapping[str, torch.Tensor]) -> str:
    """sha256 over every tensor of ``state_dict``: name, dtype, shape and raw bytes, in name order.

    Independent of the file format, so the same weights hash the same in a checkpoint and in memory.
    """
    digest = hashlib.sha256()
    for name in sorted(state_dict):
        tensor = state_dict[name].detach().cpu().contiguous()
        header = f"{name}|{tensor.dtype}|{tuple(tensor.shape)}|"
        digest.update(header.encode())
        digest.update(tensor.reshape(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()
