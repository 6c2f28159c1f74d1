"""Fleet-wide erasure: the signed erasure list (pure), then three real agents on a real Mosquitto,
one of them stopped while ``cloud-trainer erase`` runs, and a recorder of everything the broker
carries that must never see the shopper's id."""

from __future__ import annotations

import json
import subprocess
import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path

import paho.mqtt.client as mqtt
import pytest

from devtools.processes import AgentProcess
from devtools.processes import broker as local_broker
from harness import ROOT, get_json, post_events, start_agent, wait_for
from shared import topics
from shared.erasure import DIGEST_HEX, MAX_ENTRIES, appended, erasure_digest, parse_erasure_list
from shared.errors import BadInput, MalformedDocument, RollbackRejected
from shared.fleet_documents import check_header
from shared.signing import MAX_ENVELOPE_BYTES, generate_private_key, sign

NOW = datetime(2025, 1, 1, tzinfo=UTC)
SECRET = bytes(range(32))


# -- the list, pure ------------------------------------------------------------------------------

def test_the_digest_is_keyed_and_never_the_id() -> None:
    digest = erasure_digest(SECRET, "17850")
    assert len(digest) == DIGEST_HEX and "17850" not in digest
    assert digest == erasure_digest(SECRET, "17850")  # every agent computes the same
    assert digest != erasure_digest(bytes(32), "17850")  # without the secret, a guess cannot be tested


def test_requests_are_sequenced_and_expired_ones_leave_the_list() -> None:
    first = appended(None, "default", erasure_digest(SECRET, "a"), NOW, valid_days=10)
    second = appended(first, "default", erasure_digest(SECRET, "b"), NOW + timedelta(days=1), valid_days=10)
    assert second.version > first.version and [e.seq for e in second.entries] == [first.version, second.version]
    assert [e.user for e in second.pending(first.version, NOW)] == [erasure_digest(SECRET, "b")]
    later = appended(second, "default", erasure_digest(SECRET, "c"), NOW + timedelta(days=10, hours=1))
    assert [e.user for e in later.entries] == [erasure_digest(SECRET, "b"), erasure_digest(SECRET, "c")]
    assert parse_erasure_list(later.to_json()) == later  # the round trip agents parse
    # a replay of the older list is not newer than what an agent applied
    with pytest.raises(RollbackRejected):
        check_header(second.header, fleet="default", device_id="d", now=NOW, newest=later.version)


def test_a_full_list_is_refused_with_a_clear_error_and_fits_an_envelope() -> None:
    digests = [erasure_digest(SECRET, f"user-{n}") for n in range(MAX_ENTRIES)]
    full = None
    for n, digest in enumerate(digests):
        full = appended(full, "default", digest, NOW + timedelta(milliseconds=n))
    assert full is not None and len(full.entries) == MAX_ENTRIES
    assert len(sign(full.to_json(), generate_private_key())) < MAX_ENVELOPE_BYTES
    with pytest.raises(BadInput, match="4096 live requests"):
        appended(full, "default", erasure_digest(SECRET, "one-more"), NOW + timedelta(days=1))


@pytest.mark.parametrize(("change", "why"), [
    (lambda d: d["entries"][0].update(user="17850"), "keyed digest"),
    (lambda d: d["entries"].reverse(), "increasing seq"),
    (lambda d: d.update(version=1), "version must be the seq of the last entry"),
    (lambda d: d["entries"][0].update(extra=1), "seq, user and until"),
])
def test_malformed_lists_are_refused(change, why: str) -> None:  # type: ignore[no-untyped-def]
    listed = appended(appended(None, "default", "0" * 32, NOW), "default", "1" * 32, NOW + timedelta(seconds=1))
    data = json.loads(listed.to_json())
    change(data)
    with pytest.raises(MalformedDocument, match=why):
        parse_erasure_list(json.dumps(data))


# -- three agents, one offline -------------------------------------------------------------------

SHOPPER, OTHER = "erase-me-4711", "keep-me-0815"


class Recorder:
    """Every message the broker carries under the prefix, as any subscriber would see it."""

    def __init__(self, port: int) -> None:
        self.seen: list[tuple[str, bytes]] = []
        self.client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id="recorder", protocol=mqtt.MQTTv5)
        self.client.on_message = lambda c, u, m: self.seen.append((m.topic, bytes(m.payload)))
        self.client.connect("127.0.0.1", port)
        self.client.subscribe("#", qos=1)
        self.client.loop_start()

    def close(self) -> None:
        self.client.loop_stop()
        self.client.disconnect()


def erasure_status(agent: AgentProcess, port: int, device: str) -> dict:  # type: ignore[type-arg]
    got: dict[str, dict] = {}  # type: ignore[type-arg]
    client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=f"look-{device}", protocol=mqtt.MQTTv5)
    client.on_message = lambda c, u, m: got.__setitem__("s", json.loads(m.payload))
    client.connect("127.0.0.1", port)
    client.subscribe(topics.status_topic(topics.DEFAULT_PREFIX, "default", device), qos=1)
    client.loop_start()
    try:
        wait_for(lambda: "s" in got, 5)
    finally:
        client.loop_stop()
        client.disconnect()
    return got.get("s", {}).get("erasure") or {}


def history(agent: AgentProcess, user: str) -> list[dict]:  # type: ignore[type-arg]
    code, body = get_json(agent, f"/v1/users/{user}/history")
    assert code == 200, body
    return body["events"]  # type: ignore[no-any-return]


