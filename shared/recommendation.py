"""Recommendation logic (pure): from a shopper's stored history to a ranked, filtered item list.

Takes the history and a scorer, returns items; knows nothing of HTTP, storage or interpreters.
The agent's REST route and the trainer's evaluation (``cloud-trainer evaluate``) both call
:func:`recommend`, so the figures the trainer reports are those of the list a shopper gets.

Filters (``exclude``, ``category``) rank the whole catalogue: they reach the model as a mask
over every item (the graph input :data:`ALLOWED_INPUT`), and the model's top K holds allowed
items only, as long as there are enough of them (the graph puts the others below every allowed
item). Popular items that pass the filters fill a list only when fewer than ``k`` items pass
them at all, or when the model failed.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from enum import StrEnum
from typing import TYPE_CHECKING, NamedTuple, Protocol

import numpy as np

from shared.catalog import Catalog, CatalogItem
from shared.errors import ScoringFailed
from shared.events import EventKind, history_inputs
from shared.sequence import sequence_inputs

if TYPE_CHECKING:
    from shared.business_rules import AppliedRules

#: The graph input (bool [1, items]) that says which items a query may return; models of
#: contract version 1 have none, and are filtered after their top K.
ALLOWED_INPUT = "item_allowed"


class Exclude(StrEnum):
    NONE = "none"
    PURCHASED = "purchased"
    SEEN = "seen"


class Scores(NamedTuple):
    """A model's answer for one history: top-K item indices and scores, best first.

    ``contributions[p, j]`` is history position ``p``'s share of item ``j``'s score (positions as
    :func:`shared.events.history_inputs` orders them, most recent first; a model may explain only
    its most recent positions); None when the model does not output it.
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

    @property
    def takes_sequence(self) -> bool:
        """True for a model of contract version 3: it reads each position's kind and time gap."""
        ...

    def score(self, items: Sequence[int], weights: Sequence[float], allowed: np.ndarray | None = None,
              sequence: tuple[Sequence[int], Sequence[int]] | None = None) -> Scores:
        """``allowed``: bool [items], the items this query may return; None allows all.
        ``sequence``: (kinds, gaps) of :func:`shared.sequence.sequence_inputs`, given only to a
        scorer whose ``takes_sequence`` is true (a model of contract version 3)."""
        ...


class HistoryEvent(Protocol):
    @property
    def item_id(self) -> str: ...

    @property
    def kind(self) -> EventKind: ...

    @property
    def timestamp(self) -> float | None:
        """When it happened (epoch seconds); None where no time applies (a scene's query items)."""
        ...


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
    model_failed: bool = False  # the model answered with garbage; popular items were served instead


def _timed(events: Iterable[HistoryEvent], index_of: Mapping[str, int]) -> list[tuple[int, EventKind, float | None]]:
    """(item index, kind, timestamp or None) of the events the model knows, in order."""
    return [(index_of[e.item_id], e.kind, e.timestamp) for e in events if e.item_id in index_of]


def _excluded(known: Sequence[tuple[int, EventKind]], exclude: Exclude, bought: Iterable[str],
              index_of: Mapping[str, int]) -> list[int]:
    if exclude is Exclude.NONE:
        return []
    remembered = [index_of[item] for item in bought if item in index_of]
    if exclude is Exclude.SEEN:
        return [index for index, _ in known] + remembered
    return [index for index, kind in known if kind is EventKind.PURCHASE] + remembered


def allowed_items(catalog: Catalog, banned: Sequence[int], category: str | None,
                  available: np.ndarray | None = None) -> np.ndarray | None:
    """bool [items]: the items of ``category`` (compared case-insensitively) not in ``banned`` and,
    when given, ``available`` (bool [items], e.g. in stock; never modified); None when nothing is
    filtered. Costs a few passes over the item count, no per-item Python.
    ``banned`` may hold history-only items (see :mod:`shared.catalog`): they are never ranked anyway."""
    count = len(catalog.items)
    ranked = np.asarray(banned, dtype=np.int64)
    ranked = ranked[ranked < count]
    if category is None and not len(ranked):
        return available
    if category is None:
        allowed = np.ones(count, dtype=bool) if available is None else available.copy()
    else:
        names, codes = catalog.category_codes()
        wanted = category.casefold()
        matching = np.fromiter((name.casefold() == wanted for name in names), dtype=bool, count=len(names))
        allowed = matching[np.frombuffer(codes, dtype=np.uint32)]
        if available is not None:
            allowed &= available
    allowed[ranked] = False
    return allowed


