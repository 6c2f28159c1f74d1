"""Recommendation logic (pure): from a shopper's stored history to a ranked, filtered item list.

Takes the history and a scorer, returns items; knows nothing of HTTP, storage or interpreters.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from enum import StrEnum
from typing import Protocol

import numpy as np

from shared.catalog import Catalog, CatalogItem
from shared.events import EventKind, history_inputs


class Exclude(StrEnum):
    NONE = "none"
    PURCHASED = "purchased"
    SEEN = "seen"


class Scorer(Protocol):
    @property
    def catalog(self) -> Catalog: ...

    @property
    def item_index(self) -> Mapping[str, int]: ...

    @property
    def version(self) -> int: ...

    @property
    def history_length(self) -> int: ...

    def score(self, items: Sequence[int], weights: Sequence[float]) -> tuple[np.ndarray, np.ndarray]: ...


class HistoryEvent(Protocol):
    @property
    def item_id(self) -> str: ...

    @property
    def kind(self) -> EventKind: ...


@dataclass(frozen=True, slots=True)
class Recommendation:
    item: CatalogItem
    score: float | None  # None for popularity fallback items


@dataclass(frozen=True)
class RecommendationResult:
    items: list[Recommendation]
    fallback: bool
    model_version: int
    history_used: int


def _excluded(history: Sequence[HistoryEvent], exclude: Exclude) -> set[str]:
    if exclude is Exclude.SEEN:
        return {e.item_id for e in history}
    if exclude is Exclude.PURCHASED:
        return {e.item_id for e in history if e.kind is EventKind.PURCHASE}
    return set()


def recommend(
    scorer: Scorer, history: Sequence[HistoryEvent], k: int, exclude: Exclude = Exclude.NONE
) -> RecommendationResult:
    """Top ``k`` items for a shopper; popular items when no history item is known to the model.

    Items in the history that the model does not know (new or retired items) are ignored. When
    filtering leaves fewer than ``k`` model results, popular items fill the rest.
    """
    known = [(scorer.item_index[e.item_id], e.kind) for e in history if e.item_id in scorer.item_index]
    banned = _excluded(history, exclude)
    catalog = scorer.catalog
    chosen: list[Recommendation] = []
    taken: set[int] = set()
    if known:
        items, weights = history_inputs(known, scorer.history_length)
        indices, scores = scorer.score(items, weights)
        for index, score in zip(indices.tolist(), scores.tolist(), strict=True):
            item = catalog.items[index]
            if item.id in banned or index in taken:
                continue
            chosen.append(Recommendation(item, float(score)))
            taken.add(index)
            if len(chosen) == k:
                break
    for index in catalog.popular:
        if len(chosen) >= k:
            break
        item = catalog.items[index]
        if item.id in banned or index in taken:
            continue
        chosen.append(Recommendation(item, None))
        taken.add(index)
    return RecommendationResult(
        items=chosen, fallback=not known, model_version=scorer.version, history_used=len(known)
    )
