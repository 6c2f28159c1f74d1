"""Fleet delivery benchmark: a >= 10 MB bundle pushed to 20 agent processes over one Mosquitto.

Runs, one after the other, on loopback (the broker, the agents and the publisher share 2 cores):

1. references: one agent alone on its own broker (the same install without 19 neighbours on the
   2 cores), and at the end 20 bare MQTT subscribers (paho, in this process) receiving every
   retained chunk of the bundle, nothing else: what the transfer alone costs;
2. first install: 20 running agents with no model; time from the start of ``publish`` to the last
   agent reporting the version active (its status topic), and each agent's own time;
3. an update that changes only the catalog: agents fetch the catalog's chunks and reuse the model
   file they have installed.

Memory: broker RSS (now and peak) and agent RSS after activation. The model has random weights:
delivery does not depend on what they are. Writes bench/results/fleet.json. Not a test.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
import paho.mqtt.client as mqtt  # noqa: E402
from serving import ROOT, build_bundle, start_agent  # noqa: E402

from devtools.processes import AgentProcess, broker  # noqa: E402
from shared import topics  # noqa: E402
from shared.bundle import CATALOG_FILE, parse_manifest  # noqa: E402
from shared.topics import CHANNELS  # noqa: E402

RESULTS = ROOT / "bench" / "results" / "fleet.json"
N_ITEMS = 100_000


def rss_kb(pid: int) -> dict[str, int]:
    status = Path(f"/proc/{pid}/status").read_text()
    return {key: int(re.search(rf"{key}:\s+(\d+)", status).group(1)) for key in ("VmRSS", "VmHWM")}  # type: ignore[union-attr]


def publish(bundle: Path, url: str) -> float:
    started = time.perf_counter()
    subprocess.run([sys.executable, "-m", "cloud_trainer.cli", "publish", "--bundle", str(bundle), "--broker", url],
                   check=True, cwd=ROOT, capture_output=True)
    return time.perf_counter() - started


class StatusBoard:
    """When each device first reported a version active."""

    def __init__(self, port: int) -> None:
        self.active_at: dict[tuple[str, int], float] = {}
        self.client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id="bench-board", protocol=mqtt.MQTTv5)
        self.client.on_message = self._on_message
        self.client.connect("127.0.0.1", port)
        self.client.subscribe(topics.all_statuses_topic(topics.DEFAULT_PREFIX, "default"), qos=1)
        self.client.loop_start()

    def _on_message(self, client: Any, userdata: Any, message: Any) -> None:
        status = json.loads(message.payload)
        last = status.get("last_update") or {}
        if last.get("result") == "activated":
            self.active_at.setdefault((message.topic.rsplit("/", 1)[1], int(last["version"])), time.perf_counter())

    def wait(self, devices: list[str], version: int, timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if all((d, version) in self.active_at for d in devices):
                return True
            time.sleep(0.05)
        return False

    def close(self) -> None:
        self.client.loop_stop()
        self.client.disconnect()


def push(bundle: Path, version: int, url: str, board: StatusBoard, devices: list[str]) -> dict[str, object]:
    """Publish ``bundle``; seconds from the start of the publish to each device reporting it active."""
    t0 = time.perf_counter()
    publish_s = publish(bundle, url)
    ok = board.wait(devices, version, timeout=600)
    per_agent = sorted(board.active_at[(d, version)] - t0 for d in devices if (d, version) in board.active_at)
    return {
        "all_active": ok, "publish_s": round(publish_s, 2),
        "fleet_wide_activation_s": round(per_agent[-1], 2) if ok else None,
        "first_agent_s": round(per_agent[0], 2), "median_agent_s": round(statistics.median(per_agent), 2),
    }


def baseline_transfer(port: int, bundle: Path, subscribers: int) -> dict[str, object]:
    """N bare subscribers each receive every retained chunk of the bundle's version."""
    manifest = parse_manifest(json.loads((bundle / "manifest.envelope").read_bytes())["signed"])
    total = sum(len(f.chunks) for f in manifest.files.values())
    finished: list[float] = []

    def make(n: int) -> mqtt.Client:
        got: set[str] = set()
        client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=f"bare-{n}", protocol=mqtt.MQTTv5)

        def on_message(c: Any, u: Any, m: Any) -> None:
            got.add(m.topic)
            if len(got) == total:
                finished.append(time.perf_counter())

        client.on_message = on_message
        client.connect("127.0.0.1", port)
        client.loop_start()
        return client

    clients = [make(n) for n in range(subscribers)]
    started = time.perf_counter()
    for client in clients:
        client.subscribe(topics.bundle_topic(topics.DEFAULT_PREFIX, "default", manifest.version) + "/#", qos=1)
    deadline = time.monotonic() + 300
    while len(finished) < subscribers and time.monotonic() < deadline:
        time.sleep(0.02)
    for client in clients:
        client.loop_stop()
        client.disconnect()
    return {"subscribers": subscribers, "chunks_each": total, "bytes_each": manifest.total_bytes,
            "all_received_s": round(max(finished) - started, 2) if len(finished) == subscribers else None}


