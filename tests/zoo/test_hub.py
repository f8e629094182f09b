"""zoo.load by name: shipped file, cache, download from a url, sha256 checked on every load."""

from __future__ import annotations

import hashlib
import http.server
import shutil
import stat
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml

import zoo
import zoo.hub
from zoo.checkpoint import CheckpointError
from zoo.locks import try_lock
from zoo.registry import get_entry


@pytest.fixture
def registry_with(tmp_path, monkeypatch, short_run):
    """A models.yaml holding the digits entry with the given weight fields, and a private package dir."""
    weights = {"name", "checkpoint", "url", "sha256", "certificate", "metrics"}
    base = get_entry("lipconv_s.digits_hkr").model_dump(mode="json", exclude=weights)
    sha = hashlib.sha256(short_run.checkpoint.read_bytes()).hexdigest()
    monkeypatch.setattr(zoo.hub, "PACKAGE_DIR", tmp_path / "package")
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch_home"))

    def write(**fields):
        path = tmp_path / "models.yaml"
        path.write_text(yaml.safe_dump({"models": {"lipconv_s.digits_hkr": {**base, **fields}}}))
        monkeypatch.setenv("ZOO_MODELS_YAML", str(path))
        return sha

    return write


def test_a_shipped_checkpoint_loads_by_name(same_certificate, registry_with, short_run, tmp_path):
    sha = registry_with(checkpoint="weights/model.safetensors", sha256=None)
    shipped = tmp_path / "package" / "weights" / "model.safetensors"
    shipped.parent.mkdir(parents=True)
    shutil.copyfile(short_run.checkpoint, shipped)
    with pytest.raises(Exception, match="needs its sha256"):
        zoo.load("lipconv_s.digits_hkr")
    registry_with(checkpoint="weights/model.safetensors", sha256=sha)
    loaded = zoo.load("lipconv_s.digits_hkr")
    assert same_certificate(loaded.certificate, short_run.certificate)


def test_a_wrong_sha256_is_refused(registry_with, short_run, tmp_path):
    registry_with(checkpoint="weights/model.safetensors", sha256="0" * 64)
    shipped = tmp_path / "package" / "weights" / "model.safetensors"
    shipped.parent.mkdir(parents=True)
    shutil.copyfile(short_run.checkpoint, shipped)
    with pytest.raises(CheckpointError, match="does not have the sha256 recorded"):
        zoo.load("lipconv_s.digits_hkr")


def test_download_into_the_cache_then_offline(
    same_certificate, registry_with, short_run, tmp_path, monkeypatch
):
    sha = registry_with(url=short_run.checkpoint.resolve().as_uri(), sha256=None)
    registry_with(url=short_run.checkpoint.resolve().as_uri(), sha256=sha)
    monkeypatch.setenv("ZOO_OFFLINE", "1")
    with pytest.raises(CheckpointError, match="ZOO_OFFLINE=1"):
        zoo.load("lipconv_s.digits_hkr")
    monkeypatch.delenv("ZOO_OFFLINE")
    loaded = zoo.load("lipconv_s.digits_hkr")
    cached = list((tmp_path / "torch_home" / "hub" / "checkpoints").iterdir())
    assert len(cached) == 1 and same_certificate(loaded.certificate, short_run.certificate)
    monkeypatch.setenv("ZOO_OFFLINE", "1")  # now served from the cache
    assert same_certificate(zoo.load("lipconv_s.digits_hkr").certificate, short_run.certificate)
    cached[0].write_bytes(cached[0].read_bytes()[:-1] + b"\x00")
    with pytest.raises(CheckpointError, match="sha256"):
        zoo.load("lipconv_s.digits_hkr")


def test_an_entry_without_weights_says_how_to_get_them(registry_with):
    registry_with()
    with pytest.raises(CheckpointError, match=r"zoo train lipconv_s\.digits_hkr"):
        zoo.load("lipconv_s.digits_hkr")


class _Server(http.server.BaseHTTPRequestHandler):
    """Serves ``body`` at every path, announcing ``length`` bytes (a cut transfer when longer), or
    answers 404 when ``body`` is None; ``raw``, when set, is the whole answer (a malformed one). With
    ``hold`` set, the answer stops after half the body until ``hold`` is released."""

    body: bytes | None = None
    length: int | None = None
    raw: bytes | None = None
    hold: threading.Event | None = None

    def do_GET(self) -> None:
        if self.raw is not None:
            self.wfile.write(self.raw)
            return
        if self.body is None:
            self.send_error(404)
            return
        self.send_response(200)
        self.send_header("Content-Length", str(self.length or len(self.body)))
        self.end_headers()
        half = len(self.body) // 2
        self.wfile.write(self.body[:half])
        self.wfile.flush()
        if self.hold is not None:
            self.hold.wait(timeout=120)
        self.wfile.write(self.body[half:])

    def log_message(self, *args) -> None:
        pass


