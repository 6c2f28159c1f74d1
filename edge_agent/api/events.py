"""Shoppers' events in (``POST /v1/events``): validated, then stored durably before the answer."""

from __future__ import annotations

import time
from typing import Any

from flask import Blueprint, jsonify, request

from edge_agent.api.services import services
from edge_agent.errors import ApiError
from shared import bounded_json
from shared.errors import EventError, JsonRejected
from shared.events import Event, parse_event

MAX_EVENTS_PER_REQUEST = 1000
#: Nesting of an events body: {"events": [{...}]} is 3 deep.
MAX_BODY_DEPTH = 8

blueprint = Blueprint("events", __name__)


def _raw_events() -> list[object]:
    if not request.is_json:
        raise ApiError(400, "invalid_body", "send Content-Type: application/json")
    try:  # depth and numbers bounded before parsing: 100,000 nested brackets are a 400
        body = bounded_json.loads(request.get_data(cache=False), max_depth=MAX_BODY_DEPTH)
    except JsonRejected as e:
        raise ApiError(400, "invalid_body", f"the body is not acceptable JSON: {e}") from None
    if isinstance(body, dict) and "events" in body:
        body = body["events"]
    raw_events = body if isinstance(body, list) else [body] if isinstance(body, dict) else None
    if raw_events is None:
        raise ApiError(400, "invalid_body", "send a JSON event object, a list, or {\"events\": [...]}")
    if not 1 <= len(raw_events) <= MAX_EVENTS_PER_REQUEST:
        raise ApiError(400, "invalid_body", f"send 1 to {MAX_EVENTS_PER_REQUEST} events per request")
    return raw_events


def _event(n: int, raw: object) -> Event:
    if not isinstance(raw, dict):
        raise ApiError(400, "invalid_event", f"events[{n}] must be an object")
    try:
        event = parse_event(raw.get("user_id"), raw.get("item_id"), raw.get("event"), raw.get("timestamp", time.time()))
    except EventError as e:
        raise ApiError(400, "invalid_event", f"events[{n}]: {e}") from None
    if (event.user_id, event.item_id) != (raw.get("user_id"), raw.get("item_id")):
        raise ApiError(400, "invalid_event", f"events[{n}]: ids must be strings without surrounding whitespace")
    return event


@blueprint.post("/v1/events")
def post_events() -> Any:
    events = [_event(n, raw) for n, raw in enumerate(_raw_events())]
    found = services()
    stored = found.history.append(events)
    found.metrics.events.inc(stored)
    return jsonify({"accepted": stored}), 200
