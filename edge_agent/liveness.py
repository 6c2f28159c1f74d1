"""Tells systemd the agent is ready and alive, judged by the serving path itself.

A thread asks the agent's own REST API for ``GET /healthz`` over its listening socket (through
the real HTTP server, its request threads and the WSGI app), and only after an answer does it
send ``READY=1`` (once) or ``WATCHDOG=1`` (every half ``WatchdogSec=``). If the server stops
answering (request threads all stuck, the accept loop hung, a deadlock in the app) the pings stop
and systemd kills and restarts the agent after ``WatchdogSec=``. A free-running ping thread would
keep a hung agent "alive" forever; this one cannot.

The protocol itself is :mod:`edge_agent.sd_notify`; this module only decides when to speak.
"""

from __future__ import annotations

import http.client
import logging
import ssl
import threading
from collections.abc import Callable

from edge_agent.sd_notify import READY, STOPPING, WATCHDOG, Notifier

log = logging.getLogger(__name__)

#: How often the probe is retried until the first answer (then READY=1 is sent).
STARTUP_POLL_S = 0.2
#: Longest a probe waits for its answer.
MAX_PROBE_TIMEOUT_S = 5.0

Probe = Callable[[float], bool]


def healthz_probe(scheme: str, address: tuple[str, int]) -> Probe:
    """A probe that is True when ``GET /healthz`` on ``address`` answers 200 within its timeout."""
    host, port = address
    host = {"0.0.0.0": "127.0.0.1", "::": "::1"}.get(host, host)  # a wildcard bind answers on loopback

    def probe(timeout: float) -> bool:
        conn: http.client.HTTPConnection
        if scheme == "https":
            context = ssl.create_default_context()
            context.check_hostname = False  # the agent asking itself on its own socket: liveness, not trust
            context.verify_mode = ssl.CERT_NONE
            conn = http.client.HTTPSConnection(host, port, timeout=timeout, context=context)
        else:
            conn = http.client.HTTPConnection(host, port, timeout=timeout)
        try:
            conn.request("GET", "/healthz", headers={"Connection": "close"})
            return conn.getresponse().status == 200
        except (OSError, http.client.HTTPException):
            return False
        finally:
            conn.close()

    return probe


class Liveness:
    """READY=1 after the first answer, WATCHDOG=1 after each later one, STOPPING=1 at the stop."""

    def __init__(self, notifier: Notifier, probe: Probe) -> None:
        self.notifier, self.probe = notifier, probe
        self._stopped = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        if not self.notifier.enabled:
            return
        self._thread = threading.Thread(target=self._run, name="systemd-liveness", daemon=True)
        self._thread.start()

    def stopping(self) -> None:
        """The agent is stopping: say so, and ping no more."""
        self._stopped.set()  # a probe in flight ends by its timeout; the stop does not wait for it
        self.notifier.notify(STOPPING)

    def _run(self) -> None:
        while not self._stopped.is_set():
            if self.probe(MAX_PROBE_TIMEOUT_S):
                break
            self._stopped.wait(STARTUP_POLL_S)
        else:
            return
        self.notifier.notify(READY)
        log.info("told systemd the agent is ready%s", f"; watchdog every {self.notifier.watchdog_s}s"
                 if self.notifier.watchdog_s else "")
        if not self.notifier.watchdog_s:
            return
        interval = self.notifier.watchdog_s / 2
        failing = False
        while not self._stopped.wait(interval):
            alive = self.probe(min(interval, MAX_PROBE_TIMEOUT_S))
            if self._stopped.is_set():
                return
            if alive:
                self.notifier.notify(WATCHDOG)
                if failing:
                    log.warning("the REST API answers again; watchdog pings resumed")
            elif not failing:
                log.warning("the REST API did not answer /healthz: no watchdog ping (systemd restarts the agent "
                            "after %ss without one)", self.notifier.watchdog_s)
            failing = not alive
