"""``zoo serve`` against clients that misbehave: malformed HTTP, partial requests held open, clients that
go away, more bodies than memory allows, a request of 180,000 examples, and SIGTERM under load.

Raw sockets play the misbehaving clients (an HTTP library would not send what they send). The
memory and SIGTERM tests run the real ``zoo serve`` in a subprocess.
"""

from __future__ import annotations

import json
import logging
import re
import signal
import socket
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import httpx
import numpy as np
import pytest
from serve_helpers import MODEL, Artifact, examples, infer_body, make_artifact, outputs_of, running, zoo_serve

from zoo.app.serve import Limits
from zoo.app.serve.app import create_app

TIMEOUT = 1.0  # the request timeout of the in-process server, in seconds
LIMITS = Limits(max_body_bytes=64 * 1024, max_pending_bytes=256 * 1024, request_timeout=TIMEOUT)
INFER = f"/v2/models/{MODEL}/infer"


@pytest.fixture(scope="module")
def artifact(tmp_path_factory) -> Artifact:
    return make_artifact(tmp_path_factory.mktemp("artifact"))


@pytest.fixture(scope="module")
def url(artifact) -> Iterator[str]:
    app = create_app(artifact.served, max_batch=16, max_delay_ms=0, limits=LIMITS)
    with running(app, TIMEOUT) as url:
        yield url


@pytest.fixture
def server_log() -> Iterator[list[logging.LogRecord]]:
    """The records the server logs during the test (uvicorn's logger, where the server writes)."""
    records: list[logging.LogRecord] = []
    handler = logging.Handler(logging.INFO)
    handler.emit = records.append
    logger = logging.getLogger("uvicorn.error")
    level = logger.level
    logger.setLevel(logging.INFO)
    logger.addHandler(handler)
    yield records
    logger.removeHandler(handler)
    logger.setLevel(level)


def connect(url: str) -> socket.socket:
    host, port = url.removeprefix("http://").split(":")
    return socket.create_connection((host, int(port)), timeout=10)


def answer_of(sock: socket.socket) -> tuple[int, dict, bytes]:
    """Status, headers and body of the answer on ``sock``, read until the server closes it."""
    data = b""
    while chunk := sock.recv(65536):
        data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    headers = dict(line.lower().split(": ", 1) for line in lines[1:])
    return int(lines[0].split()[1]), headers, body


def post_head(length: int) -> bytes:
    return f"POST {INFER} HTTP/1.1\r\nHost: test\r\nContent-Length: {length}\r\n\r\n".encode()


# --- malformed HTTP ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "request_bytes, status, message",
    [
        (b"GARBAGE\r\n\r\n", 400, "invalid HTTP request"),
        (b"GET /v2 HTTP/1.1\r\nHost: x\r\nbad header line\r\n\r\n", 400, "invalid HTTP request"),
        (
            b"GET /v2 HTTP/1.1\r\nHost: x\r\nX-Big: " + b"a" * 20_000,
            431,
            "invalid HTTP request",
        ),
        (f"POST {INFER} HTTP/1.1\r\nHost: x\r\nContent-Length: -5\r\n\r\n".encode(), 400, "invalid HTTP"),
    ],
    ids=["garbage", "bad header", "endless head", "negative length"],
)
def test_malformed_http_gets_a_json_error(url, request_bytes, status, message):
    """uvicorn's plain-text 400 becomes a JSON error (431 for a head beyond h11's 16 KiB)."""
    with connect(url) as sock:
        sock.sendall(request_bytes)
        got, headers, body = answer_of(sock)
    assert got == status and headers["content-type"] == "application/json"
    assert message in json.loads(body)["error"]
    assert httpx.get(f"{url}/v2/health/live").status_code == 200


# --- slow and vanishing clients ---------------------------------------------------------------------


