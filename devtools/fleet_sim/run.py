"""One simulated rollout, as the bench and the test run it: a Mosquitto configured for thousands of
clients, an nginx origin (origin mode), a fleet of simulated agents, a signed bundle published (its
retained chunks, then its manifest), and what it cost the broker and the origin."""

from __future__ import annotations

import os
import shutil
import statistics
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion

from devtools.fleet_sim import measure
from devtools.fleet_sim.bundle import FLEET, SimBundle, build_bundle
from devtools.fleet_sim.fleet import Fleet, StatusBoard, WorkerSpec, offline, on_version, online, raise_open_files
from devtools.fleet_sim.origin import Origin
from devtools.processes import Broker, free_port
from shared import topics
from shared.signing import generate_private_key, public_key_pem

#: The bench broker: no connection cap (the process's open-file limit is raised to the hard limit
#: instead), Mosquitto's default queues (20 QoS 1 messages in flight per client, 1000 queued: more
#: for one subscriber are dropped, see Rollout.max_queued), $SYS every second for the byte counters.
BROKER_CONFIG = """\
listener {port} 127.0.0.1
max_connections -1
allow_anonymous true
persistence false
max_inflight_messages 20
max_queued_messages {max_queued}
sys_interval 1
log_dest file {log}
log_type error
log_type warning
log_type notice
{user}"""


@dataclass(frozen=True)
class Rollout:
    agents: int
    mode: str  # "mqtt" or "origin"
    model_bytes: int
    workers: int = 2
    timeout_s: float = 900
    status_interval_s: float = 60.0
    heartbeat_s: float = 0  # > 0: stay connected this long after activation, then drop half the fleet
    tamper: str = ""  # "origin" or "mqtt": one chunk of the model is corrupted there
    #: Mosquitto's max_queued_messages (its default: 1000). A subscriber to every status (the board,
    #: a fleet dashboard) gets a burst of one status per agent when half the fleet drops at once.
    max_queued: int = 1000
    receive_maximum: int | None = None  # announced by each agent (MQTT 5); None: the broker's window (20)


def start_broker(workdir: Path, max_queued: int = 1000) -> Broker:
    port = free_port()
    workdir.mkdir(parents=True, exist_ok=True)
    config = workdir / "mosquitto.conf"
    config.write_text(BROKER_CONFIG.format(port=port, log=workdir / "mosquitto.log", max_queued=max_queued,
                                           user="user root\n" if os.geteuid() == 0 else ""))
    return Broker(workdir, port, config)


def publish(port: int, bundle: SimBundle, tamper_mqtt: bool) -> float:
    """Retained chunks (QoS 1, each acknowledged) then the retained manifest on the stable channel,
    as ``cloud-trainer publish``; the time the manifest went out (perf_counter)."""
    client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id="sim-publisher", protocol=mqtt.MQTTv5)
    client.connect("127.0.0.1", port)
    client.loop_start()
    try:
        for n, (topic, payload) in enumerate(bundle.chunk_messages()):
            if tamper_mqtt and n == 1:
                payload = bytes([payload[0] ^ 1]) + payload[1:]
            client.publish(topic, payload, qos=1, retain=True).wait_for_publish(60)
        sent_at = time.perf_counter()
        client.publish(topics.manifest_topic(topics.DEFAULT_PREFIX, FLEET), bundle.envelope, qos=1,
                       retain=True).wait_for_publish(60)
        return sent_at
    finally:
        client.loop_stop()
        client.disconnect()


def _tamper_origin(root: Path, bundle: SimBundle) -> None:
    """Flip one byte in the second chunk of the origin's model file (the manifest is untouched)."""
    path = root / FLEET / str(bundle.version) / "model.tflite"
    data = bytearray(path.read_bytes())
    data[bundle.chunk_size + 10] ^= 0xFF
    path.write_bytes(bytes(data))


def _percentiles(values: list[float]) -> dict[str, float | None]:
    if not values:
        return {"first_s": None, "median_s": None, "last_s": None}
    return {"first_s": round(min(values), 2), "median_s": round(statistics.median(values), 2),
            "last_s": round(max(values), 2)}


