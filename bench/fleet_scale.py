"""Fleet-scale delivery: thousands of simulated agents against one Mosquitto and one nginx origin.

For each fleet size (default 1,000 and 5,000 agents) and each delivery mode, a fresh broker, a
fleet of simulated agents (devtools/fleet_sim: asyncio MQTT clients speaking the agent's protocol,
spread over worker processes) and a 10 MB signed bundle:

- ``origin``: the manifest lists HTTPS URLs on nginx; agents fetch one Range request per chunk;
- ``mqtt``: the bundle's retained 256 KB chunks flow through the broker (MQTT-only delivery).

Measured: time from the manifest's publication to every agent reporting the version on its status
topic, broker CPU seconds, RSS and bytes out (/proc/<pid>/io wchar, and $SYS/broker/bytes/sent),
origin bytes out (nginx's $bytes_sent) and CPU. Then, with the largest fleet connected, a minute of
status heartbeats at the agent's default interval, and half the fleet dropped at once (last wills);
then the same with Mosquitto's max_queued_messages above the fleet size (the status board takes a
will per dropped agent).
The measured points are extrapolated to 10,000 and 100,000 agents by the model of
devtools/fleet_sim/scaling.py. Writes bench/results/fleet_scale.json. Not a test.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from devtools.fleet_sim import scaling  # noqa: E402
from devtools.fleet_sim.run import Rollout, run  # noqa: E402

RESULTS = ROOT / "bench" / "results" / "fleet_scale.json"
MB = 1_000_000


def brief(result: dict[str, object]) -> dict[str, object]:
    return {k: v for k, v in result.items() if k not in ("status_example", "agent_errors")}


def heartbeat_raised_queue(agents: int, args: argparse.Namespace) -> dict[str, object]:
    """The heartbeat minute and the mass disconnect again, with Mosquitto's max_queued_messages
    above the fleet size so the status board (one subscriber) can take a will per dropped agent;
    a 0.1 MB bundle: only the connected, heartbeating fleet matters here."""
    result = run(Rollout(agents=agents, mode="origin", model_bytes=100_000, workers=args.workers,
                         heartbeat_s=args.heartbeat_s, max_queued=2 * agents, timeout_s=600))
    print(json.dumps(result.get("heartbeat")), flush=True)
    return {"broker_max_queued_messages": 2 * agents, "all_active": result["all_active"],
            "heartbeat": result.get("heartbeat")}


def summarize(results: dict[str, Any], runs: list[dict[str, Any]], largest_fleet: int) -> None:
    """The curve (measured points, then model points for the sizes not measured with the bundle),
    the model's fit, a check of the model against each measured point, and the issue's target."""
    by_mode = {mode: [r for r in runs if r["mode"] == mode] for mode in ("origin", "mqtt")}
    bundle = next(r["bundle_bytes"] for r in by_mode["origin"] if r["agents"] == largest_fleet)
    curve = [scaling.measured_point(r) for r in runs]
    for n in (*sorted({r["agents"] for r in runs}), 10_000, 100_000):
        for mode, measured in by_mode.items():
            if not any(p["agents"] == n and p["mode"] == mode and p["bundle_bytes"] == bundle for p in curve):
                curve.append(scaling.predict(measured, n, bundle))
    results["model"] = scaling.__doc__
    results["model_fit"] = {mode: scaling.coefficients(measured) for mode, measured in by_mode.items()}
    results["model_check"] = [  # the fitted model against each measured point it was fitted on
        {"measured": scaling.measured_point(r), "model": scaling.predict(by_mode[r["mode"]], r["agents"],
                                                                          r["bundle_bytes"])} for r in runs]
    results["curve"] = curve
    heartbeat = next((r["heartbeat"] for r in by_mode["origin"] if "heartbeat" in r), None)
    if heartbeat:  # linear in the fleet: one status per agent per interval, a PINGREQ per keepalive
        share = heartbeat["broker_cpu_share"] / heartbeat["connected_agents"]
        results["heartbeat_model"] = {
            "status_bytes": len(json.dumps(results["status_example"])),
            "broker_cpu_share_per_1000_agents": round(share * 1000, 5),
            **{f"broker_cpu_share_at_{n}": round(share * n, 4) for n in (10_000, 100_000)},
            "statuses_per_s_at_100000": round(100_000 / heartbeat["status_interval_s"], 1),
        }
    origin_run = next(r for r in by_mode["origin"] if r["agents"] == largest_fleet)
    mqtt_point = next(p for p in curve if p["agents"] == largest_fleet and p["mode"] == "mqtt"
                      and p["bundle_bytes"] == bundle)
    ratio = origin_run["broker"]["bytes_written"] / mqtt_point["broker_bytes_out"]
    results["done_when"] = {
        "agents": largest_fleet, "bundle_bytes": bundle, "all_active_via_origin": origin_run["all_active"],
        "broker_bytes_out_origin": origin_run["broker"]["bytes_written"],
        "broker_bytes_out_mqtt_only": mqtt_point["broker_bytes_out"], "mqtt_only_figure": mqtt_point["kind"],
        "ratio": round(ratio, 6), "under_1_percent": ratio < 0.01,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--agents", default="1000,5000", help="fleet sizes, comma-separated")
    parser.add_argument("--model-mb", type=float, default=10.0, help="model file size (MB, random bytes)")
    parser.add_argument("--mqtt-model-mb-largest", type=float, default=0,
                        help="MQTT-only at the largest fleet with this bundle instead (too slow here), "
                             "scaled by the model to --model-mb; 0: the same bundle")
    parser.add_argument("--workers", type=int, default=2, help="simulation processes")
    parser.add_argument("--heartbeat-s", type=float, default=60, help="heartbeat window at the largest fleet")
    parser.add_argument("--receive-maximum", type=int, default=None,
                        help="agents announce this MQTT 5 Receive Maximum (default: none, as the agent)")
    parser.add_argument("--results", type=Path, default=RESULTS, help="results file")
    parser.add_argument("--summarize-only", action="store_true", help="recompute the curve of the existing results")
    parser.add_argument("--heartbeat-only", action="store_true",
                        help="only the heartbeat scenario with a raised max_queued_messages, into the existing results")
    args = parser.parse_args()
    sizes = [int(s) for s in args.agents.split(",")]
    if args.summarize_only or args.heartbeat_only:  # into the existing results
        earlier: dict[str, Any] = json.loads(args.results.read_text())
        if args.heartbeat_only:
            earlier["heartbeat_raised_queue"] = heartbeat_raised_queue(max(sizes), args)
        summarize(earlier, earlier["runs"], max(r["agents"] for r in earlier["runs"]))
        args.results.write_text(json.dumps(earlier, indent=1) + "\n")
        print(json.dumps(earlier["done_when"]))
        return
    model_bytes = int(args.model_mb * MB)
    results: dict[str, Any] = {
        "machine": f"{platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()}",
        "started": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "shortcut": "simulated agents verify the signature, the manifest, every chunk and file sha256 and "
                    "parse the catalog, but load no interpreter",
        "receive_maximum": args.receive_maximum,
        "runs": [],
    }
    runs: list[dict[str, Any]] = results["runs"]
    for n in sizes:
        for mode in ("origin", "mqtt"):
            size = model_bytes
            if mode == "mqtt" and n == max(sizes) and args.mqtt_model_mb_largest:
                size = int(args.mqtt_model_mb_largest * MB)
            heartbeat = args.heartbeat_s if (mode == "origin" and n == max(sizes)) else 0
            started = time.perf_counter()
            result = run(Rollout(agents=n, mode=mode, model_bytes=size, workers=args.workers,
                                 heartbeat_s=heartbeat, timeout_s=1800, receive_maximum=args.receive_maximum))
            result["wall_s"] = round(time.perf_counter() - started, 1)
            runs.append(result)
            print(json.dumps(brief(result)), flush=True)
            if not result["all_active"]:
                print(f"{n} agents ({mode}): only {result['activated']} activated", file=sys.stderr)
    results["heartbeat_raised_queue"] = heartbeat_raised_queue(max(sizes), args)
    results["status_example"] = runs[-1]["status_example"]
    for r in runs:
        r.pop("status_example", None)
    summarize(results, runs, max(sizes))
    print(json.dumps(results["done_when"]), flush=True)
    args.results.parent.mkdir(parents=True, exist_ok=True)
    args.results.write_text(json.dumps(results, indent=1) + "\n")
    print(f"wrote {args.results}")


if __name__ == "__main__":
    main()
