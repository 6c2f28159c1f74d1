"""The catalog file of a bundle: item metadata in model index order, and the popularity fallback.

``catalog.json``::

    {"items": [{"id": "85123A", "title": "...", "category": "...", "price": 2.55}, ...],
     "popular": [12, 7, ...]}

``items[i]`` is the item behind model output index ``i``; ``popular`` lists item indices, most
popular first, for shoppers with no usable history.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass

from shared.bundle import MalformedManifest


class CatalogError(MalformedManifest):
    reason = "bad_catalog"


@dataclass(frozen=True, slots=True)
class CatalogItem:
    id: str
    title: str = ""
    category: str = ""
    price: float | None = None

    def to_json(self) -> dict[str, object]:
        return {"id": self.id, "title": self.title, "category": self.category, "price": self.price}


@dataclass(frozen=True)
class Catalog:
    items: tuple[CatalogItem, ...]
    popular: tuple[int, ...]

    def index_of(self) -> dict[str, int]:
        return {item.id: i for i, item in enumerate(self.items)}

    def to_bytes(self) -> bytes:
        data = {"items": [i.to_json() for i in self.items], "popular": list(self.popular)}
        return json.dumps(data, ensure_ascii=False, separators=(",", ":")).encode("utf-8")


def parse_catalog(data: bytes, num_items: int) -> Catalog:
    """Parse ``catalog.json``; it must describe exactly the ``num_items`` items of the model."""
    try:
        raw = json.loads(data)
    except (UnicodeDecodeError, json.JSONDecodeError):
        raise CatalogError("catalog is not UTF-8 JSON") from None
    if not isinstance(raw, dict) or not isinstance(raw.get("items"), list):
        raise CatalogError("catalog must be an object with an items list")
    if len(raw["items"]) != num_items:
        raise CatalogError(f"catalog has {len(raw['items'])} items, the model scores {num_items}")
    items = []
    seen: set[str] = set()
    for n, entry in enumerate(raw["items"]):
        if not isinstance(entry, dict) or not isinstance(entry.get("id"), str) or not entry["id"]:
            raise CatalogError(f"catalog item {n} needs a string id")
        if entry["id"] in seen:
            raise CatalogError(f"catalog item id {entry['id'][:40]!r} appears twice")
        seen.add(entry["id"])
        price = entry.get("price")
        if price is not None and (
            not isinstance(price, (int, float)) or isinstance(price, bool) or not math.isfinite(price)
        ):
            raise CatalogError(f"catalog item {n} has a non-numeric price")
        items.append(
            CatalogItem(
                id=entry["id"],
                title=str(entry.get("title") or ""),
                category=str(entry.get("category") or ""),
                price=None if price is None else float(price),
            )
        )
    popular = raw.get("popular", [])
    if not isinstance(popular, list) or not all(
        isinstance(i, int) and not isinstance(i, bool) and 0 <= i < num_items for i in popular
    ):
        raise CatalogError("catalog popular must list item indices within the catalog")
    return Catalog(items=tuple(items), popular=tuple(popular))
