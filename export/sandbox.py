"""``zoo verify`` of a file of unknown origin: the verification runs in a confined child process.

:func:`verify_confined` starts ``python -m export.confinement``, which confines itself
(:func:`export.confinement.confine`: no file written, a memory and a CPU-time limit) before it imports
torch, then verifies the file with :func:`export.verify.verify_artifact` and reports back. The parent
enforces the wall-clock ``timeout``, counted from when the child has started and before it reads the
file (the child is killed), turns the child's refusals into the same errors as in-process
verification, and forwards its progress.

The child's own stdout and stderr are not trusted (a TorchScript program can print): reports come on
a separate pipe, each line prefixed with a random token the parent sent on stdin, and anything else on
that pipe fails the verification. A TorchScript or .pt2 file is verified only where the kernel can
close the file system (Landlock) unless the caller trusts its program (``trust_program``); an ONNX file
runs no program, so it is verified under the memory and time limits alone where Landlock is missing.

Cost: one Python start with the torch import, measured by ``bench/bench_sandbox.py``.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import resource
import secrets
import selectors
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from export.propagation import Progress, UnsupportedOpError, VerificationError
from export.verify import VerificationReport, verify_artifact
from zoo.hub import check_sha256
from zoo.limits import DEFAULT_MAX_ELEMENTS, DEFAULT_MAX_MEMORY, DEFAULT_TIMEOUT

__all__ = ["Confinement", "serve_request", "verify_confined"]

STARTUP_TIMEOUT = 600.0
"""Seconds the child may take to start (Python, torch, the verifier: 2-5 s of CPU time) before it
reads the file, after which ``timeout`` counts: a busy machine does not eat the file's time."""

_PROGRAM_SUFFIXES = (".pt", ".pt2")
_ERRORS = {"VerificationError": VerificationError, "UnsupportedOpError": UnsupportedOpError}


@dataclass(frozen=True)
class Confinement:
    """The limits a confined verification runs under.

    Attributes:
        timeout: wall-clock seconds the verification of the file may take before the child is killed
            (counted once the child has started; its CPU time is limited to as many seconds per
            core, plus its start).
        max_memory: bytes of data the child may allocate (RLIMIT_DATA).
        max_elements: most elements one input example may declare (:mod:`zoo.limits`).
        trust_program: verify a TorchScript / .pt2 file even where the kernel cannot forbid its
            program to write files (no Landlock).
    """

    timeout: float = DEFAULT_TIMEOUT
    max_memory: int = DEFAULT_MAX_MEMORY
    max_elements: int = DEFAULT_MAX_ELEMENTS
    trust_program: bool = False


def verify_confined(
    path: str | os.PathLike,
    progress: Progress | None = None,
    input_shape: Sequence[int] | None = None,
    confinement: Confinement = Confinement(),
    expected_sha256: str | None = None,
) -> VerificationReport:
    """:func:`export.verify.verify_artifact` of the file at ``path``, run in a confined child process.

    With ``expected_sha256``, the file's bytes are read once, their hash checked, and the child
    verifies a private copy of exactly those bytes (reports and errors still name ``path``).

    Raises:
        VerificationError: what ``verify_artifact`` raises, and a verification that exceeds the
            timeout or the memory limit (naming the option), or whose process dies.
        CheckpointError: the file does not have the sha256 ``expected_sha256``.
    """
    path = Path(path)
    if expected_sha256 is None:
        return _verify_in_child(path, progress, input_shape, confinement)
    if not path.is_file():
        raise VerificationError(f"{path}: no such file")
    with tempfile.TemporaryDirectory(prefix="zoo-checked-") as directory:
        data = path.read_bytes()
        check_sha256(data, expected_sha256, str(path))
        copy = Path(directory) / f"checked{path.suffix}"
        copy.write_bytes(data)
        try:
            report = _verify_in_child(copy, progress, input_shape, confinement)
        except VerificationError as error:
            raise type(error)(str(error).replace(str(copy), str(path))) from None
    problems = tuple(problem.replace(str(copy), str(path)) for problem in report.problems)
    return dataclasses.replace(report, artifact=str(path), problems=problems)


def _verify_in_child(
    path: Path, progress: Progress | None, input_shape: Sequence[int] | None, confinement: Confinement
) -> VerificationReport:
    """The confined verification of the file at ``path`` (see :func:`verify_confined`)."""
    hard = resource.getrlimit(resource.RLIMIT_DATA)[1]  # a child cannot raise what this process has
    if hard != resource.RLIM_INFINITY and hard < confinement.max_memory:
        confinement = dataclasses.replace(confinement, max_memory=hard)
    token = secrets.token_hex(16)
    read_end, write_end = os.pipe()
    request = {
        "path": os.fspath(path),
        "input_shape": None if input_shape is None else list(input_shape),
        "max_elements": confinement.max_elements,
        "max_memory": confinement.max_memory,
        "cpu_seconds": math.ceil((STARTUP_TIMEOUT + confinement.timeout) * (os.cpu_count() or 1)),
        "require_landlock": path.suffix in _PROGRAM_SUFFIXES and not confinement.trust_program,
        "fd": write_end,
        "token": token,
    }
    workdir = tempfile.mkdtemp(prefix="zoo-verify-")
    environment = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join(p for p in sys.path if p),
        "TMPDIR": workdir,  # the only directory the child may write to
    }
    try:
        child = subprocess.Popen(
            [sys.executable, "-m", "export.confinement"],
            stdin=subprocess.PIPE,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            pass_fds=(write_end,),
            env=environment,
        )
    finally:
        os.close(write_end)
    stderr = _tail(child.stderr)
    try:
        child.stdin.write((json.dumps(request) + "\n").encode())
        child.stdin.close()
        return _read_reports(path, child, read_end, token, progress, confinement, stderr)
    finally:
        child.kill()
        child.wait()
        os.close(read_end)
        shutil.rmtree(workdir, ignore_errors=True)


