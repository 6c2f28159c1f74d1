"""The update channel's threats, one test each, against a real Mosquitto and a running agent.

Someone with access to the broker publishes what an attacker would. After every attack the
agent keeps serving a model it verified, says why it refused in its status topic, and holds
nothing unverified where installed models live. Versions grow through the module: 1000 is
installed first, and each test that activates a model uses a newer one.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from dataclasses import dataclass, replace
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from devtools.processes import AgentProcess, Broker
from devtools.processes import broker as local_broker
from harness import (
    RawClient,
    StatusWatcher,
    chunk_messages,
    fresh_bundle,
    get_json,
    manifest_of,
    publish,
    resigned,
    start_agent,
    verify_installed,
    wait_for,
)
from shared import SUPPORTED_CONTRACT_VERSIONS, topics
from shared.bundle import (
    CATALOG_FILE,
    ENVELOPE_FILE,
    MODEL_FILE,
    FileEntry,
    Manifest,
    iso_utc,
    sha256_hex,
)
from shared.signing import load_private_key, load_public_key, private_key_pem, sign

PREFIX, FLEET = topics.DEFAULT_PREFIX, "default"
MANIFEST_TOPIC = topics.manifest_topic(PREFIX, FLEET)
SMALL_CHUNKS = 16 * 1024  # so the test bundles have several chunks per file


@dataclass
class Fleet:
    broker: Broker
    agent: AgentProcess
    status: StatusWatcher
    attacker: RawClient
    work: Path
    keys: Path
    bundle: Path  # the signed v1000 bundle the agent installed first

    def serving(self) -> int:
        return int(get_json(self.agent, "/readyz")[1]["model_version"])

    def chunks(self, bundle: Path, version: int | None = None) -> list[tuple[str, int, str, bytes]]:
        """(file, index, topic, data) of every chunk of ``bundle``, on ``version``'s topics if given."""
        return [(name, index, topic if version is None else topics.chunk_topic(PREFIX, FLEET, version, name, index),
                 data) for name, index, topic, data in chunk_messages(bundle)]

    def announce(self, bundle: Path) -> None:
        """Only the manifest of ``bundle``: its chunks are left to the test."""
        self.attacker.publish(MANIFEST_TOPIC, (bundle / ENVELOPE_FILE).read_bytes())

    def fresh(self, version: int, where: Path) -> Path:
        return fresh_bundle(self.bundle, self.keys, where, version, SMALL_CHUNKS)

    def sign(self, manifest: Manifest) -> bytes:
        return sign(manifest.to_json(), load_private_key((self.keys / "signing.key").read_bytes()))


@pytest.fixture(scope="module")
def fleet(int8_bundle: Path, keys: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Fleet]:
    work = tmp_path_factory.mktemp("attacks")
    with local_broker() as broker:
        publish(int8_bundle, broker)
        agent = start_agent(broker.url, keys, work, "mqtt.status_interval_s=1")
        status, attacker = StatusWatcher(broker), RawClient(broker)
        try:
            agent.wait_ready(60)
            yield Fleet(broker, agent, status, attacker, work, keys, int8_bundle)
        finally:
            attacker.close()
            status.close()
            agent.stop()


@pytest.fixture(autouse=True)
def nothing_unverified_is_installed(fleet: Fleet) -> Iterator[None]:
    """After every attack: the agent serves, and each installed version verifies in full."""
    yield
    assert fleet.agent.proc.poll() is None, fleet.agent.log()
    assert get_json(fleet.agent, "/readyz")[0] == 200
    trusted = load_public_key((fleet.keys / "signing.pub").read_bytes())
    versions = fleet.work / "agent" / "models" / "versions"
    for folder in versions.iterdir():
        manifest = verify_installed(folder, trusted)
        assert sorted(p.name for p in folder.iterdir()) == sorted([*manifest.files, ENVELOPE_FILE])


def test_manifest_signed_by_a_key_the_agent_does_not_pin(fleet: Fleet, tmp_path: Path) -> None:
    rogue = tmp_path / "rogue-keys"
    rogue.mkdir()
    (rogue / "signing.key").write_bytes(private_key_pem(Ed25519PrivateKey.generate()))
    mark = fleet.status.mark()
    publish(resigned(fleet.bundle, rogue, tmp_path / "v5000", version=5000), fleet.broker)
    status = fleet.status.wait_discarded("bad_signature", mark)
    assert "does not trust" in status["discarded"]["reason"]
    assert status["last_update"]["result"] == "activated"  # junk does not replace the last genuine update
    assert fleet.serving() == 1000


