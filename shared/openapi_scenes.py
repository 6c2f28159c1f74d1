"""The OpenAPI paths and schemas of the shop's other pages and of the store's stock (pure data).

Merged into :func:`shared.openapi.document`; kept apart so that the document's module stays
readable. The routes are :mod:`edge_agent.api.scenes` and :mod:`edge_agent.api.stock`.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from shared.outcomes import REQUEST_ID_PATTERN

#: Limits the routes apply (edge_agent.api.scenes, edge_agent.api.stock).
MAX_BASKET = 100
MAX_STOCK_ENTRIES = 10_000
STOCK_PAGE_LIMIT = 1000

def schemas(item_id: dict[str, Any]) -> dict[str, Any]:
    """The schemas, built from the document's own schema of ids."""
    return {
        "SceneRecommendations": {
            "type": "object",
            "required": ["user_id", "request_id", "model_version", "fallback", "items"],
            "properties": {
                "user_id": {"type": ["string", "null"], "description": "null for a guest (no user_id given)."},
                "request_id": {"type": "string", "pattern": REQUEST_ID_PATTERN,
                               "description": "Quote it in impression and click events for these items (credited "
                                              "only when the request named the shopper)."},
                "model_version": {"type": "integer"},
                "fallback": {"type": "boolean",
                             "description": "True when popularity (or, for new items, the best sellers) served it."},
                "items": {"type": "array", "items": {"$ref": "#/components/schemas/Item"}},
            },
        },
        "StockEntry": {
            "type": "object",
            "required": ["id", "available"],
            "additionalProperties": False,
            "properties": {
                "id": item_id,
                "available": {"type": "boolean", "description": "false: never recommended until sent as true."},
                "price": {"type": ["number", "null"], "minimum": 0, "maximum": 1e9,
                          "description": "The local price shown instead of the catalogue's; null or absent: the "
                                         "catalogue's."},
            },
        },
        "StockAccepted": {
            "type": "object", "required": ["accepted"], "properties": {"accepted": {"type": "integer", "minimum": 0}},
        },
        "StockPage": {
            "type": "object",
            "required": ["items", "next", "out_of_stock", "local_prices"],
            "properties": {
                "items": {"type": "array", "description": "Items out of stock or with a local price, by id.",
                          "items": {"$ref": "#/components/schemas/StockEntry"}},
                "next": {"type": ["string", "null"], "description": "The after of the next page; null at the end."},
                "out_of_stock": {"type": "integer", "minimum": 0},
                "local_prices": {"type": "integer", "minimum": 0},
            },
        },
    }


def paths(item_id: dict[str, Any], user_id: dict[str, Any], ok: Callable[[str], dict[str, Any]],
          error: Callable[[str], dict[str, Any]]) -> dict[str, Any]:
    """The paths, built from the document's own schemas of ids and its response helpers."""
    unauthorized = error("Missing or wrong bearer token.")
    answers = {"200": ok("SceneRecommendations"), "400": error("Invalid parameter or body."), "401": unauthorized,
               "503": error("No model installed yet, or history store unavailable.")}
    k = {"name": "k", "in": "query", "required": False,
         "schema": {"type": "integer", "minimum": 1, "maximum": 1000, "default": 10},
         "description": "At most api.max_k (default 100)."}
    exclude_values = ["none", "purchased", "seen"]
    filters = [
        {"name": "user_id", "in": "query", "required": False, "schema": user_id,
         "description": "The shopper: for exclude, the holdout arm and crediting clicks; absent: a guest."},
        k,
        {"name": "exclude", "in": "query", "required": False,
         "schema": {"type": "string", "enum": exclude_values, "default": "none"}},
        {"name": "category", "in": "query", "required": False, "schema": item_id,
         "description": "Only items of this category (case-insensitive)."},
    ]
    basket = {
        "type": "object",
        "required": ["items"],
        "additionalProperties": False,
        "properties": {
            "items": {"type": "array", "minItems": 1, "maxItems": MAX_BASKET, "items": item_id,
                      "description": "The basket's item ids, in the order added; never stored, never returned."},
            "user_id": user_id,
            "k": {"type": "integer", "minimum": 1, "maximum": 1000, "default": 10},
            "exclude": {"type": "string", "enum": exclude_values, "default": "none"},
            "category": item_id,
        },
    }
    return {
        "/v1/items/{item_id}/related": {
            "get": {
                "summary": "Product page: items that go with or resemble this one (never itself).",
                "parameters": [{"name": "item_id", "in": "path", "required": True, "schema": item_id}, *filters],
                "responses": {**answers, "404": error("The model does not know this item.")},
            }
        },
        "/v1/recommendations/cart": {
            "post": {
                "summary": "Basket page: items for this basket (and the shopper's history, when named).",
                "requestBody": {"required": True, "content": {"application/json": {"schema": basket}}},
                "responses": {**answers, "413": error("Body larger than api.max_body_bytes.")},
            }
        },
        "/v1/recommendations/new": {
            "get": {
                "summary": "New for you: only items new to the catalogue, ranked for the shopper.",
                "parameters": filters,
                "responses": answers,
            }
        },
        "/v1/stock": {
            "put": {
                "summary": "The store's stock and local prices, a batch of items (stored durably before the "
                           "answer; the next recommendation of every page uses it).",
                "requestBody": {"required": True, "content": {"application/json": {"schema": {
                    "type": "object", "required": ["items"], "additionalProperties": False,
                    "properties": {"items": {"type": "array", "minItems": 1, "maxItems": MAX_STOCK_ENTRIES,
                                             "items": {"$ref": "#/components/schemas/StockEntry"}}}}}}},
                "responses": {"200": ok("StockAccepted"), "400": error("Invalid body; nothing was stored."),
                              "401": unauthorized, "413": error("Body larger than api.max_body_bytes."),
                              "503": error("Stock store unavailable."), "507": error("Storage full.")},
            },
            "get": {
                "summary": "The stored stock: items out of stock or with a local price, a page at a time.",
                "parameters": [
                    {"name": "after", "in": "query", "required": False, "schema": item_id,
                     "description": "The next field of the previous page."},
                    {"name": "limit", "in": "query", "required": False,
                     "schema": {"type": "integer", "minimum": 1, "maximum": STOCK_PAGE_LIMIT, "default": 100}},
                ],
                "responses": {"200": ok("StockPage"), "400": error("Invalid parameter."), "401": unauthorized,
                              "503": error("Stock store unavailable.")},
            },
        },
    }