def catalog_only_update(bundle: Path, work: Path, version: int) -> Path:
    """The same model with a changed catalog, signed as ``version``."""
    from cloud_trainer.delivery.bundler import BundleOptions, write_bundle

    manifest = parse_manifest(json.loads((bundle / "manifest.envelope").read_bytes())["signed"])
    catalog = json.loads((bundle / CATALOG_FILE).read_bytes())
    catalog["items"][0]["title"] = f"Renamed in {version}"
    out = work / f"bundle-{version}"
    write_bundle(out, (bundle / "model.tflite").read_bytes(), json.dumps(catalog).encode(), manifest.model,
                 work / "signing.key", BundleOptions(version=version, channels=CHANNELS), {"synthetic": True})
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--agents", type=int, default=20)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="edge-rec-fleet-bench-") as tmp:
        work = Path(tmp)
        build_bundle(work)  # work/bundle, version 1, ~10+ MB with the catalog
        bundle = work / "bundle"
        size = sum(p.stat().st_size for p in bundle.iterdir())
        results: dict[str, Any] = {
            "machine": f"{platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()}",
            "bundle_bytes": size, "agents": args.agents,
        }
        print(f"bundle: {size / 1e6:.1f} MB; {args.agents} agents", flush=True)
        print("one agent alone (reference) ...", flush=True)
        with broker() as solo_broker:
            board = StatusBoard(solo_broker.port)
            (work / "solo").mkdir()
            solo = start_agent(work / "solo", solo_broker.url, work / "signing.pub", ('agent.device_id="solo"',))
            try:
                time.sleep(2)
                t0 = time.perf_counter()
                publish(bundle, solo_broker.url)
                ok = board.wait(["solo"], 1, timeout=300)
                results["one_agent_alone"] = {"activation_s": round(board.active_at[("solo", 1)] - t0, 2) if ok
                                              else None, "agent_rss_kb": rss_kb(solo.proc.pid)}
            finally:
                board.close()
                solo.stop()
        print(json.dumps(results["one_agent_alone"]), flush=True)
        with broker() as mqtt_broker:
            results["broker_rss_kb_idle"] = rss_kb(mqtt_broker.proc.pid)
            agents: list[AgentProcess] = []
            board = StatusBoard(mqtt_broker.port)
            try:
                started = time.perf_counter()
                for n in range(args.agents):
                    agent_dir = work / f"agent-{n}"
                    agent_dir.mkdir()
                    agents.append(start_agent(agent_dir, mqtt_broker.url, work / "signing.pub",
                                              (f'agent.device_id="bench-{n:02d}"',)))
                results["agents_started_s"] = round(time.perf_counter() - started, 1)
                devices = [f"bench-{n:02d}" for n in range(args.agents)]
                time.sleep(2)  # every agent connected and idle
                print("first install ...", flush=True)
                results["first_install"] = push(bundle, 1, mqtt_broker.url, board, devices) | {
                    "broker_rss_kb": rss_kb(mqtt_broker.proc.pid),
                    "agent_rss_kb_median": int(statistics.median(rss_kb(a.proc.pid)["VmRSS"] for a in agents)),
                    "agent_rss_kb_max": max(rss_kb(a.proc.pid)["VmRSS"] for a in agents),
                }
                print(json.dumps(results["first_install"]), flush=True)
                print("catalog-only update ...", flush=True)
                update = catalog_only_update(bundle, work, 2)
                results["catalog_only_update"] = push(update, 2, mqtt_broker.url, board, devices) | {
                    "catalog_bytes": (update / CATALOG_FILE).stat().st_size,
                }
                print(json.dumps(results["catalog_only_update"]), flush=True)
            finally:
                board.close()
                for agent in agents:
                    agent.stop()
            print("baseline: bare subscribers ...", flush=True)
            results["baseline_bare_subscribers"] = baseline_transfer(mqtt_broker.port, update, args.agents)
            results["broker_rss_kb_end"] = rss_kb(mqtt_broker.proc.pid)
            print(json.dumps(results["baseline_bare_subscribers"]), flush=True)
        shutil.rmtree(work / "agent-0", ignore_errors=True)
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(results, indent=1) + "\n")
    print(f"wrote {RESULTS.relative_to(ROOT)}")


if __name__ == "__main__":
    main()
