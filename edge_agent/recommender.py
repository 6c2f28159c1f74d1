"""Recommendation logic (pure): from a shopper's stored history to a ranked, filtered item list.

Takes the history and a scorer, returns items; knows nothing of HTTP, storage or interpreters.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from enum import StrEnum
from typing import NamedTuple, Protocol

import numpy as np

from shared.catalog import Catalog, CatalogItem
from shared.events import EventKind, history_inputs


class Exclude(StrEnum):
    NONE = "none"
    PURCHASED = "purchased"
    SEEN = "seen"


class Scores(NamedTuple):
    """A model's answer for one history: top-K item indices and scores, best first.

    ``contributions[p, j]`` is history position ``p``'s share of item ``j``'s score (positions as
    :func:`shared.events.history_inputs` orders them, most recent first); None when the model
    does not output it.
    """

    indices: np.ndarray
    scores: np.ndarray
    contributions: np.ndarray | None = None


class Scorer(Protocol):
    @property
    def catalog(self) -> Catalog: ...

    @property
    def item_index(self) -> Mapping[str, int]: ...

    @property
    def version(self) -> int: ...

    @property
    def history_length(self) -> int: ...

    def score(self, items: Sequence[int], weights: Sequence[float]) -> Scores: ...


class HistoryEvent(Protocol):
    @property
    def item_id(self) -> str: ...

    @property
    def kind(self) -> EventKind: ...


@dataclass(frozen=True, slots=True)
class Recommendation:
    item: CatalogItem
    score: float | None  # None for popularity fallback items
    because: CatalogItem | None = None  # the history item that contributed most, when known


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


def _main_contributors(positions: Sequence[int], contributions: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """For each returned item: the history item (index) that added most to its score, and how much.

    ``positions[p]`` is the item index at history position ``p``; repeated items add up.
    """
    unique, inverse = np.unique(np.asarray(positions), return_inverse=True)
    per_item = np.zeros((len(unique), contributions.shape[1]), dtype=np.float64)
    np.add.at(per_item, inverse, contributions[: len(positions)])
    best = per_item.argmax(axis=0)
    return unique[best], per_item[best, np.arange(per_item.shape[1])]


def recommend(
    scorer: Scorer,
    history: Sequence[HistoryEvent],
    k: int,
    exclude: Exclude = Exclude.NONE,
    category: str | None = None,
) -> RecommendationResult:
    """Top ``k`` items for a shopper; popular items when no history item is known to the model.

    Items in the history that the model does not know (new or retired items) are ignored. With a
    ``category``, only items of that category (compared case-insensitively) are returned. When
    filtering leaves fewer than ``k`` model results, popular items fill the rest.
    """
    known = [(scorer.item_index[e.item_id], e.kind) for e in history if e.item_id in scorer.item_index]
    banned = _excluded(history, exclude)
    wanted = category.casefold() if category is not None else None
    catalog = scorer.catalog

    def allowed(index: int) -> bool:
        item = catalog.items[index]
        return item.id not in banned and (wanted is None or item.category.casefold() == wanted)

    chosen: list[Recommendation] = []
    taken: set[int] = set()
    if known:
        items, weights = history_inputs(known, scorer.history_length)
        answer = scorer.score(items, weights)
        because: list[CatalogItem | None] = [None] * len(answer.indices)
        if answer.contributions is not None:
            positions = items[: min(len(known), scorer.history_length)]
            contributor, amount = _main_contributors(positions, answer.contributions)
            because = [catalog.items[c] if a > 0 else None for c, a in zip(contributor.tolist(), amount, strict=True)]
        for j, (index, score) in enumerate(zip(answer.indices.tolist(), answer.scores.tolist(), strict=True)):
            if index in taken or not allowed(index):
                continue
            chosen.append(Recommendation(catalog.items[index], float(score), because[j]))
            taken.add(index)
            if len(chosen) == k:
                break
    for index in catalog.popular:
        if len(chosen) >= k:
            break
        if index in taken or not allowed(index):
            continue
        chosen.append(Recommendation(catalog.items[index], None))
        taken.add(index)
    return RecommendationResult(
        items=chosen, fallback=not known, model_version=scorer.version, history_used=len(known)
    )
