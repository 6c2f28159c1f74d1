"""systemd's service notification protocol (``sd_notify(3)``), spoken directly: one datagram per
state change to the ``AF_UNIX`` socket named by ``$NOTIFY_SOCKET`` (a path, or ``@name`` for the
abstract namespace). No dependency: the protocol is a few lines of ``socket``.

This module owns the protocol and the watchdog's timing as systemd sets it (``$WATCHDOG_USEC``,
``$WATCHDOG_PID``). *When* the agent is alive enough to say so is :mod:`edge_agent.liveness`'s job.
Outside systemd (no ``$NOTIFY_SOCKET``) every call is a no-op.
"""

from __future__ import annotations

import logging
import os
import socket

log = logging.getLogger(__name__)

READY = "READY=1"
STOPPING = "STOPPING=1"
WATCHDOG = "WATCHDOG=1"


def _address(value: str) -> str | bytes:
    return b"\0" + value[1:].encode() if value.startswith("@") else value


class Notifier:
    """Sends states to systemd; silently does nothing when not started by a ``Type=notify`` unit."""

    def __init__(self, environ: dict[str, str] | None = None) -> None:
        env = os.environ if environ is None else environ
        self.socket_path = env.get("NOTIFY_SOCKET", "")
        self.watchdog_s = _watchdog_seconds(env)

    @property
    def enabled(self) -> bool:
        return bool(self.socket_path)

    def notify(self, state: str) -> bool:
        """Send ``state`` (``READY=1``, ``WATCHDOG=1``...); False if not under systemd or it failed."""
        if not self.socket_path:
            return False
        try:
            with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as sock:
                sock.connect(_address(self.socket_path))
                sock.sendall(state.encode())
        except OSError as e:  # systemd gone (a stop in progress), or a socket we may not write to
            log.warning("could not notify systemd (%s): %s", state.partition("=")[0], e)
            return False
        return True


def _watchdog_seconds(env: dict[str, str] | os._Environ[str]) -> float | None:
    """``WatchdogSec=`` of the unit, if the watchdog is on and meant for this process (sd_watchdog_enabled)."""
    usec = env.get("WATCHDOG_USEC", "")
    pid = env.get("WATCHDOG_PID", "")
    if not usec.isdigit() or int(usec) == 0:
        return None
    if pid and (not pid.isdigit() or int(pid) != os.getpid()):
        return None  # set for another process (a wrapper that exec'd us would pass its own)
    return int(usec) / 1_000_000
