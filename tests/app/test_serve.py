"""``zoo serve`` over real HTTP on loopback: every endpoint, certified radii, bad input, batching, a
Triton client, the command line and a graceful SIGTERM.

One small plain model with random weights (nothing is trained) is certified and written as ONNX once.
Most tests talk to an in-process server (uvicorn in a thread); the command-line tests start the
real ``zoo serve`` in a subprocess.
"""

from __future__ import annotations

import json
import math
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import httpx
import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
import tritonclient.http as triton
import uvicorn
from toy_checkpoint import INPUT_SHAPE, write_toy_checkpoint
from typer.testing import CliRunner

import zoo
from export.writers import read_onnx_certificate
from zoo.app.cli import app as cli
from zoo.app.serve import ServedModel, open_model
from zoo.app.serve.app import create_app
from zoo.certificate import Certificate

MODEL = "toy"  # the artifact's stem, hence the served model's name
MAX_BODY_BYTES = 64 * 1024  # small, so that the oversized-body test stays cheap
STARTUP_SECONDS = 60


@dataclass(frozen=True)
class Artifact:
    checkpoint: Path
    onnx: Path
    certificate: Certificate
    model: torch.nn.Module
    served: ServedModel


@pytest.fixture(scope="module")
def artifact(tmp_path_factory) -> Artifact:
    """A plain lipconv with random weights (nothing trained), certified, saved as a checkpoint, and
    opened for serving from that checkpoint, which exports it to ONNX (one export serves the tests
    of both kinds of source)."""
    directory = tmp_path_factory.mktemp("artifact")
    checkpoint = directory / f"{MODEL}.safetensors"
    model, certificate = write_toy_checkpoint(checkpoint, {})
    served = open_model(checkpoint, "cpu", directory / "workdir")
    return Artifact(checkpoint, directory / "workdir" / f"{MODEL}.onnx", certificate, model, served)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture(scope="module")
def served(artifact) -> ServedModel:
    """The model served from the checkpoint, recording the size of every batch the batcher runs."""
    model = artifact.served
    model.batch_sizes = []
    predict = model.predict

    def recording_predict(inputs: np.ndarray) -> dict[str, np.ndarray]:
        model.batch_sizes.append(len(inputs))
        return predict(inputs)

    model.predict = recording_predict
    return model


@pytest.fixture(scope="module")
def url(served) -> Iterator[str]:
    """The app serving ``served`` under uvicorn in a thread, batching up to 16 examples within 20 ms."""
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    app = create_app(served, max_batch=16, max_delay_ms=20, max_body_bytes=MAX_BODY_BYTES)
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning"))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + STARTUP_SECONDS
    while not server.started:
        assert thread.is_alive() and time.monotonic() < deadline, "the server did not start"
        time.sleep(0.01)
    yield f"http://127.0.0.1:{sock.getsockname()[1]}"
    server.should_exit = True
    thread.join(timeout=10)
    sock.close()


@pytest.fixture(scope="module")
def client(url) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=url, timeout=30) as http:
        yield http


def examples(n: int, seed: int) -> np.ndarray:
    return np.random.default_rng(seed).uniform(0, 1, (n, *INPUT_SHAPE)).astype(np.float32)


def infer_body(x: np.ndarray, datatype: str = "FP32", **extra) -> dict:
    tensor = {"name": "input", "shape": list(x.shape), "datatype": datatype, "data": x.ravel().tolist()}
    return {"inputs": [tensor], **extra}


def outputs_of(response: httpx.Response) -> dict[str, np.ndarray]:
    assert response.status_code == 200, response.text
    return {out["name"]: np.asarray(out["data"]).reshape(out["shape"]) for out in response.json()["outputs"]}


def direct_logits(artifact: Artifact, x: np.ndarray) -> np.ndarray:
    session = ort.InferenceSession(artifact.onnx, providers=["CPUExecutionProvider"])
    return session.run(["logits"], {"input": x})[0]


# --- endpoints ------------------------------------------------------------------------------------


