"""Outcomes on a real agent and a real Mosquitto: request ids, clicks, conversions, the holdout,
aggregates in the status that survive a restart, and no user or item id ever reaching the broker."""

from __future__ import annotations

import json
import threading
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
from jsonschema import Draft202012Validator

from devtools.processes import Broker
from devtools.processes import broker as local_broker
from harness import get_json, post_events, publish, start_agent, wait_for
from shared import topics
from shared.openapi import document
from shared.outcomes import Arm, arm_of, cells_of_status

SHARE, SALT = 0.3, "holdout-test-2"  # 6 of the 14 shoppers in the holdout, "nobody-yet" not
OVERRIDES = ("experiment.min_shoppers=5", f"experiment.holdout_share={SHARE}", f'experiment.salt="{SALT}"',
             "mqtt.status_interval_s=1", "experiment.save_interval_s=1")


class Everything:
    """Every message on the broker, as a fleet dashboard (or an eavesdropper) would see it."""

    def __init__(self, broker: Broker) -> None:
        self.messages: list[tuple[str, bytes]] = []
        self._lock = threading.Lock()
        self.client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id="everything", protocol=mqtt.MQTTv5)
        self.client.on_message = self._on_message
        self.client.connect("127.0.0.1", broker.port)
        self.client.subscribe("#", qos=1)
        self.client.loop_start()

    def _on_message(self, client: Any, userdata: Any, message: Any) -> None:
        with self._lock:
            self.messages.append((message.topic, bytes(message.payload)))

    def from_agents(self) -> list[tuple[str, bytes]]:
        """What agents published: everything but the trainer's manifests and bundle chunks."""
        with self._lock:
            return [(t, p) for t, p in self.messages if "/manifest/" not in t and "/bundle/" not in t]

    def latest_status(self) -> dict[str, Any]:
        statuses = [json.loads(p) for t, p in self.from_agents() if t.endswith("/status/dev-1")]
        return statuses[-1] if statuses else {}

    def close(self) -> None:
        self.client.loop_stop()
        self.client.disconnect()


def cells(status: dict[str, Any]) -> dict[tuple[int, Arm], dict[str, Any]]:
    return {(c.model_version, c.arm): c.to_json() for c in cells_of_status(status)}


def strings_and_numbers(value: Any) -> list[Any]:
    if isinstance(value, dict):
        return [x for k, v in value.items() for x in [k, *strings_and_numbers(v)]]
    if isinstance(value, list):
        return [x for v in value for x in strings_and_numbers(v)]
    return [value]


