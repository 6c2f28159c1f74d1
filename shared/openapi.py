"""The edge agent's REST API as an OpenAPI 3.1 document (pure data; served at ``/v1/openapi.json``).

This is the contract apps code against. ``tests/test_api_contract.py`` keeps it in sync with the
agent: every route the agent serves is here with the same methods and parameters, the document
is a valid OpenAPI 3.1 spec, and real responses of a running agent match these schemas.
"""

from __future__ import annotations

import copy
from typing import Any

from shared import openapi_scenes, status_schema
from shared.api_scopes import ANY, OPEN_PATHS, required_scope
from shared.events import CONTROL_CHARACTERS, MAX_ID_LENGTH, EventKind
from shared.outcomes import REQUEST_ID_PATTERN, OutcomeKind

API_VERSION = "1.0.0"

_PATTERN = f"^[^\\s{CONTROL_CHARACTERS}]([^{CONTROL_CHARACTERS}]*[^\\s{CONTROL_CHARACTERS}])?$"
_ID = {"type": "string", "minLength": 1, "maxLength": MAX_ID_LENGTH, "pattern": _PATTERN}
_USER_ID = {**_ID, "pattern": _PATTERN.replace("[^", "[^/"), "description": "No '/': user ids appear in URL paths."}
_TIMESTAMP_IN = {
    "description": "ISO-8601 time (naive means UTC) or epoch seconds; defaults to now.",
    "oneOf": [{"type": "string"}, {"type": "number", "minimum": 0, "maximum": 32503680000}],
}

