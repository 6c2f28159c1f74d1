"""Prometheus metrics of one agent (prometheus_client), served on ``GET /metrics``.

Each agent owns its own registry, so several agents (or tests) in one process never share
counters. Values that already live elsewhere (model version, store size) are read at scrape
time by a collector instead of being copied into gauges. Labels never carry user or item ids.
"""

from __future__ import annotations

import platform
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass

from prometheus_client import CollectorRegistry, Counter, Histogram, PlatformCollector, ProcessCollector
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from edge_agent import __version__
from edge_agent.health import RequestHealth
from edge_agent.runtime import installed_runtime

#: Request latency buckets, in seconds: the API answers in about a millisecond.
LATENCY_BUCKETS = (0.0005, 0.001, 0.002, 0.003, 0.005, 0.0075, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5)


#: Probes and scrapes: in the Prometheus histogram, but not in the health figures of the status
#: (a 503 from /readyz while the first model is on its way is not a failed request).
PROBE_ROUTES = frozenset({"/healthz", "/readyz", "/metrics"})


@dataclass(frozen=True)
class ModelFacts:
    version: int
    expires_at: float  # epoch seconds
    num_items: int
    loaded_at: float


class _StateCollector(Collector):
    def __init__(self, model: Callable[[], ModelFacts | None], store_bytes: Callable[[], int]) -> None:
        self._model = model
        self._store_bytes = store_bytes

    def collect(self) -> Iterator[Metric]:
        facts = self._model()
        loaded = GaugeMetricFamily("edge_agent_model_loaded", "1 when a model serves requests, else 0")
        loaded.add_metric([], 1 if facts else 0)
        yield loaded
        if facts is not None:
            yield GaugeMetricFamily("edge_agent_model_version", "Version of the active model", value=facts.version)
            yield GaugeMetricFamily(
                "edge_agent_model_expiry_timestamp_seconds", "When the active model's manifest expires",
                value=facts.expires_at,
            )
            yield GaugeMetricFamily("edge_agent_model_items", "Items the active model scores", value=facts.num_items)
            yield GaugeMetricFamily(
                "edge_agent_model_loaded_timestamp_seconds", "When the active model was loaded",
                value=facts.loaded_at,
            )
        yield GaugeMetricFamily(
            "edge_agent_history_store_bytes", "Size on disk of the encrypted history and keyring",
            value=self._store_bytes(),
        )


def build_labels() -> dict[str, str]:
    """What this agent is built from: the fleet's dashboards group and compare agents by these."""
    return {"version": __version__, "python": platform.python_version(), "runtime": installed_runtime(),
            "machine": platform.machine()}


class _BuildInfoCollector(Collector):
    def __init__(self, labels: dict[str, str]) -> None:
        self._labels = labels

    def collect(self) -> Iterator[Metric]:
        info = GaugeMetricFamily("edge_agent_build_info", "Always 1; the labels say what this agent is built from",
                                 labels=list(self._labels))
        info.add_metric(list(self._labels.values()), 1)
        yield info


HTTP_METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})


class AgentMetrics:
    def __init__(self, model: Callable[[], ModelFacts | None], store_bytes: Callable[[], int]) -> None:
        self.registry = CollectorRegistry()
        ProcessCollector(registry=self.registry)
        PlatformCollector(registry=self.registry)
        self.registry.register(_StateCollector(model, store_bytes))
        self.registry.register(_BuildInfoCollector(build_labels()))
        self.request_seconds = Histogram(
            "edge_agent_http_request_duration_seconds", "REST request latency",
            ["route", "method", "status"], buckets=LATENCY_BUCKETS, registry=self.registry,
        )
        self._request_children: dict[tuple[str, str, int], Histogram] = {}
        self.recommendations = Counter(
            "edge_agent_recommendations", "Recommendation answers by source (model or popularity fallback)",
            ["source"], registry=self.registry,
        )
        self._by_source = {False: self.recommendations.labels("model"), True: self.recommendations.labels("fallback")}
        self.events = Counter("edge_agent_events_accepted", "Shopper events stored", registry=self.registry)
        self.model_errors = Counter(
            "edge_agent_model_output_errors", "Queries the model answered with garbage (served popular items instead)",
            registry=self.registry,
        )
        self.health = RequestHealth()  # for the MQTT status; Prometheus has the histogram
        self.updates = Counter(
            "edge_agent_model_updates", "Model update outcomes by result and reason code",
            ["result", "reason"], registry=self.registry,
        )

    def observe_request(self, route: str, method: str, status: int, started: float) -> None:
        seconds = time.perf_counter() - started
        key = (route, method if method in HTTP_METHODS else "other", status)  # clients choose methods: bound them
        child = self._request_children.get(key)
        if child is None:  # labels() locks and validates: once per route, method and status
            child = self._request_children[key] = self.request_seconds.labels(key[0], key[1], str(status))
        child.observe(seconds)
        if route not in PROBE_ROUTES:
            self.health.observe(seconds, status)

    def count_recommendation(self, fallback: bool) -> None:
        self._by_source[fallback].inc()

    def count_update(self, result: str, reason: str) -> None:
        self.updates.labels(result, reason.partition(":")[0] or "none").inc()
