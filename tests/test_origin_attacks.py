"""The origin is not trusted: attacks on it, one test each, against a real nginx, a real Mosquitto
and a running agent (the style of test_update_attacks.py).

Each attack serves what an attacker in control of the origin (or of the path to it) would: wrong
bytes, a truncated file, a redirect elsewhere, a drip of one byte a second. After every one the
agent never activated wrong bytes, gave up on the origin in bounded time, and runs the genuine
version, its missing chunks taken from the broker.
"""

from __future__ import annotations

import contextlib
import http.server
import socketserver
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from devtools.origin_server import nginx
from devtools.processes import free_port
from edge_agent.errors import OriginFailed
from edge_agent.origin_fetch import OriginSettings, Run, fetch_run
from harness import manifest_of
from origin_harness import (
    Delivery,
    chunks_sent,
    delivery,
    origin_file,
    plant,
    publish_with_origin,
    same_files,
    small_chunked,
)
from shared.bundle import MODEL_FILE

#: FAST_ORIGIN's bound on one origin request (timeout_s 2 + 4 chunks of 8 KiB at 64 KiB/s), times
#: its two attempts, plus the MQTT fallback and the model's load: the agent must be done by then.
GIVE_UP_S = 25


def genuine_only(run: Delivery, bundle: Path, version: int) -> None:
    """The agent runs ``version`` with exactly the bundle's files, and installed nothing else."""
    assert same_files(bundle, run.installed(version))
    versions = run.work / "agent" / "models" / "versions"
    assert [p.name for p in versions.iterdir()] == [str(version)]
    assert run.agent.proc.poll() is None


