"""The OpenAPI document in shared/ and the running agent agree: routes, methods, status codes, bodies.

Also the API features that only make sense against a real agent: /metrics, /v1/model,
explanations, the category filter and parameter validation.
"""

from __future__ import annotations

import json
import re
import urllib.parse
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from jsonschema import Draft202012Validator
from openapi_spec_validator import validate as validate_openapi
from prometheus_client.parser import text_string_to_metric_families

from devtools.processes import AgentProcess
from devtools.processes import broker as local_broker
from edge_agent.active_model import ActiveModel
from edge_agent.api import Services, create_app
from edge_agent.history_store import HistoryStore
from edge_agent.metrics import AgentMetrics
from edge_agent.outcome_ledger import OutcomeLedger
from harness import post_events, serving_agent
from shared.openapi import document

SPEC = document()


def test_the_document_is_valid_openapi_3_1() -> None:
    validate_openapi(SPEC)
    assert SPEC["openapi"].startswith("3.1")


def test_every_route_of_the_app_is_in_the_document_and_back(tmp_path: Path) -> None:
    history = HistoryStore(tmp_path, lambda: [b"k" * 32])
    try:
        ledger = OutcomeLedger(window_s=60, max_requests=100, min_shoppers=5, auto_impressions=True)
        app = create_app(Services(ActiveModel(), history, "t" * 32, AgentMetrics(lambda: None, lambda: 0), ledger))
    finally:
        history.close()
    served = {
        (re.sub(r"<(?:\w+:)?(\w+)>", r"{\1}", rule.rule), method.lower())
        for rule in app.url_map.iter_rules()
        if rule.endpoint != "static"
        for method in rule.methods or ()
        if method not in ("HEAD", "OPTIONS")
    }
    documented = {(path, method) for path, ops in SPEC["paths"].items() for method in ops}
    assert served == documented


# -- real responses against the document -------------------------------------------------------

def check_response(path: str, method: str, status: int, body: bytes, content_type: str = "application/json") -> Any:
    """Validate one real response against the document; returns the parsed JSON body."""
    responses = SPEC["paths"][path][method]["responses"]
    assert str(status) in responses, f"{method.upper()} {path} answered {status}, not documented"
    content = responses[str(status)]["content"]
    if content_type not in content:
        return body
    schema = {**content[content_type]["schema"], "components": SPEC["components"]}
    parsed = json.loads(body)
    errors = sorted(Draft202012Validator(schema).iter_errors(parsed), key=str)
    assert not errors, f"{method.upper()} {path} {status}: {errors[0].message} at {list(errors[0].absolute_path)}"
    return parsed


