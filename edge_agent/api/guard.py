"""The gate in front of the Flask app: token, scope, rate limit and body size, before any body is read.

A WSGI middleware, so it runs under either HTTP server and before Flask builds a request:

- no valid token (except :data:`shared.api_scopes.OPEN_PATHS`): 401 with ``WWW-Authenticate``;
- a valid token without the route's scope (:mod:`shared.api_scopes`): 403 ``forbidden``;
- the token's bucket empty (:class:`edge_agent.api_tokens.TokenBucket`): 429 with ``Retry-After``;
- a declared ``Content-Length`` over ``api.max_body_bytes``: 413; a body without one (chunked) is
  read through :class:`CappedInput`, which stops it with 413 once it passes the limit. (Werkzeug's
  own ``MAX_CONTENT_LENGTH`` stops reading a chunked body *at* the limit without an error: the app
  would see a truncated body. So :func:`edge_agent.api.create_app` sets it one byte higher.)

The body of a refused request is never read for its content. After a 401 or 413 whose client
declared a body, the answer is sent first and then up to ``DRAIN_BYTES`` of the body are read and
thrown away for at most ``DRAIN_S`` (in a helper thread; at most ``MAX_DRAINS`` at once, so
unauthenticated clients can never hold more than that many request threads), so a client that
sends its whole body before reading (urllib, curl) reads the answer rather than a TCP reset.

Each refusal is logged with the status, the method,
the table's route prefix (never the path: it can hold a user id) and the token's *name* (never its
value), at most one line a second per kind, with a count of the ones left out.
"""

from __future__ import annotations

import json
import logging
import math
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from typing import Any

from werkzeug.exceptions import RequestEntityTooLarge

from edge_agent.api_tokens import TokenSet
from shared.api_scopes import OPEN_PATHS, rule_for

log = logging.getLogger("edge_agent.api.refusals")

WsgiApp = Callable[[dict[str, Any], Callable[..., Any]], Iterable[bytes]]
#: After a refusal whose body is left unread (401, 413), the connection closes.
CLOSE = ("Connection", "close")
#: Draining after a refusal: how long, how much, how many at once.
DRAIN_S = 2.0
DRAIN_BYTES = 1024 * 1024
MAX_DRAINS = 2
#: One refusal log line a second per (status, token name); the rest are counted.
LOG_EVERY_S = 1.0


def error_body(code: str, message: str) -> bytes:
    return json.dumps({"error": {"code": code, "message": message}}).encode()


class RefusalLog:
    """Throttled log lines of refusals (see the module doc)."""

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self.clock = clock
        self._last: dict[tuple[int, str], float] = {}
        self._skipped: dict[tuple[int, str], int] = {}
        self._lock = threading.Lock()

    def refused(self, status: int, method: str, route: str, token_name: str, why: str) -> None:
        key, now = (status, token_name), self.clock()
        with self._lock:
            if now - self._last.get(key, -math.inf) < LOG_EVERY_S:
                self._skipped[key] = self._skipped.get(key, 0) + 1
                return
            self._last[key], skipped = now, self._skipped.pop(key, 0)
        log.warning("refused %d %s %s (token %s): %s%s", status, method, route, token_name, why,
                    f" (and {skipped} more like it since the last line)" if skipped else "")