def test_health_server_and_model_metadata(client, artifact):
    assert client.get("/v2/health/live").json() == {"live": True}
    assert client.get("/v2/health/ready").json() == {"ready": True}
    server = client.get("/v2").json()
    assert server["name"] == "lipschitz-zoo" and "binary_tensor_data" in server["extensions"]
    for path in (f"/v2/models/{MODEL}", f"/v2/models/{MODEL}/versions/1"):
        metadata = client.get(path).json()
        assert metadata["name"] == MODEL and metadata["versions"] == ["1"]
        assert metadata["inputs"] == [{"name": "input", "datatype": "FP32", "shape": [-1, 1, 8, 8]}]
        assert [(o["name"], o["datatype"], o["shape"]) for o in metadata["outputs"]] == [
            ("logits", "FP32", [-1, 10]),
            ("predicted_class", "INT64", [-1]),
            ("margin", "FP64", [-1]),
            ("certified_radius", "FP64", [-1]),
        ]
        assert metadata["parameters"]["lipschitz_bound"] == artifact.certificate.lipschitz_bound
    for path in (f"/v2/models/{MODEL}/ready", f"/v2/models/{MODEL}/versions/1/ready"):
        assert client.get(path).json() == {"name": MODEL, "ready": True}
    assert client.get(f"/v2/models/{MODEL}/versions/2").status_code == 404


def test_infer_gives_logits_classes_margins_and_certified_radii(client, artifact):
    x = examples(5, seed=1)
    out = outputs_of(client.post(f"/v2/models/{MODEL}/infer", json=infer_body(x, id="req-1")))
    logits = direct_logits(artifact, x)
    np.testing.assert_allclose(out["logits"], logits, rtol=0, atol=1e-6)
    top2 = np.sort(logits.astype(np.float64), axis=1)[:, -2:]
    radius = (top2[:, 1] - top2[:, 0]) / (math.sqrt(2) * artifact.certificate.lipschitz_bound)
    np.testing.assert_allclose(out["certified_radius"], radius, rtol=1e-6)
    np.testing.assert_array_equal(out["predicted_class"], logits.argmax(1))
    np.testing.assert_allclose(out["margin"], top2[:, 1] - top2[:, 0], rtol=1e-6)
    assert (out["certified_radius"] > 0).all()
    # Nested data, FP64, a versioned path and a subset of outputs give the same numbers.
    body = {
        "id": "req-2",
        "inputs": [{"name": "input", "shape": [5, 1, 8, 8], "datatype": "FP64", "data": x.tolist()}],
        "outputs": [{"name": "certified_radius"}],
    }
    response = client.post(f"/v2/models/{MODEL}/versions/1/infer", json=body)
    assert response.json()["id"] == "req-2" and response.json()["model_version"] == "1"
    np.testing.assert_array_equal(outputs_of(response)["certified_radius"], out["certified_radius"])
    assert list(outputs_of(response)) == ["certified_radius"]


def test_served_radii_are_those_of_certified_model_predict(client, artifact):
    """The Python API and the server compute the same thing, from PyTorch and onnxruntime logits."""
    x = examples(32, seed=6)
    served = outputs_of(client.post(f"/v2/models/{MODEL}/infer", json=infer_body(x)))
    predictions = zoo.load(artifact.checkpoint).predict(torch.from_numpy(x))
    np.testing.assert_array_equal(served["predicted_class"], predictions.predicted_class)
    np.testing.assert_allclose(served["certified_radius"], predictions.certified_radius, rtol=1e-4, atol=1e-7)
    np.testing.assert_allclose(served["margin"], predictions.margin, rtol=1e-4, atol=1e-7)


# --- bad input ------------------------------------------------------------------------------------

GOOD = examples(1, seed=2)


def good_with(**changes) -> dict:
    """A valid request for one example, with fields of its input tensor changed."""
    return {"inputs": [{**infer_body(GOOD)["inputs"][0], **changes}]}


