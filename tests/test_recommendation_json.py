"""The hand-assembled recommendations body is exactly the document json.dumps gives."""

from __future__ import annotations

import json

from edge_agent import recommendation_json
from edge_agent.recommendation_json import RecommendationJson
from shared.catalog import CatalogItem
from shared.recommendation import Recommendation, RecommendationResult

ITEMS = [
    CatalogItem("85123A", 'WHITE "HANGING" HEART \\ T-LIGHT', "home", 2.55),
    CatalogItem("sku-ü", "Crème brûlée – set ☕", "", None),
    CatalogItem("0", "", "kitchen", 1e-7),
]


def plain(user_id: str, result: RecommendationResult, request_id: str = "r-0000001") -> dict[str, object]:
    return {
        "user_id": user_id, "request_id": request_id, "model_version": result.model_version,
        "fallback": result.fallback,
        "items": [{**r.item.to_json(), "score": r.score,
                   "because": None if r.because is None else {"id": r.because.id, "title": r.because.title}}
                  for r in result.items],
    }


def test_same_document_as_json_dumps_and_key_order() -> None:
    result = RecommendationResult(
        items=[Recommendation(ITEMS[0], 0.8125, ITEMS[1]), Recommendation(ITEMS[1], -3.5e-05),
               Recommendation(ITEMS[2], None)],
        fallback=False, model_version=1001, history_used=3,
    )
    body = RecommendationJson()
    for _ in range(2):  # encoded, then from the cache
        text = body.render("shopper \"7\"", result, "r-0000001")
        assert json.loads(text) == plain("shopper \"7\"", result)
        assert text == json.dumps(plain("shopper \"7\"", result), separators=(",", ":")) + "\n"


def test_cache_is_bounded(monkeypatch) -> None:
    monkeypatch.setattr(recommendation_json, "CACHED_FRAGMENTS", 2)
    body = RecommendationJson()
    for n in range(10):
        item = CatalogItem(f"i{n}", f"t{n}")
        result = RecommendationResult([Recommendation(item, float(n), item)], True, 1, 0)
        assert json.loads(body.render("u", result, "r-0000001")) == plain("u", result)
    assert len(body._items) <= 2 and len(body._reasons) <= 2
