"""The shop's other pages (:mod:`shared.scenes`) evaluated as served: the exported model in LiteRT
behind the very scene functions the agent's routes call, each with a metric that fits its page.

- **related** (product page): for a test-period basket (a shopper's purchases at one time: an
  invoice) and each of its items X, the targets are the basket's other items and the items of
  that shopper's next basket; Recall@K of ``related(X)``.
- **cart** (basket page): leave one out of each test basket of at least two items (a seeded
  choice): the rest is the basket, the held-out item the target (hit rate = Recall@K, one
  target); with the shopper's history as an agent holds it at the cut, and as a guest.
- **new for you**: the shoppers of new items (:func:`cloud_trainer.evaluation.splits.cold_start_split`),
  ``new_for_you`` over the catalogue's new items; Recall@K of the new items they bought.

Each beside the same scene served without the model (``personalised=False``: popular items under
the same filters, or for new items their resemblance to the best sellers). At most
:data:`MAX_QUERIES` queries per scene (a seeded sample). Nothing here is tuned to a dataset.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence

import numpy as np

from cloud_trainer.data.events_io import EventTable
from cloud_trainer.evaluation import splits
from cloud_trainer.evaluation.metrics import recall_ndcg
from cloud_trainer.evaluation.served import HistoryEvent, ServedModel, StoredShopper, stored_shoppers
from shared.recommendation import RecommendationResult
from shared.scenes import cart, new_for_you, related

log = logging.getLogger(__name__)

MAX_QUERIES = 3000
SCENE_K = 20
SEED = 23

#: One query: (the scene's answer for a scorer, personalised or not, k) and its targets.
Query = tuple[Callable[[ServedModel, bool, int], RecommendationResult], set[int]]


def _test_baskets(table: EventTable, cut: float, target: str) -> list[tuple[str, list[str]]]:
    """(user id, item ids) of each test-period basket (a shopper's target events at one time), by
    shopper then time."""
    rows = np.flatnonzero((table.timestamp >= cut) & splits.is_target(table.kind, target))
    rows = rows[np.lexsort((table.timestamp[rows], table.user[rows]))]
    baskets: list[tuple[str, list[str]]] = []
    last: tuple[int, float] | None = None
    for r in rows.tolist():
        key = (int(table.user[r]), float(table.timestamp[r]))
        if key != last:
            baskets.append((table.user_ids[key[0]], []))
            last = key
        item = table.item_ids[int(table.item[r])]
        if item not in baskets[-1][1]:
            baskets[-1][1].append(item)
    return baskets


def _sample(queries: list[Query]) -> list[Query]:
    keep = splits.sampled_positions(len(queries), MAX_QUERIES, SEED)
    return queries if keep is None else [queries[n] for n in keep]


def _scored(model: ServedModel, queries: Sequence[Query], personalised: bool) -> dict[str, float]:
    ranked = np.full((len(queries), SCENE_K), -1, dtype=np.int64)
    for row, (ask, _) in enumerate(queries):
        served = [model.item_index[r.item.id] for r in ask(model, personalised, SCENE_K).items]
        ranked[row, : len(served)] = served
    metrics = recall_ndcg(ranked, [targets for _, targets in queries])
    return {"recall@10": metrics["recall@10"], "recall@20": metrics["recall@20"],
            "se(recall@20)": metrics["se(recall@20)"], "queries": metrics["users"]}


def _target_set(model: ServedModel, items: Sequence[str]) -> set[int]:
    """Item ids as catalogue indices; an item the catalogue lacks is a target no list can hit."""
    count = len(model.catalog.items)
    return {i if 0 <= (i := model.item_index.get(item, -1)) < count else -1 - n for n, item in enumerate(items)}


def related_queries(model: ServedModel, baskets: list[tuple[str, list[str]]]) -> list[Query]:
    queries: list[Query] = []
    for n, (user, items) in enumerate(baskets):
        following = baskets[n + 1][1] if n + 1 < len(baskets) and baskets[n + 1][0] == user else []
        for item in items:
            if item not in model.item_index:
                continue
            wanted = _target_set(model, [i for i in dict.fromkeys(items + following) if i != item])
            if wanted:
                queries.append((lambda m, p, k, item=item: related(m, item, k, personalised=p), wanted))
    return _sample(queries)


def cart_queries(model: ServedModel, baskets: list[tuple[str, list[str]]], shoppers: dict[str, StoredShopper],
                 as_guest: bool) -> list[Query]:
    rng = np.random.default_rng(SEED)
    queries: list[Query] = []
    for user, items in baskets:
        if len(items) < 2:
            continue
        held_out = int(rng.integers(len(items)))
        basket = items[:held_out] + items[held_out + 1 :]
        shopper = shoppers.get(user)
        history: list[HistoryEvent] = [] if as_guest or shopper is None else shopper.history
        queries.append((lambda m, p, k, b=basket, h=history: cart(m, b, k, h, personalised=p),
                        _target_set(model, [items[held_out]])))
    return _sample(queries)


def evaluate_scenes(model: ServedModel, variant: str, table: EventTable, cut: float,
                    target: str) -> dict[str, dict[str, float]]:
    """Rows of the scenes table: scene and server -> Recall@10, @20, its standard error, queries."""
    train = splits.train_period(table, cut)
    baskets = _test_baskets(table, cut, target)
    order = np.lexsort((train.timestamp, train.user))
    bounds = np.searchsorted(train.user[order], np.arange(len(train.user_ids) + 1))
    buyers = sorted({user for user, items in baskets if len(items) >= 2} & set(train.user_ids))
    at = {user_id: n for n, user_id in enumerate(train.user_ids)}
    held = stored_shoppers(train, [order[bounds[at[u]] : bounds[at[u] + 1]] for u in buyers], now=cut)
    shoppers = dict(zip(buyers, held, strict=True))
    rows: dict[str, dict[str, float]] = {}
    served, unserved = f"model ({variant}, LiteRT, as served)", "without the model (popular items)"
    scenes = {"related": related_queries(model, baskets),
              "cart, with the shopper's history": cart_queries(model, baskets, shoppers, as_guest=False),
              "cart, as a guest": cart_queries(model, baskets, shoppers, as_guest=True)}
    for scene, queries in scenes.items():
        log.info("scene %s: %d queries", scene, len(queries))
        rows[f"{scene}: {served}"] = _scored(model, queries, True)
        rows[f"{scene}: {unserved}"] = _scored(model, queries, False)
    return rows | new_for_you_rows(model, variant, table, cut)


def new_for_you_rows(model: ServedModel, variant: str, table: EventTable, cut: float) -> dict[str, dict[str, float]]:
    catalog = model.catalog
    data = splits.sample_shoppers(splits.cold_start_split(table, cut, [item.id for item in catalog.items]))
    if not data.users or data.num_items == data.num_known:
        return {}
    new = np.arange(data.num_items) >= data.num_known  # the new items of the split (what catalog.new lists)
    if catalog.new and sorted(catalog.new) != np.flatnonzero(new).tolist():
        log.warning("the catalogue's new items are not the items without training events; using the latter")
    shoppers = stored_shoppers(data.train, data.history, now=cut)
    queries: list[Query] = [
        (lambda m, p, k, s=s: new_for_you(m, s.history, k, personalised=p, new=new), targets)
        for s, targets in zip(shoppers, data.new_targets, strict=True)]
    return {f"new for you: model ({variant}, LiteRT, as served)": _scored(model, queries, True),
            "new for you: without the model (new items nearest the best sellers)": _scored(model, queries, False)}
