"""The pure recommendation logic, with a hand-made scorer whose answers are known."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from shared.catalog import Catalog, CatalogItem
from shared.events import EventKind
from shared.recommendation import Exclude, Scores, recommend


@dataclass
class Ev:
    item_id: str
    kind: EventKind
    timestamp: float | None = None


class FixedScorer:
    """Scores item i as 10 - i, so the model's ranking is a, b, c, d, e.

    Items a, c, e are in category "Lamps", b and d in "Mugs". With ``contributions`` set, it is
    returned as the per-position contribution matrix [history_length, 5].
    """

    def __init__(self, contributions: np.ndarray | None = None) -> None:
        self.catalog = Catalog(
            items=tuple(CatalogItem(id=c, category="Mugs" if c in "bd" else "Lamps") for c in "abcde"),
            popular=(4, 3, 2, 1, 0),
        )
        self.contributions = contributions
        self.item_index = self.catalog.index_of()
        self.version = 9
        self.history_length = 4
        self.takes_sequence = False
        self.calls: list[tuple[list[int], list[float]]] = []
        self.masks: list[np.ndarray | None] = []

    def score(self, items: Sequence[int], weights: Sequence[float], allowed: np.ndarray | None = None) -> Scores:
        """Like a model of contract version 1: the filter mask is not applied."""
        self.calls.append((list(items), list(weights)))
        self.masks.append(allowed)
        return Scores(np.arange(5), 10.0 - np.arange(5), self.contributions)


class MaskingScorer(FixedScorer):
    """Like an exported graph: a top 3 of the allowed items, disallowed ones at the lowest score."""

    def score(self, items: Sequence[int], weights: Sequence[float], allowed: np.ndarray | None = None) -> Scores:
        super().score(items, weights, allowed)
        scores = 10.0 - np.arange(5)
        if allowed is not None:
            scores = np.where(allowed, scores, scores.min())
        top = np.argsort(-scores, kind="stable")[:3]
        return Scores(top, scores[top])


def test_filters_reach_the_model_as_a_mask_over_the_whole_catalogue() -> None:
    history = [Ev("a", EventKind.PURCHASE), Ev("b", EventKind.VIEW), Ev("c", EventKind.PURCHASE)]
    scorer = MaskingScorer()
    recommend(scorer, history, 2)
    assert scorer.masks[-1] is None  # no filter: the scorer's own all-allowed mask
    result = recommend(scorer, history, 2, Exclude.PURCHASED)
    assert scorer.masks[-1].tolist() == [False, True, False, True, True]
    assert [r.item.id for r in result.items] == ["b", "d"] and all(r.score is not None for r in result.items)
    mugs = recommend(scorer, history, 3, Exclude.SEEN, category="mugs")
    assert scorer.masks[-1].tolist() == [False, False, False, True, False]
    # one mug is left: the model ranks it; nothing else passes the filter, so nothing fills in
    assert [(r.item.id, r.score) for r in mugs.items] == [("d", 7.0)]


def test_the_model_top_k_past_the_filter_is_not_filled_with_popular_items() -> None:
    # a top 3 from a model that applies the mask: "b", "d" (mugs) are ranked by it, not filled in
    scorer = MaskingScorer()
    result = recommend(scorer, [Ev("e", EventKind.VIEW)], 2, category="Mugs")
    assert [(r.item.id, r.score) for r in result.items] == [("b", 9.0), ("d", 7.0)]


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


def test_category_filter_applies_to_model_results_and_backfill() -> None:
    result = recommend(FixedScorer(), [Ev("a", EventKind.VIEW)], 3, category="mugs")
    assert [r.item.id for r in result.items] == ["b", "d"]  # only two mugs exist; no lamp fills in
    assert all(r.score is not None for r in result.items)
    cold = recommend(FixedScorer(), [], 5, category="LAMPS")
    assert [r.item.id for r in cold.items] == ["e", "c", "a"]
    assert recommend(FixedScorer(), [], 5, category="nothing").items == []


def test_explanation_names_the_history_item_that_added_most() -> None:
    # history, oldest first: c, a, c  ->  positions (most recent first): c, a, c
    contributions = np.zeros((4, 5))
    contributions[0] = [0.5, 0.1, 0.0, -1.0, 0.2]   # c (latest)
    contributions[1] = [0.9, 0.3, 0.0, -2.0, 0.0]   # a
    contributions[2] = [0.5, 0.0, 0.0, -1.0, 0.3]   # c again: with position 0 it adds up to 1.0 for "a"
    contributions[3] = [9.0, 9.0, 9.0, 9.0, 9.0]    # padding: must never be named
    history = [Ev("c", EventKind.VIEW), Ev("a", EventKind.VIEW), Ev("c", EventKind.VIEW)]
    result = recommend(FixedScorer(contributions), history, 5)
    because = {r.item.id: (r.because.id if r.because else None) for r in result.items}
    assert because == {"a": "c", "b": "a", "c": None, "d": None, "e": "c"}  # no positive share: no reason


def test_a_model_explaining_only_its_most_recent_positions() -> None:
    # positions (most recent first): c, a, c; the model explains 2 of its 4 positions
    contributions = np.array([[0.5, 0.0, 0.1, 0.0, 0.0],    # c (latest)
                              [0.4, 0.0, 0.2, 0.0, 0.0]])   # a
    history = [Ev("c", EventKind.VIEW), Ev("a", EventKind.VIEW), Ev("c", EventKind.VIEW)]
    result = recommend(FixedScorer(contributions), history, 3)
    because = {r.item.id: (r.because.id if r.because else None) for r in result.items}
    assert because == {"a": "c", "b": None, "c": "a"}  # the unexplained third position plays no part


def test_no_explanations_without_contributions() -> None:
    result = recommend(FixedScorer(), [Ev("a", EventKind.VIEW)], 2)
    assert all(r.because is None for r in result.items)


def test_the_purchase_memory_is_excluded_too() -> None:
    """Items bought before the kept events (the agent's purchase memory) are left out as well."""
    scorer = MaskingScorer()
    history = [Ev("a", EventKind.VIEW)]
    assert [r.item.id for r in recommend(scorer, history, 2, Exclude.PURCHASED, bought={"b", "zzz"}).items] == [
        "a", "c"]
    assert [r.item.id for r in recommend(scorer, history, 2, Exclude.SEEN, bought={"b"}).items] == ["c", "d"]
    assert [r.item.id for r in recommend(scorer, history, 2, bought={"b"}).items] == ["a", "b"]  # no exclusion
