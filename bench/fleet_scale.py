"""Fleet-scale delivery: thousands of simulated agents against one Mosquitto and one nginx origin.

For each fleet size (default 1,000 and 5,000 agents) and each delivery mode, a fresh broker, a
fleet of simulated agents (devtools/fleet_sim: asyncio MQTT clients speaking the agent's protocol,
spread over worker processes) and a 10 MB signed bundle:

- ``origin``: the manifest lists HTTPS URLs on nginx; agents fetch one Range request per chunk;
- ``mqtt``: the bundle's retained 256 KB chunks flow through the broker (MQTT-only delivery).

Measured: time from the manifest's publication to every agent reporting the version on its status
topic, broker CPU seconds, RSS and bytes out (/proc/<pid>/io wchar, and $SYS/broker/bytes/sent),
origin bytes out (nginx's $bytes_sent) and CPU. Then, with the largest fleet connected, a minute of
status heartbeats at the agent's default interval, and half the fleet dropped at once (last wills).
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

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from devtools.fleet_sim import scaling  # noqa: E402
from devtools.fleet_sim.run import Rollout, run  # noqa: E402

RESULTS = ROOT / "bench" / "results" / "fleet_scale.json"
MB = 1_000_000


def brief(result: dict[str, object]) -> dict[str, object]:
    return {k: v for k, v in result.items() if k not in ("status_example", "agent_errors")}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--agents", default="1000,5000", help="fleet sizes, comma-separated")
    parser.add_argument("--model-mb", type=float, default=10.0, help="model file size (MB, random bytes)")
    parser.add_argument("--mqtt-model-mb-largest", type=float, default=0,
                        help="MQTT-only at the largest fleet with this bundle instead (too slow here), "
                             "scaled by the model to --model-mb; 0: the same bundle")
    parser.add_argument("--workers", type=int, default=2, help="simulation processes")
    parser.add_argument("--heartbeat-s", type=float, default=60, help="heartbeat window at the largest fleet")
    args = parser.parse_args()
    sizes = [int(s) for s in args.agents.split(",")]
    model_bytes = int(args.model_mb * MB)
    results: dict[str, object] = {
        "machine": f"{platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()}",
        "started": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "shortcut": "simulated agents verify the signature, the manifest, every chunk and file sha256 and "
                    "parse the catalog, but load no interpreter",
        "runs": [],
    }
    runs: list[dict[str, object]] = results["runs"]  # type: ignore[assignment]
    for n in sizes:
        for mode in ("origin", "mqtt"):
            size = model_bytes
            if mode == "mqtt" and n == max(sizes) and args.mqtt_model_mb_largest:
                size = int(args.mqtt_model_mb_largest * MB)
            heartbeat = args.heartbeat_s if (mode == "origin" and n == max(sizes)) else 0
            started = time.perf_counter()
            result = run(Rollout(agents=n, mode=mode, model_bytes=size, workers=args.workers,
                                 heartbeat_s=heartbeat, timeout_s=1800))
            result["wall_s"] = round(time.perf_counter() - started, 1)
            runs.append(result)
            print(json.dumps(brief(result)), flush=True)
            if not result["all_active"]:
                print(f"{n} agents ({mode}): only {result['activated']} activated", file=sys.stderr)
    results["status_example"] = runs[-1]["status_example"]
    for r in runs:
        r.pop("status_example", None)
    largest = {r["mode"]: r for r in runs if r["agents"] == max(sizes)}
    bundle = largest["origin"]["bundle_bytes"]
    curve = [scaling.measured_point(r) for r in runs]
    for n in (*sizes, 10_000, 100_000):
        for mode in ("origin", "mqtt"):
            measured_here = any(p["agents"] == n and p["mode"] == mode and p["bundle_bytes"] == bundle for p in curve)
            if not measured_here:
                curve.append(scaling.predict(largest[mode], n, bundle))
    heartbeat = largest["origin"].get("heartbeat")
    if heartbeat:  # linear in the fleet: one status per agent per interval, a PINGREQ per keepalive
        share = heartbeat["broker_cpu_share"] / heartbeat["connected_agents"]
        results["heartbeat_model"] = {
            "status_bytes": len(json.dumps(results["status_example"])),
            "broker_cpu_share_per_1000_agents": round(share * 1000, 5),
            **{f"broker_cpu_share_at_{n}": round(share * n, 4) for n in (10_000, 100_000)},
            "statuses_per_s_at_100000": round(100_000 / heartbeat["status_interval_s"], 1),
        }
    results["model"] = scaling.__doc__
    checks = []  # the model run backwards: each measured MQTT-only point predicted from the largest run
    for r in runs:
        if r["mode"] == "mqtt" and r is not largest["mqtt"]:
            predicted = scaling.predict(largest["mqtt"], r["agents"], r["bundle_bytes"])
            checks.append({"agents": r["agents"], "bundle_bytes": r["bundle_bytes"],
                           "broker_bytes_out_measured": r["broker"]["bytes_written"],
                           "broker_bytes_out_model": predicted["broker_bytes_out"],
                           "broker_cpu_s_measured": r["broker"]["cpu_s"],
                           "broker_cpu_s_model": predicted["broker_cpu_s"]})
    results["model_check"] = checks
    results["curve"] = curve
    mqtt_at_largest = next(p for p in curve if p["agents"] == max(sizes) and p["mode"] == "mqtt"
                           and p["bundle_bytes"] == bundle)
    origin_egress = largest["origin"]["broker"]["bytes_written"]  # type: ignore[index]
    ratio = origin_egress / mqtt_at_largest["broker_bytes_out"]
    results["done_when"] = {
        "agents": max(sizes), "bundle_bytes": bundle, "all_active_via_origin": largest["origin"]["all_active"],
        "broker_bytes_out_origin": origin_egress, "broker_bytes_out_mqtt_only": mqtt_at_largest["broker_bytes_out"],
        "mqtt_only_figure": mqtt_at_largest["kind"], "ratio": round(ratio, 6), "under_1_percent": ratio < 0.01,
    }
    print(json.dumps(results["done_when"]), flush=True)
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(results, indent=1) + "\n")
    print(f"wrote {RESULTS.relative_to(ROOT)}")


if __name__ == "__main__":
    main()
