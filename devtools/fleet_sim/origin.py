"""The HTTPS origin of the simulation: a real nginx on loopback serving ``<root>/<fleet>/<version>/<file>``
with range requests, its certificate issued by a throwaway CA (firmware_configs/mosquitto/fleet_pki.py),
and an access log whose ``$bytes_sent`` column says what the origin sent."""

from __future__ import annotations

import contextlib
import importlib.util
import io
import os
import shutil
import ssl
import subprocess
from pathlib import Path

from devtools.processes import free_port, stop, wait_for_port

ROOT = Path(__file__).resolve().parents[2]
PKI_SCRIPT = ROOT / "firmware_configs" / "mosquitto" / "fleet_pki.py"
TEMP_PATHS = ("client_body", "proxy", "fastcgi", "uwsgi", "scgi")

CONFIG = """\
{user}worker_processes {workers};
worker_rlimit_nofile {nofile};
pid {dir}/nginx.pid;
error_log {dir}/error.log warn;
events {{ worker_connections {connections}; }}
http {{
    log_format sent '$bytes_sent $status';
    access_log {dir}/access.log sent;
    sendfile on;
    keepalive_requests 100000;
    keepalive_timeout 60s;
    types {{ application/octet-stream tflite; application/json json; }}
    default_type application/octet-stream;
{temp_paths}
    server {{
        listen 127.0.0.1:{port} ssl;
        ssl_certificate {dir}/tls/server.pem;
        ssl_certificate_key {dir}/tls/server.key;
        ssl_protocols TLSv1.2 TLSv1.3;
        ssl_session_cache shared:SSL:10m;
        root {dir}/www;
        location / {{ }}
    }}
}}
"""


def _issue_tls(folder: Path) -> None:
    """A CA (ca.pem) and a server certificate for 127.0.0.1 (server.pem, server.key)."""
    spec = importlib.util.spec_from_file_location("fleet_pki", PKI_SCRIPT)
    assert spec is not None and spec.loader is not None
    pki = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(pki)
    with contextlib.redirect_stdout(io.StringIO()):
        pki.main(["--out", str(folder), "--server-name", "127.0.0.1", "--no-persistence", "--days", "2"])


class Origin:
    """nginx serving ``www`` over HTTPS on a free loopback port; stop() ends it."""

    def __init__(self, workdir: Path, workers: int = 1, connections: int = 16384) -> None:
        exe = shutil.which("nginx") or "/usr/sbin/nginx"
        if not os.path.exists(exe):
            raise RuntimeError("nginx is not installed: apt-get install -y nginx-light (or `make nginx`)")
        self.dir = workdir
        self.www = workdir / "www"
        self.www.mkdir(parents=True, exist_ok=True)
        _issue_tls(workdir / "tls")
        self.port = free_port()
        temp_paths = "\n".join(f"    {name}_temp_path {workdir}/temp-{name};" for name in TEMP_PATHS)
        (workdir / "nginx.conf").write_text(CONFIG.format(
            user="user root;\n" if os.geteuid() == 0 else "", workers=workers, nofile=connections * 2 + 64,
            connections=connections, dir=workdir, temp_paths=temp_paths, port=self.port))
        self.proc = subprocess.Popen([exe, "-p", str(workdir), "-c", str(workdir / "nginx.conf"), "-e",
                                      str(workdir / "error.log"), "-g", "daemon off;"],
                                     stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT)
        wait_for_port(self.port, 10, self.proc)

    @property
    def url(self) -> str:
        return f"https://127.0.0.1:{self.port}"

    @property
    def ca_file(self) -> Path:
        return self.dir / "tls" / "ca.pem"

    def tls_context(self) -> ssl.SSLContext:
        return ssl.create_default_context(cafile=str(self.ca_file))

    def bytes_sent(self) -> tuple[int, int]:
        """(bytes sent, requests) from the access log ($bytes_sent: headers and body, TLS records
        not counted), written unbuffered, one line per request."""
        log = self.dir / "access.log"
        total = requests = 0
        with contextlib.suppress(FileNotFoundError), log.open() as lines:
            for line in lines:
                sent = line.split(" ", 1)[0]
                if sent.isdigit():
                    total += int(sent)
                    requests += 1
        return total, requests

    def stop(self) -> None:
        stop(self.proc)