def test_older_version_is_a_rollback(fleet: Fleet, tmp_path: Path) -> None:
    mark = fleet.status.mark()
    publish(resigned(fleet.bundle, fleet.keys, tmp_path / "v999", version=999), fleet.broker)
    fleet.status.wait_update("rollback", mark)
    assert fleet.serving() == 1000


def test_replayed_old_manifest_after_an_upgrade(fleet: Fleet, tmp_path: Path) -> None:
    publish(resigned(fleet.bundle, fleet.keys, tmp_path / "v1001", version=1001), fleet.broker)
    assert wait_for(lambda: fleet.serving() == 1001, 20)
    mark = fleet.status.mark()
    fleet.announce(fleet.bundle)  # v1000's genuine signed manifest, replayed
    reason = fleet.status.wait_update("rollback", mark)["last_update"]["reason"]
    assert "not newer than the active version 1001" in reason
    assert fleet.serving() == 1001


def test_expired_manifest(fleet: Fleet, tmp_path: Path) -> None:
    now = datetime.now(UTC)
    stale = resigned(fleet.bundle, fleet.keys, tmp_path / "expired", version=5001,
                     created=iso_utc(now - timedelta(days=30)), expires=iso_utc(now - timedelta(minutes=1)))
    mark = fleet.status.mark()
    publish(stale, fleet.broker)
    fleet.status.wait_update("expired", mark)
    assert fleet.serving() == 1001


@pytest.mark.parametrize(
    ("changes", "reason"),
    [
        ({"fleet": "another-fleet"}, "wrong_fleet"),
        ({"schema": "edge-rec.manifest/99"}, "incompatible_contract"),
        ("contract_version", "incompatible_contract"),
    ],
)
def test_bundle_for_another_fleet_or_contract(fleet: Fleet, tmp_path: Path, changes: object, reason: str) -> None:
    if changes == "contract_version":
        model = manifest_of(fleet.bundle).model
        changes = {"model": replace(model, contract_version=max(SUPPORTED_CONTRACT_VERSIONS) + 1)}  # a future one
    assert isinstance(changes, dict)
    mark = fleet.status.mark()
    fleet.announce(resigned(fleet.bundle, fleet.keys, tmp_path / "other", version=5002, **changes))
    fleet.status.wait_update(reason, mark)
    assert fleet.serving() == 1001


