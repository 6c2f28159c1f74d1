"""A real nginx serving a folder as a bundle origin, for tests and benchmarks (``make nginx``).

Runs in the foreground (``daemon off``) as the current user on 127.0.0.1 and a free port, with its
config, pid, logs and temp folders in its own work folder; stopped by its PID. Range requests are
nginx's own. The access log has one line per request: ``<uri> <status> <Range header> <bytes sent>``.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from devtools.processes import free_port, stop, wait_for_port


@dataclass(frozen=True)
class Tls:
    cert_file: Path
    key_file: Path


def nginx_exe() -> str:
    exe = shutil.which("nginx") or "/usr/sbin/nginx"
    if not os.path.exists(exe):
        raise RuntimeError("nginx is not installed: make nginx (apt-get install -y nginx-light)")
    return exe


class Nginx:
    """nginx serving ``root`` at ``url``; ``extra`` is more server-block configuration (a ``location``)."""

    def __init__(self, root: Path, tls: Tls | None = None, extra: str = "", port: int | None = None) -> None:
        self.root, self.tls, self.extra = root, tls, extra
        self.port = port or free_port()
        self.dir = Path(tempfile.mkdtemp(prefix="edge-rec-nginx-"))
        self.access_log = self.dir / "access.log"
        self.proc: subprocess.Popen[bytes] | None = None
        self.start()

    @property
    def url(self) -> str:
        return f"{'https' if self.tls else 'http'}://127.0.0.1:{self.port}"

    def _config(self) -> str:
        temp = "\n".join(f"  {kind}_temp_path {self.dir / 'tmp' / kind};"
                         for kind in ("client_body", "proxy", "fastcgi", "uwsgi", "scgi"))
        ssl = "" if self.tls is None else (
            f"    ssl_certificate {self.tls.cert_file};\n    ssl_certificate_key {self.tls.key_file};\n")
        return (
            ("user root;\n" if os.geteuid() == 0 else "")
            + f"daemon off;\nworker_processes 1;\npid {self.dir / 'nginx.pid'};\n"
            f"error_log {self.dir / 'error.log'} info;\nevents {{ worker_connections 128; }}\n"
            "http {\n"
            "  log_format origin '$uri $status \"$http_range\" $body_bytes_sent';\n"
            f"  access_log {self.access_log} origin;\n{temp}\n"
            "  default_type application/octet-stream;\n  sendfile on;\n"
            f"  server {{\n    listen 127.0.0.1:{self.port}{' ssl' if self.tls else ''};\n{ssl}"
            f"    root {self.root};\n{self.extra}\n  }}\n}}\n"
        )

    def start(self) -> None:
        (self.dir / "tmp").mkdir(exist_ok=True)
        config = self.dir / "nginx.conf"
        config.write_text(self._config())
        self.proc = subprocess.Popen([nginx_exe(), "-p", str(self.dir), "-c", str(config), "-e",
                                      str(self.dir / "error.log")],
                                     stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT)
        try:
            wait_for_port(self.port, 10, self.proc)
        except (RuntimeError, TimeoutError):
            self.stop()
            raise RuntimeError(f"nginx did not start: {self.error_log()[-2000:]}") from None

    def stop(self) -> None:
        if self.proc is not None:
            stop(self.proc)
            self.proc = None

    def requests(self) -> list[tuple[str, int, str, int]]:
        """(uri, status, Range header, body bytes sent) of every request served so far."""
        lines = self.access_log.read_text().splitlines() if self.access_log.exists() else []
        found = []
        for line in lines:
            uri, status, rest = line.split(" ", 2)
            header, _, sent = rest.rpartition(" ")
            found.append((uri, int(status), header.strip('"'), int(sent)))
        return found

    def error_log(self) -> str:
        path = self.dir / "error.log"
        return path.read_text(errors="replace") if path.exists() else ""


@contextlib.contextmanager
def nginx(root: Path, tls: Tls | None = None, extra: str = "") -> Iterator[Nginx]:
    server = Nginx(root, tls, extra)
    try:
        yield server
    finally:
        server.stop()
        shutil.rmtree(server.dir, ignore_errors=True)
