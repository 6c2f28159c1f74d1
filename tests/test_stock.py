"""The store's stock and local prices: the store (durable, per-model views), the filter in the
model's mask, and a real agent that never recommends what is out of stock, also after kill -9."""

from __future__ import annotations

import json
import math
import os
import signal
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from test_recommender import Ev, MaskingScorer

from devtools.processes import broker as local_broker
from edge_agent.stock_store import StockEntry, StockStore
from harness import get_json, post_events, publish, start_agent
from shared.catalog import Catalog, CatalogItem
from shared.events import EventKind
from shared.recommendation import recommend


class Model:
    def __init__(self, ids: Sequence[str]) -> None:
        self.catalog = Catalog(items=tuple(CatalogItem(i, price=1.0) for i in ids), popular=(0, 1))
        self.item_index = self.catalog.index_of()


def test_only_exceptions_are_stored_and_survive_a_reopen(tmp_path: Path) -> None:
    store = StockStore(tmp_path)
    model = Model(["a", "b", "c", "d"])
    assert store.view(model).available is None  # nothing sent: everything in stock, no mask at all
    store.put([StockEntry("b", False, None), StockEntry("c", True, 2.5), StockEntry("zz", False, None),
               StockEntry("d", False, None), StockEntry("d", True, None)])  # the later entry of d wins
    view = store.view(model)
    assert view.available is not None and view.available.tolist() == [True, False, True, True]
    assert math.isnan(view.prices[0]) and view.prices[2] == 2.5 and view.local_prices == 1
    assert store.counts() == (2, 1)  # b and zz (an item this model does not know) out; c priced
    store.close()
    reopened = StockStore(tmp_path)
    assert [e.item_id for e in reopened.page(None, 10)] == ["b", "c", "zz"]
    assert [e.item_id for e in reopened.page("b", 1)] == ["c"]
    assert reopened.view(Model(["zz", "b", "a"])).available.tolist() == [False, False, True]  # by id, not index
    reopened.put([StockEntry("b", True, None)])
    assert reopened.counts() == (1, 1)
    reopened.close()


def test_a_view_is_never_modified_and_a_batch_shows_in_the_next_read(tmp_path: Path) -> None:
    store = StockStore(tmp_path)
    model = Model(["a", "b"])
    store.put([StockEntry("a", False, None)])
    before = store.view(model)
    store.put([StockEntry("b", False, None)])
    assert before.available is not None and before.available.tolist() == [False, True]
    assert not before.available.flags.writeable
    assert store.view(model).available.tolist() == [False, False]  # type: ignore[union-attr]
    store.close()


def test_out_of_stock_items_never_come_back_and_popular_fill_respects_it() -> None:
    scorer = MaskingScorer()  # top 3 of the allowed items, a b c d e by score; popular e d c b a
    available = np.array([False, True, False, True, True])
    result = recommend(scorer, [Ev("a", EventKind.PURCHASE)], 5, available=available)
    assert scorer.masks[-1].tolist() == available.tolist()  # the model's own mask
    assert [r.item.id for r in result.items] == ["b", "d", "e"]  # no fill: only three pass
    guest = recommend(scorer, [], 5, available=available)  # no history: popular items, filtered the same
    assert [r.item.id for r in guest.items] == ["e", "d", "b"] and guest.fallback


def _ids(body: dict) -> list[str]:  # type: ignore[type-arg]
    return [item["id"] for item in body["items"]]


def test_an_agent_never_recommends_out_of_stock_items_even_after_kill_9(
        int8_bundle: Path, keys: Path, tmp_path: Path) -> None:
    with local_broker() as broker:
        publish(int8_bundle, broker)
        agent = start_agent(broker.url, keys, tmp_path)
        try:
            agent.wait_ready(60)
            bought = ["85123A", "71053", "84406B"]
            assert post_events(agent, [{"user_id": "s1", "item_id": i, "event": "purchase"} for i in bought])[0] == 200
            _, before = get_json(agent, "/v1/recommendations?user_id=s1&k=20")
            _, guest = get_json(agent, "/v1/recommendations?user_id=guest&k=10")
            gone = _ids(before)[:5] + _ids(guest)[:3]
            priced = _ids(before)[5]
            entries = [{"id": i, "available": False} for i in gone] + [{"id": priced, "available": True, "price": 0.25}]
            status, raw = agent.request("PUT", "/v1/stock", json.dumps({"items": entries}).encode())
            assert status == 200 and json.loads(raw) == {"accepted": len(entries)}
            os.kill(agent.proc.pid, signal.SIGKILL)  # right after the 200
            agent.proc.wait(30)
            agent.stop()
            agent = start_agent(broker.url, keys, tmp_path)
            agent.wait_ready(60)
            _, after = get_json(agent, "/v1/recommendations?user_id=s1&k=20")
            assert not set(gone) & set(_ids(after)) and len(after["items"]) == 20
            assert {item["id"]: item["price"] for item in after["items"]}[priced] == 0.25
            _, guest_after = get_json(agent, "/v1/recommendations?user_id=guest&k=10")
            assert not set(gone) & set(_ids(guest_after)) and guest_after["fallback"]
            related = get_json(agent, f"/v1/items/{bought[0]}/related?k=50")[1]
            assert not set(gone) & set(_ids(related))
            _, page = get_json(agent, "/v1/stock?limit=1000")
            assert {e["id"] for e in page["items"]} == {*gone, priced}
            assert page["out_of_stock"] == len(set(gone)) and page["local_prices"] == 1 and page["next"] is None
            back = {"items": [{"id": i, "available": True} for i in gone]}
            assert agent.request("PUT", "/v1/stock", json.dumps(back).encode())[0] == 200
            _, again = get_json(agent, "/v1/recommendations?user_id=s1&k=20")
            assert _ids(again)[:5] == _ids(before)[:5]  # back in stock: the next request has them
            for bad in ({"items": []}, {"items": [{"id": "x"}]}, {"items": [{"id": " x", "available": False}]},
                        {"items": [{"id": "x", "available": True, "price": -1}]}, [1]):
                status, raw = agent.request("PUT", "/v1/stock", json.dumps(bad).encode())
                assert status == 400 and b"error" in raw, bad
        finally:
            agent.stop()