def test_outcomes_are_attributed_reported_as_aggregates_and_survive_a_restart(
        int8_bundle: Path, keys: Path, tmp_path: Path) -> None:
    users = [f"secret-shopper-{n:02d}" for n in range(14)]
    holdout = {u for u in users if arm_of(u, SHARE, SALT) is Arm.HOLDOUT}
    assert len(holdout) == 6 and arm_of("nobody-yet", SHARE, SALT) is Arm.MODEL  # (the salt was chosen so)
    with local_broker() as broker:
        everything = Everything(broker)
        publish(int8_bundle, broker)
        agent = start_agent(broker.url, keys, tmp_path, *OVERRIDES)
        try:
            agent.wait_ready(60)
            _, first = get_json(agent, "/v1/recommendations?user_id=nobody-yet&k=3")
            seed_item = first["items"][0]["id"]
            expected = {arm: {"requests": 0, "impressions": 0, "clicks": 0, "conversions": 0} for arm in Arm}
            ids: set[str] = set(users) | {"nobody-yet"}
            kept: dict[str, tuple[str, str]] = {}  # user -> (request id, an item not yet converted)
            for user in users:
                assert post_events(agent, [{"user_id": user, "item_id": seed_item, "event": "view"}])[0] == 200
                status, body = get_json(agent, f"/v1/recommendations?user_id={user}&k=4")
                assert status == 200 and len(body["request_id"]) >= 8
                items = [i["id"] for i in body["items"]]
                ids.update(items)
                arm = Arm.HOLDOUT if user in holdout else Arm.MODEL
                if arm is Arm.HOLDOUT:
                    assert body["fallback"] and all(i["score"] is None for i in body["items"])
                else:
                    assert not body["fallback"] and body["items"][0]["score"] is not None
                events = [{"user_id": user, "item_id": items[0], "event": "click", "request_id": body["request_id"]},
                          {"user_id": user, "item_id": items[1], "event": "purchase", "price": 2.5},
                          {"user_id": "someone-else", "item_id": items[2], "event": "purchase"}]
                assert post_events(agent, events) == (200, {"accepted": 3, "attributed": 2})
                kept[user] = (body["request_id"], items[3])
                counts = expected[arm]
                counts.update(requests=counts["requests"] + 1, impressions=counts["impressions"] + 4,
                              clicks=counts["clicks"] + 1, conversions=counts["conversions"] + 1)
            ids.add("someone-else")
            bad = {"user_id": users[0], "item_id": "x", "event": "click", "request_id": "no"}
            assert post_events(agent, [bad])[0] == 400  # a click must quote a request id

            def reported() -> dict[tuple[int, Arm], dict[str, Any]]:
                return cells(everything.latest_status())

            model_cell = (1000, Arm.MODEL)
            assert wait_for(lambda: model_cell in reported() and reported()[model_cell]["requests"] == len(
                users) - len(holdout) + 1, 20), everything.latest_status().get("outcomes")
            before = reported()
            model = before[model_cell]
            assert model["clicks"] == expected[Arm.MODEL]["clicks"]
            assert model["conversions"] == model["converted_requests"] == expected[Arm.MODEL]["conversions"]
            assert model["revenue"] == 2.5 * expected[Arm.MODEL]["conversions"]
            held = before[(1000, Arm.HOLDOUT)]
            assert (held["requests"], held["clicks"], held["conversions"]) == (
                len(holdout), expected[Arm.HOLDOUT]["clicks"], expected[Arm.HOLDOUT]["conversions"])
        finally:
            assert agent.stop() == 0

        agent = start_agent(broker.url, keys, tmp_path, *OVERRIDES)  # the same data dir
        try:
            agent.wait_ready(60)
            mark = len(everything.from_agents())
            assert wait_for(lambda: len(everything.from_agents()) > mark and reported() != {}, 20)
            assert reported() == before  # the counts survived the restart
            user = next(u for u in users if u not in holdout)
            request_id, item = kept[user]
            assert post_events(agent, [{"user_id": user, "item_id": item, "event": "cart"}])[1]["attributed"] == 1
            converted = model["conversions"] + 1
            assert wait_for(lambda: reported()[model_cell]["conversions"] == converted, 20)
            assert reported()[model_cell]["converted_requests"] == model["converted_requests"]  # the same request
        finally:
            assert agent.stop() == 0
        everything.close()

    published = everything.from_agents()
    spec = document()
    validator = Draft202012Validator({"$ref": "#/components/schemas/AgentStatus", "components": spec["components"]})
    for _, payload in published:  # every status, the offline will too, is what the contract says
        errors = list(validator.iter_errors(json.loads(payload)))
        assert not errors, errors[0].message
    assert published and {t for t, _ in published} == {topics.status_topic(topics.DEFAULT_PREFIX, "default", "dev-1")}
    for _, payload in published:
        assert not any(user.encode() in payload for user in users)
        values = strings_and_numbers(json.loads(payload))
        leaked = [v for v in values if isinstance(v, str) and any(i == v or (len(i) >= 5 and i in v) for i in ids)]
        leaked += [v for v in values if isinstance(v, (int, float)) and not isinstance(v, bool)
                   and any(i.isdigit() and int(i) == v for i in ids)]
        assert not leaked, f"ids reached the broker: {leaked[:5]}"
