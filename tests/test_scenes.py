"""The shop's other pages (shared/scenes.py): with a hand-made scorer, then over a real agent
(a real int8 model in LiteRT, a real Mosquitto), request ids credited like the home page's."""

from __future__ import annotations

import json
import shutil
import urllib.parse
from collections.abc import Iterator, Sequence
from pathlib import Path

import numpy as np
import pytest
from test_recommender import Ev, MaskingScorer

from devtools.processes import AgentProcess
from devtools.processes import broker as local_broker
from harness import get_json, post_events, resigned, serving_agent
from shared.bundle import CATALOG_FILE
from shared.catalog import Catalog
from shared.events import EventKind
from shared.recommendation import Exclude, Scores
from shared.scenes import cart, new_for_you, related

NEW_ITEMS = 40  # the last items of the test catalogue are marked new


class GapScorer(MaskingScorer):
    """Like the exported graph: items not allowed drop below the lowest score (not onto it)."""

    def score(self, items: Sequence[int], weights: Sequence[float], allowed: np.ndarray | None = None) -> Scores:
        self.calls.append((list(items), list(weights)))
        self.masks.append(allowed)
        scores = 10.0 - np.arange(5)
        if allowed is not None:
            scores = np.where(allowed, scores, scores.min() - 1)
        top = np.argsort(-scores, kind="stable")[:3]
        return Scores(top, scores[top])


def test_related_never_returns_the_item_and_reads_only_it() -> None:
    scorer = MaskingScorer()  # a b c d e by score
    result = related(scorer, "a", 3, history=[Ev("b", EventKind.PURCHASE)], exclude=Exclude.PURCHASED)
    assert scorer.calls[-1][0][0] == 0  # the model read the item alone (a), not the shopper's history
    assert scorer.masks[-1].tolist() == [False, False, True, True, True]  # a itself, b bought
    assert [r.item.id for r in result.items] == ["c", "d", "e"]


def test_cart_reads_history_then_basket_and_never_returns_the_basket() -> None:
    scorer = MaskingScorer()
    result = cart(scorer, ["a", "c"], 2, history=[Ev("e", EventKind.VIEW)], available=np.array([True] * 4 + [False]))
    items, weights = scorer.calls[-1]
    assert items[:3] == [2, 0, 4] and weights[0] > 0  # most recent first: the basket, then the history
    assert scorer.masks[-1].tolist() == [False, True, False, True, False]
    assert [r.item.id for r in result.items] == ["b", "d"]


def test_new_for_you_ranks_only_new_items_and_guests_get_them_by_the_best_sellers() -> None:
    scorer = GapScorer()
    scorer.catalog = Catalog(items=scorer.catalog.items, popular=(0, 1), new=(3, 4))
    mine = new_for_you(scorer, [Ev("a", EventKind.PURCHASE)], 5)
    assert scorer.masks[-1].tolist() == [False, False, False, True, True]
    assert [r.item.id for r in mine.items] == ["d", "e"] and not mine.fallback
    guest = new_for_you(scorer, [], 5)
    assert scorer.calls[-1][0][:2] == [0, 1]  # the best sellers, the best one the most recent
    assert [r.item.id for r in guest.items] == ["d", "e"] and guest.fallback
    none = Catalog(items=scorer.catalog.items, popular=(0, 1))
    scorer.catalog = none
    assert new_for_you(scorer, [Ev("a", EventKind.PURCHASE)], 5).items == []  # no new items listed: none


@pytest.fixture(scope="module")
def scene_agent(int8_bundle: Path, keys: Path, tmp_path_factory: pytest.TempPathFactory
                ) -> Iterator[tuple[AgentProcess, list[str]]]:
    work = tmp_path_factory.mktemp("scenes")
    edited = work / "edited"
    shutil.copytree(int8_bundle, edited)
    raw = json.loads((edited / CATALOG_FILE).read_bytes())
    count = len(raw["items"])
    raw["new"] = list(range(count - NEW_ITEMS, count))
    (edited / CATALOG_FILE).write_text(json.dumps(raw))
    bundle = resigned(edited, keys, work / "bundle")
    new_ids = [item["id"] for item in raw["items"][count - NEW_ITEMS :]]
    with local_broker() as broker, serving_agent(bundle, broker, keys, work) as agent:
        yield agent, new_ids


def _ids(body: dict) -> list[str]:  # type: ignore[type-arg]
    return [item["id"] for item in body["items"]]


def test_scenes_over_http(scene_agent: tuple[AgentProcess, list[str]]) -> None:
    agent, new_ids = scene_agent
    bought = ["85123A", "71053", "84406B"]
    assert post_events(agent, [{"user_id": "s", "item_id": i, "event": "purchase"} for i in bought])[0] == 200
    status, page = get_json(agent, "/v1/items/85123A/related?k=20&user_id=s&exclude=purchased")
    assert status == 200 and len(page["items"]) == 20 and not set(_ids(page)) & set(bought)
    assert page["user_id"] == "s" and page["request_id"] and not page["fallback"]
    status, guest = get_json(agent, "/v1/items/85123A/related?k=20")
    assert guest["user_id"] is None and "85123A" not in _ids(guest) and len(guest["items"]) == 20
    assert get_json(agent, "/v1/items/no-such-item/related")[0] == 404
    basket = {"items": ["22423", "85123A"], "user_id": "s", "k": 15}
    status, raw = agent.request("POST", "/v1/recommendations/cart", json.dumps(basket).encode())
    answer = json.loads(raw)
    assert status == 200 and len(answer["items"]) == 15 and not {"22423", "85123A"} & set(_ids(answer))
    history = get_json(agent, f"/v1/users/{urllib.parse.quote('s')}/history")[1]["events"]
    assert {e["item_id"] for e in history} == set(bought)  # the basket was not stored
    status, new = get_json(agent, "/v1/recommendations/new?user_id=s&k=10")
    assert status == 200 and len(new["items"]) == 10 and set(_ids(new)) <= set(new_ids)
    status, new_guest = get_json(agent, "/v1/recommendations/new?k=10")
    assert new_guest["fallback"] and set(_ids(new_guest)) <= set(new_ids) and len(new_guest["items"]) == 10
    # a click on a scene's item, quoting its request_id, is credited to that request
    click = {"user_id": "s", "item_id": _ids(answer)[0], "event": "click", "request_id": answer["request_id"]}
    assert post_events(agent, [click])[1]["attributed"] == 1
    for bad in ({"items": []}, {"items": ["a"], "k": 0}, {"items": ["a"], "user_id": "a/b"}, {"items": [1]},
                {"items": ["a"], "exclude": "all"}, {"items": ["a"], "colour": "red"}):
        status, raw = agent.request("POST", "/v1/recommendations/cart", json.dumps(bad).encode())
        assert status == 400 and b"error" in raw, bad
