"""Loading a ``.pt2`` file (torch.export) of unknown origin: what torch.export.load is shown is checked.

``torch.export.load`` runs code from a crafted file in many places: it unpickles pickled weights,
constants, custom objects and (when a ``weights_only`` load fails) sample inputs without restriction;
it ``dlopen``\\ s AOTInductor shared libraries under ``data/aotinductor/``; it passes the symbolic
shape expressions of the program to ``sympy.sympify`` (which evaluates Python); ``module()`` executes
the program's ``guards_code`` as Python; and a node may call any callable reachable from ``torch``
(``torch.os.system`` among them). It also falls back to a legacy loader, with ``zipfile`` and
pickled state dicts, when the archive does not load.

So :func:`load_pt2` never hands it the file. The archive is read with torch's own reader
(:mod:`export.archives`: no duplicated entry, no inflation), and every entry must be one that
``torch.export.save`` writes for one plain program named ``model`` (an allow-list: exact names, so
``*.JSON`` or ``Models/`` are unknown entries): the format markers, the program, the weights and
constants configs and the raw tensors they name, the sample inputs and ``extra/`` text files. The
configs must describe raw CPU tensors that lie inside their entries (no pickles, nothing created
from a declared size alone); the program may only call aten operators and a few pure Python
operators, its symbolic expressions must use sympy's arithmetic on shape symbols only, and it must
hold no guard code and no custom objects. A new archive is then written in memory, by torch's writer,
from exactly the entries checked (the sample inputs left empty: nothing of the file is unpickled),
and that is what ``torch.export.load`` reads.

What remains is the program itself: aten operators are torch's own C++ kernels, but some reach
outside the process (``aten::from_file`` maps a file, ``aten::save`` writes one). ``zoo verify``
therefore runs the program in a confined child process (:mod:`export.sandbox`); call this module
directly only in a process you would let the file's program run in.
"""

from __future__ import annotations

import io
import logging
import os
import re
from collections.abc import Iterator
from typing import Any

import torch
from torch._export.serde.schema import SCHEMA_VERSION
from torch._export.serde.serialize import _TORCH_TO_SERIALIZE_DTYPE
from torch.export.pt2_archive import constants as layout

from export.archives import Archive, read_archive
from export.propagation import VerificationError
from zoo.certificate import parse_json
from zoo.limits import DEFAULT_MAX_ELEMENTS, SizeLimitError, check_elements

__all__ = ["check_pt2_archive", "load_pt2"]

MODEL = "model"
"""The one program a zoo ``.pt2`` file holds (``torch.export.save`` names a single program so)."""

_WEIGHTS_CONFIG = layout.WEIGHTS_CONFIG_FILENAME_FORMAT.format(MODEL)
_CONSTANTS_CONFIG = layout.CONSTANTS_CONFIG_FILENAME_FORMAT.format(MODEL)
_PROGRAM = layout.MODELS_FILENAME_FORMAT.format(MODEL)
_SAMPLE_INPUTS = layout.SAMPLE_INPUTS_FILENAME_FORMAT.format(MODEL)
_MARKERS = {
    layout.ARCHIVE_FORMAT_PATH: layout.ARCHIVE_FORMAT_VALUE,
    layout.ARCHIVE_VERSION_PATH: layout.ARCHIVE_VERSION_VALUE,
}
_WRITER_RECORDS = frozenset({".data/version", "version", "byteorder", ".data/serialization_id"})
"""Entries torch's zip writer adds to every archive by itself (not copied: the new writer adds its own)."""

_TENSOR_ENTRY = {
    _WEIGHTS_CONFIG: re.compile(re.escape(layout.WEIGHTS_DIR + layout.WEIGHT_FILENAME_PREFIX) + r"\d+"),
    _CONSTANTS_CONFIG: re.compile(
        re.escape(layout.CONSTANTS_DIR + layout.TENSOR_CONSTANT_FILENAME_PREFIX) + r"\d+"
    ),
}
_EXTRA_ENTRY = re.compile(re.escape(layout.EXTRA_DIR) + r"[A-Za-z0-9_.-]+")

