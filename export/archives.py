"""torch's zip archives (TorchScript ``.pt``, torch.export ``.pt2``) checked before torch reads them.

Both formats are zip files read by torch's own C++ reader (``torch._C.PyTorchFileReader``, built on
miniz), so they are checked with that reader too: Python's ``zipfile`` reads a duplicated entry's
*last* copy where torch reads its *first*, so a check made with it could pass one copy while torch
loads the other. Refused here: entries outside the archive's one root folder (torch's reader refuses
them itself), duplicated entries, and entries that inflate far beyond the file: a few kilobytes of
deflate can declare gigabytes, which torch would allocate while reading.
"""

from __future__ import annotations

import io
import os
from collections import Counter
from dataclasses import dataclass

import torch

from export.propagation import VerificationError

__all__ = ["MAX_INFLATION", "Archive", "read_archive"]

MAX_INFLATION = 64 * 2**20
"""Bytes by which an archive's entries may exceed the archive itself (64 MiB): TorchScript deflates
its code and debug tables (a few times smaller, a few megabytes at most); weights are stored as is."""


@dataclass(frozen=True)
class Archive:
    """An archive read into memory, with torch's reader over exactly those bytes.

    Attributes:
        data: the file's bytes (what torch is handed afterwards: the file is not read twice).
        reader: torch's reader of ``data``.
        sizes: every entry's inflated size in bytes, by name (relative to the root folder).
    """

    data: bytes
    reader: torch._C.PyTorchFileReader
    sizes: dict[str, int]

    def read(self, name: str) -> bytes:
        return self.reader.get_record(name)


def read_archive(path: str | os.PathLike, kind: str, max_inflation: int = MAX_INFLATION) -> Archive:
    """The archive at ``path`` (a ``kind`` file, named in errors) once torch's reader accepts it, no
    entry is duplicated, and its entries inflate to at most ``max_inflation`` bytes beyond its size.

    Raises:
        VerificationError: an unreadable file, or one refused for the reasons above.
    """
    try:
        with open(path, "rb") as file:
            data = file.read()
        reader = torch._C.PyTorchFileReader(io.BytesIO(data))
        names = reader.get_all_records()
        sizes = {name: reader.get_record_size(name) for name in names}
    except (RuntimeError, OSError, ValueError) as error:  # torch's reader raises all three
        message = str(error).splitlines()[0] if str(error) else type(error).__name__
        raise VerificationError(f"{path}: not a readable {kind} file ({message})") from error
    duplicated = sorted(name for name, count in Counter(names).items() if count > 1)
    if duplicated:
        raise VerificationError(
            f"{path}: refused: the archive holds several entries named {duplicated[0]!r} "
            "(which one a reader takes differs between zip readers)"
        )
    total = sum(sizes.values())
    if total > len(data) + max_inflation:
        raise VerificationError(
            f"{path}: refused: its entries inflate to {total:,} bytes from a {len(data):,}-byte file "
            f"(at most {max_inflation:,} more than the file are read)"
        )
    return Archive(data, reader, sizes)