_SCHEMAS: dict[str, Any] = {
    "Error": {
        "type": "object",
        "required": ["error"],
        "properties": {
            "error": {
                "type": "object",
                "required": ["code", "message"],
                "properties": {
                    "code": {"type": "string", "description": "Machine-readable, e.g. invalid_parameter."},
                    "message": {"type": "string", "description": "What went wrong and what to do."},
                },
            }
        },
    },
    "Event": {
        "type": "object",
        "description": "A shopping event (view, cart, purchase: stored in the shopper's history), or an outcome "
                       "event (impression, click: counted for the request_id it quotes, never stored as taste).",
        "required": ["user_id", "item_id", "event"],
        "properties": {
            "user_id": _USER_ID,
            "item_id": _ID,
            "event": {"type": "string", "enum": [k.value for k in EventKind] + [k.value for k in OutcomeKind]},
            "timestamp": _TIMESTAMP_IN,
            "request_id": {"type": "string", "pattern": REQUEST_ID_PATTERN,
                           "description": "The request_id of the recommendation response that showed the item; "
                                          "required for impression and click."},
            "price": {"type": "number", "minimum": 0, "maximum": 1e9,
                      "description": "Optional, for cart and purchase: a purchase of a recommended item adds it "
                                     "to the revenue the agent reports."},
        },
        "if": {"properties": {"event": {"enum": [k.value for k in OutcomeKind]}}},
        "then": {"required": ["request_id"]},
    },
    "EventBatch": {
        "description": "One event, a list of events, or {\"events\": [...]}; 1 to 1000 events.",
        "oneOf": [
            {"$ref": "#/components/schemas/Event"},
            {"type": "array", "minItems": 1, "maxItems": 1000, "items": {"$ref": "#/components/schemas/Event"}},
            {
                "type": "object",
                "required": ["events"],
                "properties": {
                    "events": {
                        "type": "array", "minItems": 1, "maxItems": 1000,
                        "items": {"$ref": "#/components/schemas/Event"},
                    }
                },
            },
        ],
    },
    "Accepted": {
        "type": "object",
        "required": ["accepted", "attributed"],
        "properties": {
            "accepted": {"type": "integer", "minimum": 0},
            "attributed": {"type": "integer", "minimum": 0,
                           "description": "Events credited to a recommendation: impressions and clicks of a known "
                                          "request, carts and purchases that converted a recommended item."},
        },
    },
    "Item": {
        "type": "object",
        "required": ["id", "title", "category", "price", "score", "because"],
        "properties": {
            "id": {"type": "string"},
            "title": {"type": "string"},
            "category": {"type": "string"},
            "price": {"type": ["number", "null"]},
            "score": {"type": ["number", "null"], "description": "Model score; null for popularity fill-ins."},
            "because": {
                "description": "The history item that added most to this item's score, when known; the item itself "
                               "when the shopper bought it before and that weighs most.",
                "oneOf": [
                    {"type": "null"},
                    {
                        "type": "object",
                        "required": ["id", "title"],
                        "properties": {"id": {"type": "string"}, "title": {"type": "string"}},
                    },
                ],
            },
        },
    },
    "Recommendations": {
        "type": "object",
        "required": ["user_id", "request_id", "model_version", "fallback", "items"],
        "properties": {
            "user_id": {"type": "string"},
            "request_id": {"type": "string", "pattern": REQUEST_ID_PATTERN,
                           "description": "Quote it in impression and click events for these items."},
            "model_version": {"type": "integer"},
            "fallback": {
                "type": "boolean",
                "description": "True when popularity served it (no usable history, or the model failed).",
            },
            "items": {"type": "array", "items": {"$ref": "#/components/schemas/Item"}},
        },
    },
    "History": {
        "type": "object",
        "required": ["user_id", "events"],
        "properties": {
            "user_id": {"type": "string"},
            "events": {
                "type": "array",
                "description": "Most recent first.",
                "items": {
                    "type": "object",
                    "required": ["item_id", "event", "timestamp"],
                    "properties": {
                        "item_id": {"type": "string"},
                        "event": {"type": "string", "enum": [k.value for k in EventKind]},
                        "timestamp": {"type": "string", "format": "date-time"},
                    },
                },
            },
        },
    },
    "Deleted": {
        "type": "object",
        "required": ["user_id", "deleted"],
        "properties": {"user_id": {"type": "string"}, "deleted": {"type": "boolean"}},
    },
    "UpdateResult": {
        "type": "object",
        "required": ["version", "result", "reason", "at"],
        "properties": {
            "version": {"type": ["integer", "null"]},
            "result": {"type": "string", "enum": ["activated", "rejected", "failed", "receiving"]},
            "reason": {"type": "string"},
            "at": {"type": "number", "description": "Epoch seconds."},
        },
    },
    "ModelInfo": {
        "type": "object",
        "required": [
            "version", "runtime", "loaded_at", "expired", "catalog_items", "history_items", "explanations", "manifest",
            "last_update",
        ],
        "properties": {
            "version": {"type": "integer"},
            "runtime": {"type": "string", "description": "Interpreter in use: litert, tflite_runtime or tensorflow."},
            "loaded_at": {"type": "string", "format": "date-time"},
            "expired": {"type": "boolean", "description": "The manifest's expiry has passed: the model is stale."},
            "catalog_items": {"type": "integer", "description": "Items the model ranks (a store's assortment)."},
            "history_items": {
                "type": "integer",
                "description": "Items the model reads in shoppers' histories: the ranked ones, and in a store's "
                               "bundle the chain's other items.",
            },
            "explanations": {"type": "boolean"},
            "manifest": {"type": "object", "description": "The verified manifest (see shared/bundle.py)."},
            "last_update": {"oneOf": [{"type": "null"}, {"$ref": "#/components/schemas/UpdateResult"}]},
            "rules": {"oneOf": [{"type": "null"}, {"$ref": "#/components/schemas/RulesStatus"}],
                      "description": "The signed business rules applied (block, boost, pin)."},
            "keys": {"oneOf": [{"type": "null"}, {"$ref": "#/components/schemas/KeysStatus"}],
                     "description": "The signing keys trusted (ids) and the key rotation version."},
        },
    },
    "Health": {
        "type": "object",
        "required": ["status"],
        "properties": {"status": {"type": "string"}, "model_version": {"type": "integer"}},
    },
    **status_schema.SCHEMAS,  # published over MQTT, not served here: one contract for both
    **openapi_scenes.schemas(_ID),  # the shop's other pages, the store's stock
}


def _ok(schema: str, description: str = "OK") -> dict[str, Any]:
    ref = {"$ref": f"#/components/schemas/{schema}"}
    return {"description": description, "content": {"application/json": {"schema": ref}}}


def _error(description: str) -> dict[str, Any]:
    return _ok("Error", description)


_UNAUTHORIZED = _error("Missing or wrong bearer token.")
_USER_IN_PATH = {"name": "user_id", "in": "path", "required": True, "schema": _USER_ID}

