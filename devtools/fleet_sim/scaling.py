"""The stated model that extrapolates the measured rollouts to fleets this machine cannot hold.

Per agent, a rollout costs the broker its control messages (the manifest sent to it, its statuses
sent to the status board) and, when MQTT carries the bundle, every chunk: broker egress is linear
in the fleet::

    broker_bytes(N) = N * per_agent_control                    (origin mode)
    broker_bytes(N) = N * (bundle_bytes + per_agent_overhead)  (MQTT-only)
    origin_bytes(N) = N * per_agent_origin                     (bundle + HTTP and range headers)
    broker_cpu(N)   = N * per_agent_cpu

Activation time: on one 2-core machine, delivery is bound by CPU (simulator, broker and origin
share it), so the fleet-wide time grows with the bytes moved at the throughput measured at the
largest run: ``t(N) = t_first + N * bundle_bytes / throughput``. Real stores download in parallel
on their own hardware: there the origin's (or CDN's) and the broker's egress bandwidth bound it.
"""

from __future__ import annotations

from typing import Any


def per_agent(run: dict[str, Any]) -> dict[str, float]:
    n = run["agents"]
    figures = {"broker_bytes": run["broker"]["bytes_written"] / n, "broker_cpu_s": run["broker"]["cpu_s"] / n}
    if "origin" in run:
        figures["origin_bytes"] = run["origin"]["bytes_sent"] / n
    return figures


def throughput(run: dict[str, Any]) -> float:
    """Bundle bytes activated per second of the rollout (after the first agent)."""
    spread = run["fleet_wide_activation_s"] - run["per_agent_activation"]["first_s"]
    return run["agents"] * run["bundle_bytes"] / max(spread, 1e-3)


def predict(run: dict[str, Any], agents: int, bundle_bytes: int) -> dict[str, Any]:
    """A model point for ``agents`` and ``bundle_bytes`` from a measured ``run`` of the same mode."""
    unit = per_agent(run)
    mqtt = run["mode"] == "mqtt"
    overhead = unit["broker_bytes"] - (run["bundle_bytes"] if mqtt else 0)
    point: dict[str, Any] = {
        "kind": "model", "mode": run["mode"], "agents": agents, "bundle_bytes": bundle_bytes,
        "from_measured": {"agents": run["agents"], "bundle_bytes": run["bundle_bytes"]},
        "broker_bytes_out": round(agents * ((bundle_bytes if mqtt else 0) + overhead)),
        "broker_cpu_s": round(agents * unit["broker_cpu_s"] * (bundle_bytes / run["bundle_bytes"] if mqtt else 1), 1),
        "fleet_wide_activation_s_this_machine": round(
            run["per_agent_activation"]["first_s"] + agents * bundle_bytes / throughput(run), 1),
    }
    if "origin_bytes" in unit:
        http_overhead = unit["origin_bytes"] - run["bundle_bytes"]
        point["origin_bytes_out"] = round(agents * (bundle_bytes + http_overhead))
    return point


def measured_point(run: dict[str, Any]) -> dict[str, Any]:
    point = {"kind": "measured", "mode": run["mode"], "agents": run["agents"], "bundle_bytes": run["bundle_bytes"],
             "broker_bytes_out": run["broker"]["bytes_written"], "broker_cpu_s": run["broker"]["cpu_s"],
             "fleet_wide_activation_s_this_machine": run["fleet_wide_activation_s"]}
    if "origin" in run:
        point["origin_bytes_out"] = run["origin"]["bytes_sent"]
    return point