@pytest.fixture(scope="module")
def agent(int8_bundle: Path, keys: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[AgentProcess]:
    work = tmp_path_factory.mktemp("api")
    with local_broker() as broker, serving_agent(int8_bundle, broker, keys, work) as agent:
        yield agent


def call(agent: AgentProcess, method: str, template: str, url: str | None = None, body: Any = None) -> Any:
    raw = None if body is None else (body if isinstance(body, bytes) else json.dumps(body).encode())
    status, answer = agent.request(method.upper(), url or template, raw)
    return status, check_response(template, method, status, answer)


def test_real_responses_match_the_document(agent: AgentProcess) -> None:
    user = "contract shopper #1"  # a space and a '#' must survive the path (a '/' is refused: see below)
    quoted = urllib.parse.quote(user, safe="")
    cases: list[tuple[str, str, str | None, Any, int]] = [
        ("get", "/healthz", None, None, 200),
        ("get", "/readyz", None, None, 200),
        ("get", "/v1/model", None, None, 200),
        ("post", "/v1/events", None, {"user_id": user, "item_id": "85123A", "event": "purchase"}, 200),
        ("post", "/v1/events", None, [{"user_id": user, "item_id": "22423", "event": "view", "timestamp": 1e9}], 200),
        ("post", "/v1/events", None, {"events": [{"user_id": user, "item_id": "x", "event": "like"}]}, 400),
        ("post", "/v1/events", None, {"user_id": "a/b", "item_id": "x", "event": "view"}, 400),
        # an outcome event's price and timestamp are checked as documented, though it uses neither
        ("post", "/v1/events", None, {"user_id": user, "item_id": "x", "event": "click",
                                      "request_id": "XQcSDT-G7m277", "price": {}}, 400),
        ("post", "/v1/events", None, {"user_id": user, "item_id": "x", "event": "impression",
                                      "request_id": "XQcSDT-G7m277", "timestamp": "yesterday"}, 400),
        ("post", "/v1/events", None, {"user_id": user, "item_id": "x", "event": "click",
                                      "request_id": "XQcSDT-G7m277", "price": 2.5, "timestamp": 1e9}, 200),
        ("post", "/v1/events", None, b"[" + b"1," * 600_000 + b"1]", 413),
        ("get", "/v1/recommendations", f"/v1/recommendations?user_id={quoted}&k=7&exclude=purchased", None, 200),
        ("get", "/v1/recommendations", "/v1/recommendations?user_id=nobody&k=3", None, 200),
        ("get", "/v1/recommendations", "/v1/recommendations?user_id=u&k=100000", None, 400),
        ("get", "/v1/recommendations", "/v1/recommendations?user_id=u&=false", None, 400),  # a nameless parameter
        ("get", "/v1/recommendations", "/v1/recommendations?user_id=u&kk=3", None, 400),  # a typo
        ("get", "/v1/users/{user_id}/history", f"/v1/users/{quoted}/history", None, 200),
        ("delete", "/v1/users/{user_id}", f"/v1/users/{quoted}", None, 200),
        ("get", "/v1/openapi.json", None, None, 200),
        ("get", "/v1/items/{item_id}/related", "/v1/items/85123A/related?k=5", None, 200),
        ("get", "/v1/items/{item_id}/related", f"/v1/items/22423/related?user_id={quoted}&exclude=seen", None, 200),
        ("get", "/v1/items/{item_id}/related", "/v1/items/unknown-item/related", None, 404),
        ("get", "/v1/items/{item_id}/related", "/v1/items/85123A/related?k=0", None, 400),
        ("post", "/v1/recommendations/cart", None, {"items": ["85123A"], "user_id": user, "k": 4}, 200),
        ("post", "/v1/recommendations/cart", None, {"items": []}, 400),
        ("get", "/v1/recommendations/new", "/v1/recommendations/new?k=5", None, 200),
        ("get", "/v1/recommendations/new", "/v1/recommendations/new?exclude=all", None, 400),
        ("put", "/v1/stock", None,
         {"items": [{"id": "85123A", "available": False}, {"id": "22423", "available": True, "price": 1.5}]}, 200),
        ("put", "/v1/stock", None, {"items": [{"id": "85123A"}]}, 400),
        ("get", "/v1/stock", "/v1/stock?limit=1", None, 200),
        ("get", "/v1/stock", "/v1/stock?limit=0", None, 400),
    ]
    for method, template, url, body, expected in cases:
        status, _ = call(agent, method, template, url, body)
        assert status == expected, (method, url or template, status)
    status, served = call(agent, "get", "/v1/openapi.json")
    assert served == SPEC
    status, raw = agent.request("GET", "/v1/model", token="not-the-token")
    check_response("/v1/model", "get", status, raw)
    assert status == 401


def test_model_endpoint_describes_the_verified_active_model(agent: AgentProcess) -> None:
    _, info = call(agent, "get", "/v1/model")
    assert info["version"] == 1000 and info["manifest"]["version"] == 1000
    assert info["runtime"] == "litert" and info["expired"] is False and info["explanations"] is True
    assert info["catalog_items"] == info["manifest"]["model"]["num_items"]
    assert set(info["manifest"]["files"]) == {"model.tflite", "catalog.json"}
    assert info["last_update"]["result"] == "activated"


def test_recommendations_explain_themselves_and_filter_by_category(agent: AgentProcess) -> None:
    user = "explained-shopper"
    bought = ["85123A", "71053", "84406B"]  # real Online Retail items from the first weeks
    assert post_events(agent, [{"user_id": user, "item_id": i, "event": "purchase"} for i in bought])[0] == 200
    _, answer = call(agent, "get", "/v1/recommendations", f"/v1/recommendations?user_id={user}&k=20")
    assert answer["fallback"] is False
    reasons = [item["because"]["id"] for item in answer["items"] if item["because"]]
    assert reasons and set(reasons) <= set(bought)  # every explanation is one of the shopper's own items
    # Online Retail has no categories: a category filter leaves nothing, and says so with 200, not an error
    _, none = call(agent, "get", "/v1/recommendations", f"/v1/recommendations?user_id={user}&category=Lamps")
    assert none["items"] == []
    status, _ = call(agent, "get", "/v1/recommendations", f"/v1/recommendations?user_id={user}&category=%00")
    assert status == 400


def scrape(agent: AgentProcess) -> dict[str, list[Any]]:
    status, raw = agent.request("GET", "/metrics")
    assert status == 200
    samples: dict[str, list[Any]] = {}
    for family in text_string_to_metric_families(raw.decode()):
        for sample in family.samples:
            samples.setdefault(sample.name, []).append(sample)
    return samples


def test_metrics_count_requests_events_and_updates(agent: AgentProcess) -> None:
    def recommendation_count(samples: dict[str, list[Any]]) -> float:
        return sum(
            s.value for s in samples["edge_agent_http_request_duration_seconds_count"]
            if s.labels["route"] == "/v1/recommendations" and s.labels["status"] == "200"
        )

    before = scrape(agent)
    for n in range(5):
        assert agent.request("GET", f"/v1/recommendations?user_id=metrics-{n}")[0] == 200
    assert post_events(agent, [{"user_id": "metrics-0", "item_id": "85123A", "event": "view"}] * 3)[0] == 200
    after = scrape(agent)
    assert recommendation_count(after) - recommendation_count(before) == 5
    assert after["edge_agent_events_accepted_total"][0].value - before["edge_agent_events_accepted_total"][0].value == 3
    assert after["edge_agent_model_version"][0].value == 1000
    assert after["edge_agent_history_store_bytes"][0].value > 0
    assert after["process_resident_memory_bytes"][0].value > 0
    activated = [s for s in after["edge_agent_model_updates_total"] if s.labels["result"] == "activated"]
    assert activated and activated[0].value == 1
    raw = agent.request("GET", "/metrics")[1]
    assert b"metrics-0" not in raw and b"85123A" not in raw  # no user or item ids in labels
    assert agent.request("GET", "/metrics", token="")[0] == 401
