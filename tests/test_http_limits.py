"""Connection and body limits of the REST API (issue 22), against a real agent's waitress over
loopback, each attack bounded in connections and seconds.

- slow loris: 120 unauthenticated connections trickling header lines do not starve /readyz, and the
  server cuts them off after ``api.request_timeout_s``; past ``api.max_connections`` the API comes
  back within that time;
- bodies: without the token, 401 comes on the headers, the body unread; a declared body over
  ``api.max_body_bytes`` gets 413 on the headers; a chunked body is cut at the limit as it streams.
"""

from __future__ import annotations

import contextlib
import json
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from devtools.processes import AgentProcess
from devtools.processes import broker as local_broker
from harness import publish, start_agent

TIMEOUT_S = 3  # api.request_timeout_s of the agents under test


@pytest.fixture(scope="module")
def agent(int8_bundle: Path, keys: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[AgentProcess]:
    work = tmp_path_factory.mktemp("limits")
    with local_broker() as broker:
        publish(int8_bundle, broker)
        agent = start_agent(broker.url, keys, work, f"api.request_timeout_s={TIMEOUT_S}")
        try:
            agent.wait_ready(60)
            yield agent
        finally:
            agent.stop()


def connect(agent: AgentProcess) -> socket.socket:
    return socket.create_connection(("127.0.0.1", agent.port), timeout=5)


def read_answer(sock: socket.socket, timeout: float) -> tuple[int, dict[str, str], bytes]:
    """Status, headers and body of one response, read within ``timeout`` seconds."""
    sock.settimeout(timeout)
    data = b""
    deadline = time.monotonic() + timeout
    while b"\r\n\r\n" not in data:
        sock.settimeout(max(0.01, deadline - time.monotonic()))
        chunk = sock.recv(65536)
        assert chunk, f"connection closed before an answer: {data!r}"
        data += chunk
    head, body = data.split(b"\r\n\r\n", 1)
    lines = head.decode("latin-1").split("\r\n")
    headers = {k.lower(): v.strip() for k, _, v in (line.partition(":") for line in lines[1:])}
    while len(body) < int(headers.get("content-length", 0)):
        sock.settimeout(max(0.01, deadline - time.monotonic()))
        chunk = sock.recv(65536)
        assert chunk, "connection closed in the middle of the answer"
        body += chunk
    return int(lines[0].split()[1]), headers, body


def readyz_seconds(agent: AgentProcess, timeout: float = 5) -> float:
    started = time.monotonic()
    with connect(agent) as sock:
        sock.sendall(f"GET /readyz HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {agent.token}\r\n\r\n".encode())
        status, _, _ = read_answer(sock, timeout)
    assert status == 200
    return time.monotonic() - started


class SlowLoris:
    """``count`` connections that send a request line, then one header line every ``every`` seconds."""

    def __init__(self, agent: AgentProcess, count: int, every: float = 1.0) -> None:
        self.socks: list[socket.socket] = []
        self.cut: set[int] = set()  # connections the server closed
        self.stop = threading.Event()
        for _ in range(count):
            sock = socket.socket()
            sock.setblocking(False)
            sock.connect_ex(("127.0.0.1", agent.port))  # past the limit, it waits in the backlog
            self.socks.append(sock)
        time.sleep(0.3)
        self.thread = threading.Thread(target=self._trickle, args=(every,), daemon=True)
        self.thread.start()

    def _trickle(self, every: float) -> None:
        n = 0
        while not self.stop.is_set():
            for i, sock in enumerate(self.socks):
                if i in self.cut:
                    continue
                line = b"POST /v1/events HTTP/1.1\r\nHost: x\r\n" if n == 0 else f"X-Slow-{n}: 1\r\n".encode()
                try:
                    sock.send(line)
                    if sock.recv(1) == b"":
                        self.cut.add(i)
                except BlockingIOError:
                    pass
                except OSError:
                    self.cut.add(i)
            n += 1
            self.stop.wait(every)

    def close(self) -> None:
        self.stop.set()
        self.thread.join(5)
        for sock in self.socks:
            sock.close()


def test_slow_loris_connections_do_not_starve_readyz_and_are_cut_off(agent: AgentProcess) -> None:
    loris = SlowLoris(agent, 120)  # waitress' default connection_limit was 100
    try:
        started = time.monotonic()
        while time.monotonic() - started < TIMEOUT_S + 4:
            assert readyz_seconds(agent) < 2.0
            time.sleep(0.5)
        deadline = time.monotonic() + 10
        while len(loris.cut) < 120 and time.monotonic() < deadline:
            time.sleep(0.2)
        assert len(loris.cut) == 120, f"{120 - len(loris.cut)} slow connections still open"
    finally:
        loris.close()


def test_past_the_connection_limit_the_api_comes_back_within_the_request_timeout(
    int8_bundle: Path, keys: Path, tmp_path: Path
) -> None:
    with local_broker() as broker:
        publish(int8_bundle, broker)
        small = start_agent(broker.url, keys, tmp_path, f"api.request_timeout_s={TIMEOUT_S}", "api.max_connections=16")
        try:
            small.wait_ready(60)
            loris = SlowLoris(small, 24)  # 16 connections minus the listener and waitress' trigger: 14 served
            try:  # the first 14 are cut off after TIMEOUT_S, the next 10 and /readyz are served
                assert readyz_seconds(small, timeout=30) < TIMEOUT_S * 2 + 3
            finally:
                loris.close()
        finally:
            small.stop()


def post_head(agent: AgentProcess, length: int | None, token: str | None, extra: str = "") -> bytes:
    auth = f"Authorization: Bearer {token}\r\n" if token else ""
    framing = f"Content-Length: {length}\r\n" if length is not None else "Transfer-Encoding: chunked\r\n"
    return (f"POST /v1/events HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n{auth}{framing}{extra}"
            "\r\n").encode()


@pytest.mark.parametrize("framing", ["length", "chunked", "expect-continue"])
def test_without_the_token_the_body_is_refused_on_the_headers(agent: AgentProcess, framing: str) -> None:
    length = None if framing == "chunked" else 1_000 * 2**20  # a 1000 MiB upload
    extra = "Expect: 100-continue\r\n" if framing == "expect-continue" else ""
    with connect(agent) as sock:
        started = time.monotonic()
        sock.sendall(post_head(agent, length, None, extra) + (b"" if extra else b"x" * 65536))
        status, headers, body = read_answer(sock, 2)
        assert time.monotonic() - started < 2
    assert status == 401 and headers["www-authenticate"] == "Bearer"
    assert headers["content-type"] == "application/json" and json.loads(body)["error"]["code"] == "unauthorized"


@pytest.mark.parametrize("length", [2**20 + 1, int(1.1 * 2**30)])
def test_a_declared_body_over_the_limit_gets_413_on_the_headers(agent: AgentProcess, length: int) -> None:
    with connect(agent) as sock:
        sock.sendall(post_head(agent, length, agent.token))
        status, headers, body = read_answer(sock, 2)
    assert status == 413 and json.loads(body)["error"]["code"] == "request_entity_too_large"
    assert headers["connection"] == "close"


def test_a_chunked_body_is_cut_at_the_limit_while_it_streams(agent: AgentProcess) -> None:
    chunk = b"%x\r\n%s\r\n" % (65536, b" " * 65536)
    with connect(agent) as sock:
        sock.sendall(post_head(agent, None, agent.token))
        sent = 0
        sock.settimeout(0.05)
        answer = b""
        while sent < 4 * 2**20 and not answer:  # at most 4 MiB, the limit is 1 MiB
            sock.sendall(chunk)
            sent += 65536
            with contextlib.suppress(TimeoutError):
                answer = sock.recv(65536, socket.MSG_PEEK)
        assert answer, "no answer after 4 MiB of chunks"
        assert sent <= 2**20 + 4 * 65536, f"the server read {sent} bytes before refusing"
        status, _, body = read_answer(sock, 2)
    assert status == 413 and json.loads(body)["error"]["code"] == "request_entity_too_large"


def test_an_honest_client_sending_a_body_over_the_limit_reads_the_413(agent: AgentProcess) -> None:
    """The refusal comes before the body, and the server reads the rest briefly so the client
    sees the answer rather than a reset (urllib sends the whole body before reading)."""
    status, raw = agent.request("POST", "/v1/events", b"[" + b"1," * 600_000 + b"1]")
    assert status == 413 and json.loads(raw)["error"]["code"] == "request_entity_too_large"
    status, raw = agent.request("POST", "/v1/events", b"[" + b"1," * 600_000 + b"1]", token="wrong")
    assert status == 401


def test_waitress_log_lines_lose_the_request_path() -> None:
    import logging

    from edge_agent.http_server import RedactPaths

    record = logging.LogRecord("waitress", logging.INFO, __file__, 1, "Client disconnected while serving %s",
                               ("/v1/users/shopper-4711/history",), None)
    RedactPaths().filter(record)
    assert "shopper-4711" not in record.getMessage() and "while serving a request" in record.getMessage()