def test_erase_reaches_every_agent_including_one_offline_and_the_broker_never_sees_the_id(
        int8_bundle: Path, keys: Path, tmp_path: Path) -> None:
    secret = tmp_path / "erasure.key"
    made = subprocess.run([sys.executable, "-m", "cloud_trainer.cli", "erasure-secret", "--out", str(secret)],
                          capture_output=True, text=True, cwd=ROOT, timeout=60)
    assert made.returncode == 0 and secret.stat().st_mode & 0o777 == 0o600, made.stderr
    with local_broker() as broker:
        def cli(*args: str) -> subprocess.CompletedProcess[str]:
            return subprocess.run([sys.executable, "-m", "cloud_trainer.cli", *args, "--broker", broker.url],
                                  capture_output=True, text=True, cwd=ROOT, timeout=120)

        assert cli("publish", "--bundle", str(int8_bundle)).returncode == 0

        def agent(device: str) -> AgentProcess:
            (tmp_path / device).mkdir(exist_ok=True)
            return start_agent(broker.url, keys, tmp_path / device, f'agent.device_id="{device}"',
                               f'erasure.secret_file="{secret}"', "mqtt.status_interval_s=1")

        agents = {d: agent(d) for d in ("e-1", "e-2", "e-3")}
        recorder = Recorder(broker.port)
        try:
            for a in agents.values():
                a.wait_ready(60)
                events = [{"user_id": u, "item_id": "85123A", "event": "purchase"} for u in (SHOPPER, OTHER)]
                assert post_events(a, events)[0] == 200
                assert len(history(a, SHOPPER)) == 1
            agents["e-3"].stop()  # offline while the request is published

            result = cli("erase", "--user", SHOPPER, "--key", str(keys / "signing.key"), "--secret", str(secret))
            assert result.returncode == 0, result.stderr
            version = json.loads(json.loads(recorder_payload(recorder, "erasure"))["signed"])["version"]
            assert f"erasure request {version} published" in result.stdout
            for device in ("e-1", "e-2"):
                assert wait_for(lambda d=device: erasure_status(agents[d], broker.port, d).get("version")  # type: ignore[misc]
                                == version, 20), agents[device].log()
                assert history(agents[device], SHOPPER) == [] and len(history(agents[device], OTHER)) == 1

            agents["e-3"] = agent("e-3")  # back online: the retained list reaches it
            agents["e-3"].wait_ready(60)
            assert wait_for(lambda: erasure_status(agents["e-3"], broker.port, "e-3").get("version") == version, 20)
            ack = erasure_status(agents["e-3"], broker.port, "e-3")
            assert ack["erased"] == 1 and ack["requests"] == 1 and ack["last"]["result"] == "applied", ack
            assert history(agents["e-3"], SHOPPER) == [] and len(history(agents["e-3"], OTHER)) == 1

            # a later request (v2) is applied; then the shopper comes back to e-1, and someone on the
            # broker replays the genuine older list v1: it must not erase them again
            old_list = recorder_payload(recorder, "erasure")
            result = cli("erase", "--user", "someone-else", "--key", str(keys / "signing.key"), "--secret", str(secret))
            assert result.returncode == 0, result.stderr
            assert wait_for(lambda: (erasure_status(agents["e-1"], broker.port, "e-1").get("version") or 0)
                            > version, 20)
            assert post_events(agents["e-1"], [{"user_id": SHOPPER, "item_id": "85123A", "event": "view"}])[0] == 200
            replay = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id="replayer", protocol=mqtt.MQTTv5)
            replay.connect("127.0.0.1", broker.port)
            replay.loop_start()
            erasure_topic = topics.erasure_topic(topics.DEFAULT_PREFIX, "default")
            replay.publish(erasure_topic, old_list, 1, retain=False).wait_for_publish(10)
            assert wait_for(lambda: "rollback" in str(erasure_status(agents["e-1"], broker.port, "e-1")
                                                          .get("last")), 20)
            replay.publish(erasure_topic, b"\x00junk", 1, retain=False).wait_for_publish(10)
            replay.loop_stop()
            replay.disconnect()
            assert wait_for(lambda: "bad_signature" in str(erasure_status(agents["e-1"], broker.port, "e-1")
                                                               .get("last")), 20)
            assert len(history(agents["e-1"], SHOPPER)) == 1  # the old list erased nothing new
        finally:
            recorder.close()
            for a in agents.values():
                if a.proc.poll() is None:
                    a.stop()
    digest = erasure_digest(bytes.fromhex(secret.read_text().strip()), SHOPPER)
    assert any(digest.encode() in payload for _, payload in recorder.seen)  # the request did go out
    leaked = [topic for topic, payload in recorder.seen if SHOPPER.encode() in payload or SHOPPER in topic]
    assert not leaked, leaked
    for device in agents:  # nor is the id anywhere an agent wrote (databases, WAL, logs, state files)
        for path in (tmp_path / device).rglob("*"):
            if path.is_file():
                assert SHOPPER.encode() not in path.read_bytes(), path


def recorder_payload(recorder: Recorder, last_level: str) -> bytes:
    assert wait_for(lambda: any(t.endswith("/" + last_level) and p for t, p in recorder.seen), 10)
    return next(p for t, p in reversed(recorder.seen) if t.endswith("/" + last_level) and p)


def test_the_agent_refuses_an_erasure_secret_others_can_read(tmp_path: Path) -> None:
    from edge_agent.erasure import load_secret
    from edge_agent.errors import StartupError

    path = tmp_path / "erasure.key"
    path.write_text(SECRET.hex() + "\n")
    path.chmod(0o644)
    with pytest.raises(StartupError, match="readable by others"):
        load_secret(path)
    path.chmod(0o600)
    assert load_secret(path) == SECRET
    path.write_text("not hex")
    with pytest.raises(StartupError, match="64 hex digits"):
        load_secret(path)
