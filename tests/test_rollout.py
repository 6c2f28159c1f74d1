"""Fleet operations: canary verdicts (pure), then rollouts, aborts, rollbacks and targeting against
three real agents (one canary, two stable) on a real Mosquitto, driven through the CLI."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, replace
from pathlib import Path

import paho.mqtt.client as mqtt
import pytest

from cloud_trainer.delivery.rollout import CanaryJudge, Decision, RolloutPolicy
from devtools.processes import AgentProcess, Broker
from devtools.processes import broker as local_broker
from harness import ROOT, fresh_bundle, get_json, manifest_of, resigned, start_agent, wait_for
from shared import topics
from shared.bundle import CATALOG_FILE, ENVELOPE_FILE

# -- the verdicts, pure ------------------------------------------------------------------------

POLICY = RolloutPolicy(max_failure_rate=0.0, max_server_error_rate=0.01, soak_s=10, timeout_s=100)


def status(version: int, state: str = "online", result: str = "activated", requests: int = 0,
           errors: int = 0, at: float = 0.0) -> dict[str, object]:
    return {"state": state, "model_version": version, "at": at,
            "last_update": {"version": version, "result": result, "reason": "x", "at": at},
            "health": {"requests": requests, "server_errors": errors}}


def test_canaries_are_promoted_only_after_the_soak_time() -> None:
    judge = CanaryJudge(7, ["a", "b"], POLICY, started=1000)
    assert judge.judge({"a": status(6), "b": status(6)}, 1001).decision is Decision.WAIT
    assert judge.judge({"a": status(7), "b": status(6)}, 1002).waiting == ["a", "b"]
    assert judge.judge({"a": status(7), "b": status(7)}, 1005).decision is Decision.WAIT  # soaking
    verdict = judge.judge({"a": status(7, requests=50), "b": status(7, requests=80)}, 1015)
    assert verdict.decision is Decision.PROMOTE and verdict.healthy == ["a", "b"]


@pytest.mark.parametrize(
    ("later", "why"),
    [
        (status(6, result="failed") | {"last_update": {"version": 7, "result": "failed", "reason": "load_failed"}},
         "failed: load_failed"),
        (status(6) | {"last_update": {"version": 7, "result": "rejected", "reason": "bad_signature"}}, "rejected"),
        ({"state": "offline"}, "offline"),
        (status(7, requests=120, errors=5), "5 server or model errors in 100 requests"),
    ],
)
def test_one_failing_canary_aborts_by_default(later: dict[str, object], why: str) -> None:
    judge = CanaryJudge(7, ["a", "b"], POLICY, started=1000)
    judge.judge({"a": status(7, requests=20), "b": status(7)}, 1001)
    verdict = judge.judge({"a": later, "b": status(7)}, 1002)
    assert verdict.decision is Decision.ABORT and why in verdict.failed["a"], verdict


def test_a_tolerated_failure_rate_and_the_deadline() -> None:
    tolerant = CanaryJudge(7, ["a", "b", "c"], replace(POLICY, max_failure_rate=0.34), started=1000)
    offline = {"state": "offline"}
    assert tolerant.judge({"a": offline, "b": status(7), "c": status(7)}, 1001).decision is Decision.WAIT
    assert tolerant.judge({"a": offline, "b": status(7), "c": status(7)}, 1012).decision is Decision.PROMOTE
    assert tolerant.judge({"a": offline, "b": offline, "c": status(7)}, 1013).decision is Decision.ABORT
    slow = CanaryJudge(7, ["a"], POLICY, started=1000)
    assert slow.judge({"a": status(6)}, 1050).decision is Decision.WAIT
    verdict = slow.judge({"a": status(6)}, 1101)
    assert verdict.decision is Decision.ABORT and "no verdict after 100s" in verdict.why


# -- a small fleet -----------------------------------------------------------------------------

@dataclass
class SmallFleet:
    broker: Broker
    agents: dict[str, AgentProcess]
    keys: Path
    bundle: Path
    work: Path

    def cli(self, *args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-m", "cloud_trainer.cli", *args, "--broker", self.broker.url],
                              capture_output=True, text=True, cwd=ROOT, timeout=timeout)

    def statuses(self) -> dict[str, dict]:  # type: ignore[type-arg]
        result = self.cli("fleet", "status", "--json", "--wait", "0.5")
        assert result.returncode == 0, result.stderr
        return json.loads(result.stdout)["agents"]  # type: ignore[no-any-return]

    def serving(self, device: str) -> int | None:
        code, body = get_json(self.agents[device], "/readyz")
        return body.get("model_version") if code == 200 else None

    def all_serving(self, version: int) -> bool:
        return all(self.serving(d) == version for d in self.agents)


@pytest.fixture(scope="module")
def small_fleet(int8_bundle: Path, keys: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[SmallFleet]:
    work = tmp_path_factory.mktemp("fleet")
    with local_broker() as broker:
        fleet = SmallFleet(broker, {}, keys, int8_bundle, work)
        published = fleet.cli("publish", "--bundle", str(int8_bundle), "--channel", "stable")
        assert published.returncode == 0, published.stderr
        try:
            for device, channel in (("c-1", "canary"), ("s-1", "stable"), ("s-2", "stable")):
                (work / device).mkdir()
                fleet.agents[device] = start_agent(broker.url, keys, work / device, f'agent.device_id="{device}"',
                                                   f'agent.channel="{channel}"', "mqtt.status_interval_s=1")
            for agent in fleet.agents.values():
                agent.wait_ready(60)
            yield fleet
        finally:
            for agent in fleet.agents.values():
                agent.stop()


def test_rollout_reaches_the_canary_first_and_stable_after_the_soak(small_fleet: SmallFleet) -> None:
    bundle = fresh_bundle(small_fleet.bundle, small_fleet.keys, small_fleet.work, 1001)
    result = small_fleet.cli("rollout", "--bundle", str(bundle), "--canary", "c-1", "--soak", "3", "--timeout", "60",
                             "--key", str(small_fleet.keys / "signing.key"))
    assert result.returncode == 0, result.stdout + result.stderr
    assert "promoting version 1001 to stable" in result.stdout
    assert "stable: 2 of 2 online agents on version 1001" in result.stdout
    assert small_fleet.all_serving(1001)
    statuses = small_fleet.statuses()
    canary_at = statuses["c-1"]["last_update"]["at"]
    assert all(statuses[s]["last_update"]["at"] >= canary_at + 3 for s in ("s-1", "s-2")), statuses
    table = small_fleet.cli("fleet", "status", "--wait", "0.5").stdout
    assert all(device in table for device in small_fleet.agents) and "canary" in table and "1001" in table


class ManifestRecorder:
    """Every manifest the broker delivers on the fleet's channels, as an attacker on the broker sees them."""

    def __init__(self, broker: Broker) -> None:
        self.seen: list[tuple[str, bytes]] = []
        self.client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id="recorder", protocol=mqtt.MQTTv5)
        self.client.on_message = lambda c, u, m: self.seen.append((m.topic.rsplit("/", 1)[-1], bytes(m.payload)))
        self.client.connect("127.0.0.1", broker.port)
        self.client.subscribe(f"{topics.DEFAULT_PREFIX}/default/manifest/+", qos=1)
        self.client.loop_start()

    def envelope(self, channel: str, version: int) -> bytes:
        return next(p for c, p in self.seen if c == channel and p and json.loads(json.loads(p)["signed"])["version"]
                    == version)

    def publish(self, channel: str, payload: bytes) -> None:
        self.client.publish(topics.manifest_topic(topics.DEFAULT_PREFIX, "default", channel), payload, 1,
                            True).wait_for_publish(10)

    def close(self) -> None:
        self.client.loop_stop()
        self.client.disconnect()


