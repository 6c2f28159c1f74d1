"""Every error of the API as one JSON shape, in one place: ``{"error": {"code", "message"}}``."""

from __future__ import annotations

import logging
import traceback
from typing import Any

from flask import Flask, Response, jsonify, request
from werkzeug.exceptions import HTTPException

from edge_agent.errors import ApiError, StoreError, StoreFull, TamperedRecord

log = logging.getLogger("edge_agent.api")


def error_response(status: int, code: str, message: str) -> tuple[Response, int]:
    return jsonify({"error": {"code": code, "message": message}}), status


def api_error(e: ApiError) -> Any:
    return error_response(e.status, e.code, e.message)


def store_full(e: StoreFull) -> Any:
    log.error("history store full: %s", e)
    return error_response(507, "storage_full", "the agent's storage is full; the request was not stored")


def store_error(e: StoreError) -> Any:
    log.error("history store error: %s", e)
    return error_response(503, "storage_unavailable", "the agent's history store is unavailable; see its log")


def tampered(e: TamperedRecord) -> Any:
    log.error("a user's history failed authentication; see the threat model in docs/security.md")
    return error_response(500, "history_corrupt", "this user's stored history failed its integrity check")


def http_error(e: HTTPException) -> Any:
    code = (e.name or "error").lower().replace(" ", "_")
    response, status = error_response(e.code or 500, code, e.description or code)
    for name, value in e.get_headers():  # e.g. Allow on 405 (RFC 9110)
        if name.lower() not in ("content-type", "content-length"):
            response.headers[name] = value
    return response, status


def unexpected(e: Exception) -> Any:
    # the route template, never the path, and the traceback without the exception's message:
    # both may carry a user id
    route = request.url_rule.rule if request.url_rule is not None else "an unmatched path"
    where = "".join(traceback.format_tb(e.__traceback__))
    log.error("unhandled %s on %s %s:\n%s", type(e).__name__, request.method, route, where)
    return error_response(500, "internal_error", "internal error; see the agent log")


def register(app: Flask) -> None:
    app.register_error_handler(ApiError, api_error)
    app.register_error_handler(StoreFull, store_full)
    app.register_error_handler(StoreError, store_error)
    app.register_error_handler(TamperedRecord, tampered)
    app.register_error_handler(HTTPException, http_error)
    app.register_error_handler(Exception, unexpected)
