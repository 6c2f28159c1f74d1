"""Key rotation against a real Mosquitto and a running agent: the happy path, an agent offline
through two rotations, and one attack per test.

Every test starts its own agent on its own broker, provisioned with the fleet key of the session
(``keys``: key A) and serving bundle 1000 signed by it. Rotations go out with the real command
(``cloud-trainer keys rotate``); forged ones straight onto the topic, as someone with write
access to the broker would.
"""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from devtools.processes import AgentProcess, Broker
from devtools.processes import broker as local_broker
from harness import ROOT, RawClient, StatusWatcher, fresh_bundle, get_json, manifest_of, publish, start_agent, wait_for
from shared import topics
from shared.bundle import ENVELOPE_FILE
from shared.fleet_documents import Header
from shared.key_rotation import SCHEMA, Rotation, chain_bytes, sign_rotation
from shared.manifest import iso_utc
from shared.signing import key_id, load_private_key, private_key_pem, public_key_pem

PREFIX, FLEET = topics.DEFAULT_PREFIX, "default"
KEYS_TOPIC = topics.keys_topic(PREFIX, FLEET)


def new_keys(folder: Path) -> Path:
    folder.mkdir()
    key = Ed25519PrivateKey.generate()
    (folder / "signing.key").write_bytes(private_key_pem(key))
    (folder / "signing.key").chmod(0o600)
    (folder / "signing.pub").write_bytes(public_key_pem(key.public_key()))
    return folder


def private(keys: Path) -> Ed25519PrivateKey:
    return load_private_key((keys / "signing.key").read_bytes())


def kid(keys: Path) -> str:
    return key_id(private(keys).public_key())


def forged(version: int, trusted: list[Path], signers: list[Path], revoked: tuple[str, ...] = ()) -> dict[str, object]:
    now = datetime.now(UTC)
    header = Header(schema=SCHEMA, fleet=FLEET, version=version, created=iso_utc(now),
                    expires=iso_utc(now + timedelta(days=30)))
    return sign_rotation(Rotation(header, tuple(private(k).public_key() for k in trusted), frozenset(revoked)),
                         [private(k) for k in signers])


def rotate(broker: Broker, current: Path, new: Path, *extra: str) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "cloud_trainer.cli", "keys", "rotate", "--current", str(current / "signing.key"),
         "--new", str(new / "signing.key"), "--broker", broker.url, *extra],
        capture_output=True, text=True, cwd=ROOT, timeout=60)
    assert result.returncode == 0, result.stderr


@dataclass
class Fleet:
    broker: Broker
    agent: AgentProcess
    status: StatusWatcher
    attacker: RawClient
    work: Path
    keys: Path  # key A: the one agents were provisioned with
    bundle: Path

    def keys_status(self) -> dict:  # type: ignore[type-arg]
        return dict(self.status.latest.get("keys") or {})

    def wait_keys(self, predicate, start: int) -> dict:  # type: ignore[no-untyped-def,type-arg]
        assert wait_for(lambda: any(predicate(s.get("keys") or {}) for s in self.status.seen[start:]), 15), \
            f"keys status never matched; latest: {self.keys_status()}"
        return next(s["keys"] for s in self.status.seen[start:] if predicate(s.get("keys") or {}))

    def serving(self) -> int:
        return int(get_json(self.agent, "/readyz")[1]["model_version"])

    def bundle_signed_by(self, keys: Path, version: int, where: Path) -> Path:
        return fresh_bundle(self.bundle, keys, where, version)

    def restart(self) -> None:
        self.agent.stop()
        self.agent = start_agent(self.broker.url, self.keys, self.work, "mqtt.status_interval_s=1")
        self.agent.wait_ready(60)


@pytest.fixture
def fleet(int8_bundle: Path, keys: Path, tmp_path: Path) -> Iterator[Fleet]:
    with local_broker() as broker:
        publish(int8_bundle, broker)
        agent = start_agent(broker.url, keys, tmp_path, "mqtt.status_interval_s=1")
        status, attacker = StatusWatcher(broker), RawClient(broker)
        found = Fleet(broker, agent, status, attacker, tmp_path, keys, int8_bundle)
        try:
            agent.wait_ready(60)
            assert wait_for(lambda: found.keys_status().get("version") == 0, 15)
            yield found
        finally:
            attacker.close()
            status.close()
            found.agent.stop()