def _main_contributors(positions: Sequence[int], contributions: np.ndarray) -> list[int | None]:
    """For each column of ``contributions``: the history item that added most to it, if any did.

    ``positions[p]`` is the item index at history position ``p``; a repeated item's shares add
    up. Items whose best share is not positive get None (nothing in the history argues for them).
    """
    shares = contributions[: len(positions)]
    items = list(positions)
    if len(set(items)) < len(items):  # repeated items: add up each one's shares
        rows: dict[int, int] = {}
        row_of = [rows.setdefault(item, len(rows)) for item in items]
        owner = np.zeros((len(rows), len(items)), dtype=np.float32)
        owner[row_of, np.arange(len(items))] = 1.0
        shares, items = owner @ shares, list(rows)  # [distinct history items, columns]
    best = shares.argmax(axis=0).tolist()
    amounts = shares.max(axis=0).tolist()
    return [items[r] if a > 0 else None for r, a in zip(best, amounts, strict=True)]


def recommend(
    scorer: Scorer,
    history: Sequence[HistoryEvent],
    k: int,
    exclude: Exclude = Exclude.NONE,
    category: str | None = None,
    bought: Iterable[str] = (),
    personalised: bool = True,
    rules: AppliedRules | None = None,
    available: np.ndarray | None = None,
    query: Sequence[HistoryEvent] | None = None,
    banned: Iterable[str] = (),
) -> RecommendationResult:
    """Top ``k`` items for a shopper; popular items when no history item is known to the model.

    ``history`` is what the agent keeps of the shopper, oldest first: all of it says what
    ``exclude`` removes, and its last ``scorer.history_length`` events are the model's input.
    ``bought`` (the agent's purchase memory) names items bought earlier than the kept events
    show: ``exclude`` purchased and seen leave them out too.
    Items in the history that the model does not know (new or retired items) are ignored; items it
    reads in histories but does not rank (a store's bundle: items sold elsewhere) are input only.
    With a ``category``, only items of that category (compared case-insensitively) are returned. The
    model ranks the whole catalogue under these filters; popular items that pass them fill the
    rest of a list the model could not fill (see the module's docstring). ``personalised=False``
    serves the popular items under the same filters without asking the model (a holdout's control).
    ``rules``: business rules (:mod:`shared.business_rules`): blocked items join the exclusions in
    the mask, boosts re-rank the model's candidates, pins put items at fixed slots.

    For the shop's other pages (:mod:`shared.scenes`): ``available`` (bool [items], the items in
    stock; None: all) limits what may be returned, in the same mask as the filters; ``query`` is
    the model's input when it is not the history (a product page's item, a basket): ``history``
    then only says what ``exclude`` removes; ``banned`` names items never returned (that item,
    the basket's items).
    """
    index_of = scorer.item_index
    timed = _timed(history, index_of)
    known = [(index, kind) for index, kind, _ in timed]
    catalog = scorer.catalog
    excluded = _excluded(known, exclude, bought, index_of) + [index_of[i] for i in banned if i in index_of]
    allowed = allowed_items(catalog, excluded if rules is None else rules.banned(excluded), category, available)
    if query is not None:
        timed = _timed(query, index_of)
        known = [(index, kind) for index, kind, _ in timed]
    chosen: list[Recommendation] = []
    taken: set[int] = set()
    failed = False
    if not personalised:
        known = []
    if known:
        items, weights = history_inputs(known, scorer.history_length)
        try:
            if scorer.takes_sequence:  # a sequence model (shared.sequence)
                _, kinds, gaps = sequence_inputs(timed, scorer.history_length)
                answer = scorer.score(items, weights, allowed, sequence=(kinds, gaps))
            else:
                answer = scorer.score(items, weights, allowed)
            answer = answer if rules is None else rules.rerank(answer)
        except ScoringFailed:
            failed, known = True, []
    if known:
        picked: list[tuple[int, int, float]] = []  # (column in the answer, item index, score)
        for j, (index, score) in enumerate(zip(answer.indices.tolist(), answer.scores.tolist(), strict=True)):
            if index in taken or (allowed is not None and not allowed[index]):
                continue
            picked.append((j, index, score))
            taken.add(index)
            if len(picked) == k:
                break
        reasons: list[int | None] = [None] * len(picked)
        if answer.contributions is not None and picked:
            # models explain the most recent positions (all of them, or fewer: see the export)
            positions = items[: min(len(known), scorer.history_length, answer.contributions.shape[0])]
            reasons = _main_contributors(positions, answer.contributions[:, [j for j, _, _ in picked]])
        for (_, index, score), reason in zip(picked, reasons, strict=True):
            because = None if reason is None else catalog.item(reason)  # may be an item not sold here
            chosen.append(Recommendation(catalog.items[index], score, because))
    for index in catalog.popular:
        if len(chosen) >= k:
            break
        if index in taken or (allowed is not None and not allowed[index]):
            continue
        chosen.append(Recommendation(catalog.items[index], None))
        taken.add(index)
    if rules is not None:
        chosen = rules.pin(chosen, k, allowed)
    return RecommendationResult(
        items=chosen, fallback=not known, model_version=scorer.version,
        history_used=min(len(known), scorer.history_length), model_failed=failed
    )
