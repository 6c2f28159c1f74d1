"""The store's stock and local prices (``PUT /v1/stock``, ``GET /v1/stock``).

The store's systems send batches of ``{"id", "available", "price"?}``; each is stored durably
(:mod:`edge_agent.stock_store`) before the 200, and the very next recommendation of any scene
leaves out what is out of stock and shows local prices.
"""

from __future__ import annotations

import math
from typing import Any

from flask import Blueprint, jsonify

from edge_agent.api.params import arg, identifier, int_arg, json_body, only_args
from edge_agent.api.services import services
from edge_agent.errors import ApiError
from edge_agent.stock_store import StockEntry, StockStore
from shared.openapi_scenes import MAX_STOCK_ENTRIES as MAX_ENTRIES  # a batch is one transaction
from shared.openapi_scenes import STOCK_PAGE_LIMIT as PAGE_LIMIT

#: The largest local price accepted (a sanity bound, as for event prices).
MAX_PRICE = 1e9

blueprint = Blueprint("stock", __name__)


def stock_store() -> StockStore:
    store = services().stock
    if store is None:
        raise ApiError(503, "stock_unavailable", "this agent keeps no stock")
    return store


def _entry(n: int, raw: object) -> StockEntry:
    if not isinstance(raw, dict) or set(raw) - {"id", "available", "price"}:
        raise ApiError(400, "invalid_body", f"items[{n}] must be an object with id, available and optional price")
    if not isinstance(raw.get("id"), str):
        raise ApiError(400, "invalid_body", f"items[{n}]: id must be a string")
    try:
        item_id = identifier(raw.get("id"), "id")
    except ApiError as e:
        raise ApiError(400, "invalid_body", f"items[{n}]: {e.message}") from None
    available, price = raw.get("available"), raw.get("price")
    if not isinstance(available, bool):
        raise ApiError(400, "invalid_body", f"items[{n}]: available must be true or false")
    if price is not None and (isinstance(price, bool) or not isinstance(price, (int, float))
                              or not math.isfinite(price) or not 0 <= price <= MAX_PRICE):
        raise ApiError(400, "invalid_body", f"items[{n}]: price must be null or a number from 0 to {MAX_PRICE:g}")
    return StockEntry(item_id, available, None if price is None else float(price))


@blueprint.put("/v1/stock")
def put_stock() -> Any:
    only_args()
    store = stock_store()
    body = json_body(4)
    raw = body.get("items") if isinstance(body, dict) and set(body) == {"items"} else None
    if not isinstance(raw, list) or not 1 <= len(raw) <= MAX_ENTRIES:
        raise ApiError(400, "invalid_body", f'send {{"items": [...]}} with 1 to {MAX_ENTRIES} entries')
    entries = [_entry(n, entry) for n, entry in enumerate(raw)]
    store.put(entries)  # durable before the answer
    return jsonify({"accepted": len(entries)})


@blueprint.get("/v1/stock")
def get_stock() -> Any:
    only_args("after", "limit")
    store = stock_store()
    after = arg("after")
    if after is not None:
        after = identifier(after, "after")
    limit = int_arg("limit", 100, 1, PAGE_LIMIT)
    entries = store.page(after, limit)
    out_of_stock, local_prices = store.counts()
    return jsonify({
        "items": [{"id": e.item_id, "available": e.available, "price": e.price} for e in entries],
        "next": entries[-1].item_id if len(entries) == limit else None,
        "out_of_stock": out_of_stock,
        "local_prices": local_prices,
    })
