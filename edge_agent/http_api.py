"""The local REST API (Flask app factory). Served by waitress from :mod:`edge_agent.daemon`.

Every error is a JSON body ``{"error": {"code": ..., "message": ...}}`` with a 4xx/5xx status;
no traceback ever reaches a client, and no user data reaches the logs.
"""

from __future__ import annotations

import logging
import re
import time
import traceback
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from flask import Flask, Response, g, jsonify, request
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from werkzeug.exceptions import HTTPException

from edge_agent.crypto_envelope import TamperedRecord
from edge_agent.history_store import HistoryStore, StoreError, StoreFull
from edge_agent.http_server import bearer_ok
from edge_agent.metrics import AgentMetrics
from edge_agent.recommendation_json import RecommendationJson
from edge_agent.updater import ActiveModel
from shared import bounded_json, openapi
from shared.events import EventError, parse_event, parse_identifier
from shared.recommendation import Exclude, recommend

log = logging.getLogger(__name__)

MAX_EVENTS_PER_REQUEST = 1000
#: Nesting of an events body: {"events": [{...}]} is 3 deep.
MAX_BODY_DEPTH = 8
_DIGITS = re.compile(r"[0-9]{1,9}")


@dataclass
class Services:
    active: ActiveModel
    history: HistoryStore
    token: str
    metrics: AgentMetrics
    max_body_bytes: int = 1024 * 1024
    max_k: int = 100
    max_history: int = 200


class ApiError(Exception):
    def __init__(self, status: int, code: str, message: str) -> None:
        super().__init__(message)
        self.status, self.code, self.message = status, code, message


def _error(status: int, code: str, message: str) -> tuple[Response, int]:
    return jsonify({"error": {"code": code, "message": message}}), status


def _arg(name: str) -> str | None:
    """A query parameter given at most once (None when absent)."""
    values = request.args.getlist(name)
    if len(values) > 1:
        raise ApiError(400, "invalid_parameter", f"give {name} once")
    return values[0] if values else None


def _int_arg(name: str, default: int, lo: int, hi: int) -> int:
    raw = _arg(name)
    if raw is None:
        return default
    if not _DIGITS.fullmatch(raw):  # int() would also take "1_0", " 7" and other scripts' digits ("٥")
        raise ApiError(400, "invalid_parameter", f"{name} must be an integer from {lo} to {hi}")
    value = int(raw)
    if not lo <= value <= hi:
        raise ApiError(400, "invalid_parameter", f"{name} must be an integer from {lo} to {hi}")
    return value


def _identifier(raw: object, name: str) -> str:
    """An id or category as the API takes it: like the data files, but surrounding whitespace is
    an error here rather than trimmed (the OpenAPI pattern says so)."""
    try:
        value = parse_identifier(raw, name)
    except EventError as e:
        raise ApiError(400, "invalid_parameter", str(e)) from None
    if value != raw:
        raise ApiError(400, "invalid_parameter", f"{name} has surrounding whitespace")
    return value


def _text_arg(name: str) -> str | None:
    raw = _arg(name)
    return None if raw is None else _identifier(raw, name)