_ATEN_TARGET = re.compile(r"torch\.ops\.aten\.([a-z0-9_]+)\.([a-zA-Z0-9_]+)")
_PYTHON_TARGETS = frozenset(
    {f"_operator.{name}" for name in ("getitem", "add", "sub", "mul", "floordiv", "mod", "neg")}
    | {"torch.sym_int", "torch.sym_float", "torch.sym_max", "torch.sym_min", "torch.sym_not"}
)
"""Callables other than aten operators a program may name: pure arithmetic on shapes."""

_SYMPY_NAMES = frozenset(
    {"Symbol", "Integer", "Rational", "Max", "Min", "Mod", "FloorDiv", "CeilDiv", "CleanDiv"}
    | {"PythonMod", "ModularIndexing", "IntTrueDiv", "FloorToInt", "CeilToInt", "TruncToInt"}
    | {"Eq", "Ne", "Lt", "Le", "Gt", "Ge", "And", "Or", "Not", "True", "False"}
    | {"positive", "integer", "nonnegative", "real"}
)
_SYMBOL = re.compile(r"[a-z]+\d+")
_EXPRESSION = re.compile(r"[A-Za-z0-9_\s'+\-*/%(),=<>]*")
_QUOTED = re.compile(r"'([^']*)'")
_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")

_DTYPES = {code.value: dtype for dtype, code in _TORCH_TO_SERIALIZE_DTYPE.items() if not dtype.is_complex}
"""torch.export's dtype codes of the tensors a payload may hold."""


def _refuse(path: str | os.PathLike, why: str) -> VerificationError:
    return VerificationError(f"{path}: refused: {why}")


def check_pt2_archive(path: str | os.PathLike, max_elements: int = DEFAULT_MAX_ELEMENTS) -> bytes:
    """The bytes of a new ``.pt2`` archive holding exactly the checked entries of the one at ``path``
    (see the module docstring), written by torch's writer; what :func:`load_pt2` loads. One example
    of each program input may have at most ``max_elements`` elements.

    Raises:
        VerificationError: an unreadable file, or one refused, naming the entry and the reason.
    """
    archive = read_archive(path, "torch.export", max_inflation=0)  # the writer stores, never deflates
    unknown = [name for name in archive.sizes if not _allowed(name)]
    if unknown:
        raise _refuse(
            path,
            f"unknown entry {unknown[0]!r} (a plain torch.export program holds only the program "
            f"'{MODEL}', its weights, constants, sample inputs and extra files)",
        )
    for marker, value in _MARKERS.items():
        if marker not in archive.sizes or archive.read(marker).decode(errors="replace") != value:
            raise VerificationError(f"{path}: not a torch.export archive ({marker} is not {value!r})")
    for required in (_PROGRAM, _WEIGHTS_CONFIG, _CONSTANTS_CONFIG, _SAMPLE_INPUTS):
        if required not in archive.sizes:
            raise VerificationError(f"{path}: not a complete torch.export archive (no {required})")
    referenced = set()
    for config in (_WEIGHTS_CONFIG, _CONSTANTS_CONFIG):
        referenced |= _check_payloads(path, archive, config)
    stray = sorted(name for name in archive.sizes if _is_tensor_entry(name) and name not in referenced)
    if stray:
        raise _refuse(path, f"entry {stray[0]!r} is not named by the weights or constants config")
    try:
        program = parse_json(archive.read(_PROGRAM), _PROGRAM)
    except ValueError as error:
        raise VerificationError(f"{path}: {error}") from None
    _check_program(path, program)
    try:
        _check_inputs(program, max_elements)
    except (SizeLimitError, KeyError, TypeError, AttributeError) as error:
        raise _refuse(path, f"{_PROGRAM}: {error!s}") from None
    return _rewritten(archive)


