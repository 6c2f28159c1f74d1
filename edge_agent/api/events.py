"""Shoppers' events in (``POST /v1/events``): validated, then stored durably before the answer.

Two families share the route: **shopping events** (view, cart, purchase) go to the shopper's
encrypted history; **outcome events** (impression, click) quote the ``request_id`` of a
recommendation response and only count in the outcome ledger (they say what the shopper was
shown, not what they like). A cart or purchase also converts a recommended item (see
:mod:`edge_agent.outcome_ledger`); its optional ``price`` counts as revenue.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from typing import Any

from flask import Blueprint, jsonify

from edge_agent.api.params import json_body
from edge_agent.api.services import services
from edge_agent.errors import ApiError
from shared.errors import EventError
from shared.events import Event, EventKind, parse_event, parse_identifier, parse_timestamp
from shared.outcomes import OutcomeKind, is_request_id

MAX_EVENTS_PER_REQUEST = 1000
#: Nesting of an events body: {"events": [{...}]} is 3 deep.
MAX_BODY_DEPTH = 8

blueprint = Blueprint("events", __name__)


def _raw_events() -> list[object]:
    body = json_body(MAX_BODY_DEPTH)
    if isinstance(body, dict) and "events" in body:
        body = body["events"]
    raw_events = body if isinstance(body, list) else [body] if isinstance(body, dict) else None
    if raw_events is None:
        raise ApiError(400, "invalid_body", "send a JSON event object, a list, or {\"events\": [...]}")
    if not 1 <= len(raw_events) <= MAX_EVENTS_PER_REQUEST:
        raise ApiError(400, "invalid_body", f"send 1 to {MAX_EVENTS_PER_REQUEST} events per request")
    return raw_events


#: The largest ``price`` accepted (a sanity bound, not a currency rule).
MAX_PRICE = 1e9


@dataclass(frozen=True, slots=True)
class OutcomeEvent:
    user_id: str
    item_id: str
    kind: OutcomeKind
    request_id: str


def _price(n: int, raw: dict[str, Any]) -> float | None:
    price = raw.get("price")
    if price is None:
        return None
    if isinstance(price, bool) or not isinstance(price, (int, float)) or not math.isfinite(price) \
            or not 0 <= price <= MAX_PRICE:
        raise ApiError(400, "invalid_event", f"events[{n}]: price must be a number from 0 to {MAX_PRICE:g}")
    return float(price)


def _ids(n: int, raw: dict[str, Any]) -> tuple[str, str]:
    try:
        ids = parse_identifier(raw.get("user_id"), "user_id"), parse_identifier(raw.get("item_id"), "item_id")
    except EventError as e:
        raise ApiError(400, "invalid_event", f"events[{n}]: {e}") from None
    if ids != (raw.get("user_id"), raw.get("item_id")):
        raise ApiError(400, "invalid_event", f"events[{n}]: ids must be strings without surrounding whitespace")
    return ids


def _event(n: int, raw: object) -> tuple[Event | OutcomeEvent, float | None]:
    """A parsed event and its price (None when not given)."""
    if not isinstance(raw, dict):
        raise ApiError(400, "invalid_event", f"events[{n}] must be an object")
    user_id, item_id = _ids(n, raw)
    kind = raw.get("event")
    if isinstance(kind, str) and kind in set(OutcomeKind):
        if not is_request_id(raw.get("request_id")):
            raise ApiError(400, "invalid_event", f"events[{n}]: a {kind} needs the request_id of the "
                                                 "recommendation response that showed the item")
        _price(n, raw)  # the documented fields are checked alike on every event, though an outcome uses neither
        if "timestamp" in raw:
            try:
                parse_timestamp(raw["timestamp"])
            except EventError as e:
                raise ApiError(400, "invalid_event", f"events[{n}]: {e}") from None
        return OutcomeEvent(user_id, item_id, OutcomeKind(kind), raw["request_id"]), None
    try:
        event = parse_event(user_id, item_id, raw.get("event"), raw.get("timestamp", time.time()))
    except EventError as e:
        raise ApiError(400, "invalid_event", f"events[{n}]: {e}") from None
    return event, _price(n, raw)


@blueprint.post("/v1/events")
def post_events() -> Any:
    parsed = [_event(n, raw) for n, raw in enumerate(_raw_events())]
    found = services()
    shopping = [e for e, _ in parsed if isinstance(e, Event)]
    stored = found.history.append(shopping) if shopping else 0  # durable before anything is counted
    found.metrics.events.inc(stored)
    attributed = 0
    for event, price in parsed:
        if isinstance(event, OutcomeEvent):
            attributed += found.outcomes.outcome(event.kind, event.request_id, found.user_ref(event.user_id),
                                                 event.item_id)
        elif event.kind is not EventKind.VIEW:
            bought = event.kind is EventKind.PURCHASE
            attributed += found.outcomes.shopper_event(found.user_ref(event.user_id), event.item_id,
                                                       event.timestamp, price, purchase=bought)
    return jsonify({"accepted": len(parsed), "attributed": attributed}), 200