def iso_timestamp(seconds: float) -> str:
    return datetime.fromtimestamp(seconds, UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def create_app(services: Services) -> Flask:
    app = Flask("edge_agent")
    app.config["MAX_CONTENT_LENGTH"] = services.max_body_bytes
    app.json.sort_keys = False  # type: ignore[attr-defined]

    metrics = services.metrics
    bodies = RecommendationJson()

    @app.before_request
    def start_timer() -> None:
        g.started = time.perf_counter()

    @app.after_request
    def record_latency(response: Response) -> Response:
        route = request.url_rule.rule if request.url_rule is not None else "unmatched"
        metrics.observe_request(route, request.method, response.status_code, g.get("started", time.perf_counter()))
        return response

    @app.before_request
    def authenticate() -> Any:
        if request.path == "/healthz":
            return None
        if not bearer_ok(request.headers.get("Authorization", ""), services.token):
            response, status = _error(401, "unauthorized", "send Authorization: Bearer <token>")
            response.headers["WWW-Authenticate"] = "Bearer"
            return response, status
        return None

    @app.errorhandler(ApiError)
    def api_error(e: ApiError) -> Any:
        return _error(e.status, e.code, e.message)

    @app.errorhandler(StoreFull)
    def store_full(e: StoreFull) -> Any:
        log.error("history store full: %s", e)
        return _error(507, "storage_full", "the agent's storage is full; the request was not stored")

    @app.errorhandler(StoreError)
    def store_error(e: StoreError) -> Any:
        log.error("history store error: %s", e)
        return _error(503, "storage_unavailable", "the agent's history store is unavailable; see its log")

    @app.errorhandler(TamperedRecord)
    def tampered(e: TamperedRecord) -> Any:
        log.error("a user's history failed authentication; see the threat model in docs/security.md")
        return _error(500, "history_corrupt", "this user's stored history failed its integrity check")

    @app.errorhandler(HTTPException)
    def http_error(e: HTTPException) -> Any:
        code = (e.name or "error").lower().replace(" ", "_")
        response, status = _error(e.code or 500, code, e.description or code)
        for name, value in e.get_headers():  # e.g. Allow on 405 (RFC 9110)
            if name.lower() not in ("content-type", "content-length"):
                response.headers[name] = value
        return response, status

    @app.errorhandler(Exception)
    def unexpected(e: Exception) -> Any:
        # the route template, never the path, and the traceback without the exception's message:
        # both may carry a user id
        route = request.url_rule.rule if request.url_rule is not None else "an unmatched path"
        where = "".join(traceback.format_tb(e.__traceback__))
        log.error("unhandled %s on %s %s:\n%s", type(e).__name__, request.method, route, where)
        return _error(500, "internal_error", "internal error; see the agent log")

    @app.get("/healthz")
    def healthz() -> Any:
        return jsonify({"status": "ok"})

    @app.get("/readyz")
    def readyz() -> Any:
        model = services.active.current
        if model is None:
            return _error(503, "no_model", "no model installed yet")
        return jsonify({"status": "ready", "model_version": model.version})

    @app.get("/metrics")
    def prometheus_metrics() -> Any:
        return Response(generate_latest(metrics.registry), content_type=CONTENT_TYPE_LATEST)

    @app.get("/v1/openapi.json")
    def openapi_document() -> Any:
        return jsonify(openapi.document())

    @app.get("/v1/model")
    def model_info() -> Any:
        model = services.active.current
        last = services.active.last_update
        if model is None:
            raise ApiError(404, "no_model", "no model installed yet")
        manifest = model.manifest
        return jsonify(
            {
                "version": model.version,
                "runtime": model.runtime,
                "loaded_at": iso_timestamp(model.loaded_at),
                "expired": manifest.expires_at.timestamp() < time.time(),
                "catalog_items": len(model.catalog.items),
                "explanations": model.explains,
                "manifest": manifest.as_dict(),
                "last_update": last.to_json() if last else None,
            }
        )

    @app.post("/v1/events")
    def post_events() -> Any:
        if not request.is_json:
            raise ApiError(400, "invalid_body", "send Content-Type: application/json")
        try:  # depth and numbers bounded before parsing: 100,000 nested brackets are a 400
            body = bounded_json.loads(request.get_data(cache=False), max_depth=MAX_BODY_DEPTH)
        except bounded_json.JsonRejected as e:
            raise ApiError(400, "invalid_body", f"the body is not acceptable JSON: {e}") from None
        if isinstance(body, dict) and "events" in body:
            body = body["events"]
        raw_events = body if isinstance(body, list) else [body] if isinstance(body, dict) else None
        if raw_events is None:
            raise ApiError(400, "invalid_body", "send a JSON event object, a list, or {\"events\": [...]}")
        if not 1 <= len(raw_events) <= MAX_EVENTS_PER_REQUEST:
            raise ApiError(400, "invalid_body", f"send 1 to {MAX_EVENTS_PER_REQUEST} events per request")
        events = []
        for n, raw in enumerate(raw_events):
            if not isinstance(raw, dict):
                raise ApiError(400, "invalid_event", f"events[{n}] must be an object")
            try:
                event = parse_event(raw.get("user_id"), raw.get("item_id"), raw.get("event"),
                                    raw.get("timestamp", time.time()))
            except EventError as e:
                raise ApiError(400, "invalid_event", f"events[{n}]: {e}") from None
            if (event.user_id, event.item_id) != (raw.get("user_id"), raw.get("item_id")):
                raise ApiError(400, "invalid_event", f"events[{n}]: ids must be strings without surrounding "
                                                     "whitespace")
            events.append(event)
        stored = services.history.append(events)
        metrics.events.inc(stored)
        return jsonify({"accepted": stored}), 200

    @app.get("/v1/users/<user_id>/history")
    def user_history(user_id: str) -> Any:
        user_id = _identifier(user_id, "user_id")
        events = services.history.recent(user_id, services.max_history)
        return jsonify(
            {
                "user_id": user_id,
                "events": [
                    {"item_id": e.item_id, "event": e.kind.value, "timestamp": iso_timestamp(e.timestamp)}
                    for e in events
                ],
            }
        )

    @app.delete("/v1/users/<user_id>")
    def delete_user(user_id: str) -> Any:
        user_id = _identifier(user_id, "user_id")
        return jsonify({"user_id": user_id, "deleted": services.history.delete_user(user_id)})

    @app.get("/v1/recommendations")
    def recommendations() -> Any:
        user_id = _identifier(_arg("user_id") or "", "user_id")
        k = _int_arg("k", 10, 1, services.max_k)
        raw_exclude = _arg("exclude")
        try:
            exclude = Exclude("none" if raw_exclude is None else raw_exclude)
        except ValueError:
            raise ApiError(400, "invalid_parameter", "exclude must be none, purchased or seen") from None
        category = _text_arg("category")
        model = services.active.current  # one reference: a swap mid-request does not affect us
        if model is None:
            raise ApiError(503, "no_model", "no model installed yet; retry later")
        # the model reads the last history_length events; exclusions see all that is kept, and the
        # purchase memory (bought items, also those whose events the event cap has dropped)
        history = services.history.recent(user_id, max(model.history_length, services.max_history))
        bought = services.history.purchased(user_id) if exclude is not Exclude.NONE else ()
        result = recommend(model, history, k, exclude, category, bought)
        metrics.count_recommendation(result.fallback)
        if result.model_failed:
            metrics.model_errors.inc()
            metrics.health.model_failed()
            log.error("model version %s answered a query with garbage; served popular items", model.version)
        return Response(bodies.render(user_id, result), mimetype="application/json")

    return app
