"""The secure broker setup: Mosquitto with TLS client certificates and the ACL that
firmware_configs/mosquitto/fleet_pki.py renders. The trainer alone can publish models; an agent's
credentials read its fleet's models and write only its own status and its own fleet aggregate."""

from __future__ import annotations

import json
import ssl
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
import pytest

from devtools.processes import Broker, free_port
from harness import ROOT, SecureBroker, chunk_messages, get_json, make_pki, resigned, start_agent, wait_for
from shared import topics
from shared.bundle import ENVELOPE_FILE, Manifest, parse_manifest

PREFIX = topics.DEFAULT_PREFIX
NOT_AUTHORIZED, ACCEPTED, ACCEPTED_NO_SUBSCRIBERS = 135, 0, 16  # MQTT 5 reason codes


def manifest_of_envelope(envelope: bytes) -> Manifest:
    return parse_manifest(json.loads(envelope)["signed"])


@pytest.fixture(scope="module")
def secure(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SecureBroker]:
    pki, port = tmp_path_factory.mktemp("pki"), free_port()
    make_pki(pki, port)
    broker = Broker(workdir=pki / "data", port=port, config=pki / "mosquitto.conf")
    try:
        yield SecureBroker(broker, pki)
    finally:
        broker.stop()


class Client:
    """A paho client with one identity; records the broker's reason code for every publish and subscribe."""

    def __init__(self, secure: SecureBroker, name: str, pki: Path | None = None) -> None:
        pki = pki or secure.pki
        self.acks: dict[int, int] = {}
        self.connected = threading.Event()
        self.connect_result: Any = None
        self.messages: dict[str, bytes] = {}
        self.client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=name, protocol=mqtt.MQTTv5)
        self.client.tls_set(ca_certs=str(secure.pki / "ca.pem"), certfile=str(pki / "clients" / f"{name}.pem"),
                            keyfile=str(pki / "clients" / f"{name}.key"), tls_version=ssl.PROTOCOL_TLS_CLIENT)
        self.client.on_connect = self._on_connect
        self.client.on_publish = lambda c, u, mid, rc, p: self.acks.__setitem__(mid, rc.value)
        self.client.on_subscribe = lambda c, u, mid, rcs, p: self.acks.__setitem__(mid, rcs[0].value)
        self.client.on_message = lambda c, u, m: self.messages.__setitem__(m.topic, bytes(m.payload))
        self.client.connect("127.0.0.1", secure.broker.port)
        self.client.loop_start()
        assert self.connected.wait(10) and not self.connect_result.is_failure, self.connect_result

    def _on_connect(self, client: Any, userdata: Any, flags: Any, reason_code: Any, props: Any) -> None:
        self.connect_result = reason_code
        self.connected.set()

    def publish(self, topic: str, payload: bytes) -> int:
        info = self.client.publish(topic, payload, qos=1, retain=True)
        assert wait_for(lambda: info.mid in self.acks, 10)
        return self.acks[info.mid]

    def subscribe(self, topic: str) -> int:
        _, mid = self.client.subscribe(topic, qos=1)
        assert wait_for(lambda: mid in self.acks, 10)
        return self.acks[mid]

    def close(self) -> None:
        self.client.loop_stop()
        self.client.disconnect()


def test_models_flow_over_tls_from_the_trainer_to_an_agent_with_its_certificate(
    secure: SecureBroker, int8_bundle: Path, keys: Path, tmp_path: Path
) -> None:
    published = subprocess.run([sys.executable, "-m", "cloud_trainer.cli", "publish", "--bundle", str(int8_bundle),
                                *secure.tls_args("cloud-trainer")], capture_output=True, text=True, cwd=ROOT,
                               timeout=60)
    assert published.returncode == 0, published.stderr
    agent = start_agent(secure.url, keys, tmp_path, *secure.agent_overrides("dev-1"))
    try:
        agent.wait_ready(60)
        assert get_json(agent, "/readyz")[1]["model_version"] == 1000
        status = subprocess.run([sys.executable, "-m", "cloud_trainer.cli", "fleet", "status", "--json",
                                 *secure.tls_args("cloud-trainer")], capture_output=True, text=True, cwd=ROOT,
                                timeout=60)
        assert status.returncode == 0, status.stderr
        assert '"dev-1"' in status.stdout and '"online"' in status.stdout
    finally:
        agent.stop()


