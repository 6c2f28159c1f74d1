"""The catalog file of a bundle: item metadata in model index order, and the popularity fallback.

``catalog.json``::

    {"items": [{"id": "85123A", "title": "...", "category": "...", "price": 2.55}, ...],
     "popular": [12, 7, ...]}

``items[i]`` is the item behind model output index ``i``; ``popular`` lists item indices, most
popular first, for shoppers with no usable history. Optional ``"new": [40, 41, ...]`` lists the
indices of items new to the catalogue: items without training events, whose vectors the trainer
predicted from their side features (:mod:`cloud_trainer.models.side_features`); the "new for you"
shelf ranks only these. Catalogues without the key (older runs) have no new items.

A store's bundle (``cloud-trainer export --assortment``) ranks only the items the store sells, but
a shopper's history may hold others (items the store stopped selling, bought in another store of
the chain): those are listed after the sold ones, as ``"history_only": [{"id", "title"}, ...]``.
History index ``len(items) + j`` is ``history_only[j]``; the model reads them in histories and never
returns them. One index space serves both: an item sold has the same index as history input and
as output.
"""

from __future__ import annotations

import itertools
import json
import math
from array import array
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import NamedTuple, overload

from shared.errors import CatalogError


class CatalogItem(NamedTuple):  # a tuple: built per lookup on the request path, ~5x cheaper than a dataclass
    id: str
    title: str = ""
    category: str = ""
    price: float | None = None

    def to_json(self) -> dict[str, object]:
        return {"id": self.id, "title": self.title, "category": self.category, "price": self.price}


class _Strings:
    """Many strings packed into one: no small object per string, so no heap left fragmented."""

    def __init__(self, values: list[str]) -> None:
        self._blob = "".join(values)
        self._ends = array("q", itertools.accumulate(map(len, values)))

    def __getitem__(self, index: int) -> str:
        return self._blob[self._ends[index - 1] if index else 0 : self._ends[index]]

    def __iter__(self) -> Iterator[str]:
        start = 0
        for end in self._ends:
            yield self._blob[start:end]
            start = end


class CompactItems(Sequence[CatalogItem]):
    """Catalog items stored column by column; each item is built when it is looked up.

    For 100k items a tuple of CatalogItem objects parsed from JSON costs ~50 MB of heap (much of it
    fragments left by the parser); packed columns cost ~15 MB. Agents look up a few dozen items
    per request; the last :data:`CACHED_ITEMS` looked up are kept built (about 2 MB), since
    recommendations keep returning the same popular items.
    """

    CACHED_ITEMS = 8192

    def __init__(self, ids: list[str], titles: list[str], categories: list[str], prices: array[float]) -> None:
        self._count = len(ids)
        self._ids, self._titles = _Strings(ids), _Strings(titles)
        names = sorted(set(categories))
        code = {name: n for n, name in enumerate(names)}
        self._category_names = names
        self._categories = array("I", (code[c] for c in categories))
        self._prices = prices
        self._built: dict[int, CatalogItem] = {}

    def __len__(self) -> int:
        return self._count

    def ids(self) -> Iterator[str]:
        return iter(self._ids)

    def category_codes(self) -> tuple[list[str], array[int]]:
        return self._category_names, self._categories

    @overload
    def __getitem__(self, index: int) -> CatalogItem: ...

    @overload
    def __getitem__(self, index: slice) -> Sequence[CatalogItem]: ...

    def __getitem__(self, index: int | slice) -> CatalogItem | Sequence[CatalogItem]:
        if isinstance(index, slice):
            return [self[i] for i in range(*index.indices(self._count))]
        item = self._built.get(index)
        if item is not None:
            return item
        if index < 0:
            index += self._count
        if not 0 <= index < self._count:
            raise IndexError("catalog index out of range")
        price = self._prices[index]
        item = CatalogItem(self._ids[index], self._titles[index], self._category_names[self._categories[index]],
                           None if math.isnan(price) else price)
        if len(self._built) >= self.CACHED_ITEMS:
            self._built.clear()  # (a race with another thread only costs a rebuild)
        self._built[index] = item
        return item


def _ids(items: Sequence[CatalogItem]) -> Iterator[str]:
    return items.ids() if isinstance(items, CompactItems) else (item.id for item in items)


