"""Request health figures for the agent's MQTT status (pure): counts and recent latency percentiles.

Fleet tooling (``cloud-trainer fleet status``, canary rollouts) judges an agent by these, so they
are cheap to record on every request and carry no user data.
"""

from __future__ import annotations

import threading
from collections import deque

#: How many of the most recent requests the percentiles cover.
WINDOW = 2048


class RequestHealth:
    def __init__(self, window: int = WINDOW) -> None:
        self._lock = threading.Lock()
        self._recent: deque[float] = deque(maxlen=window)  # seconds
        self.requests = 0
        self.server_errors = 0  # 5xx answers
        self.model_errors = 0  # answers where the model returned garbage and popular items were served

    def observe(self, seconds: float, status: int) -> None:
        with self._lock:
            self._recent.append(seconds)
            self.requests += 1
            if status >= 500:
                self.server_errors += 1

    def model_failed(self) -> None:
        with self._lock:
            self.model_errors += 1

    def snapshot(self) -> dict[str, object]:
        """Totals since start, and p50/p99 in ms over the last :data:`WINDOW` requests (None if none)."""
        with self._lock:
            recent = sorted(self._recent)
            requests, errors, model_errors = self.requests, self.server_errors, self.model_errors
        if not recent:
            p50 = p99 = None
        else:
            p50 = round(recent[len(recent) // 2] * 1000, 3)
            p99 = round(recent[min(len(recent) - 1, int(0.99 * len(recent)))] * 1000, 3)
        return {"requests": requests, "server_errors": errors, "model_errors": model_errors, "p50_ms": p50,
                "p99_ms": p99}