_PATHS: dict[str, Any] = {
    "/healthz": {
        "get": {
            "summary": "Liveness: the process answers.", "security": [],
            "responses": {"200": _ok("Health")},
        }
    },
    "/readyz": {
        "get": {
            "summary": "Readiness: a model is loaded and the history store is open.",
            "responses": {"200": _ok("Health"), "401": _UNAUTHORIZED, "503": _error("No model yet.")},
        }
    },
    "/metrics": {
        "get": {
            "summary": "Prometheus metrics (text exposition format).",
            "responses": {
                "200": {"description": "Metrics.", "content": {"text/plain": {"schema": {"type": "string"}}}},
                "401": _UNAUTHORIZED,
            },
        }
    },
    "/v1/openapi.json": {
        "get": {
            "summary": "This document.",
            "responses": {
                "200": {"description": "OpenAPI 3.1", "content": {"application/json": {"schema": {"type": "object"}}}},
                "401": _UNAUTHORIZED,
            },
        }
    },
    "/v1/model": {
        "get": {
            "summary": "The active model, its verified manifest and the last update result.",
            "responses": {"200": _ok("ModelInfo"), "401": _UNAUTHORIZED, "404": _error("No model installed yet.")},
        }
    },
    "/v1/events": {
        "post": {
            "summary": "Store shopper events (the next recommendation for that shopper uses them) and outcome "
                       "events (impressions and clicks of a recommendation response).",
            "requestBody": {
                "required": True,
                "content": {"application/json": {"schema": {"$ref": "#/components/schemas/EventBatch"}}},
            },
            "responses": {
                "200": _ok("Accepted", "All events were stored durably (all or none)."),
                "400": _error("Invalid body or event; nothing was stored."),
                "401": _UNAUTHORIZED,
                "413": _error("Body larger than api.max_body_bytes."),
                "503": _error("History store unavailable."),
                "507": _error("Storage full; nothing was stored."),
            },
        }
    },
    "/v1/recommendations": {
        "get": {
            "summary": "Personalised top-k items for a shopper.",
            "parameters": [
                {"name": "user_id", "in": "query", "required": True, "schema": _USER_ID},
                {"name": "k", "in": "query", "required": False,
                 "schema": {"type": "integer", "minimum": 1, "maximum": 1000, "default": 10},
                 "description": "At most api.max_k (default 100)."},
                {"name": "exclude", "in": "query", "required": False,
                 "schema": {"type": "string", "enum": ["none", "purchased", "seen"], "default": "none"}},
                {"name": "category", "in": "query", "required": False, "schema": _ID,
                 "description": "Only items of this category (case-insensitive); the model ranks all of them."},
            ],
            "responses": {
                "200": _ok("Recommendations"),
                "400": _error("Invalid parameter."),
                "401": _UNAUTHORIZED,
                "503": _error("No model installed yet, or history store unavailable."),
            },
        }
    },
    "/v1/users/{user_id}/history": {
        "get": {
            "summary": "The shopper's stored events (data access request).",
            "parameters": [_USER_IN_PATH],
            "responses": {"200": _ok("History"), "400": _error("Invalid user id."), "401": _UNAUTHORIZED,
                          "503": _error("History store unavailable or damaged.")},
        }
    },
    "/v1/users/{user_id}": {
        "delete": {
            "summary": "Erase the shopper's history for good (crypto-shredding).",
            "parameters": [_USER_IN_PATH],
            "responses": {"200": _ok("Deleted"), "400": _error("Invalid user id."), "401": _UNAUTHORIZED,
                          "503": _error("History store unavailable (the user's key could not be destroyed).")},
        }
    },
}


_PATHS.update(openapi_scenes.paths(_ID, _USER_ID, _ok, _error))


_FORBIDDEN = _error("The token is valid but lacks the scope this operation needs (x-required-scope).")
_RATE_LIMITED = {
    **_error("The token's rate limit (api.rate_limit_per_s, or its line in api.tokens_file) is used up."),
    "headers": {"Retry-After": {"description": "Seconds to wait.", "schema": {"type": "integer", "minimum": 1}}},
}


def _with_access(paths: dict[str, Any]) -> dict[str, Any]:
    """Every operation that needs a token: its scope (shared.api_scopes) and the 401/403/429 it may get.

    Done here, for every path, so routes added later are documented the same way."""
    paths = copy.deepcopy(paths)
    for path, operations in paths.items():
        if path in OPEN_PATHS:
            continue
        for method, operation in operations.items():
            scope = required_scope(method.upper(), path)
            operation["x-required-scope"] = "any valid token" if scope == ANY else scope
            responses = operation.setdefault("responses", {})
            responses.setdefault("401", _UNAUTHORIZED)
            if scope != ANY:
                responses.setdefault("403", _FORBIDDEN)
            responses.setdefault("429", _RATE_LIMITED)
    return paths


def document() -> dict[str, Any]:
    """The OpenAPI document (a fresh copy; callers may modify it)."""
    return copy.deepcopy(
        {
            "openapi": "3.1.0",
            "info": {
                "title": "Edge Recommender agent API",
                "version": API_VERSION,
                "description": "Local REST API of an edge agent. Binds to 127.0.0.1 by default.",
            },
            "servers": [{"url": "http://127.0.0.1:8080"}],
            "security": [{"bearer": []}],
            "paths": _with_access(_PATHS),
            "components": {
                "securitySchemes": {"bearer": {
                    "type": "http", "scheme": "bearer",
                    "description": "A token of api.tokens_file with scopes recommend, events, admin (each operation's "
                                   "x-required-scope), or the single all-scopes token of api.token_file.",
                }},
                "schemas": _SCHEMAS,
            },
        }
    )
