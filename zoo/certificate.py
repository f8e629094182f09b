"""The certificate document: what it records, its canonical JSON form, the hash of the weights.

A certificate is stored as one canonical JSON string (sorted keys, no whitespace) so that a file that
embeds it has reproducible bytes. It is always *computed* (see ``zoo.certify``); this module only
describes and serialises it.

Parsing is strict, since certificates are read from files of unknown origin: every bound and margin
is a finite non-negative JSON number (NaN, infinities, strings and booleans are refused), every shape
a non-empty list of positive integers, the weights hash 64 hex digits; a document nested too deeply
for Python's parser is a ValueError like any other malformed one.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import re
from collections.abc import Mapping
from typing import Any

import torch

__all__ = ["FORMAT_VERSION", "Certificate", "LayerBound", "parse_json", "parse_shape", "weights_sha256"]

FORMAT_VERSION = 1

_SHA256 = re.compile(r"[0-9a-f]{64}")


def parse_json(text: str | bytes, what: str) -> Any:
    """The JSON document ``text``; a ValueError naming ``what`` when it is not JSON, holds NaN or an
    infinity, or nests too deeply for Python's recursive parser (a RecursionError otherwise)."""

    def refuse_constant(name: str) -> None:
        raise ValueError(f"{what} holds {name}, which is not a number")

    try:
        return json.loads(text, parse_constant=refuse_constant)
    except json.JSONDecodeError as error:
        raise ValueError(f"{what} is not valid JSON: {error}") from error
    except UnicodeDecodeError as error:
        raise ValueError(f"{what} is not UTF-8 text: {error}") from error
    except RecursionError:
        raise ValueError(f"{what} is nested too deeply to be read") from None


def _number(value: Any, field: str) -> float:
    """A finite non-negative JSON number (int or float, never a bool or a string)."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ValueError(f"{field} must be a number, got {value!r}")
    value = float(value)
    if not math.isfinite(value) or value < 0:
        raise ValueError(f"{field} must be finite and non-negative, got {value!r}")
    return value


def parse_shape(value: Any, field: str) -> tuple[int, ...]:
    """``value`` as a shape: a non-empty list of positive integers (ValueError naming ``field``)."""
    if (
        not isinstance(value, list | tuple)
        or not value
        or not all(isinstance(d, int) and not isinstance(d, bool) and d > 0 for d in value)
    ):
        raise ValueError(f"{field} must be a non-empty list of positive integers, got {value!r}")
    return tuple(value)


def _text(value: Any, field: str) -> str:
    if not isinstance(value, str):
        raise ValueError(f"{field} must be a string, got {value!r}")
    return value


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
        if not isinstance(data, Mapping):
            raise ValueError(f"a certificate must be a JSON object, got {type(data).__name__}")
        if data.get("format") != FORMAT_VERSION:
            raise ValueError(
                f"certificate format {data.get('format')!r} is not supported (expected {FORMAT_VERSION})"
            )
        try:
            if not isinstance(data["layers"], list | tuple):
                raise ValueError(f"layers must be a list, got {data['layers']!r}")
            layers = tuple(_layer(layer, f"layers[{i}]") for i, layer in enumerate(data["layers"]))
            if not isinstance(data["preprocessing"], Mapping):
                raise ValueError(f"preprocessing must be an object, got {data['preprocessing']!r}")
            digest = _text(data["weights_sha256"], "weights_sha256")
            if not _SHA256.fullmatch(digest):
                raise ValueError(f"weights_sha256 must be 64 lower-case hex digits, got {digest!r}")
            return cls(
                lipschitz_bound=_number(data["lipschitz_bound"], "lipschitz_bound"),
                layers=layers,
                method=_text(data["method"], "method"),
                relative_margin=_number(data["relative_margin"], "relative_margin"),
                input_shape=parse_shape(data["input_shape"], "input_shape"),
                preprocessing=dict(data["preprocessing"]),
                weights_sha256=digest,
                library_version=_text(data["library_version"], "library_version"),
            )
        except KeyError as error:
            raise ValueError(f"malformed certificate: no field {error}") from None
        except ValueError as error:
            raise ValueError(f"malformed certificate: {error}") from None

    @classmethod
    def from_json(cls, text: str) -> Certificate:
        """Parse the JSON form (see :meth:`from_dict` and :func:`parse_json` for what is refused)."""
        return cls.from_dict(parse_json(text, "the certificate"))


def _layer(data: Any, field: str) -> LayerBound:
    if not isinstance(data, Mapping):
        raise ValueError(f"{field} must be an object, got {data!r}")
    try:
        return LayerBound(
            name=_text(data["name"], f"{field}.name"),
            op=_text(data["op"], f"{field}.op"),
            bound=_number(data["bound"], f"{field}.bound"),
            input_shape=parse_shape(data["input_shape"], f"{field}.input_shape"),
        )
    except KeyError as error:
        raise ValueError(f"{field} has no field {error}") from None


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