def _tail(stream: Any, lines: int = 20) -> deque[str]:
    """The last ``lines`` lines of ``stream``, read by a thread (so the child never blocks on it)."""
    kept: deque[str] = deque(maxlen=lines)

    def read() -> None:
        for line in stream:
            kept.append(line.decode(errors="replace").rstrip())

    threading.Thread(target=read, daemon=True).start()
    return kept


def _read_reports(
    path: Path,
    child: subprocess.Popen,
    fd: int,
    token: str,
    progress: Progress | None,
    confinement: Confinement,
    stderr: deque[str],
) -> VerificationReport:
    """Follow the child's lines on ``fd`` until its report or error, its death, or the timeout: the
    child has :data:`STARTUP_TIMEOUT` seconds to start (before it reads the file), then ``timeout``."""
    deadline, started = time.monotonic() + STARTUP_TIMEOUT, False
    buffer = b""
    with selectors.DefaultSelector() as selector:
        selector.register(fd, selectors.EVENT_READ)
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise VerificationError(
                    f"{path}: verification stopped after {confinement.timeout:g} s (--timeout)"
                    if started
                    else f"{path}: the verifying process did not start within {STARTUP_TIMEOUT:g} s"
                )
            if not selector.select(remaining):
                continue
            chunk = os.read(fd, 1 << 16)
            if not chunk:
                raise _died(path, child, confinement, stderr)
            buffer += chunk
            *lines, buffer = buffer.split(b"\n")
            for line in lines:
                message = _message(path, line, token)
                if "started" in message:
                    started, deadline = True, time.monotonic() + confinement.timeout
                elif "progress" in message:
                    if progress is not None:
                        progress(*message["progress"])
                elif "report" in message:
                    return VerificationReport.from_dict(message["report"])
                else:
                    raise _refusal(path, message["error"], confinement)


def _message(path: Path, line: bytes, token: str) -> dict[str, Any]:
    prefix, _, body = line.decode(errors="replace").partition(" ")
    try:
        if prefix != token:
            raise ValueError("not signed")
        return json.loads(body)
    except ValueError:
        raise VerificationError(f"{path}: the verifying process sent a corrupted report: refused") from None


def _refusal(path: Path, error: dict[str, str], confinement: Confinement) -> VerificationError:
    if error["type"] == "MemoryError":
        return VerificationError(
            f"{path}: verifying it needs more than {confinement.max_memory / 2**20:,.0f} MiB of memory "
            "(--max-memory)"
        )
    kind = _ERRORS.get(error["type"])
    if kind is None:
        return VerificationError(f"{path}: the verifier failed: {error['type']}: {error['message']}")
    return kind(error["message"])


def _died(path: Path, child: subprocess.Popen, confinement: Confinement, stderr: deque[str]) -> Exception:
    """The error for a child that closed its pipe without a report (killed, crashed, out of memory)."""
    code = child.wait()
    if code == -signal.SIGXCPU:
        return VerificationError(
            f"{path}: verification used up its CPU time (--timeout {confinement.timeout:g})"
        )
    last = next((line for line in reversed(stderr) if line.strip()), "no message")
    return VerificationError(
        f"{path}: the verifying process died (exit code {code}; memory limit "
        f"{confinement.max_memory / 2**20:,.0f} MiB: --max-memory): {last}"
    )


def serve_request(request: dict[str, Any], confined: bool) -> None:
    """The child's side: verify the requested file and write the report (or the error) and the
    progress, one signed JSON line each, to the requested file descriptor."""
    token = request["token"]

    def send(message: dict[str, Any]) -> None:
        os.write(request["fd"], f"{token} {json.dumps(message)}\n".encode())

    def report_progress(done: int, total: int | None, op: str) -> None:
        send({"progress": [done, total, op]})

    send({"started": True})  # the timeout counts from here
    try:
        if request["require_landlock"] and not confined:
            raise VerificationError(
                f"{request['path']}: this kernel cannot forbid the file's program to write files "
                "(no Landlock): verify its ONNX form, or pass --trust-program if you trust the program"
            )
        shape = request["input_shape"]
        report = verify_artifact(request["path"], report_progress, shape, request["max_elements"])
        send({"report": report.to_dict()})
    except Exception as error:  # any failure is reported, with its kind, to the parent
        kind = "MemoryError" if _out_of_memory(error) else type(error).__name__
        send({"error": {"type": kind, "message": " ".join(str(error).split())}})


_ALLOCATION_FAILURES = ("can't allocate memory", "bad_alloc", "MemoryError")


def _out_of_memory(error: BaseException) -> bool:
    """Whether ``error`` or an exception it was raised from is an allocation failure (torch's
    allocator raises RuntimeError; TorchScript re-raises it as its own, so its text is searched too).
    Some paths through torch lose the cause: those are reported as the failure they show."""
    while error is not None:
        if isinstance(error, MemoryError) or any(text in str(error) for text in _ALLOCATION_FAILURES):
            return True
        error = error.__cause__ or error.__context__
    return False