def test_an_agents_credentials_cannot_publish_a_model_or_anothers_status(
    secure: SecureBroker, int8_bundle: Path, keys: Path, tmp_path: Path
) -> None:
    """Even a genuinely signed bundle: the broker refuses it from an agent's identity."""
    stolen = Client(secure, "dev-1")
    trainer = Client(secure, "cloud-trainer")
    try:
        bundle = resigned(int8_bundle, keys, tmp_path / "v1001", version=1001)
        for _, _, topic, data in chunk_messages(bundle):
            assert stolen.publish(topic, data) == NOT_AUTHORIZED
        manifest_topic = topics.manifest_topic(PREFIX, "default")
        assert stolen.publish(manifest_topic, (bundle / ENVELOPE_FILE).read_bytes()) == NOT_AUTHORIZED
        assert stolen.publish(topics.status_topic(PREFIX, "default", "dev-2"), b'{"state": "online"}') \
            == NOT_AUTHORIZED
        own_status = stolen.publish(topics.status_topic(PREFIX, "default", "dev-1"), b'{"state": "online"}')
        assert own_status in (ACCEPTED, ACCEPTED_NO_SUBSCRIBERS)
        # fleet aggregates: its own topic only (a forged aggregate would poison the fleet's Gram matrix)
        assert stolen.publish(topics.aggregates_topic(PREFIX, "default", "dev-2"), b"{}") == NOT_AUTHORIZED
        assert stolen.publish(topics.aggregates_topic(PREFIX, "default", "dev-1"), b"{}") in (
            ACCEPTED, ACCEPTED_NO_SUBSCRIBERS)
        # reading: Mosquitto grants subscriptions but delivers only what the ACL lets the identity read
        assert trainer.publish(manifest_topic, (int8_bundle / ENVELOPE_FILE).read_bytes()) in (
            ACCEPTED, ACCEPTED_NO_SUBSCRIBERS)
        assert trainer.publish(topics.manifest_topic(PREFIX, "other-fleet"), b"another fleet's model") in (
            ACCEPTED, ACCEPTED_NO_SUBSCRIBERS)
        neighbour = Client(secure, "dev-2")
        neighbour.publish(topics.status_topic(PREFIX, "default", "dev-2"), b'{"state": "online"}')
        neighbour.close()
        own, neighbours = (topics.manifest_topic(PREFIX, "default", "stable", d) for d in ("dev-1", "dev-2"))
        for topic in (own, neighbours):  # versions targeted at one device (a store's own bundle)
            assert trainer.publish(topic, (int8_bundle / ENVELOPE_FILE).read_bytes()) in (
                ACCEPTED, ACCEPTED_NO_SUBSCRIBERS)
        for topic in (manifest_topic, topics.manifest_topic(PREFIX, "other-fleet"),
                      topics.all_statuses_topic(PREFIX, "default"), own, neighbours):
            stolen.subscribe(topic)
        assert wait_for(lambda: manifest_topic in stolen.messages and own in stolen.messages, 10)  # its own: yes
        time.sleep(0.5)
        # another fleet, another device's own topic, statuses: no
        assert sorted(stolen.messages) == sorted([manifest_topic, own]), stolen.messages
        # nothing of v1001 reached the broker: no retained chunk, and the manifest is not v1001
        assert trainer.subscribe(topics.bundle_topic(PREFIX, "default", 1001) + "/#") == 1
        assert trainer.subscribe(manifest_topic) == 1
        time.sleep(0.5)
        assert not [t for t in trainer.messages if "/bundle/1001/" in t]
        retained = trainer.messages.get(manifest_topic)
        assert retained is None or manifest_of_envelope(retained).version != 1001
    finally:
        stolen.close()
        trainer.close()


def test_clients_without_a_certificate_of_the_fleet_ca_are_refused(secure: SecureBroker, tmp_path: Path) -> None:
    rogue_pki = tmp_path / "rogue"
    make_pki(rogue_pki, 1883)  # same names, another CA
    with pytest.raises((ssl.SSLError, OSError, AssertionError)):
        Client(secure, "dev-1", pki=rogue_pki)
    plain = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id="dev-1", protocol=mqtt.MQTTv5)
    refused = threading.Event()
    plain.on_disconnect = lambda *a: refused.set()
    plain.on_connect = lambda c, u, f, rc, p: refused.set() if rc.is_failure else None
    try:
        plain.connect("127.0.0.1", secure.broker.port)  # no TLS at all
        plain.loop_start()
        assert refused.wait(10)
    except OSError:
        pass  # refused before a connection existed: as good
    finally:
        plain.loop_stop()


