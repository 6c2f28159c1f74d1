"""One download's chunks from the origin, on a thread of its own (:mod:`edge_agent.origin_fetch`
does the HTTP), handed to the update worker of :mod:`edge_agent.mqtt_link` like MQTT chunks.

The thread checks each chunk against the signed manifest before posting it (the worker checks it
again when it takes it); a wrong chunk fails the request. A failed request is tried again after
``retry_after_s``, from the first chunk still missing (what was verified is staged on disk, so a cut
resumes where it stopped), ``retries`` times; then the thread posts :class:`OriginDone` with ``ok``
False and the worker asks the broker for what is still missing. Posting waits while the worker's
inbox is full, so the origin is read no faster than chunks are verified and written.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from dataclasses import dataclass

from edge_agent.errors import OriginFailed
from edge_agent.origin_fetch import OriginSettings, fetch_run, plan_runs
from shared.bundle import Manifest, sha256_hex

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class OriginChunk:
    """A chunk from the origin that matched its sha256 in the manifest, for the worker to take."""

    version: int
    name: str
    index: int
    data: bytes


@dataclass(frozen=True)
class OriginDone:
    """The origin thread of ``version`` ended: every chunk posted (``ok``), or it gave up (``reason``)."""

    version: int
    ok: bool
    reason: str = ""


def origin_chunks(manifest: Manifest, missing: list[tuple[str, int]]) -> list[tuple[str, int]]:
    """The ``missing`` chunks the origin can give: those of files the manifest lists URLs for."""
    return [(name, index) for name, index in missing if manifest.files[name].urls]


class OriginDownload:
    def __init__(self, manifest: Manifest, missing: list[tuple[str, int]], settings: OriginSettings,
                 post: Callable[[OriginChunk | OriginDone], bool]) -> None:
        """``post(item)`` hands an item to the worker; False when the agent is stopping."""
        self.manifest, self.version = manifest, manifest.version
        self._pending = set(origin_chunks(manifest, missing))
        self._settings, self._post = settings, post
        self._cancelled = threading.Event()
        self.fetched = 0
        self._thread = threading.Thread(target=self._run, name=f"origin-{self.version}", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def cancel(self, wait_s: float = 0.0) -> None:
        self._cancelled.set()
        if wait_s and self._thread.is_alive():
            self._thread.join(wait_s)

    def alive(self) -> bool:
        return self._thread.is_alive() and not self._cancelled.is_set()

    def _deliver(self, name: str, index: int, data: bytes) -> None:
        if self._cancelled.is_set():
            raise OriginFailed("cancelled")
        if sha256_hex(data) != self.manifest.files[name].chunks[index]:
            raise OriginFailed(f"wrong bytes: chunk {name}/{index} does not match its sha256 in the manifest")
        if not self._post(OriginChunk(self.version, name, index, data)):
            self._cancelled.set()
            raise OriginFailed("cancelled")
        self._pending.discard((name, index))
        self.fetched += 1

    def _run(self) -> None:
        settings, reason = self._settings, ""
        for attempt in range(settings.retries + 1):
            if attempt and self._cancelled.wait(settings.retry_after_s):
                return
            try:
                for run in plan_runs(self.manifest, self._pending, settings.chunks_per_request, attempt):
                    fetch_run(run, settings, self._deliver)
                self._pending.clear()  # empty files: nothing to ask the origin (the worker has them)
                self._post(OriginDone(self.version, True))
                return
            except OriginFailed as e:
                if self._cancelled.is_set():
                    return
                reason = str(e)
                log.warning("origin, version %s, attempt %d of %d: %s", self.version, attempt + 1,
                            settings.retries + 1, reason)
        self._post(OriginDone(self.version, False, reason))