def test_a_partial_head_gets_408_after_the_timeout_and_one_log_line(url, server_log):
    with connect(url) as sock:
        sock.sendall(f"POST {INFER} HTTP/1.1\r\nHost: test\r\n".encode())  # never finished
        started = time.monotonic()
        status, _, body = answer_of(sock)
        waited = time.monotonic() - started
    assert status == 408 and "no complete request head received within 1 s" in json.loads(body)["error"]
    assert TIMEOUT * 0.9 < waited < TIMEOUT + 2
    (record,) = [r for r in server_log if "request head" in r.getMessage()]
    assert record.exc_info is None and "\n" not in record.getMessage()


def test_an_idle_connection_is_closed_without_an_answer(url):
    with connect(url) as sock:
        started = time.monotonic()
        assert sock.recv(1) == b""  # closed by the server
        assert time.monotonic() - started < TIMEOUT + 2


def test_a_partial_body_gets_408_after_the_timeout(url, server_log):
    with connect(url) as sock:
        sock.sendall(post_head(1000) + b'{"inputs": ')
        status, headers, body = answer_of(sock)
    assert status == 408 and "was not received within 1 s" in json.loads(body)["error"]
    assert headers["connection"] == "close"


def test_fifty_partial_requests_are_all_timed_out_and_the_server_answers_meanwhile(url, server_log):
    sockets = [connect(url) for _ in range(50)]
    started = time.monotonic()
    for i, sock in enumerate(sockets):  # half hold a partial head, half a partial body
        sock.sendall(f"POST {INFER} HTTP/1.1\r\n".encode() if i % 2 else post_head(5000) + b"{")
    response = httpx.post(f"{url}{INFER}", json=infer_body(examples(1, seed=0)))
    assert outputs_of(response)["logits"].shape == (1, 10)
    for sock in sockets:
        status, _, _ = answer_of(sock)
        assert status == 408
        sock.close()
    assert time.monotonic() - started < TIMEOUT + 5
    assert all(record.exc_info is None and "\n" not in record.getMessage() for record in server_log)


def test_a_client_going_away_mid_body_costs_one_log_line(url, server_log):
    for _ in range(3):
        with connect(url) as sock:
            sock.sendall(post_head(5000) + b'{"inputs": [')
            time.sleep(0.1)
    time.sleep(0.3)
    gone = [r for r in server_log if "went away" in r.getMessage()]
    assert len(gone) == 3 and len(server_log) == 3, [r.getMessage() for r in server_log]
    assert all(r.exc_info is None and "\n" not in r.getMessage() for r in gone)


def test_bodies_beyond_the_pending_budget_get_503_with_retry_after(url):
    """Four 60 kB bodies held by slow clients fill the 256 KiB budget: the fifth is told to retry."""
    holders = [connect(url) for _ in range(4)]
    for sock in holders:
        sock.sendall(post_head(60_001) + b" " * 60_000)  # one byte short: the body stays pending
    time.sleep(0.3)
    with connect(url) as sock:
        sock.sendall(post_head(60_000) + b" " * 60_000)
        status, headers, body = answer_of_first(sock)
    assert status == 503 and headers["retry-after"] == "1" and "busy" in json.loads(body)["error"]
    for sock in holders:
        sock.close()
    time.sleep(0.3)  # the server sees them go and gives their bytes back
    after = httpx.post(f"{url}{INFER}", content=b" " * 60_000)  # now read, and found to be no JSON
    assert after.status_code == 400 and "not valid JSON" in after.json()["error"]


def answer_of_first(sock: socket.socket) -> tuple[int, dict, bytes]:
    """The first answer on a keep-alive ``sock`` (its Content-Length says where it ends)."""
    data = b""
    while b"\r\n\r\n" not in data:
        data += sock.recv(65536)
    head, _, body = data.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    headers = dict(line.lower().split(": ", 1) for line in lines[1:])
    while len(body) < int(headers["content-length"]):
        body += sock.recv(65536)
    return int(lines[0].split()[1]), headers, body


# --- one huge request: memory -----------------------------------------------------------------------


