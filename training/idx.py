"""The IDX file format of MNIST and Fashion-MNIST, read directly (gzip-compressed or not).

An IDX file is a big-endian header followed by the raw array, row-major::

    bytes 0-1   0x00 0x00            (magic)
    byte  2     element type          0x08 uint8, 0x09 int8, 0x0B int16, 0x0C int32, 0x0D float32,
                                      0x0E float64
    byte  3     number of dimensions  n
    then n      uint32 sizes, then prod(sizes) elements

A file is read whole and checked: a wrong magic number, an unknown element type, or a data section
shorter or longer than its header announces is a :class:`IdxFormatError` naming the file, never a
silently shortened array.
"""

from __future__ import annotations

import gzip
import struct
import zlib
from pathlib import Path

import numpy as np

__all__ = ["IDX_TYPES", "IdxFormatError", "read_idx"]

IDX_TYPES: dict[int, np.dtype] = {
    0x08: np.dtype(np.uint8),
    0x09: np.dtype(np.int8),
    0x0B: np.dtype(">i2"),
    0x0C: np.dtype(">i4"),
    0x0D: np.dtype(">f4"),
    0x0E: np.dtype(">f8"),
}
GZIP_MAGIC = b"\x1f\x8b"


class IdxFormatError(ValueError):
    """A file is not a complete, well-formed IDX file."""


def _file_bytes(path: Path) -> bytes:
    """The (decompressed, if gzip) content of ``path``."""
    raw = path.read_bytes()
    if not raw.startswith(GZIP_MAGIC):
        return raw
    try:
        return gzip.decompress(raw)
    except EOFError:
        raise IdxFormatError(f"{path}: truncated gzip stream (the file was cut short)") from None
    except (gzip.BadGzipFile, zlib.error) as error:
        raise IdxFormatError(f"{path}: corrupted gzip stream ({error})") from None


def read_idx(path: str | Path) -> np.ndarray:
    """The array stored in the IDX file ``path`` (``.gz`` or uncompressed, detected from its bytes).

    Returns:
        an array of the file's shape, in native byte order (uint8 for MNIST images and labels).

    Raises:
        FileNotFoundError: no such file.
        IdxFormatError: not an IDX file (magic number, element type), or truncated / too long.
    """
    path = Path(path)
    content = _file_bytes(path)
    if len(content) < 4:
        raise IdxFormatError(f"{path}: {len(content)} bytes, too short for an IDX header (4 bytes)")
    zero, type_code, ndim = struct.unpack(">HBB", content[:4])
    if zero != 0 or type_code not in IDX_TYPES:
        raise IdxFormatError(
            f"{path}: not an IDX file (magic number 0x{content[:4].hex()}; expected 0000 followed by an "
            f"element type in {', '.join(f'{code:02x}' for code in IDX_TYPES)} and the number of dimensions)"
        )
    header = 4 + 4 * ndim
    if len(content) < header:
        raise IdxFormatError(
            f"{path}: truncated IDX header ({ndim} dimensions announced, {len(content)} bytes)"
        )
    shape = struct.unpack(f">{ndim}I", content[4:header])
    dtype = IDX_TYPES[type_code]
    expected = int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
    found = len(content) - header
    if found != expected:
        problem = "truncated" if found < expected else "longer than its header says"
        raise IdxFormatError(
            f"{path}: {problem}: shape {tuple(shape)} of {dtype.name} needs {expected} bytes of data, "
            f"found {found}"
        )
    array = np.frombuffer(content, dtype=dtype, offset=header).reshape(shape)
    return array.astype(dtype.newbyteorder("="))