def test_manifest_declaring_more_than_the_size_limit(fleet: Fleet, tmp_path: Path) -> None:
    manifest = manifest_of(fleet.bundle)
    length = 300 * 1024 * 1024  # the agent's default limit is 256 MiB
    padding = FileEntry(sha256="0" * 64, length=length, chunks=("0" * 64,) * -(-length // manifest.chunk_size))
    mark = fleet.status.mark()
    fleet.attacker.publish(MANIFEST_TOPIC, fleet.sign(
        replace(manifest, version=5003, files={**manifest.files, "padding.bin": padding})))
    fleet.status.wait_update("too_large", mark)
    assert fleet.serving() == 1001


def test_bad_chunks_are_refused_one_by_one_then_the_good_ones_activate(fleet: Fleet, tmp_path: Path) -> None:
    """Truncated, altered, reordered, oversized and duplicated chunks of a genuine v1002."""
    bundle = fleet.fresh(1002, tmp_path)
    chunks = [c for c in fleet.chunks(bundle) if c[0] == CATALOG_FILE]
    assert len(chunks) >= 3, "the test catalog needs several chunks"
    first, second = chunks[0], chunks[1]
    mark = fleet.status.mark()
    fleet.announce(bundle)
    reason = fleet.status.wait_update("chunks to fetch", mark)["last_update"]["reason"]
    assert reason.startswith(f"{len(chunks)} of ") and "reused from disk" in reason  # the model file is not fetched
    # the agent subscribes to the missing chunks only: these are never even delivered to it
    fleet.attacker.publish(topics.chunk_topic(PREFIX, FLEET, 1002, CATALOG_FILE, 9999), first[3])
    fleet.attacker.publish(topics.chunk_topic(PREFIX, FLEET, 1002, "extra.bin", 0), b"x")
    attacks = [
        (first[2], first[3][:-1], f"has {SMALL_CHUNKS - 1} bytes"),  # truncated
        (first[2], bytes([first[3][0] ^ 1]) + first[3][1:], "does not match its sha256"),  # altered
        (second[2], first[3], "does not match its sha256"),  # reordered: chunk 0 sent as chunk 1
        (first[2], first[3] + b"more", f"has {SMALL_CHUNKS + 4} bytes"),  # endless data
    ]
    for topic, payload, why in attacks:
        mark = fleet.status.mark()
        fleet.attacker.publish(topic, payload)
        assert why in fleet.status.wait_discarded("chunk_rejected", mark)["discarded"]["reason"]
    assert fleet.serving() == 1001
    # now the genuine chunks, the first one twice: a duplicate is verified and ignored
    mark = fleet.status.mark()
    fleet.attacker.publish(first[2], first[3])
    for _, _, topic, data in chunks:
        fleet.attacker.publish(topic, data)
    assert wait_for(lambda: fleet.serving() == 1002, 20), fleet.status.latest
    assert f"{len(chunks)} chunks received" in fleet.status.wait_update("self-tested", mark)["last_update"]["reason"]


def test_mix_and_match_files_of_two_versions(fleet: Fleet, tmp_path: Path) -> None:
    """v1003's catalog chunks are replaced by those of v1002 (genuine, but another version's)."""
    new, old = fleet.fresh(1003, tmp_path), fleet.fresh(1002, tmp_path)
    mark = fleet.status.mark()
    fleet.announce(new)
    fleet.status.wait_update("chunks to fetch", mark)
    for _, _, topic, data in fleet.chunks(old, version=1003):
        fleet.attacker.publish(topic, data)
    assert "catalog.json" in fleet.status.wait_discarded("does not match its sha256", mark)["discarded"]["reason"]
    assert fleet.serving() == 1002
    for _, _, topic, data in fleet.chunks(new):
        fleet.attacker.publish(topic, data)
    assert wait_for(lambda: fleet.serving() == 1003, 20), fleet.status.latest
    served = get_json(fleet.agent, "/v1/model")[1]["manifest"]["files"][CATALOG_FILE]["sha256"]
    assert served == sha256_hex((new / CATALOG_FILE).read_bytes())


def test_garbage_on_every_topic_the_agent_reads(fleet: Fleet, tmp_path: Path) -> None:
    bundle = fleet.fresh(1004, tmp_path)
    for payload in [b"\x00\xff\xfe", b"{}", b"[1, 2]", b"null", b'{"signed": "x", "keyid": "y", "signature": "z"}',
                    b'{"signed": 1}', b"{" * 100_000]:
        mark = fleet.status.mark()
        fleet.attacker.publish(MANIFEST_TOPIC, payload)
        fleet.status.wait_discarded("bad_signature", mark)
    mark = fleet.status.mark()
    fleet.announce(bundle)
    fleet.status.wait_update("chunks to fetch", mark)
    base = topics.bundle_topic(PREFIX, FLEET, 1004)
    for topic in [f"{base}/{MODEL_FILE}/abc", f"{base}/{MODEL_FILE}/0/extra", f"{base}/../../manifest",
                  f"{base}/{MODEL_FILE}/-1", f"{base}/{MODEL_FILE}/{'9' * 30}"]:
        fleet.attacker.publish(topic, b"\x00garbage")
    # larger than the agent's MQTT Maximum Packet Size: the broker must not even deliver it
    fleet.attacker.publish(topics.chunk_topic(PREFIX, FLEET, 1004, CATALOG_FILE, 0), b"\x00" * (3 * 1024 * 1024))
    mark = fleet.status.mark()
    fleet.attacker.publish(topics.chunk_topic(PREFIX, FLEET, 1004, CATALOG_FILE, 0), b"\x01" * 10)
    assert "has 10 bytes" in fleet.status.wait_discarded("chunk_rejected", mark)["discarded"]["reason"]
    assert not any("3145728" in json.dumps(s) for s in fleet.status.seen)
    assert fleet.serving() == 1003
    for _, _, topic, data in fleet.chunks(bundle):
        fleet.attacker.publish(topic, data)
    assert wait_for(lambda: fleet.serving() == 1004, 20), fleet.status.latest


def test_agent_reports_its_model_stale_when_no_newer_manifest_comes(fleet: Fleet, tmp_path: Path) -> None:
    """Freeze attack: manifests are withheld; the model's manifest expires and the status says so."""
    now = datetime.now(UTC)
    expires = (now + timedelta(seconds=6)).replace(microsecond=0)  # manifests carry whole seconds
    publish(resigned(fleet.bundle, fleet.keys, tmp_path / "v1005", version=1005,
                     created=iso_utc(now - timedelta(hours=1)), expires=iso_utc(expires)), fleet.broker)
    assert wait_for(lambda: fleet.serving() == 1005, 20)
    assert wait_for(lambda: fleet.status.latest.get("model_version") == 1005, 10)
    assert fleet.status.latest["model_stale"] is False
    assert wait_for(lambda: fleet.status.latest.get("model_stale") is True, 20), fleet.status.latest
    assert time.time() >= expires.timestamp()
    status, model = get_json(fleet.agent, "/v1/model")
    assert status == 200 and model["expired"] is True and model["version"] == 1005  # still serving
    health = fleet.status.latest["health"]
    assert health["requests"] > 0 and health["p50_ms"] > 0 and health["server_errors"] == 0


# -- issue 22: hostile numbers and nesting, reserved names, floods ------------------------------

def rss_mb(agent: AgentProcess) -> float:
    status = Path(f"/proc/{agent.proc.pid}/status").read_text()
    return int(next(line.split()[1] for line in status.splitlines() if line.startswith("VmRSS:"))) / 1024


def test_hostile_numbers_nesting_and_names_become_reported_refusals(fleet: Fleet, tmp_path: Path) -> None:
    """Each used to escape the update worker as an exception (ValueError, File name too long,
    RecursionError) with a traceback and no status; the worker must report each and live on."""
    keyid = json.loads((fleet.bundle / ENVELOPE_FILE).read_bytes())["keyid"]
    mark = fleet.status.mark()
    fleet.attacker.publish(MANIFEST_TOPIC, b'{"signed": "x", "keyid": "%s", "signature": 1%s}'
                           % (keyid.encode(), b"0" * 5000))
    assert "not JSON" in fleet.status.wait_discarded("bad_signature", mark)["discarded"]["reason"]
    text = manifest_of(fleet.bundle).to_json()
    signed_hostile = {
        "huge version": text.replace('"version": 1000', '"version": 1' + "0" * 300),
        "deep nesting": text[:-1] + ', "deep": ' + "[" * 100_000 + "]" * 100_000 + "}",
        "reserved name": json.dumps({**json.loads(text), "version": 6000, "files": {
            **json.loads(text)["files"], ENVELOPE_FILE: json.loads(text)["files"][CATALOG_FILE]}}),
    }
    for what, signed_text in signed_hostile.items():
        mark = fleet.status.mark()
        fleet.attacker.publish(MANIFEST_TOPIC, sign(signed_text, load_private_key((fleet.keys / "signing.key")
                                                                                   .read_bytes())))
        status = fleet.status.wait_update("malformed_manifest", mark)
        assert status["last_update"]["result"] == "rejected", what
    assert "reserved" in fleet.status.latest["last_update"]["reason"]
    assert "Traceback" not in fleet.agent.log()
    assert fleet.serving() == 1005


def test_a_flood_of_junk_costs_counters_not_log_lines_statuses_or_memory(fleet: Fleet, tmp_path: Path) -> None:
    bundle = fleet.fresh(1010, tmp_path)
    mark = fleet.status.mark()
    fleet.announce(bundle)  # a genuine download in progress, its chunks withheld
    genuine = fleet.status.wait_update("chunks to fetch", mark)["last_update"]
    junk_topic = fleet.chunks(bundle)[0][2]
    keyid = json.loads((bundle / ENVELOPE_FILE).read_bytes())["keyid"].encode()
    big_junk = b'{"keyid": "' + keyid + b'", "signed": "' + b"x" * (1024 * 1024 - 200) + b'", "signature": "x"}'
    rss_before, lines_before = rss_mb(fleet.agent), fleet.agent.log().count("\n")
    mark, started = fleet.status.mark(), time.monotonic()
    for n in range(20_000):  # 20,000 junk chunks: the issue saw one warning and one status each
        fleet.attacker.client.publish(junk_topic, b"junk %d" % n, qos=0)
    for _ in range(40):  # and 40 one-MiB junk manifests with the trusted key's id in them
        fleet.attacker.publish(MANIFEST_TOPIC, big_junk, retain=False)
    assert wait_for(lambda: (fleet.status.latest.get("discarded") or {}).get("count", 0) >= 10_000, 60), \
        fleet.status.latest.get("discarded")
    time.sleep(2)  # the last throttled status
    seconds = time.monotonic() - started
    statuses = len(fleet.status.seen) - mark
    assert statuses <= seconds + 5, f"{statuses} statuses in {seconds:.1f}s"
    new_lines = fleet.agent.log().count("\n") - lines_before
    assert new_lines <= seconds / 10 + 5, f"{new_lines} log lines in {seconds:.1f}s"
    assert rss_mb(fleet.agent) - rss_before < 60, (rss_before, rss_mb(fleet.agent))
    assert fleet.status.latest["last_update"] == genuine  # junk never replaces the genuine record
    for _, _, topic, data in fleet.chunks(bundle):
        fleet.attacker.publish(topic, data)
    assert wait_for(lambda: fleet.serving() == 1010, 30), fleet.status.latest
