"""The JSON body of ``GET /v1/recommendations``, assembled from cached per-item fragments (pure).

Encoding each item's metadata with :func:`json.dumps` on every request was about a sixth of the
route's CPU time; items recur across requests (popular items, a shopper's neighbourhood), so each
item's encoded metadata is kept, up to :data:`CACHED_FRAGMENTS` of them. The output is the same
document ``json.dumps`` would give for::

    {"user_id": ..., "request_id": ..., "model_version": ..., "fallback": ...,
     "items": [{"id", "title", "category", "price", "score", "because": {"id", "title"} | null}]}
"""

from __future__ import annotations

import json

from shared.catalog import CatalogItem
from shared.recommendation import RecommendationResult

CACHED_FRAGMENTS = 8192

_encode = json.JSONEncoder(separators=(",", ":")).encode
_string = json.encoder.encode_basestring_ascii  # what _encode does for a str


class RecommendationJson:
    def __init__(self) -> None:
        self._items: dict[CatalogItem, str] = {}  # '{"id":..,"title":..,"category":..,"price":..'
        self._reasons: dict[CatalogItem, str] = {}  # '{"id":..,"title":..}'

    def _item(self, item: CatalogItem) -> str:
        fragment = self._items.get(item)
        if fragment is None:
            fragment = _encode(item.to_json())[:-1]  # open: score and because follow
            self._remember(self._items, item, fragment)
        return fragment

    def _reason(self, item: CatalogItem | None) -> str:
        if item is None:
            return "null"
        fragment = self._reasons.get(item)
        if fragment is None:
            fragment = _encode({"id": item.id, "title": item.title})
            self._remember(self._reasons, item, fragment)
        return fragment

    @staticmethod
    def _remember(cache: dict[CatalogItem, str], item: CatalogItem, fragment: str) -> None:
        if len(cache) >= CACHED_FRAGMENTS:
            cache.clear()  # (a race with another thread only costs a re-encode)
        cache[item] = fragment

    def render(self, user_id: str | None, result: RecommendationResult, request_id: str) -> str:
        items = ",".join(
            f'{self._item(r.item)},"score":{"null" if r.score is None else repr(float(r.score))},'
            f'"because":{self._reason(r.because)}}}'
            for r in result.items
        )
        return (
            f'{{"user_id":{"null" if user_id is None else _string(user_id)},'
            f'"request_id":{_string(request_id)},"model_version":{int(result.model_version)},'
            f'"fallback":{"true" if result.fallback else "false"},"items":[{items}]}}\n'
        )