@dataclass(frozen=True)
class Catalog:
    items: Sequence[CatalogItem]
    popular: tuple[int, ...]
    #: Items the model reads in histories but does not rank (see the module's docstring).
    history_only: Sequence[CatalogItem] = ()
    #: Indices of the items new to the catalogue (see the module's docstring).
    new: tuple[int, ...] = ()

    def index_of(self) -> dict[str, int]:
        """Item id -> history index: the items ranked, then the history-only ones."""
        return {item_id: i for i, item_id in enumerate(itertools.chain(_ids(self.items), _ids(self.history_only)))}

    def item(self, index: int) -> CatalogItem:
        """The item behind a history index (a ranked item, or a history-only one)."""
        count = len(self.items)
        return self.items[index] if index < count else self.history_only[index - count]

    def category_codes(self) -> tuple[list[str], array[int]]:
        """(category names, each item's index into them): the filter mask's input (see
        :func:`shared.recommendation.allowed_items`)."""
        if isinstance(self.items, CompactItems):
            return self.items.category_codes()
        names = sorted({item.category for item in self.items})
        code = {name: n for n, name in enumerate(names)}
        return names, array("I", (code[item.category] for item in self.items))

    def to_bytes(self) -> bytes:
        data: dict[str, object] = {"items": [i.to_json() for i in self.items], "popular": list(self.popular)}
        if self.history_only:
            data["history_only"] = [{"id": i.id, "title": i.title} for i in self.history_only]
        if self.new:
            data["new"] = list(self.new)
        return json.dumps(data, ensure_ascii=False, separators=(",", ":")).encode("utf-8")


def _parse_items(entries: list[object], where: str, seen: set[str]) -> CompactItems:
    ids: list[str] = []
    titles: list[str] = []
    categories: list[str] = []
    prices: array[float] = array("d")
    for n, entry in enumerate(entries):
        if not isinstance(entry, dict) or not isinstance(entry.get("id"), str) or not entry["id"]:
            raise CatalogError(f"catalog {where} {n} needs a string id")
        if entry["id"] in seen:
            raise CatalogError(f"catalog item id {entry['id'][:40]!r} appears twice")
        seen.add(entry["id"])
        price = entry.get("price")
        if price is not None and (
            not isinstance(price, (int, float)) or isinstance(price, bool) or not math.isfinite(price)
        ):
            raise CatalogError(f"catalog {where} {n} has a non-numeric price")
        ids.append(entry["id"])
        titles.append(str(entry.get("title") or ""))
        categories.append(str(entry.get("category") or ""))
        prices.append(math.nan if price is None else float(price))
    return CompactItems(ids, titles, categories, prices)


def parse_catalog(data: bytes, num_items: int, history_only: int = 0) -> Catalog:
    """Parse ``catalog.json``; it must describe exactly the ``num_items`` items of the model, and
    the ``history_only`` items it reads in histories besides (the manifest's contract says both)."""
    try:
        raw = json.loads(data)
    except (UnicodeDecodeError, json.JSONDecodeError):
        raise CatalogError("catalog is not UTF-8 JSON") from None
    if not isinstance(raw, dict) or not isinstance(raw.get("items"), list):
        raise CatalogError("catalog must be an object with an items list")
    if len(raw["items"]) != num_items:
        raise CatalogError(f"catalog has {len(raw['items'])} items, the model scores {num_items}")
    extra = raw.get("history_only", [])
    if not isinstance(extra, list) or len(extra) != history_only:
        count = len(extra) if isinstance(extra, list) else "no list of"
        raise CatalogError(f"catalog has {count} history-only items, the model reads {history_only}")
    seen: set[str] = set()
    items = _parse_items(raw["items"], "item", seen)
    others = _parse_items(extra, "history-only item", seen)
    popular, new = raw.get("popular", []), raw.get("new", [])
    for name, indices in (("popular", popular), ("new", new)):
        if not isinstance(indices, list) or not all(
            isinstance(i, int) and not isinstance(i, bool) and 0 <= i < num_items for i in indices
        ):
            raise CatalogError(f"catalog {name} must list item indices within the catalog")
    return Catalog(items=items, popular=tuple(popular), history_only=others, new=tuple(dict.fromkeys(new)))
