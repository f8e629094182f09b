"""What the ``zoo serve`` tests share: the served toy model, a server in a thread or a subprocess, and
request bodies."""

from __future__ import annotations

import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import httpx
import numpy as np
import torch
import uvicorn
from fastapi import FastAPI
from toy_checkpoint import INPUT_SHAPE, write_toy_checkpoint

from zoo.app.serve import ServedModel, open_model
from zoo.app.serve.connection import connection_class
from zoo.certificate import Certificate

MODEL = "toy"  # the artifact's stem, hence the served model's name
UNIT_RANGE = {"transform": "pixel / 16", "input_range": [0.0, 1.0]}
STARTUP_SECONDS = 60


@dataclass(frozen=True)
class Artifact:
    checkpoint: Path
    onnx: Path
    certificate: Certificate
    model: torch.nn.Module
    served: ServedModel


def make_artifact(directory: Path) -> Artifact:
    """The toy certified for [0, 1] inputs, saved as a checkpoint, and opened for serving from that
    checkpoint, which exports it to ONNX (one export serves the tests of both kinds of source)."""
    checkpoint = directory / f"{MODEL}.safetensors"
    model, certificate = write_toy_checkpoint(checkpoint, UNIT_RANGE)
    served = open_model(checkpoint, "cpu", directory / "workdir")
    return Artifact(checkpoint, directory / "workdir" / f"{MODEL}.onnx", certificate, model, served)


@contextmanager
def running(app: FastAPI, request_timeout: float) -> Iterator[str]:
    """``app`` served by uvicorn in a thread, with the connections of ``zoo serve``; yields its URL."""
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    config = uvicorn.Config(app, log_level="warning", http=connection_class(request_timeout))
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + STARTUP_SECONDS
    while not server.started:
        assert thread.is_alive() and time.monotonic() < deadline, "the server did not start"
        time.sleep(0.01)
    try:
        yield f"http://127.0.0.1:{sock.getsockname()[1]}"
    finally:
        server.should_exit = True
        thread.join(timeout=10)
        sock.close()


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@contextmanager
def zoo_serve(source: Path, *options: str, log: Path | None = None) -> Iterator[tuple[subprocess.Popen, str]]:
    """The real ``zoo serve SOURCE OPTIONS`` in a subprocess, once ready; killed on exit if still alive."""
    port = free_port()
    command = [sys.executable, "-m", "zoo", "serve", str(source), "--port", str(port), *options]
    output = log.open("w") if log is not None else None
    server = subprocess.Popen(command, stdout=output, stderr=subprocess.STDOUT if output else None)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + STARTUP_SECONDS
        while True:
            assert server.poll() is None and time.monotonic() < deadline, "zoo serve did not start"
            try:
                if httpx.get(f"{url}/v2/health/ready").status_code == 200:
                    break
            except httpx.TransportError:
                time.sleep(0.1)
        yield server, url
    finally:
        server.kill()
        server.wait()
        if output is not None:
            output.close()


def examples(n: int, seed: int) -> np.ndarray:
    return np.random.default_rng(seed).uniform(0, 1, (n, *INPUT_SHAPE)).astype(np.float32)


def infer_body(x: np.ndarray, datatype: str = "FP32", **extra) -> dict:
    tensor = {"name": "input", "shape": list(x.shape), "datatype": datatype, "data": x.ravel().tolist()}
    return {"inputs": [tensor], **extra}


def outputs_of(response: httpx.Response) -> dict[str, np.ndarray]:
    assert response.status_code == 200, response.text
    return {out["name"]: np.asarray(out["data"]).reshape(out["shape"]) for out in response.json()["outputs"]}