def rss_mib(pid: int) -> float:
    status = Path(f"/proc/{pid}/status").read_text()
    return int(next(line.split()[1] for line in status.splitlines() if line.startswith("VmRSS"))) / 1024


@pytest.mark.slow
@pytest.mark.skipif(not Path("/proc/self/status").exists(), reason="reads the RSS from /proc")
def test_180000_examples_in_one_request_run_in_parts_and_memory_returns(artifact, tmp_path):
    x = np.random.default_rng(0).integers(0, 2, (180_000, 1, 8, 8))  # 0 / 1 pixels: a compact JSON
    body = json.dumps(
        {
            "inputs": [
                {"name": "input", "shape": list(x.shape), "datatype": "FP32", "data": x.ravel().tolist()}
            ]
        }
    ).encode()
    assert 30e6 < len(body) < 64 * 2**20
    with zoo_serve(artifact.onnx, log=tmp_path / "serve.log") as (server, url):
        httpx.post(f"{url}{INFER}", json=infer_body(examples(32, seed=2))).raise_for_status()
        before, after = rss_mib(server.pid), []
        for _ in range(2):  # the second shows that nothing accumulates
            response = httpx.post(f"{url}{INFER}", content=body, timeout=600)
            outputs = outputs_of(response)
            assert outputs["logits"].shape == (180_000, 10) and outputs["certified_radius"].shape == (
                180_000,
            )
            time.sleep(0.5)
            after.append(rss_mib(server.pid))
    print(f"RSS before {before:.0f} MiB, after each request {after} MiB ({len(body) / 1e6:.1f} MB request)")
    assert max(after) < before + 96, f"RSS grew from {before:.0f} to {after} MiB"


# --- SIGTERM under load -----------------------------------------------------------------------------


def binary_request(n: int, seed: int) -> tuple[bytes, dict[str, str]]:
    x = examples(n, seed)
    tensor = {
        "name": "input",
        "shape": list(x.shape),
        "datatype": "FP32",
        "parameters": {"binary_data_size": x.nbytes},
    }
    header = json.dumps({"inputs": [tensor], "outputs": [{"name": "certified_radius"}]}).encode()
    return header + x.tobytes(), {"Inference-Header-Content-Length": str(len(header))}


@dataclass
class Drained:
    """What a client load saw of a SIGTERM, and what the server logged."""

    statuses: list[int]  # of the load's requests
    errors: list[str]  # their error messages, for those not answered 200
    done_before: int  # requests of the load answered before the signal
    in_flight: int  # inference requests the server had taken and not answered at the signal
    to_503: float | None  # seconds from the signal to a 503 readiness answer (if probed)
    late: httpx.Response | None  # the answer to a request sent after the signal (if probed)
    to_exit: float  # seconds from the signal to the exit
    log: str


def load_then_sigterm(
    artifact: Artifact, log: Path, heavy: int, *options: str, probe: bool = True
) -> Drained:
    """``heavy`` requests of 40,000 examples and as many of one, sent to ``zoo serve OPTIONS``, which
    gets SIGTERM while they run; ``probe``: then ask for readiness, and send one more request."""
    big, big_headers = binary_request(40_000, seed=3)
    small = infer_body(examples(1, seed=4))
    clients = [httpx.Client(timeout=120) for _ in range(2 * heavy)]
    with zoo_serve(artifact.onnx, *options, log=log) as (server, url), ThreadPoolExecutor(2 * heavy) as pool:
        futures = [
            pool.submit(c.post, f"{url}{INFER}", content=big, headers=big_headers) for c in clients[:heavy]
        ]
        futures += [pool.submit(c.post, f"{url}{INFER}", json=small) for c in clients[heavy:]]
        time.sleep(1.0)  # uploaded, parsed, queued or running
        done_before = sum(f.done() for f in futures)
        assert done_before < len(futures), "the load was over before the signal"
        server.send_signal(signal.SIGTERM)
        signalled = time.monotonic()
        to_503, late = None, None
        if probe:
            ready = httpx.get(f"{url}/v2/health/ready", timeout=10)
            to_503 = time.monotonic() - signalled
            assert ready.status_code == 503 and ready.json() == {"ready": False}
            late = httpx.post(f"{url}{INFER}", json=small, timeout=10)
        responses = [f.result() for f in futures]
        assert server.wait(timeout=60) == 0
        to_exit = time.monotonic() - signalled
    text = log.read_text()
    in_flight = int(re.search(r"(\d+) request\(s\) in flight", text).group(1))
    errors = [r.json()["error"] for r in responses if r.status_code != 200]
    statuses = [r.status_code for r in responses]
    return Drained(statuses, errors, done_before, in_flight, to_503, late, to_exit, text)