def _allowed(name: str) -> bool:
    return (
        name in _MARKERS
        or name in _WRITER_RECORDS
        or name in (_PROGRAM, _WEIGHTS_CONFIG, _CONSTANTS_CONFIG, _SAMPLE_INPUTS)
        or _is_tensor_entry(name)
        or _EXTRA_ENTRY.fullmatch(name) is not None
    )


def _is_tensor_entry(name: str) -> bool:
    return any(pattern.fullmatch(name) for pattern in _TENSOR_ENTRY.values())


def _check_payloads(path: str | os.PathLike, archive: Archive, config: str) -> set[str]:
    """The entries the weights or constants ``config`` names, once each payload is shown to be a raw
    CPU tensor of an accepted dtype lying inside its entry."""
    try:
        document = parse_json(archive.read(config), config)
        payloads = document["config"]
        if not isinstance(payloads, dict):
            raise ValueError("its 'config' is not an object")
    except (ValueError, KeyError, TypeError) as error:
        raise VerificationError(f"{path}: malformed {config} ({error})") from None
    entries = set()
    for name, payload in payloads.items():
        try:
            entry = _check_payload(archive, config, payload)
        except (ValueError, KeyError, TypeError) as error:
            raise _refuse(path, f"payload {name!r} of {config}: {error}") from None
        entries.add(entry)
    return entries


def _check_payload(archive: Archive, config: str, payload: dict[str, Any]) -> str:
    if payload.get("use_pickle") is not False:
        raise ValueError("stored as a pickled object (use_pickle), which loading would unpickle")
    entry = config.rsplit("/", 1)[0] + "/" + str(payload["path_name"])
    if not _TENSOR_ENTRY[config].fullmatch(entry) or entry not in archive.sizes:
        raise ValueError(f"its entry {entry!r} is not a raw tensor of this archive")
    meta = payload["tensor_meta"]
    if meta["device"]["type"] != "cpu":
        raise ValueError(f"a tensor on {meta['device']['type']!r}: the file must be exported on the CPU")
    dtype = _DTYPES.get(meta["dtype"])
    if dtype is None:
        raise ValueError(f"unknown dtype code {meta['dtype']!r}")
    sizes, strides = _ints(meta["sizes"]), _ints(meta["strides"])
    offset = _ints([meta["storage_offset"]])[0]
    if len(sizes) != len(strides) or min(sizes + strides + [offset], default=0) < 0:
        raise ValueError(f"inconsistent sizes {sizes}, strides {strides}, offset {offset}")
    stored = archive.sizes[entry] // dtype.itemsize
    needed = 0 if 0 in sizes else offset + 1 + sum((n - 1) * s for n, s in zip(sizes, strides, strict=True))
    if needed > stored:
        raise ValueError(f"declares {needed:,} elements where its entry {entry!r} stores {stored:,}")
    return entry


def _ints(values: list[Any]) -> list[int]:
    """Sizes serialized as ``{"as_int": n}``; a symbolic size (``as_expr``) is refused."""
    out = []
    for value in values:
        number = value.get("as_int") if isinstance(value, dict) else None
        if not isinstance(number, int) or isinstance(number, bool):
            raise ValueError(f"a stored tensor with a non-integer size or stride {value!r}")
        out.append(number)
    return out


def _check_program(path: str | os.PathLike, program: Any) -> None:
    """Refuse a program that names anything but aten operators and shape arithmetic, holds guard code,
    custom objects or nested graphs, or a symbolic expression beyond sympy's integer arithmetic."""
    if not isinstance(program, dict) or not isinstance(program.get("graph_module"), dict):
        raise VerificationError(f"{path}: malformed {_PROGRAM} (no graph_module)")
    version = program.get("schema_version")
    if not isinstance(version, dict) or version.get("major") != SCHEMA_VERSION[0]:
        raise VerificationError(
            f"{path}: {_PROGRAM} has schema version {version!r}, this torch reads major {SCHEMA_VERSION[0]}"
        )
    if program.get("guards_code"):
        raise _refuse(path, "the program holds guard code, which loading it would execute as Python")
    for key, value in _items(program):
        if key == "target":
            _check_target(path, value)
        elif key == "expr_str":
            _check_expression(path, value)
        elif key in ("as_graph", "custom_obj_values", "as_custom_obj") and value:
            raise _refuse(path, f"the program holds {key} (nested graphs and custom objects are not read)")


