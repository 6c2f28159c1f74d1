"""The stated model that extrapolates the measured rollouts to fleets this machine cannot hold.

Each cost of a rollout is fitted, per delivery mode, as a part per agent plus a part per bundle
byte delivered (least squares over the measured runs of that mode)::

    cost(N, B) = a * N + b * N * B        N agents, B bundle bytes

- broker bytes out: per agent, the manifest sent to it and its statuses sent to the status board
  (``a``); in MQTT-only delivery also every chunk (``b`` ~ 1);
- broker CPU seconds: connections, subscriptions and packets per agent, and bytes pushed;
- origin bytes out (origin mode): the bundle and its HTTP and range headers;
- fleet-wide activation time on this machine: with every agent downloading at once, delivery is
  bound by the 2 shared cores (simulator, broker and origin), so time grows with the agents and
  the bytes moved. Real stores download in parallel on their own hardware: there the origin's (or
  CDN's) and the broker's egress bandwidth bound it, not this figure.

Runs of one mode with a single bundle size cannot separate ``a`` from ``b``: the cost is then per
agent at that bundle size (origin mode, where the broker's part does not depend on the bundle).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np

Metric = Callable[[dict[str, Any]], float]

METRICS: dict[str, Metric] = {
    "broker_bytes_out": lambda r: r["broker"]["bytes_written"],
    "broker_cpu_s": lambda r: r["broker"]["cpu_s"],
    "fleet_wide_activation_s_this_machine": lambda r: r["fleet_wide_activation_s"],
    "origin_bytes_out": lambda r: r["origin"]["bytes_sent"],
}


def fit(runs: list[dict[str, Any]], metric: Metric) -> tuple[float, float]:
    """(a, b) of ``metric`` over ``runs`` (one mode); b is 0 when every run had the same bundle."""
    if len({r["bundle_bytes"] for r in runs}) < 2:
        largest = max(runs, key=lambda r: r["agents"])
        return metric(largest) / largest["agents"], 0.0
    design = np.array([[r["agents"], r["agents"] * r["bundle_bytes"]] for r in runs], dtype=float)
    values = np.array([metric(r) for r in runs], dtype=float)
    (a, b), *_ = np.linalg.lstsq(design, values, rcond=None)
    return float(a), float(b)


def predict(runs: list[dict[str, Any]], agents: int, bundle_bytes: int) -> dict[str, Any]:
    """A model point for ``agents`` and ``bundle_bytes`` from the measured ``runs`` of one mode."""
    fitted_on = [{"agents": r["agents"], "bundle_bytes": r["bundle_bytes"]} for r in runs]
    point: dict[str, Any] = {"kind": "model", "mode": runs[0]["mode"], "agents": agents, "bundle_bytes": bundle_bytes,
                             "from_measured": fitted_on}
    for name, metric in METRICS.items():
        if name == "origin_bytes_out" and "origin" not in runs[0]:
            continue
        a, b = fit(runs, metric)
        point[name] = round(a * agents + b * agents * bundle_bytes, 1 if "_s" in name else None)
    return point


def coefficients(runs: list[dict[str, Any]]) -> dict[str, dict[str, float]]:
    """The fitted (per agent, per agent-byte) of each metric, for the results file."""
    out = {}
    for name, metric in METRICS.items():
        if name == "origin_bytes_out" and "origin" not in runs[0]:
            continue
        a, b = fit(runs, metric)
        out[name] = {"per_agent": a, "per_bundle_byte_delivered": b}
    return out


def measured_point(run: dict[str, Any]) -> dict[str, Any]:
    point: dict[str, Any] = {"kind": "measured", "mode": run["mode"], "agents": run["agents"],
                             "bundle_bytes": run["bundle_bytes"]}
    for name, metric in METRICS.items():
        if name != "origin_bytes_out" or "origin" in run:
            point[name] = metric(run)
    return point
