"""The pure recommendation logic, with a hand-made scorer whose answers are known."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from edge_agent.recommender import Exclude, recommend
from shared.catalog import Catalog, CatalogItem
from shared.events import EventKind


@dataclass
class Ev:
    item_id: str
    kind: EventKind


class FixedScorer:
    """Scores item i as 10 - i, so the model's ranking is a, b, c, d, e."""

    def __init__(self) -> None:
        self.catalog = Catalog(items=tuple(CatalogItem(id=c) for c in "abcde"), popular=(4, 3, 2, 1, 0))
        self.item_index = self.catalog.index_of()
        self.version = 9
        self.history_length = 4
        self.calls: list[tuple[list[int], list[float]]] = []

    def score(self, items: Sequence[int], weights: Sequence[float]) -> tuple[np.ndarray, np.ndarray]:
        self.calls.append((list(items), list(weights)))
        return np.arange(5), 10.0 - np.arange(5)


def test_no_history_serves_popular_items_flagged_as_fallback() -> None:
    result = recommend(FixedScorer(), [], 3)
    assert result.fallback is True
    assert [r.item.id for r in result.items] == ["e", "d", "c"]
    assert all(r.score is None for r in result.items)


def test_unknown_items_in_history_are_ignored() -> None:
    scorer = FixedScorer()
    result = recommend(scorer, [Ev("zzz", EventKind.VIEW), Ev("b", EventKind.PURCHASE)], 2)
    assert result.fallback is False and result.history_used == 1
    assert scorer.calls[0][0] == [1, 0, 0, 0]  # only "b" reached the model
    assert [r.item.id for r in result.items] == ["a", "b"]


def test_exclude_purchased_then_backfill_from_popularity() -> None:
    history = [Ev("a", EventKind.PURCHASE), Ev("b", EventKind.VIEW)]
    result = recommend(FixedScorer(), history, 5, Exclude.PURCHASED)
    assert [r.item.id for r in result.items] == ["b", "c", "d", "e"]  # only 4 are left after excluding "a"
    seen = recommend(FixedScorer(), history, 2, Exclude.SEEN)
    assert [r.item.id for r in seen.items] == ["c", "d"]