def _check_inputs(program: dict[str, Any], max_elements: int) -> None:
    """One example of each user input (its first axis set aside) within ``max_elements``."""
    graph = program["graph_module"]["graph"]
    for spec in program["graph_module"]["signature"]["input_specs"]:
        if "user_input" in spec:
            name = spec["user_input"]["arg"]["as_tensor"]["name"]
            sizes = [size.get("as_int", 1) for size in graph["tensor_values"][name]["sizes"]]
            check_elements(sizes[1:], f"one example of the input {name!r}", max_elements)


def _items(node: Any) -> Iterator[tuple[str, Any]]:
    """Every (key, value) pair of every object nested in the JSON document ``node``."""
    stack = [node]
    while stack:
        current = stack.pop()
        if isinstance(current, dict):
            stack.extend(current.values())
            yield from current.items()
        elif isinstance(current, list):
            stack.extend(current)


def _check_target(path: str | os.PathLike, target: Any) -> None:
    if target in _PYTHON_TARGETS:
        return
    match = _ATEN_TARGET.fullmatch(target) if isinstance(target, str) else None
    packet = getattr(torch.ops.aten, match.group(1), None) if match else None
    if packet is None or match.group(2) not in packet.overloads():
        raise _refuse(path, f"the program calls {target!r}, which is not an aten operator")


def _check_expression(path: str | os.PathLike, text: Any) -> None:
    """A symbolic shape expression: ``sympy.sympify`` evaluates it as Python, so it may only hold
    numbers, arithmetic, quoted symbol names and the names of :data:`_SYMPY_NAMES`."""
    unquoted = _QUOTED.sub("", text) if isinstance(text, str) else ""
    valid = (
        isinstance(text, str)
        and _EXPRESSION.fullmatch(text) is not None
        and "__" not in text
        and all(_SYMBOL.fullmatch(name) for name in _QUOTED.findall(text))
        and all(name in _SYMPY_NAMES or _SYMBOL.fullmatch(name) for name in _NAME.findall(unquoted))
    )
    if not valid:
        raise _refuse(path, f"the symbolic expression {str(text)[:80]!r} is not plain shape arithmetic")


def _rewritten(archive: Archive) -> bytes:
    """A new archive, written by torch's writer, of the checked entries (sample inputs emptied)."""
    buffer = io.BytesIO()
    writer = torch._C.PyTorchFileWriter(buffer)
    for name in archive.sizes:
        if name not in _WRITER_RECORDS:
            data = b"" if name == _SAMPLE_INPUTS else archive.read(name)
            writer.write_record(name, data, len(data))
    writer.write_end_of_file()
    return buffer.getvalue()


def load_pt2(
    path: str | os.PathLike, extra_file: str, max_elements: int = DEFAULT_MAX_ELEMENTS
) -> tuple[torch.export.ExportedProgram, str]:
    """The program of the ``.pt2`` file at ``path`` (checked and rewritten by :func:`check_pt2_archive`)
    and the text of its extra file ``extra_file`` ('' when it has none).

    Raises:
        VerificationError: an unreadable or refused file.
    """
    checked = check_pt2_archive(path, max_elements)
    extra = {extra_file: ""}
    torch_log = logging.getLogger("torch.export")
    level = torch_log.level
    torch_log.setLevel(logging.ERROR)  # it logs a failed load with its traceback, then raises
    try:
        program = torch.export.load(io.BytesIO(checked), extra_files=extra)
    except (
        Exception
    ) as error:  # the archive passed the checks: whatever the loader raises is the file's fault
        message = f"{type(error).__name__}: {' '.join(str(error).split())[:300]}"
        raise VerificationError(f"{path}: not a readable torch.export file ({message})") from error
    finally:
        torch_log.setLevel(level)
    return program, extra[extra_file]
