"""The REST API's fallback HTTP server (``api.server = "waitress"``): waitress, with limits that keep
it available to honest clients. The default is :mod:`edge_agent.granian_server`; waitress has no TLS.

Waitress buffers a whole request (headers, then body) before the application sees it, so the
limits that matter are enforced here, in the server, as bytes arrive:

- **Refused on headers.** A request without a valid API token (except ``/healthz``) is answered 401 as
  soon as its headers are in (scopes and rate limits are :mod:`edge_agent.api.guard`'s, after), and
  one whose Content-Length exceeds ``api.max_body_bytes`` 413: their bodies are never read. A
  chunked body is cut (413) once it passes the limit while it streams. Afterwards the connection
  is drained for at most ``DRAIN_S`` seconds and ``DRAIN_BYTES`` bytes and closed, so the client
  reads the answer rather than a reset.
- **Slow clients.** A request must arrive whole within ``api.request_timeout_s`` of its first byte
  (a client sending one header line every few seconds is cut off), and an idle connection is
  closed after the same time. ``api.max_connections`` connections are served at once (poll, not
  select, so more than 1,024 descriptors work); past that, new ones wait in the listen backlog.
- **Small headers.** ``MAX_HEADER_BYTES`` per request, so connections cost little memory.

Every answer the server gives by itself is the API's JSON error body, and waitress' own log lines
name no request path (paths carry user ids).
"""

from __future__ import annotations

import json
import logging
import socket
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, cast

from waitress.adjustments import Adjustments
from waitress.channel import HTTPChannel
from waitress.parser import HTTPRequestParser
from waitress.server import MultiSocketServer, TcpWSGIServer
from waitress.task import ThreadedTaskDispatcher
from waitress.utilities import Error

from edge_agent.api.guard import RefusalLog
from edge_agent.api_tokens import TokenSet
from shared.api_scopes import OPEN_PATHS, rule_for

#: Largest request line plus headers (the token and a query string fit many times over).
MAX_HEADER_BYTES = 16 * 1024
#: After refusing a request on its headers: how long, and how much, of its body is read and
#: thrown away before the connection closes (so the answer is not lost to a TCP reset).
DRAIN_S = 2.0
DRAIN_BYTES = 1024 * 1024
#: How often slow and idle connections are looked for.
SWEEP_S = 1.0


@dataclass(frozen=True)
class ServerLimits:
    max_body_bytes: int = 1024 * 1024
    max_connections: int = 512
    request_timeout_s: float = 10.0
    threads: int = 4


def error_body(code: str, message: str) -> bytes:
    return json.dumps({"error": {"code": code, "message": message}}).encode()


class JsonError(Error):
    """A refusal waitress sends by itself (see ``waitress.task.ErrorTask``), as the API's JSON error."""

    def __init__(self, status: int, reason: str, code: str, message: str,
                 headers: Sequence[tuple[str, str]] = ()) -> None:
        super().__init__(message)
        self.code, self.reason = status, reason
        self.error_code, self.message, self.extra_headers = code, message, tuple(headers)

    def to_response(self, ident: str | None = None) -> tuple[str, Sequence[tuple[str, str]], bytes]:  # type: ignore[override]
        headers = [("Content-Type", "application/json"), *self.extra_headers]
        return f"{self.code} {self.reason}", headers, error_body(self.error_code, self.message)


def as_json_error(error: Error) -> JsonError:
    """Waitress' own errors (400 bad framing, 413, 431, 501) as JSON errors."""
    if isinstance(error, JsonError):
        return error
    code = str(error.reason).lower().replace(" ", "_")
    return JsonError(int(error.code), str(error.reason), code, str(error.body))


def unauthorized() -> JsonError:
    return JsonError(401, "Unauthorized", "unauthorized", "send Authorization: Bearer <token>",
                     [("WWW-Authenticate", "Bearer")])


def too_large(limit: int) -> JsonError:
    return JsonError(413, "Request Entity Too Large", "request_entity_too_large",
                     f"the request body is larger than {limit} bytes")


class GuardedParser(HTTPRequestParser):
    """Refuses a request on its headers (no token, declared body too large); see the module doc."""

    tokens: TokenSet
    refusals: RefusalLog
    max_body_bytes = 0

    def __init__(self, adj: Adjustments) -> None:
        super().__init__(adj)
        self.started = time.time()  # first byte of this request

    def parse_header(self, header_plus: bytes) -> None:
        super().parse_header(header_plus)
        path = "/" + str(getattr(self, "path", "/")).lstrip("/")  # as waitress gives it to the app
        if path not in OPEN_PATHS and self.tokens.match(self.headers.get("AUTHORIZATION", "")) is None:
            method = str(self.command)  # waitress decodes it (its stubs say bytes)
            self.refusals.refused(401, method, rule_for(method, path)[0], "-", "no valid bearer token")
            self._refuse(unauthorized())
        elif self.content_length > self.max_body_bytes:
            self._refuse(too_large(self.max_body_bytes))

    def _refuse(self, error: JsonError) -> None:
        """Complete the request now, without its body, as ``error``; the connection closes after."""
        self.error = error
        self.completed = True
        self.body_rcv = None
        self.content_length = 0
        self.chunked = False
        self.expect_continue = False  # no "100 Continue": the body is not wanted
        self.connection_close = True

    def received(self, data: bytes) -> int:
        consumed = super().received(data)
        if self.error is not None:
            self.error = as_json_error(self.error)
            if self.error.code == 413:  # a chunked body over the limit
                self.error = too_large(self.max_body_bytes)
        return consumed


