"""The store's stock and local prices: durable in SQLite, and per model the arrays a request reads.

Owns ``stock.sqlite3``. The store's systems send batches of ``(item id, available, local price)``
(:mod:`edge_agent.api.stock`); a batch is one transaction, synced before :meth:`StockStore.put`
returns (WAL, ``synchronous=FULL``, as the history store): an acknowledged update survives kill -9
and power loss. Only exceptions are kept, one row each: items out of stock or with a local price;
an item back in stock at the catalogue price is deleted. Items never sent are in stock at the
catalogue's price. Rows are keyed by item id, not model index, so they outlive model updates
(and name items a model does not know yet).

For requests, a :class:`StockView` per model: ``available`` bool [items] (None while every item
is in stock) and ``prices`` float64 [items] (NaN: the catalogue's price), in the model's index
space. It is built from the table on the first request a model serves (one pass over the rows)
and replaced copy-on-write by each batch (O(batch) Python, two array copies), so a request reads
a consistent view without a lock and a change shows in the very next request.
"""

from __future__ import annotations

import logging
import math
import sqlite3
import threading
import weakref
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import NamedTuple, Protocol

import numpy as np

from edge_agent.errors import sqlite_storage_error
from edge_agent.keyring import connect
from shared.catalog import Catalog
from shared.recommendation import RecommendationResult

log = logging.getLogger(__name__)

STOCK_FILE = "stock.sqlite3"


class StockEntry(NamedTuple):
    item_id: str
    available: bool
    price: float | None  # the local price; None: the catalogue's


class Ranker(Protocol):  # what a view needs of a model (edge_agent.loaded_model.LoadedModel)
    @property
    def catalog(self) -> Catalog: ...

    @property
    def item_index(self) -> Mapping[str, int]: ...


@dataclass(frozen=True)
class StockView:
    """One model's stock: never modified once built (a batch builds a new one)."""

    available: np.ndarray | None  # bool [items], read-only; None: all in stock
    prices: np.ndarray  # float64 [items], NaN where the catalogue's price holds
    local_prices: int  # how many items of the model have one

    def priced(self, result: RecommendationResult, item_index: Mapping[str, int]) -> RecommendationResult:
        """``result`` with local prices in place of the catalogue's (O(k))."""
        if not self.local_prices:
            return result
        items = []
        for r in result.items:
            price = float(self.prices[item_index[r.item.id]])
            items.append(r if math.isnan(price) else replace(r, item=r.item._replace(price=price)))
        return replace(result, items=items)


def _frozen(available: np.ndarray) -> np.ndarray | None:
    if available.all():
        return None
    available.flags.writeable = False
    return available


def _apply(view: StockView, entries: Sequence[StockEntry], model: Ranker) -> StockView:
    count = len(model.catalog.items)
    available = np.ones(count, dtype=bool) if view.available is None else view.available.copy()
    prices = view.prices.copy()
    index = model.item_index
    for entry in entries:
        i = index.get(entry.item_id)
        if i is not None and i < count:  # history-only items are never ranked
            available[i] = entry.available
            prices[i] = math.nan if entry.price is None else entry.price
    return StockView(_frozen(available), prices, int(np.count_nonzero(~np.isnan(prices))))


class StockStore:
    def __init__(self, folder: Path) -> None:
        self._lock = threading.Lock()
        # id(model) -> (a weak reference to it, its view); the last few models served
        self._views: dict[int, tuple[weakref.ref[Ranker], StockView]] = {}
        folder.mkdir(parents=True, exist_ok=True, mode=0o700)
        try:
            self._db = connect(folder / STOCK_FILE)
            self._db.execute("CREATE TABLE IF NOT EXISTS stock (item_id TEXT PRIMARY KEY, "
                             "available INTEGER NOT NULL, price REAL) WITHOUT ROWID")
        except sqlite3.Error as e:
            raise sqlite_storage_error(e, f"open the stock store in {folder}") from e

    def put(self, entries: Sequence[StockEntry]) -> None:
        """Store a batch (later entries of one item win), durably, then show it to requests."""
        entries = list({e.item_id: e for e in entries}.values())
        with self._lock:
            try:
                self._db.execute("BEGIN IMMEDIATE")
                try:
                    self._db.executemany("DELETE FROM stock WHERE item_id = ?",
                                         [(e.item_id,) for e in entries if e.available and e.price is None])
                    self._db.executemany("INSERT OR REPLACE INTO stock VALUES (?, ?, ?)",
                                         [(e.item_id, int(e.available), e.price) for e in entries
                                          if not (e.available and e.price is None)])
                except BaseException:
                    self._db.execute("ROLLBACK")
                    raise
                self._db.execute("COMMIT")
            except sqlite3.Error as e:
                raise sqlite_storage_error(e, "store stock") from e
            for key, (ref, view) in list(self._views.items()):
                model = ref()
                if model is None:
                    del self._views[key]
                else:
                    self._views[key] = (ref, _apply(view, entries, model))

    def view(self, model: Ranker) -> StockView:
        """The stock of ``model``'s items, built on its first request."""
        entry = self._views.get(id(model))
        if entry is not None and entry[0]() is model:
            return entry[1]
        with self._lock:
            entry = self._views.get(id(model))
            if entry is not None and entry[0]() is model:
                return entry[1]
            count = len(model.catalog.items)
            empty = StockView(None, np.full(count, math.nan), 0)
            view = _apply(empty, self._all(), model)
            if len(self._views) >= 4:  # a model and its control, and the ones they replaced
                self._views.pop(next(iter(self._views)))
            self._views[id(model)] = (weakref.ref(model), view)
            return view

    def _all(self) -> list[StockEntry]:
        try:
            rows = self._db.execute("SELECT item_id, available, price FROM stock").fetchall()
        except sqlite3.Error as e:
            raise sqlite_storage_error(e, "read the stock") from e
        return [StockEntry(item_id, bool(available), price) for item_id, available, price in rows]

    def page(self, after: str | None, limit: int) -> list[StockEntry]:
        """Up to ``limit`` stored entries by item id, from the first after ``after``."""
        with self._lock:
            try:
                rows = self._db.execute("SELECT item_id, available, price FROM stock WHERE item_id > ? "
                                        "ORDER BY item_id LIMIT ?", (after or "", limit)).fetchall()
            except sqlite3.Error as e:
                raise sqlite_storage_error(e, "read the stock") from e
        return [StockEntry(item_id, bool(available), price) for item_id, available, price in rows]

    def counts(self) -> tuple[int, int]:
        """(items out of stock, items with a local price), over every stored entry."""
        with self._lock:
            try:
                out, priced = self._db.execute(
                    "SELECT COALESCE(SUM(available = 0), 0), COUNT(price) FROM stock").fetchone()
            except sqlite3.Error as e:
                raise sqlite_storage_error(e, "read the stock") from e
        return int(out), int(priced)

    def close(self) -> None:
        with self._lock:
            self._db.close()
