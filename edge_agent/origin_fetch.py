"""Bundle chunks from an origin over HTTP(S) Range requests (the I/O adapter; stdlib only).

The origin (object storage, a CDN, any web server) is not trusted, exactly like the broker: every
chunk is checked against its sha256 in the signed manifest before anyone uses it. What an origin
can do wrong is bounded here:

- redirects are refused (any 3xx): the manifest names the URL the operator published;
- a response is read up to the bytes asked for and never further (a longer Content-Length is refused
  on its headers); a shorter one keeps the whole chunks that came and then fails as truncated;
- every request has a deadline, ``timeout_s`` plus its bytes at ``min_rate_bytes_per_s``; a watchdog
  shuts the socket down when it passes, so a drip of one byte a second cannot hold a download;
- https verifies the certificate and host name (the system store, or ``ca_file``).

A failure raises :class:`edge_agent.errors.OriginFailed`; :mod:`edge_agent.origin_link` tries
again and then leaves the missing chunks to MQTT.
"""

from __future__ import annotations

import contextlib
import http.client
import re
import socket
import ssl
import threading
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from urllib.parse import urlsplit

from edge_agent.errors import OriginFailed
from shared.bundle import Manifest

_CONTENT_RANGE = re.compile(r"bytes (\d+)-(\d+)/(\d+|\*)")


@dataclass(frozen=True)
class OriginSettings:
    ca_file: str = ""
    timeout_s: float = 10.0
    min_rate_bytes_per_s: int = 16_384
    chunks_per_request: int = 16
    retries: int = 2
    retry_after_s: float = 5.0


@dataclass(frozen=True)
class Run:
    """Consecutive chunks ``first`` .. ``first + count - 1`` of one file, asked for in one request."""

    name: str
    url: str
    first: int
    count: int
    chunk_size: int
    file_length: int

    @property
    def start(self) -> int:
        return self.first * self.chunk_size

    @property
    def end(self) -> int:
        """The last byte asked for (inclusive, as in a Range header)."""
        return min(self.file_length, (self.first + self.count) * self.chunk_size) - 1

    def chunk_length(self, index: int) -> int:
        return min(self.chunk_size, self.file_length - index * self.chunk_size)


def plan_runs(manifest: Manifest, missing: Iterable[tuple[str, int]], per_request: int, attempt: int = 0) -> list[Run]:
    """The requests that fetch ``missing`` chunks of files with origin URLs (attempt ``n`` uses each
    file's URL number ``n`` modulo their count); chunks of files without URLs are left out."""
    runs: list[Run] = []
    for name, index in sorted(missing):
        entry = manifest.files[name]
        if not entry.urls or entry.length == 0:
            continue
        last = runs[-1] if runs else None
        if last and last.name == name and last.first + last.count == index and last.count < per_request:
            runs[-1] = Run(name, last.url, last.first, last.count + 1, last.chunk_size, last.file_length)
        else:
            runs.append(Run(name, entry.urls[attempt % len(entry.urls)], index, 1, manifest.chunk_size, entry.length))
    return runs


def _connection(url: str, settings: OriginSettings) -> tuple[http.client.HTTPConnection, str]:
    parts = urlsplit(url)
    target = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
    host, port = parts.hostname or "", parts.port
    if parts.scheme == "https":
        context = ssl.create_default_context(cafile=settings.ca_file or None)
        return http.client.HTTPSConnection(host, port, timeout=settings.timeout_s, context=context), target
    return http.client.HTTPConnection(host, port, timeout=settings.timeout_s), target


def _shut(connection: http.client.HTTPConnection, late: threading.Event) -> None:
    """The watchdog: wakes a read blocked on a too slow origin (the read then fails)."""
    late.set()
    sock = connection.sock
    if sock is not None:
        with contextlib.suppress(OSError):
            sock.shutdown(socket.SHUT_RDWR)


def _expected_bytes(response: http.client.HTTPResponse, run: Run) -> int:
    """How many bytes of the range the response carries (checked on its headers alone)."""
    status = response.status
    if 300 <= status < 400:
        raise OriginFailed(f"HTTP {status}: redirect to {str(response.getheader('Location'))[:200]!r} refused")
    encoding = (response.getheader("Content-Encoding") or "identity").lower()
    if encoding != "identity":
        raise OriginFailed(f"Content-Encoding {encoding[:40]!r} refused")
    declared = response.getheader("Content-Length")
    if status == 200 and run.start == 0:  # the origin ignored Range: its first bytes are the run
        if declared is not None and declared.isdigit() and int(declared) < run.end + 1:
            raise OriginFailed(f"truncated: the file has {declared} bytes, chunks up to byte {run.end} were asked for")
        return run.end + 1
    if status != 206:
        raise OriginFailed(f"HTTP {status} for bytes {run.start}-{run.end}")
    found = _CONTENT_RANGE.fullmatch((response.getheader("Content-Range") or "").strip())
    if found is None or int(found[1]) != run.start or int(found[2]) < int(found[1]) or int(found[2]) > run.end:
        raise OriginFailed(f"Content-Range {str(response.getheader('Content-Range'))[:80]!r} is not bytes "
                           f"{run.start}-{run.end}")
    length = int(found[2]) - int(found[1]) + 1
    if declared is not None and declared != str(length):
        raise OriginFailed(f"Content-Length {declared[:20]!r} does not match Content-Range ({length} bytes)")
    return length


def fetch_run(run: Run, settings: OriginSettings, deliver: Callable[[str, int, bytes], None]) -> None:
    """Ask for ``run``; hand every whole chunk to ``deliver(name, index, data)`` as it arrives (it
    raises OriginFailed for wrong bytes). Raises OriginFailed once anything goes wrong."""
    deadline = settings.timeout_s + (run.end - run.start + 1) / settings.min_rate_bytes_per_s
    try:
        connection, target = _connection(run.url, settings)
    except (ValueError, ssl.SSLError, OSError) as e:
        raise OriginFailed(f"{run.url[:200]}: {e}") from None
    late = threading.Event()
    watchdog = threading.Timer(deadline, _shut, (connection, late))
    watchdog.daemon = True
    watchdog.start()
    try:
        connection.request("GET", target, headers={
            "Range": f"bytes={run.start}-{run.end}", "Accept-Encoding": "identity", "User-Agent": "edge-agent"})
        response = connection.getresponse()
        available = _expected_bytes(response, run)
        offset = run.start
        for index in range(run.first, run.first + run.count):
            size = run.chunk_length(index)
            if offset + size > run.start + available:
                raise OriginFailed(f"truncated: the origin sent bytes {run.start}-{run.start + available - 1} of "
                                   f"{run.start}-{run.end}")
            data = response.read(size)
            if len(data) != size:
                raise OriginFailed(f"truncated: chunk {run.name}/{index} has {len(data)} of {size} bytes")
            deliver(run.name, index, data)
            offset += size
    except (http.client.HTTPException, OSError, OriginFailed) as e:
        if late.is_set():
            raise OriginFailed(f"{run.url[:200]}: too slow: bytes {run.start}-{run.end} did not come within the "
                               f"deadline of {deadline:.1f}s") from None
        if isinstance(e, OriginFailed):
            raise
        raise OriginFailed(f"{run.url[:200]}: {type(e).__name__}: {str(e)[:200]}") from None
    finally:
        watchdog.cancel()
        connection.close()
