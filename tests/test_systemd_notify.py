"""The agent speaks systemd's notify protocol: READY=1 once it serves, WATCHDOG=1 only while its REST
API answers, STOPPING=1 at the stop. The test plays systemd: it listens on the datagram socket it
names in NOTIFY_SOCKET and starts a real agent process.

The hang is a real one: with ``api.threads = 1`` a client holding a valid token sends a request whose
body never finishes (granian gives bodies no deadline, docs/security.md), so the agent's only request
thread waits on it and ``/healthz`` gets no answer. The pings must stop, and resume once it leaves.
"""

from __future__ import annotations

import os
import signal
import socket
import tempfile
import threading
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from devtools.processes import AgentProcess, Broker
from edge_agent.liveness import Liveness
from edge_agent.sd_notify import Notifier
from harness import PROFILE, wait_for

pytestmark = pytest.mark.slow

WATCHDOG_S = 1.0  # pings every 0.5 s


class FakeSystemd:
    """A NOTIFY_SOCKET: records every datagram with the time it arrived."""

    def __init__(self) -> None:
        self.folder = tempfile.mkdtemp(prefix="sdn-")  # AF_UNIX paths are short: not under pytest's tmp_path
        self.path = os.path.join(self.folder, "notify")
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(self.path)
        self.sock.settimeout(0.2)
        self.received: list[tuple[float, str]] = []
        self._closed = threading.Event()
        threading.Thread(target=self._receive, daemon=True).start()

    def _receive(self) -> None:
        while not self._closed.is_set():
            try:
                data = self.sock.recv(4096)
            except TimeoutError:
                continue
            except OSError:
                return
            self.received.append((time.monotonic(), data.decode()))

    def times(self, state: str, since: float = 0.0) -> list[float]:
        return [at for at, message in list(self.received) if message == state and at >= since]

    def close(self) -> None:
        self._closed.set()
        self.sock.close()
        os.unlink(self.path)
        os.rmdir(self.folder)


@pytest.fixture
def systemd() -> Iterator[FakeSystemd]:
    fake = FakeSystemd()
    yield fake
    fake.close()


def healthz_answers(agent: AgentProcess) -> bool:
    try:
        with urllib.request.urlopen(agent.base_url + "/healthz", timeout=1.0) as response:
            return bool(response.status == 200)
    except OSError:
        return False


def hold_the_only_request_thread(agent: AgentProcess) -> socket.socket:
    """A valid request whose body is promised but never sent: the app's thread waits on it."""
    conn = socket.create_connection(("127.0.0.1", agent.port), timeout=5)
    conn.sendall(b"POST /v1/events HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
                 b"Authorization: Bearer " + agent.token.encode() + b"\r\nContent-Length: 1000\r\n\r\n{\"ev")
    time.sleep(0.5)  # until the request thread has it
    return conn


def test_ready_then_watchdog_pings_only_while_the_api_answers_then_stopping(
        systemd: FakeSystemd, broker: Broker, keys: Path, tmp_path: Path) -> None:
    agent = AgentProcess(
        PROFILE, [f'mqtt.url="{broker.url}"', f'agent.data_dir="{tmp_path / "agent"}"',
                  f'model.trusted_public_key="{keys / "signing.pub"}"', "api.threads=1"],
        tmp_path, env={"NOTIFY_SOCKET": systemd.path, "WATCHDOG_USEC": str(int(WATCHDOG_S * 1e6))})
    try:
        assert wait_for(lambda: systemd.times("READY=1"), 30), agent.log()
        assert len(systemd.times("READY=1")) == 1
        ready = systemd.times("READY=1")[0]
        assert wait_for(lambda: len(systemd.times("WATCHDOG=1", ready)) >= 4, 10), systemd.received
        gaps = [b - a for a, b in zip(systemd.times("WATCHDOG=1"), systemd.times("WATCHDOG=1")[1:], strict=False)]
        assert max(gaps) < WATCHDOG_S, gaps  # systemd would never have fired

        held = hold_the_only_request_thread(agent)
        try:
            assert not healthz_answers(agent)  # the serving path really is stuck
            time.sleep(WATCHDOG_S)  # a ping in flight when the hold began may still land
            quiet_from = time.monotonic()
            time.sleep(3 * WATCHDOG_S)
            assert systemd.times("WATCHDOG=1", quiet_from) == [], "pinged while /healthz got no answer"
            assert "did not answer /healthz" in agent.log()
        finally:
            held.close()  # the request fails, the thread is free again
        released = time.monotonic()
        assert wait_for(lambda: len(systemd.times("WATCHDOG=1", released)) >= 2, 10), agent.log()

        agent.proc.send_signal(signal.SIGTERM)
        assert agent.proc.wait(30) == 0
        assert wait_for(lambda: systemd.times("STOPPING=1"), 5), systemd.received
        stopping = systemd.times("STOPPING=1")[0]
        assert systemd.times("WATCHDOG=1", stopping + 0.05) == []  # no "alive" after "stopping"
    finally:
        agent.stop()


def test_without_notify_socket_nothing_is_sent_and_no_thread_runs() -> None:
    probes: list[float] = []
    liveness = Liveness(Notifier({}), lambda timeout: probes.append(timeout) is None)
    liveness.start()
    liveness.stopping()
    assert liveness._thread is None and probes == []


def test_no_ping_while_the_probe_fails(systemd: FakeSystemd) -> None:
    """In process, with a probe the test controls: pings follow its answers, to the half-period."""
    answering = threading.Event()
    notifier = Notifier({"NOTIFY_SOCKET": systemd.path, "WATCHDOG_USEC": "200000"})  # ping every 0.1 s
    liveness = Liveness(notifier, lambda timeout: answering.is_set())
    liveness.start()
    try:
        time.sleep(0.5)
        assert systemd.received == []  # not even READY=1 before the first answer
        answering.set()
        assert wait_for(lambda: len(systemd.times("WATCHDOG=1")) >= 3, 5)
        assert systemd.received[0][1] == "READY=1"
        answering.clear()
        time.sleep(0.15)
        since = time.monotonic()
        time.sleep(0.5)
        assert systemd.times("WATCHDOG=1", since) == []
    finally:
        liveness.stopping()
    assert wait_for(lambda: systemd.times("STOPPING=1"), 2)


def test_abstract_socket_names_and_the_watchdog_pid_are_honoured() -> None:
    name = f"edge-agent-test-{os.getpid()}"
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as listener:
        listener.bind(b"\0" + name.encode())
        listener.settimeout(2)
        assert Notifier({"NOTIFY_SOCKET": "@" + name}).notify("READY=1")
        assert listener.recv(100) == b"READY=1"
    assert Notifier({"WATCHDOG_USEC": "30000000", "WATCHDOG_PID": str(os.getpid())}).watchdog_s == 30.0
    assert Notifier({"WATCHDOG_USEC": "30000000", "WATCHDOG_PID": "1"}).watchdog_s is None  # for another process
    assert Notifier({"WATCHDOG_USEC": "0"}).watchdog_s is None
    assert not Notifier({}).notify("READY=1")