def last_reason(fleet: SmallFleet, device: str) -> str:
    return str((fleet.statuses()[device].get("last_update") or {}).get("reason", ""))


def test_rollout_of_a_failing_model_aborts_and_rolls_the_canary_back(small_fleet: SmallFleet) -> None:
    contract = manifest_of(small_fleet.bundle).model
    broken = resigned(fresh_bundle(small_fleet.bundle, small_fleet.keys, small_fleet.work, 1002), small_fleet.keys,
                      small_fleet.work / "broken-1002", model=replace(contract, top_k=contract.top_k - 1))
    recorder = ManifestRecorder(small_fleet.broker)
    try:
        result = small_fleet.cli("rollout", "--bundle", str(broken), "--canary", "c-1", "--soak", "2",
                                 "--timeout", "60", "--key", str(small_fleet.keys / "signing.key"))
        assert result.returncode == 1, result.stdout + result.stderr
        assert "1 of 1 canaries failed: c-1: failed: load_failed" in result.stderr
        # the stable agents never saw 1002; the canary follows the rollback instruction 1003 = 1001's files
        assert wait_for(lambda: small_fleet.serving("c-1") == 1003, 20)
        assert small_fleet.serving("s-1") == 1001 and small_fleet.serving("s-2") == 1001
        status = small_fleet.statuses()["c-1"]
        assert "0 chunks received" in status["last_update"]["reason"]  # everything reused from disk
        model = get_json(small_fleet.agents["c-1"], "/v1/model")[1]
        assert model["manifest"]["rollback_of"] == 1001 and model["manifest"]["revokes"] == [1002]
        assert model["manifest"]["channels"] == ["canary"]

        # issue 22: the aborted version's genuine canary manifest, replayed by someone on the broker
        aborted, stable = recorder.envelope("canary", 1002), recorder.envelope("stable", 1001)
        assert json.loads(json.loads(aborted)["signed"])["channels"] == ["canary"]
        recorder.publish("stable", aborted)  # copied to the stable channel: refused, not released there
        for device in ("s-1", "s-2"):
            assert wait_for(lambda d=device: "not_released" in last_reason(small_fleet, d), 15), device  # type: ignore[misc]
        recorder.publish("canary", aborted)  # and replayed to the canary: refused
        assert wait_for(lambda: "not newer than the active version 1003" in last_reason(small_fleet, "c-1"), 15)
        assert json.loads((small_fleet.work / "c-1" / "agent" / "models" / "revoked.json").read_text()) == [1002]
        assert all(small_fleet.serving(d) == v for d, v in (("c-1", 1003), ("s-1", 1001), ("s-2", 1001)))
        recorder.publish("canary", recorder.envelope("canary", 1003))  # the channels as the publisher left them
        recorder.publish("stable", stable)
    finally:
        recorder.close()


