"""The REST API's default HTTP server: granian (Rust: hyper, tokio, rustls) running the WSGI app
**inside the agent's process**, with optional TLS.

Granian's own CLI and ``Granian(...).serve()`` start worker *processes* that import the app by
name: the model and the history store would then live in another process than the MQTT link and
the update machinery (or be loaded twice, and SQLite written from two). So the agent builds one
granian worker itself, the way granian's worker processes do (``granian.server.mp``): a listening
socket, a ``WSGIWorker`` whose tokio runtime accepts and parses HTTP off the GIL, and
``api.threads`` Python threads that call the app. This uses granian's internal classes, so
pyproject pins granian to the minor versions it was checked with.

Limits, as :mod:`edge_agent.http_server` enforces them under waitress:

- **Refused on headers.** :mod:`edge_agent.api.guard` answers 401/403/429/413 before anything reads
  the body; granian only reads a body when the app asks for it (no ``100 Continue`` is sent for a
  refused request). A chunked body is cut at ``api.max_body_bytes`` by Flask as it streams.
- **Slow clients.** The request head must arrive within ``api.request_timeout_s`` (hyper's header
  read timeout, which also closes idle keep-alive connections after as long). A *body* has no
  deadline in granian: a client **with a valid token** that trickles a body keeps one request
  thread busy until it finishes or disconnects (docs/security.md).
- **Connections.** At most ``api.max_connections`` are served at once; more wait in the backlog.
- **Small headers.** hyper's read buffer is ``MAX_HEADER_BYTES``: larger heads get 431. hyper's
  own refusals (431, 400 for broken framing) have an empty body, not the API's JSON error.

``stop()`` stops accepting (from the signal handler); ``drain()`` waits until in-flight requests
have been answered and the worker has released the socket.
"""

from __future__ import annotations

import asyncio
import logging
import socket
import threading
from collections.abc import Callable
from typing import Any

from edge_agent.http_server import MAX_HEADER_BYTES, ServerLimits
from edge_agent.tls_files import TlsFiles

log = logging.getLogger(__name__)

#: Listen backlog: connections past ``api.max_connections`` wait here.
BACKLOG = 1024
#: Tokio threads: they parse HTTP and move bytes; Python runs in the ``api.threads`` blocking threads.
RUNTIME_THREADS = 1
#: How long an idle Python request thread is kept (s).
THREAD_IDLE_S = 30


def _bind_address(host: str, port: int) -> tuple[str, int]:
    """The first address ``host`` resolves to (granian binds one socket; waitress binds each)."""
    try:
        info = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except socket.gaierror as e:
        raise OSError(f"{host!r} does not resolve: {e}") from e
    address = info[0][4]
    return str(address[0]), int(address[1])


class GranianServer:
    """One in-process granian WSGI worker on one socket (see the module doc)."""

    def __init__(self, app: Callable[..., Any], host: str, port: int, limits: ServerLimits,
                 tls: TlsFiles | None = None) -> None:
        from granian._granian import ListenerSpec, WorkerSignal

        self.app, self.limits, self.tls = app, limits, tls
        address, port = _bind_address(host, port)
        try:
            self._socket = ListenerSpec(address, port, BACKLOG).build()
        except Exception as e:  # granian raises RuntimeError with the OS message
            raise OSError(str(e)) from e
        with socket.socket(fileno=socket.dup(self._socket.get_fd())) as bound:
            name = bound.getsockname()
        self.address: tuple[str, int] = (str(name[0]), int(name[1]))
        self._signal = WorkerSignal()
        self._released = threading.Event()
        self._signal.add_cb(self._released.set)
        self._serving = False

    @property
    def scheme(self) -> str:
        return "https" if self.tls else "http"

    def listening(self) -> list[tuple[str, int]]:
        return [self.address]

    def serve(self) -> None:
        """Serve until :meth:`stop` (blocks the calling thread, the main one: signals still arrive)."""
        from granian import _futures, _granian
        from granian.http import HTTP1Settings
        from granian.wsgi import _callback_wrapper

        # granian's .pyi lags its worker's signature (ipc and metrics arguments): called untyped
        worker_class: Any = _granian.WSGIWorker
        new_scheduler: Any = _futures._new_cbscheduler

        limits = self.limits
        http1 = HTTP1Settings(header_read_timeout=int(limits.request_timeout_s * 1000), keep_alive=True,
                              max_buffer_size=MAX_HEADER_BYTES)
        tls: tuple[object, ...] = (False, None, None, None, "tls1.2", None, [], False)
        if self.tls:  # TLS 1.2 at least; no client certificates
            tls = (True, str(self.tls.cert_file), str(self.tls.key_file), None, "tls1.2", None, [], False)
        loop = asyncio.new_event_loop()  # the scheduler wants one; WSGI calls never run on it
        worker = worker_class(
            1, (None, self._socket), None, RUNTIME_THREADS, RUNTIME_THREADS * 4, limits.threads, THREAD_IDLE_S,
            limits.max_connections, "1", http1, None, None, *tls, (None, None),
        )
        scheduler = new_scheduler(loop, _callback_wrapper(self.app, {}, None), impl_asyncio=False)
        worker.serve_mtr(scheduler, loop, self._signal)
        self._serving = True
        try:
            self._released.wait()
        finally:
            loop.close()

    def stop(self) -> None:
        """Stop accepting; requests in flight go on (safe from a signal handler)."""
        self._signal.set()

    def drain(self, timeout: float = 30.0) -> bool:
        """Wait until in-flight requests are answered; False if they were not within ``timeout``."""
        if not self._serving:
            return True
        self._signal.set()
        return self._released.wait(timeout)
