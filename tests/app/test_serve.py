"""``zoo serve`` over real HTTP on loopback: every endpoint, certified radii, bad input, batching, a
Triton client, the command line and a graceful SIGTERM.

One small plain model with random weights (nothing is trained) is certified and written as ONNX once.
Most tests talk to an in-process server (uvicorn in a thread); the command-line tests start the
real ``zoo serve`` in a subprocess.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor

import httpx
import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
import tritonclient.http as triton
import tritonclient.utils as triton_utils
import typer
from serve_helpers import MODEL, Artifact, examples, infer_body, make_artifact, outputs_of, running
from typer.testing import CliRunner

import zoo
from export.writers import read_onnx_certificate
from zoo.app.cli import app as cli
from zoo.app.serve import ArtifactError, Limits, ServedModel, open_model
from zoo.app.serve.app import create_app

MAX_BODY_BYTES = 64 * 1024  # small, so that the oversized-body test stays cheap
LIMITS = Limits(max_body_bytes=MAX_BODY_BYTES, max_pending_bytes=4 * MAX_BODY_BYTES, request_timeout=2)


@pytest.fixture(scope="module")
def artifact(tmp_path_factory) -> Artifact:
    return make_artifact(tmp_path_factory.mktemp("artifact"))


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
    with running(
        create_app(served, max_batch=16, max_delay_ms=20, limits=LIMITS), LIMITS.request_timeout
    ) as url:
        yield url


@pytest.fixture(scope="module")
def client(url) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=url, timeout=30) as http:
        yield http


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
    "datatype a list": (good_with(datatype=["FP32"]), {}, 400, "datatype of input 'input' must be a string"),
    "datatype an object": (good_with(datatype={"a": 1}), {}, 400, "must be a string, not an object"),
    "output name a list": ({**good_with(), "outputs": [{"name": ["logits"]}]}, {}, 400, "must be a string"),
    "output name an object": ({**good_with(), "outputs": [{"name": {}}]}, {}, 400, "must be a string"),
    "output asked twice": ({**good_with(), "outputs": [{"name": "margin"}] * 2}, {}, 400, "asked for twice"),
    "unknown field": ({**good_with(), "input": []}, {}, 400, "unknown field 'input'"),
    "sequence parameter": (
        {**good_with(), "parameters": {"sequence_id": 3}},
        {},
        400,
        "not a sequence model",
    ),
    "shared memory": (good_with(parameters={"shared_memory_region": "r"}), {}, 400, "shared memory is not"),
    "binary flag not a bool": (
        {**good_with(), "parameters": {"binary_data_output": 1}},
        {},
        400,
        "true or false",
    ),
    "data and binary size": (good_with(parameters={"binary_data_size": 256}), {}, 400, "both 'data' and"),
    "classification of margin": (
        {**good_with(), "outputs": [{"name": "margin", "parameters": {"classification": 2}}]},
        {},
        400,
        "takes the 'logits' output",
    ),
    "255-scale pixels": (
        good_with(data=[255.0] * 64),
        {},
        400,
        "outside the certificate's input range [0, 1]",
    ),
    "too few values": (good_with(data=[0.5] * 63), {}, 400, "has 63 values but its shape [1, 1, 8, 8] needs"),
    "not numbers": (good_with(data=["a"] * 64), {}, 400, "must hold numbers only"),
    "NaN": (json.dumps(good_with(data=[math.nan] * 64)).encode(), {}, 400, "NaN or infinite"),
    "infinity": (json.dumps(good_with(data=[math.inf] * 64)).encode(), {}, 400, "NaN or infinite"),
    "beyond FP32": (good_with(datatype="FP64", data=[1e300] * 64), {}, 400, "beyond the FP32 range"),
    "unknown output": ({**good_with(), "outputs": [{"name": "probs"}]}, {}, 400, "unknown output 'probs'"),
    "bad header length": (good_with(), {"Inference-Header-Content-Length": "99999"}, 400, "byte count"),
    "header length not a count": (good_with(), {"Inference-Header-Content-Length": "1_0"}, 400, "byte count"),
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


def _replace(request: dict, path: tuple, value) -> dict:
    """A deep copy of ``request`` with the value at ``path`` (keys and list indices) replaced."""
    request = json.loads(json.dumps(request))
    target = request
    for key in path[:-1]:
        target = target[key]
    target[path[-1]] = value
    return request


FULL_REQUEST = {
    "id": "r",
    "parameters": {"binary_data_output": False},
    "inputs": [{**infer_body(GOOD)["inputs"][0], "parameters": {}}],
    "outputs": [{"name": "logits", "parameters": {"binary_data": False, "classification": 2}}],
}
FIELD_PATHS = [
    ("id",),
    ("parameters",),
    ("parameters", "binary_data_output"),
    ("inputs",),
    ("inputs", 0),
    ("inputs", 0, "name"),
    ("inputs", 0, "shape"),
    ("inputs", 0, "shape", 0),
    ("inputs", 0, "datatype"),
    ("inputs", 0, "parameters"),
    ("inputs", 0, "data"),
    ("inputs", 0, "data", 0),
    ("outputs",),
    ("outputs", 0),
    ("outputs", 0, "name"),
    ("outputs", 0, "parameters"),
    ("outputs", 0, "parameters", "binary_data"),
    ("outputs", 0, "parameters", "classification"),
]
WRONG_VALUES = [None, True, -1, 1e300, "x", [], [None], {}, {"a": []}]


def test_every_field_of_a_request_given_a_wrong_type_gets_a_4xx_json_error(client):
    """Each field of a full request (every optional part present) replaced by a value of every JSON
    type: the server answers each with a 4xx JSON error, never a 500, or (for a value the field
    accepts) a 200."""
    assert client.post(f"/v2/models/{MODEL}/infer", json=FULL_REQUEST).status_code == 200
    statuses = {}
    for path in FIELD_PATHS:
        for value in WRONG_VALUES:
            response = client.post(f"/v2/models/{MODEL}/infer", json=_replace(FULL_REQUEST, path, value))
            statuses[path, json.dumps(value)] = response.status_code
            assert response.status_code == 200 or 400 <= response.status_code < 500, (
                path,
                value,
                response.text,
            )
            if response.status_code != 200:
                assert response.json()["error"], (path, value)
    # Every field is checked: each has a wrong value refused.
    for path in FIELD_PATHS:
        assert any(statuses[path, json.dumps(v)] != 200 for v in WRONG_VALUES), path


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


def test_a_triton_client_reads_the_config_and_the_repository(url, artifact):
    client = triton.InferenceServerClient(url=url.removeprefix("http://"))
    config = client.get_model_config(MODEL)
    assert config["name"] == MODEL and config["platform"] == "onnxruntime_onnx"
    assert (
        config["max_batch_size"] == 16
        and config["dynamic_batching"]["max_queue_delay_microseconds"] == 20_000
    )
    assert config["input"] == [{"name": "input", "data_type": "TYPE_FP32", "dims": [1, 8, 8]}]
    outputs = {o["name"]: (o["data_type"], o["dims"], o.get("reshape")) for o in config["output"]}
    assert outputs == {
        "logits": ("TYPE_FP32", [10], None),
        "predicted_class": ("TYPE_INT64", [1], {"shape": []}),
        "margin": ("TYPE_FP64", [1], {"shape": []}),
        "certified_radius": ("TYPE_FP64", [1], {"shape": []}),
    }
    bound = float(config["parameters"]["zoo.lipschitz_bound"]["string_value"])
    assert bound == artifact.certificate.lipschitz_bound  # the repr round-trips exactly
    assert json.loads(config["parameters"]["zoo.preprocessing"]["string_value"])["input_range"] == [0, 1]
    assert client.get_model_config(MODEL, model_version="1") == config
    assert client.get_model_repository_index() == [{"name": MODEL, "version": "1", "state": "READY"}]
    client.load_model(MODEL)  # it is loaded: a no-op
    refusals = {
        "cannot unload": lambda: client.unload_model(MODEL),
        "cannot load a new configuration": lambda: client.load_model(MODEL, config=json.dumps(config)),
        "unknown model 'other'": lambda: client.get_model_config("other"),
        "trace extension": client.get_trace_settings,
        "logging extension": client.get_log_settings,
        "system shared memory extension": client.get_system_shared_memory_status,
        "CUDA shared memory extension": client.get_cuda_shared_memory_status,
    }
    for message, call in refusals.items():
        with pytest.raises(triton_utils.InferenceServerException, match=message):
            call()
    extensions = ["binary_tensor_data", "classification", "model_configuration", "statistics"]
    assert client.get_server_metadata()["extensions"] == extensions
    client.close()


def test_a_triton_client_gets_the_top_classes(url, artifact):
    """The classification extension: the top k logits and classes of each example, as Triton writes them."""
    client = triton.InferenceServerClient(url=url.removeprefix("http://"))
    x = examples(4, seed=7)
    logits = direct_logits(artifact, x)
    tensor = triton.InferInput("input", list(x.shape), "FP32")
    tensor.set_data_from_numpy(x)
    for binary in (True, False):
        wanted = [triton.InferRequestedOutput("logits", binary_data=binary, class_count=3)]
        top = client.infer(MODEL, [tensor], outputs=wanted).as_numpy("logits")
        assert top.shape == (4, 3)
        for row, strings in zip(logits, top, strict=True):
            pairs = [item.decode().split(":") if binary else item.split(":") for item in strings]
            assert [int(c) for _, c in pairs] == list(np.argsort(-row)[:3])
            np.testing.assert_allclose([float(v) for v, _ in pairs], np.sort(row)[::-1][:3], atol=1e-6)
    client.close()


def test_a_request_larger_than_max_batch_runs_in_parts_of_max_batch(client, served, artifact):
    x = examples(200, seed=8)
    header = json.dumps(
        {
            "inputs": [
                {
                    "name": "input",
                    "shape": [200, 1, 8, 8],
                    "datatype": "FP32",
                    "parameters": {"binary_data_size": x.nbytes},
                }
            ]
        }
    ).encode()
    served.batch_sizes.clear()
    response = client.post(
        f"/v2/models/{MODEL}/infer",
        content=header + x.tobytes(),
        headers={"Inference-Header-Content-Length": str(len(header))},
    )
    np.testing.assert_allclose(outputs_of(response)["logits"], direct_logits(artifact, x), rtol=0, atol=1e-6)
    assert max(served.batch_sizes) == 16 and sum(served.batch_sizes) == 200


def test_inputs_outside_the_range_are_clamped_and_said_when_the_server_clamps(served, artifact):
    x = examples(3, seed=9)
    x[1] *= 255  # 255-scale pixels for a [0, 1] certificate
    app = create_app(served, max_batch=16, max_delay_ms=0, limits=LIMITS, clamp_inputs=True)
    with running(app, LIMITS.request_timeout) as url:
        response = httpx.post(f"{url}/v2/models/{MODEL}/infer", json=infer_body(x))
    assert response.json()["parameters"] == {"clamped_examples": 1}
    np.testing.assert_allclose(
        outputs_of(response)["logits"], direct_logits(artifact, x.clip(0, 1)), atol=1e-6
    )


def test_a_triton_client_reads_the_inference_statistics(served):
    """Three requests (1, 2 and 40 examples: the last runs in parts of 16, 16, 8) and a bad one, on a
    fresh server: the counts are exact, the times consistent."""
    app = create_app(served, max_batch=16, max_delay_ms=0, limits=LIMITS)
    with running(app, LIMITS.request_timeout) as url:
        for n in (1, 2, 40):
            httpx.post(
                f"{url}/v2/models/{MODEL}/infer", json=infer_body(examples(n, seed=n))
            ).raise_for_status()
        assert httpx.post(f"{url}/v2/models/{MODEL}/infer", json={"inputs": []}).status_code == 400
        client = triton.InferenceServerClient(url=url.removeprefix("http://"))
        (stats,) = client.get_inference_statistics(MODEL)["model_stats"]
        assert client.get_inference_statistics()["model_stats"] == [stats]
        client.close()
    assert (stats["name"], stats["version"]) == (MODEL, "1")
    assert stats["inference_count"] == 43 and stats["execution_count"] == 5
    assert abs(stats["last_inference"] / 1000 - time.time()) < 60
    batches = {b["batch_size"]: b["compute_infer"]["count"] for b in stats["batch_stats"]}
    assert batches == {1: 1, 2: 1, 8: 1, 16: 2}
    inference = stats["inference_stats"]
    assert inference["success"]["count"] == 3 and inference["fail"]["count"] == 1
    for stage in ("queue", "compute_input", "compute_infer", "compute_output"):
        assert inference[stage]["count"] == 3 and inference[stage]["ns"] > 0
    parts = sum(
        inference[stage]["ns"] for stage in ("queue", "compute_input", "compute_infer", "compute_output")
    )
    assert parts <= inference["success"]["ns"]
    batch_ns = sum(b["compute_infer"]["ns"] for b in stats["batch_stats"])
    assert abs(inference["compute_infer"]["ns"] - batch_ns) <= 3  # one request per batch; ns rounding


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


def test_serve_refuses_a_file_that_is_not_onnx_in_one_line(tmp_path):
    garbage = tmp_path / "garbage.onnx"
    garbage.write_bytes(np.random.default_rng(0).bytes(3000))
    result = runner.invoke(cli, ["serve", str(garbage)])
    assert result.exit_code == 1 and "not a readable ONNX file" in result.stderr
    assert "Traceback" not in result.output and len(result.stderr.strip().splitlines()) == 1


@pytest.mark.parametrize("suffix", [".pt", ".pt2"])
def test_serve_refuses_a_program_file_in_one_line(tmp_path, suffix):
    program = tmp_path / f"model{suffix}"
    program.write_bytes(b"PK")
    result = runner.invoke(cli, ["serve", str(program)])
    assert result.exit_code == 1, result.output
    assert result.stderr.strip() == (
        f"error: {program}: zoo serve runs an ONNX file, a checkpoint or a model name, never the program of "
        "a TorchScript / .pt2 file: serve its ONNX form (`zoo verify` checks this one, confined)"
    )


def test_expect_sha256_pins_the_file_served(artifact, tmp_path):
    digest = hashlib.sha256(artifact.onnx.read_bytes()).hexdigest()
    served = open_model(artifact.onnx, "cpu", tmp_path / "a", expected_sha256=digest.upper())
    assert served.certificate == artifact.certificate
    for source in (artifact.onnx, artifact.checkpoint):
        result = runner.invoke(cli, ["serve", str(source), "--expect-sha256", "0" * 64])
        assert result.exit_code == 1 and f"{source}: its sha256 is" in result.stderr, result.stderr


@pytest.mark.parametrize("bound", [math.nan, math.inf, 0.0, -1.0])
def test_a_certificate_without_a_finite_positive_bound_is_not_served(artifact, bound):
    certificate = dataclasses.replace(artifact.certificate, lipschitz_bound=bound)
    with pytest.raises(ArtifactError, match=f"Lipschitz bound is {bound!r}, not a finite positive number"):
        ServedModel(MODEL, artifact.served.session, certificate)


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the error where there is no CUDA")
def test_serve_on_cuda_without_cuda_is_a_clear_error(artifact):
    result = runner.invoke(cli, ["serve", str(artifact.onnx), "--device", "cuda"])
    assert result.exit_code == 1 and "no CUDA device is available" in result.stderr


def test_the_serve_command_defaults_are_those_of_limits():
    options = {p.name: p.default for p in typer.main.get_command(cli).commands["serve"].params}
    defaults = Limits()
    assert options["max_body_mb"] * 2**20 == defaults.max_body_bytes
    assert options["max_pending_mb"] * 2**20 == defaults.max_pending_bytes
    assert options["request_timeout_s"] == defaults.request_timeout
    assert options["drain_s"] == defaults.drain_seconds
    assert options["clamp_inputs"] is False
