"""The shop's pages beside the home page ("scenes"), as :func:`shared.recommendation.recommend` calls (pure).

- **related** (product page): what goes with or resembles one item: the model's answer to a
  one-item history, as if the shopper had just bought it (the model's item-item structure); the
  item itself is never returned.
- **cart** (basket page): the model reads the shopper's kept events, if any, then the basket as
  cart events (the most recent); the basket's items are never returned. The basket is not stored.
- **new for you**: only the catalogue's new items (:attr:`shared.catalog.Catalog.new`) may be
  returned, an in-graph mask like every filter: new items rank well among themselves but seldom
  reach a general top 20. A shopper without a known history gets the new items nearest to the
  best sellers (the popular items read as a history), marked ``fallback``.

Every scene takes the filters the home page takes (``exclude`` over the shopper's history and
purchase memory, ``category``, ``available`` for stock), in the same mask the model ranks under,
so the agent's routes and ``cloud-trainer evaluate`` share this code.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import replace
from typing import NamedTuple

import numpy as np

from shared.business_rules import AppliedRules
from shared.catalog import Catalog
from shared.events import EventKind
from shared.recommendation import Exclude, HistoryEvent, RecommendationResult, Scorer, recommend


class _Event(NamedTuple):
    item_id: str
    kind: EventKind
    timestamp: float | None = None  # a query's items have no time


def related(scorer: Scorer, item_id: str, k: int, history: Sequence[HistoryEvent] = (),
            exclude: Exclude = Exclude.NONE, category: str | None = None, bought: Iterable[str] = (),
            available: np.ndarray | None = None, personalised: bool = True,
            rules: AppliedRules | None = None) -> RecommendationResult:
    """Top ``k`` items for a page showing ``item_id`` (known to the model: see
    ``scorer.item_index``); ``history`` and ``bought`` (a shopper's, when known) only feed
    ``exclude``. An item the model does not know gets popular items (``fallback``)."""
    return recommend(scorer, history, k, exclude, category, bought, personalised, rules, available=available,
                     query=[_Event(item_id, EventKind.PURCHASE)], banned=(item_id,))


def cart(scorer: Scorer, basket: Sequence[str], k: int, history: Sequence[HistoryEvent] = (),
         exclude: Exclude = Exclude.NONE, category: str | None = None, bought: Iterable[str] = (),
         available: np.ndarray | None = None, personalised: bool = True,
         rules: AppliedRules | None = None) -> RecommendationResult:
    """Top ``k`` items for a basket (item ids, in the order added) and a shopper's kept
    ``history`` (oldest first; empty for a guest); the basket's items are never returned."""
    query = [*history, *(_Event(item_id, EventKind.CART) for item_id in basket)]
    return recommend(scorer, history, k, exclude, category, bought, personalised, rules, available=available,
                     query=query, banned=basket)


def new_items(catalog: Catalog) -> np.ndarray:
    """bool [items]: the catalogue's new items (all False when it lists none)."""
    mask = np.zeros(len(catalog.items), dtype=bool)
    mask[list(catalog.new)] = True
    return mask


def new_for_you(scorer: Scorer, history: Sequence[HistoryEvent], k: int, exclude: Exclude = Exclude.NONE,
                category: str | None = None, bought: Iterable[str] = (), available: np.ndarray | None = None,
                personalised: bool = True, new: np.ndarray | None = None,
                rules: AppliedRules | None = None) -> RecommendationResult:
    """Top ``k`` of the catalogue's new items for a shopper (fewer when fewer pass the filters;
    none when the catalogue lists no new items). ``personalised=False`` (a holdout's control)
    serves them by resemblance to the best sellers, as for a shopper without history. ``new``:
    :func:`new_items` of the scorer's catalogue, when the caller keeps it (else computed)."""
    catalog = scorer.catalog
    new = new_items(catalog) if new is None else new
    only_new = new if available is None else new & available
    result = recommend(scorer, history, k, exclude, category, bought, personalised, rules, available=only_new)
    if result.fallback and not result.model_failed and catalog.popular:
        # popular items are never new (they have no sales yet): ask the model for the new items
        # that resemble the best sellers instead
        seed = [_Event(catalog.items[i].id, EventKind.VIEW)  # the best seller last: the most recent
                for i in reversed(catalog.popular[: scorer.history_length])]
        result = replace(recommend(scorer, history, k, exclude, category, bought, rules=rules, available=only_new,
                                   query=seed), fallback=True, history_used=0)
    return result