def test_wrong_bytes_at_the_origin(int8_bundle: Path, keys: Path, tmp_path: Path) -> None:
    bundle = small_chunked(int8_bundle, keys, tmp_path / "v3000", 3000)
    root = tmp_path / "origin"
    root.mkdir()
    tampered = bytearray((bundle / MODEL_FILE).read_bytes())
    tampered[len(tampered) // 2] ^= 0xFF  # same length, one byte flipped in the middle
    plant(root, bundle, model_tflite=bytes(tampered))
    with nginx(root) as server, delivery(tmp_path / "run", keys) as run:
        started = time.monotonic()
        publish_with_origin(bundle, run.broker, keys, tmp_path / "written", server.url)
        reason = run.wait_serving(3000)
        assert time.monotonic() - started < GIVE_UP_S
        assert "wrong bytes" in run.agent.log()
        total = sum(len(e.chunks) for e in manifest_of(bundle).files.values())
        assert 0 < chunks_sent(run.broker) < total  # only what the origin could not give came over MQTT
        assert "over MQTT" in reason and "0 over MQTT" not in reason
        genuine_only(run, bundle, 3000)


def test_truncated_file_at_the_origin(int8_bundle: Path, keys: Path, tmp_path: Path) -> None:
    bundle = small_chunked(int8_bundle, keys, tmp_path / "v3001", 3001)
    root = tmp_path / "origin"
    root.mkdir()
    model = (bundle / MODEL_FILE).read_bytes()
    plant(root, bundle, model_tflite=model[: len(model) // 3 + 100])  # cut mid-chunk, for good
    with nginx(root) as server, delivery(tmp_path / "run", keys) as run:
        publish_with_origin(bundle, run.broker, keys, tmp_path / "written", server.url)
        run.wait_serving(3001)
        assert "truncated" in run.agent.log() or "HTTP 416" in run.agent.log()
        assert chunks_sent(run.broker) > 0
        genuine_only(run, bundle, 3001)


def test_redirect_to_another_host_is_refused(int8_bundle: Path, keys: Path, tmp_path: Path) -> None:
    """The origin answers 302 to a second server (holding tampered files): never followed."""
    bundle = small_chunked(int8_bundle, keys, tmp_path / "v3002", 3002)
    elsewhere_root, root = tmp_path / "elsewhere", tmp_path / "origin"
    root.mkdir()
    planted = origin_file(elsewhere_root / "b", bundle)
    plant(elsewhere_root / "b", bundle, model_tflite=b"\0" * (bundle / MODEL_FILE).stat().st_size,
          catalog_json=b"{}")
    with nginx(elsewhere_root) as elsewhere, \
            nginx(root, extra=f"    location /b/ {{ return 302 {elsewhere.url}$request_uri; }}") as server, \
            delivery(tmp_path / "run", keys) as run:
        publish_with_origin(bundle, run.broker, keys, tmp_path / "written", server.url + "/b")
        run.wait_serving(3002)
        assert planted.exists() and any(status == 302 for _, status, _, _ in server.requests())
        assert elsewhere.requests() == []  # the redirect was never followed
        assert "redirect" in run.agent.log()
        genuine_only(run, bundle, 3002)


class _Drip(socketserver.BaseRequestHandler):
    """Answers any request with a valid 206 header, then one byte a second."""

    stop: threading.Event
    requests: list[float]

    def handle(self) -> None:
        self.request.recv(65536)
        type(self).requests.append(time.monotonic())
        header = (b"HTTP/1.1 206 Partial Content\r\nContent-Range: bytes 0-32767/1000000\r\n"
                  b"Content-Length: 32768\r\nContent-Type: application/octet-stream\r\n\r\n")
        with contextlib.suppress(OSError):
            self.request.sendall(header)
            while not type(self).stop.wait(1.0):
                self.request.sendall(b"x")


@contextlib.contextmanager
def drip_server() -> Iterator[tuple[str, type[_Drip]]]:
    handler = type("Drip", (_Drip,), {"stop": threading.Event(), "requests": []})
    server = socketserver.ThreadingTCPServer(("127.0.0.1", 0), handler)
    server.daemon_threads = True
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}", handler
    finally:
        handler.stop.set()
        server.shutdown()
        server.server_close()
        thread.join(5)


def test_slow_drip_is_given_up_in_bounded_time(int8_bundle: Path, keys: Path, tmp_path: Path) -> None:
    bundle = small_chunked(int8_bundle, keys, tmp_path / "v3003", 3003)
    with drip_server() as (url, handler), delivery(tmp_path / "run", keys) as run:
        started = time.monotonic()
        publish_with_origin(bundle, run.broker, keys, tmp_path / "unserved", url)
        run.wait_serving(3003, timeout=GIVE_UP_S + 30)
        took = time.monotonic() - started
        assert handler.requests, "the agent never asked the drip server"
        assert took < GIVE_UP_S, took
        assert "too slow" in run.agent.log()
        assert chunks_sent(run.broker) == sum(len(e.chunks) for e in manifest_of(bundle).files.values())
        genuine_only(run, bundle, 3003)


class _Liar(http.server.BaseHTTPRequestHandler):
    """Answers with what ``mode`` (the path) says: the whole file ignoring Range, more bytes than
    asked, a compressed body."""

    body = bytes(range(256)) * 64  # a 16 KiB file

    def do_GET(self) -> None:  # noqa: N802 (http.server's name)
        mode = self.path.strip("/")
        if mode == "whole":
            self.send_response(200)
            self.send_header("Content-Length", str(len(self.body)))
        elif mode == "longer":
            self.send_response(206)
            self.send_header("Content-Range", f"bytes 0-{len(self.body) - 1}/{len(self.body)}")
            self.send_header("Content-Length", str(len(self.body)))
        else:
            self.send_response(206)
            self.send_header("Content-Range", "bytes 0-4095/16384")
            self.send_header("Content-Length", "4096")
            self.send_header("Content-Encoding", "gzip")
        self.end_headers()
        with contextlib.suppress(OSError):
            self.wfile.write(self.body)

    def log_message(self, *args: object) -> None:
        pass


def test_answers_beyond_what_was_asked_are_never_read() -> None:
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Liar)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    base = f"http://127.0.0.1:{server.server_address[1]}"
    body, settings = _Liar.body, OriginSettings(timeout_s=2)
    try:
        got: list[tuple[int, bytes]] = []
        # an origin that ignores Range: its first bytes are the run asked for, and no more is read
        fetch_run(Run("f", f"{base}/whole", 0, 2, 4096, len(body)), settings, lambda n, i, d: got.append((i, d)))
        assert got == [(0, body[:4096]), (1, body[4096:8192])]
        with pytest.raises(OriginFailed, match="HTTP 200"):  # ... but not for a run further on
            fetch_run(Run("f", f"{base}/whole", 2, 1, 4096, len(body)), settings, lambda n, i, d: None)
        with pytest.raises(OriginFailed, match="Content-Range"):  # more than asked: refused on the headers
            fetch_run(Run("f", f"{base}/longer", 0, 1, 4096, len(body)), settings, lambda n, i, d: None)
        with pytest.raises(OriginFailed, match="Content-Encoding"):
            fetch_run(Run("f", f"{base}/gzip", 0, 1, 4096, len(body)), settings, lambda n, i, d: None)
        with pytest.raises(OriginFailed, match="Connection"):  # nothing listens there
            fetch_run(Run("f", f"http://127.0.0.1:{free_port()}/x", 0, 1, 4096, len(body)), settings,
                      lambda n, i, d: None)
    finally:
        server.shutdown()
        server.server_close()
        thread.join(5)
