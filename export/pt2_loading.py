"""Loading a ``.pt2`` file (torch.export) without unpickling anything but plain tensors.

``torch.export.load`` unpickles with ``weights_only=False``, which can run any code the file holds,
in three places: weights or constants stored with ``use_pickle`` (tensor subclasses), custom and
opaque constant objects, and the sample inputs when a ``weights_only=True`` load of them fails (it
then falls back). Old archives keep whole pickled state dicts. The zoo writes none of these, so
:func:`check_pt2_archive` reads the archive's JSON configs (no unpickling), loads the sample inputs
itself with ``weights_only=True``, and refuses anything else before ``torch.export.load`` runs: the
fallback is never reached, since the same bytes load the same way.
"""

from __future__ import annotations

import io
import json
import os
import zipfile
from pathlib import Path

import torch
from torch.export.pt2_archive import constants as layout

from export.propagation import VerificationError

__all__ = ["check_pt2_archive", "load_pt2"]


def _refuse(path: str | os.PathLike, why: str) -> VerificationError:
    return VerificationError(f"{path}: refused: {why}; loading it would unpickle arbitrary objects")


def check_pt2_archive(path: str | os.PathLike) -> None:
    """Raise :class:`VerificationError` unless every payload of the ``.pt2`` archive at ``path`` is
    a plain tensor: no ``use_pickle`` weight or constant, no custom / opaque object, no legacy
    pickled state dict, sample inputs loadable with ``weights_only=True``."""
    try:
        with zipfile.ZipFile(path) as archive:
            names = archive.namelist()
            roots = {name.split("/", 1)[0] for name in names}
            if len(roots) != 1 or not all("/" in name for name in names):
                raise VerificationError(f"{path}: not a torch.export archive (no single root folder)")
            root = f"{roots.pop()}/"
            files = {name.removeprefix(root) for name in names}
            models = [
                name.removeprefix(layout.MODELS_DIR).removesuffix(".json")
                for name in files
                if name.startswith(layout.MODELS_DIR) and name.endswith(".json")
            ]
            for model in models:
                _check_model_payloads(path, archive, root, files, model)
    except (zipfile.BadZipFile, OSError) as error:
        raise VerificationError(f"{path}: not a readable torch.export file ({error})") from error


def _check_model_payloads(
    path: str | os.PathLike, archive: zipfile.ZipFile, root: str, files: set[str], model: str
) -> None:
    for legacy in (f"{layout.WEIGHTS_DIR}{model}.pt", f"{layout.CONSTANTS_DIR}{model}.pt"):
        if legacy in files:
            raise _refuse(path, f"{legacy} is a pickled state dict (legacy archive format)")
    configs = {
        layout.WEIGHTS_CONFIG_FILENAME_FORMAT.format(model): layout.WEIGHT_FILENAME_PREFIX,
        layout.CONSTANTS_CONFIG_FILENAME_FORMAT.format(model): layout.TENSOR_CONSTANT_FILENAME_PREFIX,
    }
    for config_file, tensor_prefix in configs.items():
        if config_file not in files:
            continue
        payloads = json.loads(archive.read(root + config_file))["config"]
        for name, payload in payloads.items():
            if payload.get("use_pickle") or not payload["path_name"].startswith(tensor_prefix):
                raise _refuse(path, f"{name!r} is stored as a pickled object ({payload['path_name']})")
    sample_inputs = layout.SAMPLE_INPUTS_FILENAME_FORMAT.format(model)
    if sample_inputs in files:
        try:
            torch.load(io.BytesIO(archive.read(root + sample_inputs)), weights_only=True)
        except Exception as error:  # whatever weights_only refuses, torch.export.load would unpickle
            reasons = [line for line in str(error).splitlines() if "GLOBAL" in line]
            detail = f" ({reasons[0].strip()})" if reasons else ""
            raise _refuse(path, f"its sample inputs are not plain tensors{detail}") from error


def load_pt2(path: str | os.PathLike, extra_file: str) -> tuple[torch.export.ExportedProgram, str]:
    """The program of the ``.pt2`` file at ``path`` (after :func:`check_pt2_archive`) and the text
    of its extra file ``extra_file`` ('' when it has none).

    Raises:
        VerificationError: an unreadable or refused file.
    """
    check_pt2_archive(path)
    extra = {extra_file: ""}
    try:
        program = torch.export.load(os.fspath(Path(path)), extra_files=extra)
    except (RuntimeError, ValueError, OSError, KeyError) as error:
        raise VerificationError(f"{path}: not a readable torch.export file ({error})") from error
    return program, extra[extra_file]
