"""Locust shoppers for bench/serving.py: recommendations (90%) and events (10%) at a fixed rate.

Locust paces the load (``constant_throughput`` per simulated shopper); every response time it
measures, as a float in milliseconds, is also written to ``EDGE_BENCH_OUT`` so percentiles are
exact rather than Locust's rounded buckets.
"""

from __future__ import annotations

import json
import os
import random
from pathlib import Path
from typing import Any

from locust import FastHttpUser, constant_throughput, events, task

TOKEN = os.environ.get("EDGE_BENCH_TOKEN", "")
USERS = int(os.environ.get("EDGE_BENCH_USERS", "1000"))
ITEMS = int(os.environ.get("EDGE_BENCH_ITEMS", "100000"))
RATE_PER_SHOPPER = float(os.environ.get("EDGE_BENCH_RATE_PER_SHOPPER", "10"))

samples: list[tuple[str, float, bool]] = []


@events.request.add_listener
def record(name: str, response_time: float, exception: Any = None, **_: Any) -> None:
    samples.append((name, float(response_time), exception is None))


@events.quitting.add_listener
def dump(**_: Any) -> None:
    out = os.environ.get("EDGE_BENCH_OUT")
    if out:
        Path(out).write_text(json.dumps(samples))


class Shopper(FastHttpUser):
    wait_time = constant_throughput(RATE_PER_SHOPPER)

    def on_start(self) -> None:
        self.headers = {"Authorization": f"Bearer {TOKEN}"}

    @task(9)
    def recommendations(self) -> None:
        user = random.randrange(USERS)
        self.client.get(f"/v1/recommendations?user_id=bench-{user}&k=10", headers=self.headers,
                        name="/v1/recommendations")

    @task(1)
    def event(self) -> None:
        body = {"user_id": f"bench-{random.randrange(USERS)}", "item_id": f"SKU-{random.randrange(ITEMS):06d}",
                "event": random.choice(["view", "cart", "purchase"])}
        self.client.post("/v1/events", json=body, headers=self.headers, name="/v1/events")