class GuardedChannel(HTTPChannel):
    """A connection that, after answering a refused request, drains briefly instead of resetting."""

    parser_class = GuardedParser
    draining_until: float | None = None
    drained = 0
    refused = False

    def service(self) -> None:
        if self.requests and self.requests[0].error is not None:
            self.refused = True
        super().service()

    def readable(self) -> bool:
        return True if self.draining_until is not None else bool(super().readable())

    def writable(self) -> bool:
        return self.will_close if self.draining_until is not None else bool(super().writable())

    def handle_read(self) -> None:
        if self.draining_until is None:
            super().handle_read()
            return
        data = self.recv(64 * 1024)  # b"" at the end: recv() has closed the channel already
        self.drained += len(data)
        if data and self.drained > DRAIN_BYTES:
            super().handle_close()

    def handle_close(self) -> None:
        if self.refused and self.draining_until is None and self.connected:
            try:
                cast(socket.socket, self.socket).shutdown(socket.SHUT_WR)  # the answer is sent
            except OSError:
                pass
            else:
                self.draining_until = time.time() + DRAIN_S
                self.will_close = self.close_when_flushed = False
                return
        super().handle_close()


class GuardedServer(TcpWSGIServer):
    """Closes connections whose request is late, or whose draining is over (see the module doc)."""

    request_timeout_s = 10.0

    def maintenance(self, now: float) -> None:
        super().maintenance(now)  # type: ignore[arg-type]
        late = now - self.request_timeout_s
        for channel in list(cast(dict[int, Any], self.active_channels).values()):
            if not isinstance(channel, GuardedChannel):
                continue
            if channel.draining_until is not None:
                if now > channel.draining_until:
                    channel.will_close = True
            elif isinstance(channel.request, GuardedParser) and channel.request.started < late:
                channel.will_close = True  # headers or body trickling in: a slow-loris client


def create(app: Callable[..., Any], host: str, port: int, tokens: TokenSet,
           limits: ServerLimits) -> TcpWSGIServer | MultiSocketServer:
    """A listening server (one socket per address ``host`` resolves to); ``run()`` serves."""
    adj = Adjustments(
        host=host, port=port, threads=limits.threads, ident="edge-agent",
        connection_limit=limits.max_connections, channel_timeout=limits.request_timeout_s,
        cleanup_interval=SWEEP_S, asyncore_use_poll=True, max_request_header_size=MAX_HEADER_BYTES,
        max_request_body_size=limits.max_body_bytes + 1,  # waitress refuses from this size up
    )
    parser = type("Parser", (GuardedParser,), {"tokens": tokens, "refusals": RefusalLog(),
                                               "max_body_bytes": limits.max_body_bytes})
    channel = type("Channel", (GuardedChannel,), {"parser_class": parser})
    server_class = type("Server", (GuardedServer,), {"channel_class": channel,
                                                      "request_timeout_s": limits.request_timeout_s})
    dispatcher = ThreadedTaskDispatcher()
    dispatcher.set_thread_count(limits.threads)
    sockets: dict[int, Any] = {}
    servers = [server_class(app, sockets, dispatcher=dispatcher, adj=adj, sockinfo=info) for info in adj.listen]
    if len(servers) == 1:
        return cast(TcpWSGIServer, servers[0])
    listening = [(s.effective_host, s.effective_port) for s in servers]
    return MultiSocketServer(sockets, adj, listening, dispatcher, servers[-1].log_info)


class WaitressServer:
    """:func:`create`'s server behind the interface the daemon uses for either server."""

    scheme = "http"

    def __init__(self, app: Callable[..., Any], host: str, port: int, tokens: TokenSet, limits: ServerLimits) -> None:
        self.server = create(app, host, port, tokens, limits)
        self.host = host

    def listening(self) -> list[tuple[str, int]]:
        if isinstance(self.server, MultiSocketServer):
            return [(str(h), int(p)) for h, p in self.server.effective_listen]
        return [(self.host, int(self.server.getsockname()[1]))]

    def serve(self) -> None:
        self.server.run()

    def stop(self) -> None:
        self.server.close()

    def drain(self, timeout: float = 30.0) -> bool:
        self.server.task_dispatcher.shutdown(timeout=int(timeout))  # in-flight requests finish first
        return True


class RedactPaths(logging.Filter):
    """Waitress logs "... while serving <path>"; paths carry user ids, so the path is dropped."""

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        if " while serving " in message:
            record.msg, record.args = message.split(" while serving ", 1)[0] + " while serving a request", None
        return True


logging.getLogger("waitress").addFilter(RedactPaths())