def test_rollback_command_takes_every_channel_back_to_an_earlier_bundle(small_fleet: SmallFleet) -> None:
    result = small_fleet.cli("rollback", "--bundle", str(small_fleet.bundle), "--key",
                             str(small_fleet.keys / "signing.key"))
    assert result.returncode == 0, result.stderr
    assert "version 1004 re-delivers version 1000" in result.stdout
    assert wait_for(lambda: small_fleet.all_serving(1004), 30)
    catalog_sha = manifest_of(small_fleet.bundle).files[CATALOG_FILE].sha256
    for agent in small_fleet.agents.values():
        assert get_json(agent, "/v1/model")[1]["manifest"]["files"][CATALOG_FILE]["sha256"] == catalog_sha


def test_a_version_targeted_at_one_device_installs_only_there(small_fleet: SmallFleet) -> None:
    """It goes to that device's own topic of the channel: the channel keeps its version for the rest
    (a copy on the channel's topic is refused with not_targeted: tests/test_store_bundles.py)."""
    targeted = resigned(small_fleet.bundle, small_fleet.keys, small_fleet.work / "v1005", version=1005,
                        targets=("s-2",))
    assert (targeted / ENVELOPE_FILE).exists()
    rollout = small_fleet.cli("rollout", "--bundle", str(targeted), "--canary", "c-1",
                              "--key", str(small_fleet.keys / "signing.key"))
    assert rollout.returncode == 2 and "a rollout is for fleet-wide versions" in rollout.stderr
    published = small_fleet.cli("publish", "--bundle", str(targeted), "--channel", "stable")
    assert published.returncode == 0 and "on stable for s-2:" in published.stdout, published.stderr
    assert wait_for(lambda: small_fleet.serving("s-2") == 1005, 20)
    time.sleep(1)
    assert small_fleet.serving("s-1") == 1004 and small_fleet.serving("c-1") == 1004
    assert small_fleet.statuses()["s-1"]["last_update"]["version"] == 1004


def test_the_broker_keeps_chunks_only_of_versions_a_channel_names(small_fleet: SmallFleet) -> None:
    named: dict[str, int] = {}
    retained_versions: set[int] = set()
    client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id="inspector", protocol=mqtt.MQTTv5)

    def on_message(c: object, u: object, message: mqtt.MQTTMessage) -> None:
        parts = message.topic.split("/")
        if "bundle" in parts and message.payload:
            retained_versions.add(int(parts[parts.index("bundle") + 1]))
        elif "manifest" in parts and message.payload:  # by channel, or device for a device's own topic
            named[parts[-1]] = json.loads(json.loads(message.payload)["signed"])["version"]

    client.on_message = on_message
    client.connect("127.0.0.1", small_fleet.broker.port)
    client.subscribe(f"{topics.DEFAULT_PREFIX}/default/#", qos=1)
    client.loop_start()
    try:
        assert wait_for(lambda: len(named) == 3, 10)
        time.sleep(1)  # every retained chunk delivered
    finally:
        client.loop_stop()
        client.disconnect()
    assert named == {"canary": 1004, "stable": 1004, "s-2": 1005}  # after the tests above
    assert retained_versions == set(named.values())  # 1000-1003 were cleared as they were superseded