def test_rotate_then_the_new_key_installs_and_the_old_one_is_refused(fleet: Fleet, tmp_path: Path) -> None:
    new = new_keys(tmp_path / "B")
    mark = fleet.status.mark()
    rotate(fleet.broker, fleet.keys, new)
    keys = fleet.wait_keys(lambda k: k.get("version") == 1, mark)
    assert (keys["trusted"], keys["retired"], keys["revoked"]) == ([kid(new)], [kid(fleet.keys)], [])
    model = get_json(fleet.agent, "/v1/model")[1]
    assert model["keys"]["trusted"] == [kid(new)] and model["keys"]["version"] == 1
    assert "PUBLIC KEY" not in json.dumps(model) and "PUBLIC KEY" not in json.dumps(fleet.status.latest)

    mark = fleet.status.mark()
    publish(fleet.bundle_signed_by(new, 1001, tmp_path), fleet.broker)
    fleet.status.wait_update("self-tested", mark, timeout=60)
    assert fleet.serving() == 1001

    mark = fleet.status.mark()
    publish(fleet.bundle_signed_by(fleet.keys, 1002, tmp_path / "old"), fleet.broker)  # key A, rotated out
    assert "does not trust" in fleet.status.wait_discarded("bad_signature", mark)["discarded"]["reason"]
    assert fleet.serving() == 1001

    fleet.restart()  # the trust store survives; the model signed by B loads, A's installed one still verifies
    assert fleet.serving() == 1001
    assert get_json(fleet.agent, "/v1/model")[1]["keys"]["trusted"] == [kid(new)]


@pytest.mark.parametrize("who", ["current key only", "new key only"])
def test_a_rotation_signed_by_one_of_the_two_keys_is_refused(fleet: Fleet, tmp_path: Path, who: str) -> None:
    """Only the current key: the new key's holder never proved they have it. Only the new key:
    someone who made a key of their own tries to move the fleet to it."""
    new = new_keys(tmp_path / "X")
    signer = fleet.keys if who == "current key only" else new
    mark = fleet.status.mark()
    fleet.attacker.publish(KEYS_TOPIC, chain_bytes([forged(1, [new], [signer])]))
    keys = fleet.wait_keys(lambda k: (k.get("last") or {}).get("result") == "rejected", mark)
    assert keys["last"]["reason"].startswith("bad_signature") and keys["version"] == 0
    assert keys["trusted"] == [kid(fleet.keys)]
    assert not (fleet.work / "agent" / "trust.json").exists()
    mark = fleet.status.mark()
    publish(fleet.bundle_signed_by(new, 1001, tmp_path), fleet.broker)
    fleet.status.wait_discarded("bad_signature", mark)
    assert fleet.serving() == 1000


def test_a_replayed_older_rotation_is_refused(fleet: Fleet, tmp_path: Path) -> None:
    b, c = new_keys(tmp_path / "B"), new_keys(tmp_path / "C")
    first = forged(1, [b], [fleet.keys, b])
    mark = fleet.status.mark()
    fleet.attacker.publish(KEYS_TOPIC, chain_bytes([first, forged(2, [c], [b, c])]))  # genuine, both keys held
    fleet.wait_keys(lambda k: k.get("version") == 2, mark)
    mark = fleet.status.mark()
    fleet.attacker.publish(KEYS_TOPIC, chain_bytes([first]))  # back to B, whose key may have leaked since
    keys = fleet.wait_keys(lambda k: (k.get("last") or {}).get("result") == "rejected", mark)
    assert keys["last"]["reason"].startswith("rollback") and keys["trusted"] == [kid(c)]


def test_garbage_on_the_keys_topic(fleet: Fleet, tmp_path: Path) -> None:
    manifest_envelope = (fleet.bundle / ENVELOPE_FILE).read_bytes()  # genuinely signed, but no rotation
    for payload in (b"junk", b"{}", b'{"rotations": [{"signed": 1, "signatures": []}]}', b"[" * 50_000,
                    manifest_envelope, json.dumps({"rotations": [json.loads(manifest_envelope)]}).encode()):
        mark = fleet.status.mark()
        fleet.attacker.publish(KEYS_TOPIC, payload)
        keys = fleet.wait_keys(lambda k: (k.get("last") or {}).get("result") == "rejected", mark)
        assert keys["version"] == 0 and keys["trusted"] == [kid(fleet.keys)], payload[:40]
    assert fleet.agent.proc.poll() is None and fleet.serving() == 1000


