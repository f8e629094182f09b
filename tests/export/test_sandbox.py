"""Confined verification (``zoo verify``'s default): a file's program cannot write files, loop
forever or exhaust memory, and a confined verification reports what an in-process one does."""

from __future__ import annotations

import warnings
from pathlib import Path

import hostile_files as hostile
import pytest
import torch
from torch import nn

from export.confinement import landlock_abi
from export.pt2_loading import check_pt2_archive
from export.sandbox import Confinement, serve_request, verify_confined
from export.verify import VerificationError, verify_artifact
from export.writers import write_onnx
from zoo.certify import certify

needs_landlock = pytest.mark.skipif(landlock_abi() < 1, reason="this kernel has no Landlock")


@pytest.fixture(scope="module")
def onnx_file(tmp_path_factory) -> Path:
    model = nn.Sequential(nn.Conv2d(1, 2, 3), nn.ReLU(), nn.Flatten(), nn.Linear(72, 3)).eval()
    path = tmp_path_factory.mktemp("onnx") / "model.onnx"
    return write_onnx(model, certify(model, (1, 8, 8)), path)


@pytest.mark.slow
def test_a_confined_verification_reports_what_an_in_process_one_does(onnx_file):
    seen = []
    confined = verify_confined(onnx_file, progress=lambda done, total, op: seen.append((done, total)))
    assert confined == verify_artifact(onnx_file)
    assert confined.ok and seen[0] == (0, seen[-1][1]) and len(seen) == seen[-1][1]


@pytest.mark.slow
@needs_landlock
def test_a_program_cannot_create_a_file(tmp_path):
    canary = tmp_path / "created-by-the-program"
    path = hostile.scripted(hostile.WritesAFile(str(canary)), tmp_path / "writes.pt")
    with pytest.raises(VerificationError, match=r"writes\.pt: the program failed on a tracked input"):
        verify_confined(path, input_shape=(4,))
    assert not canary.exists()


def test_the_file_writing_program_is_live_in_process(tmp_path):
    """The control: run in this process, the program does create its file."""
    canary = tmp_path / "created-in-process"
    path = hostile.scripted(hostile.WritesAFile(str(canary)), tmp_path / "writes.pt")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        torch.jit.load(path)(torch.zeros(4))
    assert canary.is_file()


@pytest.mark.slow
@needs_landlock
def test_a_pt2_program_cannot_create_a_file(tmp_path):
    """The archive check lets aten operators through, ``aten::from_file`` among them: confinement is
    what stops this program."""
    canary = tmp_path / "created-by-the-program"
    path = hostile.pt2_writing_a_file(tmp_path / "writes.pt2", canary)
    with pytest.raises(VerificationError, match=r"writes\.pt2: the program failed on a tracked input"):
        verify_confined(path, input_shape=(4,))
    assert not canary.exists()


def test_the_file_writing_pt2_program_passes_the_archive_check_and_is_live_in_process(tmp_path):
    """The control: the crafted .pt2 is accepted by the archive check, and verifying it in this
    process (the verifier runs its constant nodes) does create the file."""
    canary = tmp_path / "created-in-process"
    path = hostile.pt2_writing_a_file(tmp_path / "writes.pt2", canary)
    check_pt2_archive(path)
    assert not canary.exists()
    verify_artifact(path, input_shape=(4,))
    assert canary.is_file()


@pytest.mark.slow
def test_a_program_that_loops_forever_is_stopped_at_the_timeout(tmp_path):
    path = hostile.scripted(hostile.LoopsForever(), tmp_path / "loop.pt")
    with pytest.raises(VerificationError, match=r"loop\.pt: verification stopped after 40 s \(--timeout\)"):
        verify_confined(path, input_shape=(4,), confinement=Confinement(timeout=40))


@pytest.mark.slow
def test_a_program_that_allocates_too_much_is_stopped_at_the_memory_limit(tmp_path):
    program = torch.export.export(
        hostile.AllocatesTooMuch(), (torch.zeros(2, 4),), dynamic_shapes=({0: torch.export.Dim("batch")},)
    )
    torch.export.save(program, tmp_path / "big.pt2")  # traced with fake tensors: nothing allocated
    with pytest.raises(
        VerificationError,
        match=r"big\.pt2: verifying it needs more than 4,096 MiB of memory \(--max-memory\)",
    ):
        verify_confined(tmp_path / "big.pt2", confinement=Confinement(max_memory=4 * 2**30))


def test_without_landlock_a_program_is_verified_only_when_trusted(tmp_path, onnx_file, monkeypatch):
    sent = []
    monkeypatch.setattr("os.write", lambda fd, data: sent.append(data.decode()) or len(data))
    request = {
        "path": str(tmp_path / "model.pt"),
        "input_shape": None,
        "max_elements": 1000,
        "fd": 99,
        "token": "t",
        "require_landlock": True,
    }
    serve_request(request, confined=False)
    assert sent[-1].startswith('t {"error": {"type": "VerificationError"')
    assert "this kernel cannot forbid the file's program to write files (no Landlock)" in sent[-1]
    assert "--trust-program" in sent[-1]
    serve_request({**request, "path": str(onnx_file), "require_landlock": False}, confined=False)
    assert sent[-1].startswith('t {"report": {')