@pytest.mark.slow
def test_sigterm_under_load_turns_readiness_503_and_answers_every_request(artifact, tmp_path):
    """Every request taken before the signal is answered 200; one that reaches the server after it is
    answered 503 (on a loaded machine a request of the load may be that late)."""
    drained = load_then_sigterm(artifact, tmp_path / "serve.log", 4, "--drain-s", "60")
    print(
        f"readiness 503 after {drained.to_503 * 1000:.0f} ms; {drained.in_flight} requests in flight "
        f"answered; exit {drained.to_exit:.1f} s after SIGTERM; statuses {drained.statuses}"
    )
    assert drained.in_flight > 0 and drained.statuses.count(200) >= drained.done_before + drained.in_flight
    assert set(drained.statuses) <= {200, 503} and all("shutting down" in e for e in drained.errors)
    assert drained.late.status_code == 503 and "shutting down" in drained.late.json()["error"]
    assert drained.to_503 < 1 and "drained in" in drained.log and "Traceback" not in drained.log


@pytest.mark.slow
def test_when_the_grace_period_ends_the_requests_left_get_503_not_500(artifact, tmp_path):
    options = ("--drain-s", "0.2", "--max-batch", "8")
    drained = load_then_sigterm(artifact, tmp_path / "serve.log", 4, *options, probe=False)
    print(f"statuses {drained.statuses}; exit {drained.to_exit:.1f} s after SIGTERM")
    assert set(drained.statuses) <= {200, 503} and 503 in drained.statuses
    assert all("shutting down" in e for e in drained.errors)
    assert "grace period over" in drained.log and "Traceback" not in drained.log


def test_a_client_that_reads_nothing_of_its_answers_is_aborted(url, server_log):
    """Pipelined requests whose answers the client never reads: once the socket buffers are full the
    server waits at most the timeout, then aborts the connection, with one line in the log."""
    x = examples(250, seed=5)
    header = json.dumps(
        {
            "inputs": [
                {
                    "name": "input",
                    "shape": list(x.shape),
                    "datatype": "FP32",
                    "parameters": {"binary_data_size": x.nbytes},
                }
            ],
            "parameters": {"binary_data_output": False},
        }
    ).encode()
    request = (
        (
            f"POST {INFER} HTTP/1.1\r\nHost: test\r\nContent-Length: {len(header) + x.nbytes}\r\n"
            f"Inference-Header-Content-Length: {len(header)}\r\n\r\n"
        ).encode()
        + header
        + x.tobytes()
    )
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    host, port = url.removeprefix("http://").split(":")
    sock.connect((host, int(port)))
    sock.settimeout(30)
    try:
        for _ in range(400):  # ~25 MB of answers, far beyond the socket buffers
            sock.sendall(request)
    except OSError:  # the server aborted the connection: what the test waits for
        pass
    deadline = time.monotonic() + 30
    while not any("read nothing" in r.getMessage() for r in server_log):
        assert time.monotonic() < deadline, [r.getMessage() for r in server_log]
        time.sleep(0.1)
    sock.close()
    assert httpx.get(f"{url}/v2/health/ready").status_code == 200