def test_an_agent_offline_through_two_rotations_catches_up(fleet: Fleet, tmp_path: Path) -> None:
    b, c = new_keys(tmp_path / "B"), new_keys(tmp_path / "C")
    fleet.agent.stop()
    rotate(fleet.broker, fleet.keys, b)
    rotate(fleet.broker, b, c, "--revoke", kid(fleet.keys))
    publish(fleet.bundle_signed_by(c, 1001, tmp_path), fleet.broker)  # retained before the agent is back
    mark = fleet.status.mark()
    fleet.agent = start_agent(fleet.broker.url, fleet.keys, fleet.work, "mqtt.status_interval_s=1")
    fleet.agent.wait_ready(60)
    keys = fleet.wait_keys(lambda k: k.get("version") == 2, mark)
    assert (keys["trusted"], keys["revoked"]) == ([kid(c)], [kid(fleet.keys)])
    fleet.status.wait_update("self-tested", mark, timeout=60)  # delivered again once C was trusted
    assert fleet.serving() == 1001


def test_after_a_revocation_nothing_the_key_signed_installs(fleet: Fleet, tmp_path: Path) -> None:
    """A bundle signed by the leaked key A is being received when the fleet revokes A: it never
    activates; and A cannot take the fleet back."""
    b = new_keys(tmp_path / "B")
    pending = fleet.bundle_signed_by(fleet.keys, 1001, tmp_path)
    mark = fleet.status.mark()
    fleet.attacker.publish(topics.manifest_topic(PREFIX, FLEET), (pending / ENVELOPE_FILE).read_bytes())
    fleet.status.wait_update("chunks to fetch", mark)
    mark = fleet.status.mark()
    rotate(fleet.broker, fleet.keys, b, "--revoke", "current")
    fleet.wait_keys(lambda k: k.get("revoked") == [kid(fleet.keys)], mark)
    fleet.status.wait_update("after a key rotation", mark)
    mark = fleet.status.mark()
    publish(pending, fleet.broker)  # its chunks (and its manifest again) arrive after the revocation
    fleet.status.wait_discarded("bad_signature", mark)
    assert not wait_for(lambda: fleet.serving() == 1001, 5)  # its chunks are all on the broker now
    assert manifest_of(pending).version == 1001
    assert not list((fleet.work / "agent" / "models").glob("staging/1001"))

    mark = fleet.status.mark()  # the thief signs a rotation back to A (and to a key of their own)
    thief = new_keys(tmp_path / "T")
    fleet.attacker.publish(KEYS_TOPIC, chain_bytes([forged(2, [thief], [fleet.keys, thief])]))
    keys = fleet.wait_keys(lambda k: (k.get("last") or {}).get("result") == "rejected", mark)
    assert keys["last"]["reason"].startswith("bad_signature") and keys["trusted"] == [kid(b)]


def test_rotate_signs_the_erasure_list_again_with_the_new_key(broker: Broker, keys: Path, tmp_path: Path) -> None:
    """So the next ``erase`` (with the new key) reads the list back and continues its versions,
    instead of starting at 1, which every agent would refuse as a replay."""
    from cloud_trainer.delivery.broker import BrokerConnection, BrokerOptions
    from shared.signing import sign, verify

    new, erasure = new_keys(tmp_path / "B"), topics.erasure_topic(PREFIX, FLEET)
    writer = RawClient(broker, "trainer")
    try:
        writer.publish(erasure, sign('{"the": "list"}', private(keys)))
    finally:
        writer.close()
    rotate(broker, keys, new)
    with BrokerConnection(BrokerOptions(broker.url, client_id="reader")) as connection:
        resigned = connection.retained(erasure)
        chain = connection.retained(KEYS_TOPIC)
    assert resigned is not None and chain is not None
    assert verify(resigned, private(new).public_key()) == '{"the": "list"}'
    assert len(json.loads(chain)["rotations"]) == 1
