"""What the bench reads of the broker and the origin: CPU seconds and peak RSS from /proc, bytes
written (``/proc/<pid>/io`` wchar: every byte the process wrote to its sockets and files) and
Mosquitto's own ``$SYS/broker/bytes/sent``."""

from __future__ import annotations

import os
import re
import threading
from dataclasses import dataclass
from pathlib import Path

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion

TICK = os.sysconf("SC_CLK_TCK")


def children(pid: int) -> list[int]:
    """Direct children of ``pid`` (nginx's workers)."""
    found = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[1]) == pid:
            found.append(int(stat.parent.name))
    return found


@dataclass(frozen=True)
class ProcSample:
    cpu_s: float
    wchar: int
    rss_kb: int
    peak_rss_kb: int

    def since(self, earlier: ProcSample) -> dict[str, float | int]:
        return {"cpu_s": round(self.cpu_s - earlier.cpu_s, 2), "bytes_written": self.wchar - earlier.wchar,
                "rss_mb": round(self.rss_kb / 1024, 1), "peak_rss_mb": round(self.peak_rss_kb / 1024, 1)}


def sample(*pids: int) -> ProcSample:
    """CPU (user + system), bytes written and RSS summed over ``pids``; peak RSS is the largest."""
    cpu = 0.0
    wchar = rss = peak = 0
    for pid in pids:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        cpu += (int(fields[11]) + int(fields[12])) / TICK
        wchar += int(re.search(r"wchar:\s+(\d+)", Path(f"/proc/{pid}/io").read_text()).group(1))  # type: ignore[union-attr]
        status = Path(f"/proc/{pid}/status").read_text()
        rss += int(re.search(r"VmRSS:\s+(\d+)", status).group(1))  # type: ignore[union-attr]
        peak = max(peak, int(re.search(r"VmHWM:\s+(\d+)", status).group(1)))  # type: ignore[union-attr]
    return ProcSample(cpu, wchar, rss, peak)


def sys_bytes_sent(port: int, timeout: float = 10) -> int | None:
    """Mosquitto's ``$SYS/broker/bytes/sent`` (bytes sent since it started), read by a short-lived
    subscriber: the second message, published after it subscribed (the first is the retained one,
    up to ``sys_interval`` old)."""
    got: list[int] = []
    done = threading.Event()
    client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=f"sys-reader-{os.getpid()}")

    def on_message(c: mqtt.Client, u: object, message: mqtt.MQTTMessage) -> None:
        got.append(int(message.payload))
        if len(got) >= 2:
            done.set()

    client.on_message = on_message
    client.connect("127.0.0.1", port)
    client.subscribe("$SYS/broker/bytes/sent")
    client.loop_start()
    done.wait(timeout)
    client.loop_stop()
    client.disconnect()
    return got[-1] if got else None
