"""The whole path with real parts: bundle -> Mosquitto -> edge agent process -> REST over HTTP."""

from __future__ import annotations

import json
import time
from pathlib import Path

from devtools.processes import AgentProcess, Broker, free_port
from devtools.processes import broker as local_broker
from harness import StatusWatcher, get_json, post_events, publish, resigned, start_agent, wait_for


def test_late_joiner_gets_the_model_and_serves_personalised_recommendations(agent_with_model: AgentProcess) -> None:
    agent = agent_with_model
    status, cold = get_json(agent, "/v1/recommendations?user_id=new-shopper&k=5")
    assert status == 200 and cold["fallback"] is True and cold["model_version"] == 1000
    assert len(cold["items"]) == 5 and all(item["title"] for item in cold["items"])

    # a purchase posted a moment ago changes the very next recommendation
    liked = cold["items"][-1]["id"]
    status, body = post_events(agent, [{"user_id": "new-shopper", "item_id": liked, "event": "purchase"}])
    assert status == 200 and body == {"accepted": 1, "attributed": 1}  # it was recommended
    status, warm = get_json(agent, "/v1/recommendations?user_id=new-shopper&k=5")
    assert status == 200 and warm["fallback"] is False
    assert [i["id"] for i in warm["items"]] != [i["id"] for i in cold["items"]]
    assert all(isinstance(i["score"], float) for i in warm["items"])


def test_status_is_published_on_the_agents_topic(broker: Broker, agent_with_model: AgentProcess) -> None:
    watcher = StatusWatcher(broker)
    try:
        assert wait_for(lambda: watcher.latest.get("model_version") == 1000, 10), watcher.latest
        assert watcher.latest["state"] == "online" and watcher.latest["last_update"]["result"] == "activated"
        agent_with_model.stop()
        assert wait_for(lambda: watcher.latest.get("state") == "offline", 10), watcher.latest
    finally:
        watcher.close()


def test_newer_bundle_is_activated_while_serving(
    broker: Broker, agent_with_model: AgentProcess, int8_bundle: Path, keys: Path, tmp_path: Path
) -> None:
    publish(resigned(int8_bundle, keys, tmp_path / "v1002", version=1002), broker)
    assert wait_for(lambda: get_json(agent_with_model, "/readyz")[1].get("model_version") == 1002, 20)


def test_bad_requests_get_json_errors_not_tracebacks(agent_with_model: AgentProcess) -> None:
    agent = agent_with_model
    cases = [
        ("GET", "/v1/recommendations?user_id=u&k=0", None, 400),
        ("GET", "/v1/recommendations?user_id=u&k=abc", None, 400),
        ("GET", "/v1/recommendations?user_id=u&exclude=everything", None, 400),
        ("GET", "/v1/recommendations", None, 400),
        ("POST", "/v1/events", b"not json", 400),
        ("POST", "/v1/events", b'{"user_id": "u", "item_id": "i", "event": "like"}', 400),
        ("POST", "/v1/events", b'{"events": []}', 400),
        ("POST", "/v1/events", b"[" + b'"x",' * 400_000 + b'"x"]', 413),
        ("GET", "/v1/nothing-here", None, 404),
    ]
    for method, path, body, expected in cases:
        status, raw = agent.request(method, path, body)
        assert status == expected, (path, status, raw[:200])
        assert "message" in json.loads(raw)["error"] and b"Traceback" not in raw
    assert agent.request("GET", "/v1/recommendations?user_id=u", token="wrong-token")[0] == 401
    assert agent.request("GET", "/healthz", token="")[0] == 200  # liveness needs no token


def test_agent_restarts_on_its_last_model_without_a_broker(
    broker: Broker, int8_bundle: Path, keys: Path, tmp_path: Path
) -> None:
    publish(int8_bundle, broker)
    agent = start_agent(broker.url, keys, tmp_path)
    try:
        agent.wait_ready(60)
        assert post_events(agent, [{"user_id": "u7", "item_id": "85123A", "event": "purchase"}])[0] == 200
    finally:
        assert agent.stop() == 0  # clean shutdown on SIGTERM
    broker.stop()
    agent = start_agent("mqtt://127.0.0.1:9", keys, tmp_path)  # nothing listens there
    try:
        agent.wait_ready(30)
        status, body = get_json(agent, "/v1/recommendations?user_id=u7&k=3")
        assert status == 200 and body["model_version"] == 1000 and body["fallback"] is False
    finally:
        agent.stop()


def test_agent_starts_without_a_broker_and_connects_when_it_appears(
    int8_bundle: Path, keys: Path, tmp_path: Path
) -> None:
    port = free_port()
    agent = start_agent(f"mqtt://127.0.0.1:{port}", keys, tmp_path)  # nothing listens there yet
    try:
        assert agent.request("GET", "/healthz")[0] == 200  # alive and serving without a broker
        assert agent.request("GET", "/readyz")[0] == 503  # but not ready: no model yet
        assert post_events(agent, [{"user_id": "early", "item_id": "85123A", "event": "purchase"}])[0] == 200
        time.sleep(3)  # let a few reconnect attempts fail
        with local_broker(port) as broker:
            publish(int8_bundle, broker)
            agent.wait_ready(60)  # reconnected with backoff, subscribed, received the retained model
            status, body = get_json(agent, "/v1/recommendations?user_id=early&k=3")
            assert status == 200 and body["fallback"] is False
    finally:
        agent.stop()
    assert "connected to broker" in agent.log()