def test_another_devices_client_id_cannot_knock_an_agent_offline(
    secure: SecureBroker, int8_bundle: Path, keys: Path, tmp_path: Path
) -> None:
    """Client-id takeover (issue 22): dev-2's certificate connecting again and again with client id
    dev-1. The broker binds the client id to the certificate, so dev-1 stays connected."""
    agent = start_agent(secure.url, keys, tmp_path, *secure.agent_overrides("dev-1"))
    trainer = Client(secure, "cloud-trainer")
    status_topic = topics.status_topic(PREFIX, "default", "dev-1")
    states: list[str] = []
    trainer.client.on_message = lambda c, u, m: states.append(json.loads(m.payload).get("state", "?"))
    try:
        trainer.subscribe(status_topic)
        assert wait_for(lambda: "online" in states, 30), states
        states.clear()
        for _ in range(10):
            intruder = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id="dev-1", protocol=mqtt.MQTTv5)
            intruder.tls_set(ca_certs=str(secure.pki / "ca.pem"), certfile=str(secure.pki / "clients" / "dev-2.pem"),
                             keyfile=str(secure.pki / "clients" / "dev-2.key"), tls_version=ssl.PROTOCOL_TLS_CLIENT)
            connected = threading.Event()
            intruder.on_connect = lambda c, u, f, rc, p, done=connected: done.set()  # type: ignore[misc]
            intruder.connect("127.0.0.1", secure.broker.port)
            intruder.loop_start()
            assert connected.wait(10)
            time.sleep(0.3)
            intruder.loop_stop()
            intruder.disconnect()
        time.sleep(2)
        assert "offline" not in states, states
        assert "lost the broker" not in agent.log()
    finally:
        trainer.close()
        agent.stop()


def test_an_agent_reads_the_fleets_rules_its_own_and_the_erasure_list_but_writes_none(secure: SecureBroker) -> None:
    """The signed business rules and erasure list: only the trainer writes them; a device reads the
    fleet's, its own device's rules, and not another device's."""
    stolen, trainer = Client(secure, "dev-1"), Client(secure, "cloud-trainer")
    try:
        fleet_rules, own, neighbours = (topics.rules_topic(PREFIX, "default", d) for d in (None, "dev-1", "dev-2"))
        erasure = topics.erasure_topic(PREFIX, "default")
        for topic in (fleet_rules, own, neighbours, erasure):
            assert stolen.publish(topic, b"{}") == NOT_AUTHORIZED
            assert trainer.publish(topic, b"signed document") in (ACCEPTED, ACCEPTED_NO_SUBSCRIBERS)
            stolen.subscribe(topic)
        assert wait_for(lambda: len(stolen.messages) == 3, 10)
        time.sleep(0.5)
        assert sorted(stolen.messages) == sorted([fleet_rules, own, erasure]), stolen.messages
        for topic in (fleet_rules, own, neighbours, erasure):
            trainer.publish(topic, b"")  # clear the retained test documents
    finally:
        stolen.close()
        trainer.close()


def test_only_the_trainer_writes_the_key_rotation_chain(secure: SecureBroker) -> None:
    """The fleet's keys topic: agents read it, none writes it (a device's stolen certificate cannot
    even post a forged rotation for the agents to refuse)."""
    stolen, trainer = Client(secure, "dev-1"), Client(secure, "cloud-trainer")
    try:
        keys = topics.keys_topic(PREFIX, "default")
        assert stolen.publish(keys, b"{}") == NOT_AUTHORIZED
        assert trainer.publish(keys, b"signed chain") in (ACCEPTED, ACCEPTED_NO_SUBSCRIBERS)
        stolen.subscribe(keys)
        assert wait_for(lambda: stolen.messages == {keys: b"signed chain"}, 10), stolen.messages
        trainer.publish(keys, b"")
    finally:
        stolen.close()
        trainer.close()