class Guard:
    """Wraps a WSGI app; see the module doc."""

    def __init__(self, app: WsgiApp, tokens: TokenSet, max_body_bytes: int) -> None:
        self.app, self.tokens, self.max_body_bytes = app, tokens, max_body_bytes
        self.refusals = RefusalLog()
        self.drains = threading.BoundedSemaphore(MAX_DRAINS)

    def __call__(self, environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
        path, method = environ.get("PATH_INFO", "/"), environ.get("REQUEST_METHOD", "GET")
        if path in OPEN_PATHS:
            return self.app(environ, start_response)
        route, scope = rule_for(method, path)
        token = self.tokens.match(environ.get("HTTP_AUTHORIZATION", ""))
        if token is None:
            self.refusals.refused(401, method, route, "-", "no valid bearer token")
            return self._drained(environ, self._refuse(start_response, "401 Unauthorized", "unauthorized",
                                 "send Authorization: Bearer <token>", [("WWW-Authenticate", "Bearer"), CLOSE]))
        if not token.allows(scope):
            self.refusals.refused(403, method, route, token.name, f"needs scope {scope}")
            return self._refuse(start_response, "403 Forbidden", "forbidden",
                                f"this token ({token.name}) lacks the scope this route needs: {scope}")
        wait = token.bucket.take()
        if wait > 0:
            self.refusals.refused(429, method, route, token.name, "rate limit")
            return self._refuse(start_response, "429 Too Many Requests", "rate_limited",
                                f"more than {token.rate_per_s:g} requests/s for token {token.name}; retry later",
                                [("Retry-After", str(max(1, math.ceil(wait))))])
        if _declared_length(environ) > self.max_body_bytes:
            return self._drained(environ, self._refuse(
                start_response, "413 Request Entity Too Large", "request_entity_too_large",
                f"the request body is larger than {self.max_body_bytes} bytes", [CLOSE]))
        if "CONTENT_LENGTH" not in environ or environ["CONTENT_LENGTH"] == "":
            environ["wsgi.input"] = CappedInput(environ["wsgi.input"], self.max_body_bytes)
        environ["edge_agent.token_name"] = token.name
        return self.app(environ, start_response)

    def _drained(self, environ: dict[str, Any], answer: list[bytes]) -> Iterable[bytes]:
        """``answer``, then (if a body was declared and a drain slot is free) the body drained briefly."""
        if _declared_length(environ) <= 0 and environ.get("HTTP_TRANSFER_ENCODING", "") == "":
            return answer
        if environ.get("HTTP_EXPECT", "").lower() == "100-continue":
            return answer  # the client waits for a go-ahead before sending the body: none comes
        return self._drain_after(environ["wsgi.input"], answer)

    def _drain_after(self, stream: Any, answer: list[bytes]) -> Iterator[bytes]:
        yield from answer  # the server sends it before asking for more
        if not self.drains.acquire(blocking=False):
            return  # no slot: the connection just closes
        try:
            done = threading.Event()

            def drain() -> None:
                try:
                    read = 0
                    while read < DRAIN_BYTES:
                        chunk = stream.read(64 * 1024)
                        if not chunk:
                            break
                        read += len(chunk)
                except Exception:  # the client went away: nothing left to drain
                    pass
                finally:
                    done.set()

            # a daemon thread: its read ends when the server closes the connection after the answer
            threading.Thread(target=drain, name="drain-refused-body", daemon=True).start()
            done.wait(DRAIN_S)
        finally:
            self.drains.release()

    @staticmethod
    def _refuse(start_response: Callable[..., Any], status: str, code: str, message: str,
                headers: list[tuple[str, str]] | None = None) -> list[bytes]:
        body = error_body(code, message)
        start_response(status, [("Content-Type", "application/json"), ("Content-Length", str(len(body))),
                                *(headers or [])])
        return [body]


class CappedInput:
    """``wsgi.input`` of a body of unknown length: 413 once more than ``limit`` bytes have come."""

    def __init__(self, stream: Any, limit: int) -> None:
        self.stream, self.limit, self.seen = stream, limit, 0

    def read(self, size: int | None = -1) -> bytes:
        data: bytes = self.stream.read() if size is None or size < 0 else self.stream.read(size)
        self.seen += len(data)
        if self.seen > self.limit:
            raise RequestEntityTooLarge(f"the request body is larger than {self.limit} bytes")
        return data

    def readline(self, size: int | None = -1) -> bytes:
        line: bytes = self.stream.readline(size)
        self.seen += len(line)
        if self.seen > self.limit:
            raise RequestEntityTooLarge(f"the request body is larger than {self.limit} bytes")
        return line


def _declared_length(environ: dict[str, Any]) -> int:
    try:
        return int(environ.get("CONTENT_LENGTH") or 0)
    except ValueError:
        return 0  # the server refuses a malformed length itself
