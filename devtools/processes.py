"""Start and stop the real processes tests and the demo need: Mosquitto and edge agents.

Everything binds to 127.0.0.1 on a free port, and is stopped by PID (only what we started).
"""

from __future__ import annotations

import contextlib
import os
import random
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path


def _ephemeral_ports() -> tuple[int, int]:
    """The kernel's range for outgoing connections' local ports (Linux's default without /proc)."""
    try:
        low, high = Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()
        return int(low), int(high)
    except (OSError, ValueError):
        return 32768, 60999


def free_port() -> int:
    """A loopback TCP port free now, chosen below the ephemeral range: a port the kernel handed
    out for ``bind(0)`` can be taken by any outgoing connection before our server binds it (seen
    with thousands of simulated clients on the machine), a port outside that range cannot."""
    low, _ = _ephemeral_ports()
    rng = random.SystemRandom()
    for _ in range(100):
        port = rng.randrange(10_000, low) if low > 11_000 else 0
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                continue
            return int(s.getsockname()[1])
    raise RuntimeError("no free loopback port found")


def wait_for_port(port: int, timeout: float, proc: subprocess.Popen[bytes] | None = None) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"process exited with {proc.returncode} before listening on {port}")
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), timeout=0.2):
            return
        time.sleep(0.05)
    raise TimeoutError(f"nothing listens on 127.0.0.1:{port} after {timeout}s")


def stop(proc: subprocess.Popen[bytes], timeout: float = 10) -> int:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
    return proc.returncode


class Broker:
    """A Mosquitto on a free loopback port, with its own config, persistence and log."""

    def __init__(self, workdir: Path | None = None, port: int | None = None, config: Path | None = None) -> None:
        """A plain anonymous listener, or with ``config`` (and its ``port``) any Mosquitto setup."""
        exe = shutil.which("mosquitto") or "/usr/sbin/mosquitto"
        if not os.path.exists(exe):
            raise RuntimeError("mosquitto is not installed: apt-get install -y mosquitto")
        self.dir = workdir or Path(tempfile.mkdtemp(prefix="edge-rec-broker-"))
        self.dir.mkdir(parents=True, exist_ok=True)
        self.port = port or free_port()
        self.log = self.dir / "mosquitto.log"
        if config is None:
            config = self.dir / "mosquitto.conf"
            config.write_text(
                f"listener {self.port} 127.0.0.1\nallow_anonymous true\npersistence false\n"
                f"log_dest file {self.log}\n" + ("user root\n" if os.geteuid() == 0 else "")
            )
        self.proc = subprocess.Popen([exe, "-c", str(config)], stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT)
        wait_for_port(self.port, 10, self.proc)

    @property
    def url(self) -> str:
        return f"mqtt://127.0.0.1:{self.port}"

    def stop(self) -> None:
        stop(self.proc)


@contextlib.contextmanager
def broker(port: int | None = None) -> Iterator[Broker]:
    b = Broker(port=port)
    try:
        yield b
    finally:
        b.stop()


class AgentProcess:
    """``edge-agent run`` in a subprocess on a free port; its log goes to a file."""

    def __init__(self, config: Path, overrides: list[str], workdir: Path, env: dict[str, str] | None = None,
                 command: list[str] | None = None, start_timeout: float = 60) -> None:
        """``command`` runs the agent's CLI (default: this Python's ``-m edge_agent.cli``), e.g. in a chroot."""
        self.port = free_port()
        self.log_path = workdir / f"agent-{self.port}.log"
        self.token_path = workdir / f"token-{self.port}"
        args = [*(command or [sys.executable, "-m", "edge_agent.cli"]), "run", "--config", str(config),
                "--set", f"api.port={self.port}", "--set", f'api.token_file="{self.token_path}"']
        for o in overrides:
            args += ["--set", o]
        self._log = open(self.log_path, "wb")  # noqa: SIM115 - closed in stop()
        self.proc = subprocess.Popen(
            args, stdout=self._log, stderr=subprocess.STDOUT, env={**os.environ, **(env or {})}
        )
        wait_for_port(self.port, start_timeout, self.proc)

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def token(self) -> str:
        return self.token_path.read_text().strip()

    def request(self, method: str, path: str, body: bytes | None = None,
                token: str | None = None) -> tuple[int, bytes]:
        req = urllib.request.Request(self.base_url + path, data=body, method=method)
        req.add_header("Authorization", f"Bearer {self.token if token is None else token}")
        if body is not None:
            req.add_header("Content-Type", "application/json")
        try:
            with urllib.request.urlopen(req, timeout=10) as resp:
                return resp.status, resp.read()
        except urllib.error.HTTPError as e:
            return e.code, e.read()

    def wait_ready(self, timeout: float = 60) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"agent exited with {self.proc.returncode}; log:\n{self.log()}")
            if self.request("GET", "/readyz")[0] == 200:
                return
            time.sleep(0.1)
        raise TimeoutError(f"agent not ready after {timeout}s; log:\n{self.log()}")

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def stop(self) -> int:
        code = stop(self.proc)
        self._log.close()
        return code