@pytest.fixture
def server(monkeypatch) -> Iterator[type[_Server]]:
    """A local HTTP server (loopback, any free port): set ``server.body`` / ``server.length``, and
    ``server.url`` is where to get them. models.yaml accepts https and file urls only, so the entry is
    pointed at it after validation (``zoo.hub.get_entry`` patched)."""
    handler = type("Handler", (_Server,), {})
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    handler.url = f"http://127.0.0.1:{httpd.server_address[1]}/model.safetensors"
    validated = zoo.hub.get_entry
    monkeypatch.setattr(
        zoo.hub, "get_entry", lambda name: validated(name).model_copy(update={"url": handler.url})
    )
    yield handler
    httpd.shutdown()
    httpd.server_close()


def _cached(tmp_path) -> list[str]:
    cache = tmp_path / "torch_home" / "hub" / "checkpoints"
    return sorted(p.name for p in cache.iterdir()) if cache.is_dir() else []


def test_a_download_over_http_streams_into_the_cache(
    same_certificate, registry_with, short_run, tmp_path, server
):
    server.body = short_run.checkpoint.read_bytes()
    registry_with(
        url="https://example.invalid/model.safetensors", sha256=hashlib.sha256(server.body).hexdigest()
    )
    assert same_certificate(
        zoo.load("lipconv_s.digits_hkr", progress=False).certificate, short_run.certificate
    )
    (cached,) = _cached(tmp_path)
    assert cached.endswith(".safetensors") and not cached.startswith(".")
    probe = tmp_path / "probe"
    probe.write_bytes(b"")  # the permissions open() gives (a cache shared with a service user)
    cache = tmp_path / "torch_home" / "hub" / "checkpoints"
    assert stat.S_IMODE((cache / cached).stat().st_mode) == stat.S_IMODE(probe.stat().st_mode)
    server.body = None  # a second load reads the cache, not the server
    assert same_certificate(zoo.load("lipconv_s.digits_hkr").certificate, short_run.certificate)


URL = r"http://127\.0\.0\.1:\d+/model\.safetensors"


@pytest.mark.parametrize(
    ("answer", "message"),
    [
        (
            {"body": b"not the pinned file"},
            r"has sha256 [0-9a-f]{64}, not the [0-9a-f]{64} recorded in models\.yaml",
        ),
        ({"body": b"half a file", "length": 1000}, r"(ended after 11 of 1,000 bytes|cannot download)"),
        ({"body": None}, rf"cannot download {URL} \(HTTP Error 404"),
        ({"raw": b"garbage\r\n\r\n"}, rf"cannot download {URL} \(BadStatusLine: garbage\)$"),
        (
            {"raw": b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n10\r\nabc"},
            rf"cannot download {URL} \(IncompleteRead: IncompleteRead\(0 bytes read\)\)",
        ),
    ],
    ids=["mismatching hash", "cut transfer", "404", "not HTTP", "cut chunked transfer"],
)
def test_a_failed_download_leaves_nothing_in_the_cache(
    same_certificate, registry_with, short_run, tmp_path, server, answer, message
):
    for field, value in answer.items():
        setattr(server, field, value)
    registry_with(
        url="https://example.invalid/model.safetensors",
        sha256=hashlib.sha256(short_run.checkpoint.read_bytes()).hexdigest(),
    )
    with pytest.raises(CheckpointError, match=message):
        zoo.load("lipconv_s.digits_hkr", progress=False)
    assert _cached(tmp_path) == []  # not even a partial file
    server.raw, server.length = None, None  # the next attempt succeeds
    server.body = short_run.checkpoint.read_bytes()
    assert same_certificate(
        zoo.load("lipconv_s.digits_hkr", progress=False).certificate, short_run.certificate
    )


def test_a_killed_download_is_removed_by_the_next_one_and_a_running_one_is_kept(
    same_certificate, registry_with, short_run, tmp_path, server
):
    """A process killed mid-download leaves its partial file (nothing can remove it then); the next
    download removes it, and leaves alone the partial file of a download still running (locked)."""
    server.body = short_run.checkpoint.read_bytes()
    server.hold = threading.Event()
    sha = registry_with(
        url="https://example.invalid/model.safetensors", sha256=hashlib.sha256(server.body).hexdigest()
    )
    cache = tmp_path / "torch_home" / "hub" / "checkpoints"
    target = cache / f"lipconv_s.digits_hkr-{sha[:10]}.safetensors"
    download = (
        "import pathlib, zoo.hub\n"
        f"zoo.hub._download({server.url!r}, pathlib.Path({str(target)!r}), 'x', {sha!r}, False)"
    )
    child = subprocess.Popen([sys.executable, "-c", download], cwd=Path(zoo.__file__).parents[1])
    try:
        deadline = time.monotonic() + 120
        while not any(p.stat().st_size for p in cache.glob(".*.tmp")) and child.poll() is None:
            assert time.monotonic() < deadline, "the download never started"
            time.sleep(0.1)
    finally:
        child.kill()
        child.wait()
    (killed,) = cache.glob(".*.tmp")
    running = cache / f".{target.name}.0123456789ab.tmp"  # as create_temporary names them
    running.write_bytes(b"half")
    with running.open("rb+") as file:
        assert try_lock(file.fileno())
        server.hold = None
        assert same_certificate(
            zoo.load("lipconv_s.digits_hkr", progress=False).certificate, short_run.certificate
        )
        assert _cached(tmp_path) == sorted([target.name, running.name])
    assert not killed.exists()