BINARY_TENSOR = {"name": "input", "shape": [1, 1, 8, 8], "datatype": "FP32"}
BINARY_HEADER = json.dumps({"inputs": [{**BINARY_TENSOR, "parameters": {"binary_data_size": 256}}]}).encode()
BAD_REQUESTS = {  # case -> (body, headers, expected status, expected words of the error)
    "malformed JSON": (b'{"inputs": [', {}, 400, "not valid JSON"),
    "not an object": (b"[1, 2]", {}, 400, "must be a JSON object"),
    "deeply nested JSON": (b"[" * 50_000, {}, 400, "nests JSON too deeply"),
    "no inputs": ({"outputs": []}, {}, 400, "'inputs' must be a list"),
    "missing input": ({"inputs": []}, {}, 400, "missing input 'input'"),
    "unknown input": (good_with(name="image"), {}, 400, "unknown input 'image'"),
    "wrong shape": (good_with(shape=[1, 1, 8, 7]), {}, 400, "the model takes [-1, 1, 8, 8]"),
    "zero examples": (good_with(shape=[0, 1, 8, 8], data=[]), {}, 400, "has shape [0, 1, 8, 8]"),
    "wrong datatype": (good_with(datatype="INT32"), {}, 400, "datatype 'INT32'"),
    "too few values": (good_with(data=[0.5] * 63), {}, 400, "has 63 values but its shape [1, 1, 8, 8] needs"),
    "not numbers": (good_with(data=["a"] * 64), {}, 400, "must hold numbers only"),
    "NaN": (json.dumps(good_with(data=[math.nan] * 64)).encode(), {}, 400, "NaN or infinite"),
    "infinity": (json.dumps(good_with(data=[math.inf] * 64)).encode(), {}, 400, "NaN or infinite"),
    "beyond FP32": (good_with(datatype="FP64", data=[1e300] * 64), {}, 400, "beyond the FP32 range"),
    "unknown output": ({**good_with(), "outputs": [{"name": "probs"}]}, {}, 400, "unknown output 'probs'"),
    "bad header length": (good_with(), {"Inference-Header-Content-Length": "99999"}, 400, "byte count"),
    "binary size mismatch": (
        BINARY_HEADER + GOOD.tobytes() + b"\0" * 4,
        {"Inference-Header-Content-Length": str(len(BINARY_HEADER))},
        400,
        "binary_data_size 256 of input 'input' does not match the 260 bytes",
    ),
    "oversized body": (b" " * (MAX_BODY_BYTES + 1), {}, 413, "exceeds the limit"),
    "compressed body": (good_with(), {"Content-Encoding": "gzip"}, 415, "compressed"),
}


@pytest.mark.parametrize("case", BAD_REQUESTS)
def test_bad_requests_get_a_4xx_saying_what_is_wrong_and_the_server_goes_on(client, case):
    body, headers, status, message = BAD_REQUESTS[case]
    content = body if isinstance(body, bytes) else json.dumps(body).encode()
    response = client.post(f"/v2/models/{MODEL}/infer", content=content, headers=headers)
    assert response.status_code == status, response.text
    assert message in response.json()["error"]
    after = client.post(f"/v2/models/{MODEL}/infer", json=infer_body(GOOD))
    assert outputs_of(after)["logits"].shape == (1, 10)


