"""Reading a request's parameters as the OpenAPI document says; anything else is an ApiError 400."""

from __future__ import annotations

import re
from datetime import UTC, datetime

from flask import request

from edge_agent.errors import ApiError
from shared import bounded_json
from shared.errors import EventError, JsonRejected
from shared.events import parse_identifier

_DIGITS = re.compile(r"[0-9]{1,9}")


def arg(name: str) -> str | None:
    """A query parameter given at most once (None when absent)."""
    values = request.args.getlist(name)
    if len(values) > 1:
        raise ApiError(400, "invalid_parameter", f"give {name} once")
    return values[0] if values else None


def only_args(*names: str) -> None:
    """Refuse a query parameter the route does not take (a typo would otherwise pass unseen)."""
    unknown = sorted(set(request.args) - set(names))
    if unknown:
        raise ApiError(400, "invalid_parameter", f"unknown parameter {unknown[0][:40]!r}; this route takes "
                                                 + ", ".join(names))


def int_arg(name: str, default: int, lo: int, hi: int) -> int:
    raw = arg(name)
    if raw is None:
        return default
    if not _DIGITS.fullmatch(raw):  # int() would also take "1_0", " 7" and other scripts' digits ("٥")
        raise ApiError(400, "invalid_parameter", f"{name} must be an integer from {lo} to {hi}")
    value = int(raw)
    if not lo <= value <= hi:
        raise ApiError(400, "invalid_parameter", f"{name} must be an integer from {lo} to {hi}")
    return value


def identifier(raw: object, name: str) -> str:
    """An id or category as the API takes it: like the data files, but surrounding whitespace is
    an error here rather than trimmed (the OpenAPI pattern says so)."""
    try:
        value = parse_identifier(raw, name)
    except EventError as e:
        raise ApiError(400, "invalid_parameter", str(e)) from None
    if value != raw:
        raise ApiError(400, "invalid_parameter", f"{name} has surrounding whitespace")
    return value


def text_arg(name: str) -> str | None:
    raw = arg(name)
    return None if raw is None else identifier(raw, name)


def iso_timestamp(seconds: float) -> str:
    return datetime.fromtimestamp(seconds, UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def json_body(max_depth: int) -> object:
    """The request's JSON body, its depth and numbers bounded before parsing (100,000 nested
    brackets are a 400, not a crash); anything else is an ApiError 400."""
    if not request.is_json:
        raise ApiError(400, "invalid_body", "send Content-Type: application/json")
    try:
        return bounded_json.loads(request.get_data(cache=False), max_depth=max_depth)
    except JsonRejected as e:
        raise ApiError(400, "invalid_body", f"the body is not acceptable JSON: {e}") from None