def run(rollout: Rollout, workdir: Path | None = None) -> dict[str, Any]:
    raise_open_files()
    own_dir = workdir is None
    workdir = workdir or Path(tempfile.mkdtemp(prefix="fleet-sim-"))
    broker = start_broker(workdir / "broker", rollout.max_queued)
    origin = Origin(workdir / "origin") if rollout.mode == "origin" else None
    board: StatusBoard | None = None
    fleet: Fleet | None = None
    try:
        key = generate_private_key()
        bundle = build_bundle(key, rollout.model_bytes, 1, origin.url if origin else None)
        if origin is not None:
            bundle.write_origin(origin.www)
            if rollout.tamper == "origin":
                _tamper_origin(origin.www, bundle)
        board = StatusBoard(broker.port)
        pem = public_key_pem(key.public_key())

        def spec(devices: tuple[str, ...]) -> WorkerSpec:
            return WorkerSpec("127.0.0.1", broker.port, pem, rollout.mode, devices,
                              str(origin.ca_file) if origin else None, rollout.status_interval_s,
                              receive_maximum=rollout.receive_maximum)

        started = time.perf_counter()
        fleet = Fleet(rollout.agents, rollout.workers, spec)
        fleet.wait_connected(timeout=600)
        if not board.wait(online, rollout.agents, timeout=120):
            raise TimeoutError(f"only {board.count(online)} of {rollout.agents} agents reported online")
        connect_s = time.perf_counter() - started
        broker0, sys0 = measure.sample(broker.proc.pid), measure.sys_bytes_sent(broker.port)
        origin0 = measure.sample(origin.proc.pid, *measure.children(origin.proc.pid)) if origin else None
        sim0 = measure.sample(*fleet.pids())
        manifest_at = publish(broker.port, bundle, rollout.tamper == "mqtt")
        all_active = board.wait(on_version(1), rollout.agents, timeout=rollout.timeout_s)
        broker1, sys1 = measure.sample(broker.proc.pid), measure.sys_bytes_sent(broker.port)
        sim1 = measure.sample(*fleet.pids())  # peak RSS: the largest worker's
        times = [at - manifest_at for (_, v), at in board.version_at.items() if v == 1]
        result: dict[str, Any] = {
            "agents": rollout.agents, "mode": rollout.mode, "workers": rollout.workers,
            "broker_max_queued_messages": rollout.max_queued, "receive_maximum": rollout.receive_maximum,
            "bundle_bytes": bundle.total_bytes, "chunks": len(bundle.chunk_messages()),
            "connect_s": round(connect_s, 2),
            "all_active": all_active, "activated": board.count(on_version(1)),
            "agents_discarding": board.count(lambda status: bool((status.get("discarded") or {}).get("count"))),
            "fleet_wide_activation_s": round(max(times), 2) if all_active else None,
            "per_agent_activation": _percentiles(times),
            "broker": {**broker1.since(broker0),
                       "sys_bytes_sent": sys1 - sys0 if sys0 is not None and sys1 is not None else None},
            "simulator": {"processes": rollout.workers, "cpu_s": round(sim1.cpu_s - sim0.cpu_s, 2),
                          "peak_rss_mb_per_process": round(sim1.peak_rss_kb / 1024, 1)},
        }
        if origin is not None and origin0 is not None:
            sent, requests = origin.bytes_sent()
            origin1 = measure.sample(origin.proc.pid, *measure.children(origin.proc.pid))
            result["origin"] = {"bytes_sent": sent, "requests": requests,
                                "cpu_s": round(origin1.cpu_s - origin0.cpu_s, 2)}
        if rollout.heartbeat_s > 0 and all_active:
            result["heartbeat"] = _heartbeat_and_drop(rollout, broker, board, fleet)
        counters, errors = fleet.stop()
        fleet = None
        result["agent_counters"] = _sum_counters(counters)
        result["agent_errors"] = errors
        result["status_example"] = board.last_online
        return result
    finally:
        if fleet is not None:
            fleet.stop(timeout=30)
        if board is not None:
            board.close()
        if origin is not None:
            origin.stop()
        broker.stop()
        if own_dir:
            shutil.rmtree(workdir, ignore_errors=True)


def _sum_counters(counters: dict[str, dict[str, Any]]) -> dict[str, Any]:
    keys = ("mqtt_chunks", "origin_chunks", "origin_bytes", "statuses")
    totals: dict[str, Any] = {k: sum(int(c[k]) for c in counters.values()) for k in keys}
    totals["agents_reporting"] = len(counters)
    totals["max_backlog"] = max((int(c["max_backlog"]) for c in counters.values()), default=0)
    return totals


def _heartbeat_and_drop(rollout: Rollout, broker: Broker, board: StatusBoard, fleet: Fleet) -> dict[str, Any]:
    """The whole fleet connected and heartbeating for ``heartbeat_s``; then half of the worker
    processes are killed (their agents' last wills fire) and the broker's cost of that is read."""
    messages0, before = board.messages, measure.sample(broker.proc.pid)
    time.sleep(rollout.heartbeat_s)
    idle = measure.sample(broker.proc.pid)
    statuses = board.messages - messages0
    dropped = sum(len(fleet.devices[w::rollout.workers]) for w in range(0, rollout.workers, 2))
    started = time.perf_counter()
    fleet.kill(list(range(0, rollout.workers, 2)))
    wills = board.wait(offline, dropped, timeout=120)
    wills_s = time.perf_counter() - started
    time.sleep(2)
    after = measure.sample(broker.proc.pid)
    return {
        "connected_agents": rollout.agents, "status_interval_s": rollout.status_interval_s,
        "keepalive_s": 30, "window_s": rollout.heartbeat_s, "statuses_seen": statuses,
        "broker_cpu_s": round(idle.cpu_s - before.cpu_s, 2),
        "broker_cpu_share": round((idle.cpu_s - before.cpu_s) / rollout.heartbeat_s, 4),
        "broker_bytes_written": idle.wchar - before.wchar,
        "mass_disconnect": {"dropped_agents": dropped, "all_wills_seen": wills,
                            "offline_statuses": board.count(offline), "seconds_to_all_wills": round(wills_s, 2),
                            "broker_cpu_s": round(after.cpu_s - idle.cpu_s, 2),
                            "broker_rss_mb": round(after.rss_kb / 1024, 1),
                            "broker_log_drop_notices": broker.log.read_text(errors="replace").count("being dropped")},
    }
