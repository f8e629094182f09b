"""Load test of ``zoo serve`` on loopback: throughput and latency with dynamic batching off and on.

Run: ``zoo bench serve [SOURCE] [--clients 16] [--seconds 5] [--examples 1]``

For each server configuration in :data:`CONFIGURATIONS`, one after the other, a real ``zoo serve``
subprocess is started on a free loopback port, warmed up, then ``--clients`` concurrent clients
(keep-alive connections, asyncio) each send JSON inference requests of ``--examples`` examples
back to back for ``--seconds`` seconds. Printed side by side: requests/s, examples/s, p50 and p99 latency, the
server's CPU time per request, errors (any answer other than 200, or a transport failure). The
load generator shares the machine's cores with the server, so the rates are those of one box; the
CPU time per request is the server's own cost, and the figure to compare on a busy machine.

SOURCE is anything ``zoo serve`` takes; by default the architecture of ``lipconv_s.digits_hkr`` with
random weights (speed does not depend on the weights), certified and written as ONNX.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import httpx
import numpy as np

CONFIGURATIONS = {  # column title -> (--max-batch, --max-delay-ms)
    "batching off (1, 0 ms)": (1, 0.0),
    "batching on (32, 0 ms)": (32, 0.0),  # never waits: batches what queued during the last call
    "batching on (32, 2 ms)": (32, 2.0),
}
DEFAULT_MODEL = "lipconv_s.digits_hkr"
WARMUP_REQUESTS = 20


@dataclass(frozen=True)
class LoadResult:
    seconds: float
    latencies: np.ndarray  # of the successful requests, in seconds
    errors: int
    server_cpu_seconds: float  # CPU time the server process used during the load (nan if unknown)

    def row(self, examples: int) -> list[str]:
        done = len(self.latencies)
        p50, p99 = np.percentile(self.latencies, [50, 99]) * 1000 if done else (np.nan, np.nan)
        return [
            f"{done / self.seconds:.0f}",
            f"{done * examples / self.seconds:.0f}",
            f"{p50:.1f}",
            f"{p99:.1f}",
            f"{1000 * self.server_cpu_seconds / max(done, 1):.2f}",
            str(self.errors),
        ]


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of process ``pid`` (Linux /proc; nan elsewhere)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return float("nan")
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def default_artifact(directory: Path) -> Path:
    """The architecture of DEFAULT_MODEL with random weights, certified, as a zoo ONNX file."""
    import torch

    from export.writers import write_onnx
    from zoo.certify import certify
    from zoo.models import build
    from zoo.registry import get_entry

    spec = get_entry(DEFAULT_MODEL).architecture
    torch.manual_seed(0)
    model = build(
        spec.name,
        input_shape=spec.input_shape,
        num_classes=spec.num_classes,
        parametrized=False,
        **spec.options,
    )
    return write_onnx(model.eval(), certify(model, spec.input_shape), directory / "bench.onnx")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def start_server(source: str, max_batch: int, max_delay_ms: float, log: Path) -> tuple[subprocess.Popen, str]:
    """A ``zoo serve`` subprocess and its URL, once it answers ready."""
    port = free_port()
    command = [sys.executable, "-m", "zoo", "serve", source, "--port", str(port)]
    command += ["--max-batch", str(max_batch), "--max-delay-ms", str(max_delay_ms)]
    server = subprocess.Popen(command, stdout=log.open("w"), stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and server.poll() is None:
        try:
            if httpx.get(f"{url}/v2/health/ready").status_code == 200:
                return server, url
        except httpx.TransportError:
            time.sleep(0.2)
    server.kill()
    raise RuntimeError(f"zoo serve did not start; its log:\n{log.read_text()}")


class Connection:
    """A minimal HTTP/1.1 keep-alive client for one fixed request.

    httpx costs milliseconds of CPU per request, more than the server itself, and the load generator
    shares the cores with the server: this client costs about 0.05 ms.
    """

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, request: bytes) -> None:
        self.reader, self.writer, self.request = reader, writer, request

    @classmethod
    async def open(cls, url: str, path: str, body: bytes) -> Connection:
        host, port = url.removeprefix("http://").split(":")
        reader, writer = await asyncio.open_connection(host, int(port))
        head = f"POST {path} HTTP/1.1\r\nHost: {host}\r\nContent-Type: application/json\r\n"
        return cls(reader, writer, f"{head}Content-Length: {len(body)}\r\n\r\n".encode() + body)

    async def send(self) -> int:
        """Send the request, read the whole answer; returns its HTTP status."""
        self.writer.write(self.request)
        head = await self.reader.readuntil(b"\r\n\r\n")
        lines = head.decode("latin-1").split("\r\n")
        length = next(int(line.split(":")[1]) for line in lines if line.lower().startswith("content-length:"))
        await self.reader.readexactly(length)
        return int(lines[0].split()[1])

    def close(self) -> None:
        self.writer.close()


async def load(url: str, pid: int, model: str, clients: int, seconds: float, examples: int) -> LoadResult:
    """``clients`` concurrent loops of back-to-back requests for ``seconds`` seconds, after a warm-up."""
    shape = httpx.get(f"{url}/v2/models/{model}").json()["inputs"][0]["shape"]
    inputs = np.random.default_rng(0).uniform(0, 1, (examples, *shape[1:])).astype(np.float32)
    tensor = {"name": "input", "shape": list(inputs.shape), "datatype": "FP32"}
    body = json.dumps({"inputs": [{**tensor, "data": inputs.ravel().tolist()}]}).encode()
    connections = [await Connection.open(url, f"/v2/models/{model}/infer", body) for _ in range(clients)]
    for _ in range(WARMUP_REQUESTS):
        assert await connections[0].send() == 200, "the warm-up request failed"

    latencies: list[float] = []
    errors = 0
    deadline = time.perf_counter() + seconds

    async def client(connection: Connection) -> None:
        nonlocal errors
        while (start := time.perf_counter()) < deadline:
            try:
                status = await connection.send()
            except (OSError, asyncio.IncompleteReadError):
                errors += 1
                return
            if status == 200:
                latencies.append(time.perf_counter() - start)
            else:
                errors += 1

    began, cpu = time.perf_counter(), cpu_seconds(pid)
    await asyncio.gather(*(client(connection) for connection in connections))
    elapsed = time.perf_counter() - began
    result = LoadResult(elapsed, np.array(latencies), errors, cpu_seconds(pid) - cpu)
    for connection in connections:
        connection.close()
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("source", nargs="?", help="what zoo serve serves (default: see above)")
    parser.add_argument("--clients", type=int, default=16, help="concurrent clients")
    parser.add_argument("--seconds", type=float, default=5.0, help="duration of each load test")
    parser.add_argument("--examples", type=int, default=1, help="examples per request")
    args = parser.parse_args()

    load_average = os.getloadavg()[0]
    with tempfile.TemporaryDirectory(prefix="bench-serve-") as directory:
        source = args.source or str(default_artifact(Path(directory)))
        model = Path(source).stem if Path(source).is_file() else source
        columns = {}
        for title, (max_batch, max_delay_ms) in CONFIGURATIONS.items():
            log = Path(directory) / f"server-{max_batch}.log"
            server, url = start_server(source, max_batch, max_delay_ms, log)
            try:
                result = asyncio.run(load(url, server.pid, model, args.clients, args.seconds, args.examples))
            finally:
                server.terminate()
                server.wait(timeout=30)
            columns[title] = result.row(args.examples)

    print(
        f"zoo serve {model}: {args.clients} clients, {args.examples} example(s) per JSON request, "
        f"{args.seconds:g} s per configuration, {os.cpu_count()} CPU cores, "
        f"load average {load_average:.1f} at the start"
    )
    labels = ["requests/s", "examples/s", "p50 latency (ms)", "p99 latency (ms)", "server CPU ms/request"]
    labels.append("errors")
    print(f"{'':22}" + "".join(f"{title:>26}" for title in columns))
    for i, label in enumerate(labels):
        print(f"{label:22}" + "".join(f"{column[i]:>26}" for column in columns.values()))


if __name__ == "__main__":
    main()
