"""TorchScript and .pt2 archives are read with torch's own zip reader and refused when an entry is
duplicated or when they inflate far beyond their size, before torch.jit.load allocates anything."""

from __future__ import annotations

import warnings
import zipfile
from pathlib import Path

import pytest
import torch
from torch import nn

from export.archives import MAX_INFLATION, read_archive
from export.propagation import VerificationError
from export.pt2_loading import check_pt2_archive
from export.writers import CERTIFICATE_KEY, load_torchscript


@pytest.fixture()
def torchscript(tmp_path) -> Path:
    path = tmp_path / "model.pt"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        traced = torch.jit.trace(nn.Sequential(nn.Linear(3, 2)).eval(), torch.zeros(2, 3))
        torch.jit.save(traced, path, _extra_files={CERTIFICATE_KEY: "certificate text"})
    return path


def _copy(source: Path, target: Path, extra: bytes | None = None, duplicate: str | None = None) -> Path:
    """A copy of ``source`` whose certificate entry holds ``extra`` (deflated, streamed), and with a
    second entry named ``duplicate``."""
    with zipfile.ZipFile(source) as original, zipfile.ZipFile(target, "w") as copy:
        for info in original.infolist():
            if extra is not None and info.filename.endswith(CERTIFICATE_KEY):
                deflated = zipfile.ZipInfo(info.filename)
                deflated.compress_type = zipfile.ZIP_DEFLATED
                with copy.open(deflated, "w", force_zip64=True) as entry:
                    for _ in range(len(extra) and (MAX_INFLATION // len(extra) + 2)):
                        entry.write(extra)
                continue
            copy.writestr(info, original.read(info))
            if info.filename.endswith(duplicate or "\0"):
                with pytest.warns(UserWarning, match="Duplicate name"):
                    copy.writestr(info, b"another copy")
    return target


def test_a_torchscript_file_loads_with_its_certificate(torchscript):
    module, text = load_torchscript(torchscript)
    assert text == "certificate text" and module(torch.ones(4, 3)).shape == (4, 2)


def test_a_deflate_bomb_in_an_extra_file_is_refused_before_it_is_inflated(torchscript, tmp_path):
    bomb = _copy(torchscript, tmp_path / "bomb.pt", extra=b" " * 2**20)
    assert bomb.stat().st_size < 200_000  # about 65 MiB once inflated
    with pytest.raises(VerificationError, match=r"refused: its entries inflate to [\d,]+ bytes from a"):
        load_torchscript(bomb)


def test_duplicated_entries_are_refused(torchscript, tmp_path):
    for name in ("data.pkl", CERTIFICATE_KEY):
        crafted = _copy(torchscript, tmp_path / "dup.pt", duplicate=name)
        with pytest.raises(VerificationError, match=f"several entries named '.*{name}'"):
            load_torchscript(crafted)


@pytest.mark.parametrize(
    ("name", "load", "kind"),
    [("garbage.pt", load_torchscript, "TorchScript"), ("garbage.pt2", check_pt2_archive, r"torch\.export")],
)
def test_garbage_is_not_a_readable_archive(tmp_path, name, load, kind):
    garbage = tmp_path / name
    garbage.write_bytes(b"PK\x03\x04 not really a zip")
    with pytest.raises(VerificationError, match=rf"{name}: not a readable {kind} file"):
        load(garbage)
    with pytest.raises(VerificationError, match="not a readable x file"):
        read_archive(tmp_path / "missing.pt", "x")
