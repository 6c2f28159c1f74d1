"""Business rules on a real agent and a real Mosquitto: published with ``cloud-trainer rules
publish``, applied to what ``GET /v1/recommendations`` serves, kept across a restart; then the
attacks of the update channel, one per test, each leaving the accepted rules in force."""

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
from harness import ROOT, RawClient, StatusWatcher, get_json, post_events, publish, start_agent, wait_for
from shared import topics
from shared.bundle import CATALOG_FILE, iso_utc
from shared.business_rules import SCHEMA, Rule, RulesDocument
from shared.fleet_documents import Header
from shared.signing import load_private_key, sign

RULES_TOPIC = topics.rules_topic(topics.DEFAULT_PREFIX, "default")
SHOPPER = "rules-shopper"


@dataclass
class RulesFleet:
    broker: Broker
    agent: AgentProcess
    status: StatusWatcher
    attacker: RawClient
    work: Path
    keys: Path
    plain: list[str]  # what the shopper gets without rules
    pinned: str  # an item not in that list

    def cli(self, *args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-m", "cloud_trainer.cli", "rules", "publish", *args,
                               "--key", str(self.keys / "signing.key"), "--broker", self.broker.url],
                              capture_output=True, text=True, cwd=ROOT, timeout=60)

    def served(self) -> list[str]:
        code, body = get_json(self.agent, f"/v1/recommendations?user_id={SHOPPER}&k=5")
        assert code == 200, body
        return [r["id"] for r in body["items"]]

    def rules(self) -> dict:  # type: ignore[type-arg]
        return self.status.latest.get("rules") or {}

    def signed(self, version: int, fleet: str = "default", expires_in: timedelta = timedelta(days=1),
               targets: tuple[str, ...] = (), key: Ed25519PrivateKey | None = None) -> bytes:
        now = datetime.now(UTC)
        header = Header(SCHEMA, fleet, version, iso_utc(now - timedelta(days=2)), iso_utc(now + expires_in), targets)
        document = RulesDocument(header, (Rule("block", item=self.plain[1]),))
        return sign(document.to_json(), key or load_private_key((self.keys / "signing.key").read_bytes()))

    def attack(self, payload: bytes, fragment: str) -> None:
        before = self.rules().get("version")
        mark = self.status.mark()
        self.attacker.publish(RULES_TOPIC, payload, retain=False)
        assert wait_for(lambda: any(fragment in str((s.get("rules") or {}).get("last"))
                                    for s in self.status.seen[mark:]), 15), self.rules()
        assert self.rules()["version"] == before and self.plain[0] not in self.served()  # still in force


@pytest.fixture(scope="module")
def fleet(int8_bundle: Path, keys: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[RulesFleet]:
    work = tmp_path_factory.mktemp("rules")
    with local_broker() as broker:
        publish(int8_bundle, broker)
        agent = start_agent(broker.url, keys, work, "mqtt.status_interval_s=1")
        status, attacker = StatusWatcher(broker), RawClient(broker)
        try:
            agent.wait_ready(60)
            catalog = json.loads((int8_bundle / CATALOG_FILE).read_bytes())["items"]
            assert post_events(agent, [{"user_id": SHOPPER, "item_id": i["id"], "event": "purchase"}
                                       for i in catalog[:3]])[0] == 200
            state = RulesFleet(broker, agent, status, attacker, work, keys, [], "")
            state.plain = state.served()
            state.pinned = next(i["id"] for i in reversed(catalog) if i["id"] not in state.plain)
            yield state
        finally:
            attacker.close()
            status.close()
            agent.stop()


def test_published_rules_block_boost_and_pin_and_survive_a_restart(fleet: RulesFleet, tmp_path: Path) -> None:
    plain = fleet.plain
    rules = tmp_path / "rules.json"
    rules.write_text(json.dumps({"rules": [
        {"action": "block", "item": plain[0]},
        {"action": "boost", "item": plain[3], "bias": 1000},  # from 4th to the top of the model's candidates
        {"action": "pin", "item": fleet.pinned, "slot": 1},
    ]}))
    result = fleet.cli("--file", str(rules), "--version", "100")
    assert result.returncode == 0, result.stderr
    assert "rules version 100 published" in result.stdout
    assert wait_for(lambda: fleet.rules().get("version") == 100, 15), fleet.status.latest
    served = fleet.served()
    assert served[0] == fleet.pinned and served[1] == plain[3] and plain[0] not in served, (plain, served)
    model = get_json(fleet.agent, "/v1/model")[1]
    assert model["rules"]["version"] == 100 and model["rules"]["counts"]["block"] == 1
    assert fleet.rules()["last"]["result"] == "accepted"

    fleet.agent.stop()  # the accepted document is on disk and verified again at start-up
    fleet.agent = start_agent(fleet.broker.url, fleet.keys, fleet.work, "mqtt.status_interval_s=1")
    fleet.agent.wait_ready(60)
    assert fleet.served() == served
    assert get_json(fleet.agent, "/v1/model")[1]["rules"]["version"] == 100

    bad = tmp_path / "bad.json"
    bad.write_text('{"rules": [{"action": "pin", "item": "x", "slot": 0}]}')
    refused = fleet.cli("--file", str(bad))
    assert refused.returncode == 2 and "rules[0].slot must be an integer from 1" in refused.stderr
    assert "Traceback" not in refused.stderr
    older = fleet.cli("--file", str(rules), "--version", "99")
    assert older.returncode == 2 and "not above version 100" in older.stderr


def test_rules_signed_by_a_key_the_agent_does_not_pin(fleet: RulesFleet) -> None:
    fleet.attack(fleet.signed(200, key=Ed25519PrivateKey.generate()), "bad_signature")


def test_an_older_version_replayed(fleet: RulesFleet) -> None:
    fleet.attack(fleet.signed(50), "rollback")


def test_expired_rules(fleet: RulesFleet) -> None:
    fleet.attack(fleet.signed(300, expires_in=timedelta(minutes=-1)), "expired")


def test_rules_for_another_fleet_or_device(fleet: RulesFleet) -> None:
    fleet.attack(fleet.signed(301, fleet="another-fleet"), "wrong_fleet")
    fleet.attack(fleet.signed(302, targets=("dev-2",)), "not_targeted")


def test_garbage_and_oversized_documents(fleet: RulesFleet) -> None:
    for payload in (b"\x00\xff", b"{}", b"[" * 100_000):
        fleet.attack(payload, "bad_signature")
    keyid = json.loads(fleet.signed(303))["keyid"].encode()
    huge = b'{"keyid": "' + keyid + b'", "signed": "' + b"x" * (600 * 1024) + b'", "signature": "x"}'
    fleet.attack(huge, "larger than")
    now = datetime.now(UTC)
    malformed = json.dumps({"schema": SCHEMA, "fleet": "default", "version": 304, "created": iso_utc(now),
                            "expires": iso_utc(now + timedelta(days=1)), "rules": [{"action": "hide", "item": "x"}]})
    fleet.attack(sign(malformed, load_private_key((fleet.keys / "signing.key").read_bytes())), "malformed")
    assert "Traceback" not in fleet.agent.log()
