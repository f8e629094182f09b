"""A .pt2 file is checked before torch.export.load reads it: that loader unpickles some payloads
without restriction, so a crafted file could run code while being verified."""

from __future__ import annotations

import io
import json
import os
import zipfile
from pathlib import Path

import pytest
import torch
from torch import nn

from export.pt2_loading import check_pt2_archive, load_pt2
from export.verify import VerificationError, verify_pt2


class _MakesADirectory:
    """Unpickling this calls ``os.makedirs(target)``: a stand-in for arbitrary code."""

    def __init__(self, target: Path) -> None:
        self.target = target

    def __reduce__(self):
        return (os.makedirs, (str(self.target),))


@pytest.fixture()
def plain_pt2(tmp_path) -> Path:
    net = nn.Sequential(nn.Linear(3, 4), nn.ReLU()).eval()
    program = torch.export.export(net, (torch.zeros(2, 3),), dynamic_shapes=({0: torch.export.Dim("batch")},))
    path = tmp_path / "plain.pt2"
    torch.export.save(program, path)
    return path


def _with_entry(source: Path, target: Path, suffix: str, data: bytes) -> Path:
    """A copy of the archive ``source`` whose entry ending in ``suffix`` holds ``data``."""
    with zipfile.ZipFile(source) as original, zipfile.ZipFile(target, "w") as copy:
        entries = [info for info in original.infolist() if info.filename.endswith(suffix)]
        assert len(entries) == 1
        for info in original.infolist():
            copy.writestr(info, data if info in entries else original.read(info))
    return target


def test_a_plain_archive_loads(plain_pt2):
    check_pt2_archive(plain_pt2)
    program, text = load_pt2(plain_pt2, "zoo.certificate")
    assert text == "" and program.module()(torch.ones(5, 3)).shape == (5, 4)


def test_pickled_sample_inputs_are_refused_before_they_can_run(plain_pt2, tmp_path):
    target = tmp_path / "created-by-the-file"
    payload = io.BytesIO()
    torch.save(_MakesADirectory(target), payload)
    crafted = _with_entry(
        plain_pt2, tmp_path / "crafted.pt2", "data/sample_inputs/model.pt", payload.getvalue()
    )

    with pytest.raises(
        VerificationError, match=r"refused: its sample inputs are not plain tensors .*os\.makedirs"
    ):
        verify_pt2(crafted)
    assert not target.exists()  # (torch.export.load itself, on torch 2.14, creates it)


def test_weights_stored_as_pickles_are_refused(plain_pt2, tmp_path):
    with zipfile.ZipFile(plain_pt2) as archive:
        (name,) = [n for n in archive.namelist() if n.endswith("model_weights_config.json")]
        config = json.loads(archive.read(name))
    config["config"]["0.weight"]["use_pickle"] = True
    crafted = _with_entry(
        plain_pt2, tmp_path / "crafted.pt2", "model_weights_config.json", json.dumps(config).encode()
    )
    with pytest.raises(VerificationError, match=r"refused: '0\.weight' is stored as a pickled object"):
        load_pt2(crafted, "zoo.certificate")


def test_files_that_are_not_archives_are_refused(tmp_path):
    garbage = tmp_path / "garbage.pt2"
    garbage.write_bytes(b"not a zip file")
    with pytest.raises(VerificationError, match=r"not a readable torch\.export file"):
        check_pt2_archive(garbage)