def test_a_streamed_body_is_cut_off_at_the_limit(client):
    chunks = iter([b" " * (MAX_BODY_BYTES // 2)] * 3)  # no Content-Length: sent chunked
    response = client.post(f"/v2/models/{MODEL}/infer", content=chunks)
    assert response.status_code == 413 and "exceeds the limit" in response.json()["error"]


def test_unknown_model_and_route_get_a_404_error_object(client):
    response = client.post("/v2/models/other/infer", json=infer_body(GOOD))
    assert response.status_code == 404 and "unknown model 'other'" in response.json()["error"]
    assert client.get("/v2/models/other").status_code == 404
    assert client.get("/v3").status_code == 404 and "error" in client.get("/v3").json()


# --- batching -------------------------------------------------------------------------------------


def test_concurrent_requests_are_batched_and_answer_as_one_by_one(client, served):
    inputs = [examples(1 + i % 3, seed=10 + i) for i in range(24)]

    def ask(x: np.ndarray) -> dict[str, np.ndarray]:
        return outputs_of(client.post(f"/v2/models/{MODEL}/infer", json=infer_body(x)))

    alone = [ask(x) for x in inputs]
    served.batch_sizes.clear()
    with ThreadPoolExecutor(max_workers=12) as pool:
        together = list(pool.map(ask, inputs))
    assert max(served.batch_sizes) > 3, f"no request was batched: {served.batch_sizes}"
    assert max(served.batch_sizes) <= 16 and sum(served.batch_sizes) == sum(map(len, inputs))
    for one, other in zip(alone, together, strict=True):
        np.testing.assert_array_equal(one["predicted_class"], other["predicted_class"])
        for name in ("logits", "margin", "certified_radius"):
            np.testing.assert_allclose(one[name], other[name], rtol=1e-5, atol=1e-6)


# --- a client written for Triton ------------------------------------------------------------------


def test_a_triton_client_works_unchanged(url, artifact):
    client = triton.InferenceServerClient(url=url.removeprefix("http://"))
    assert client.is_server_live() and client.is_server_ready() and client.is_model_ready(MODEL)
    assert "binary_tensor_data" in client.get_server_metadata()["extensions"]
    metadata = client.get_model_metadata(MODEL)
    assert metadata["inputs"][0]["shape"] == [-1, 1, 8, 8]
    x = examples(3, seed=3)
    logits = direct_logits(artifact, x)
    for binary in (True, False):  # Triton's binary tensor extension (its default) and plain JSON
        tensor = triton.InferInput("input", list(x.shape), "FP32")
        tensor.set_data_from_numpy(x, binary_data=binary)
        result = client.infer(MODEL, [tensor])  # no outputs named: all of them, binary
        np.testing.assert_allclose(result.as_numpy("logits"), logits, rtol=0, atol=1e-6)
        assert result.as_numpy("logits").dtype == np.float32
        assert result.as_numpy("certified_radius").dtype == np.float64
        wanted = [triton.InferRequestedOutput("predicted_class", binary_data=binary)]
        result = client.infer(MODEL, [tensor], outputs=wanted, request_id="t")
        np.testing.assert_array_equal(result.as_numpy("predicted_class"), logits.argmax(1))
        assert result.as_numpy("logits") is None and result.get_response()["id"] == "t"
    client.close()


# --- sources and the command line -----------------------------------------------------------------

runner = CliRunner()


def test_a_checkpoint_is_served_from_its_onnx_export(served, artifact):
    assert served.name == MODEL and served.certificate == artifact.certificate
    assert read_onnx_certificate(artifact.onnx) == artifact.certificate
    x = examples(2, seed=4)
    with torch.no_grad():
        expected = artifact.model(torch.from_numpy(x)).numpy()
    np.testing.assert_allclose(direct_logits(artifact, x), expected, rtol=0, atol=1e-5)


def test_serve_refuses_a_file_without_certificate(artifact, tmp_path):
    proto = onnx.load(artifact.onnx)
    del proto.metadata_props[:]
    bare = tmp_path / "bare.onnx"
    onnx.save(proto, bare)
    result = runner.invoke(cli, ["serve", str(bare)])
    assert result.exit_code == 1 and "carries no Lipschitz certificate" in result.stderr


def test_serve_refuses_a_file_whose_graph_exceeds_its_certificate(artifact, tmp_path):
    proto = onnx.load(artifact.onnx)
    weight = next(t for t in proto.graph.initializer if len(t.dims) == 4)
    values = onnx.numpy_helper.to_array(weight) * 2
    weight.CopyFrom(onnx.numpy_helper.from_array(values, weight.name))
    tampered = tmp_path / "tampered.onnx"
    onnx.save(proto, tampered)
    result = runner.invoke(cli, ["serve", str(tampered)])
    assert result.exit_code == 1 and "refused" in result.stderr


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the error where there is no CUDA")
def test_serve_on_cuda_without_cuda_is_a_clear_error(artifact):
    result = runner.invoke(cli, ["serve", str(artifact.onnx), "--device", "cuda"])
    assert result.exit_code == 1 and "no CUDA device is available" in result.stderr


def test_sigterm_answers_the_requests_in_flight_then_exits_0(artifact):
    port = free_port()
    command = [sys.executable, "-m", "zoo", "serve", str(artifact.onnx), "--port", str(port)]
    # A long delay keeps the requests queued in the batcher when the signal arrives.
    server = subprocess.Popen([*command, "--max-batch", "64", "--max-delay-ms", "1000"])
    try:
        url = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + STARTUP_SECONDS
        while True:
            assert server.poll() is None and time.monotonic() < deadline, "zoo serve did not start"
            try:
                if httpx.get(f"{url}/v2/health/ready").status_code == 200:
                    break
            except httpx.TransportError:
                time.sleep(0.1)
        body = infer_body(examples(1, seed=5))
        with ThreadPoolExecutor(max_workers=4) as pool:
            responses = [
                pool.submit(httpx.post, f"{url}/v2/models/{MODEL}/infer", json=body, timeout=30)
                for _ in range(4)
            ]
            time.sleep(0.5)  # the requests reach the server and wait in the batcher
            server.send_signal(signal.SIGTERM)
            started = time.monotonic()
            assert [r.result().status_code for r in responses] == [200] * 4
        assert server.wait(timeout=15) == 0
        assert time.monotonic() - started < 10
    finally:
        server.kill()
        server.wait()
