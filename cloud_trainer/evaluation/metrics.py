"""The protocol's metrics (see :mod:`cloud_trainer.evaluation`): top K, Recall@K, NDCG@K, the
standard error of Recall@20, coverage, and the cold-start figures.

Recall@K is :func:`recall_at` for everyone: the tables, the settings search and the export's
quantization quality gate (:mod:`cloud_trainer.delivery.gates`).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence

import numpy as np

from cloud_trainer.evaluation.splits import MODES, ColdStartSplit, Split

RECALL_AT = (10, 20, 50)
NDCG_AT = (10, 20)
#: Cut-offs of the recall@K curves in the report (the table shows RECALL_AT).
CURVE_AT = (1, 2, 5, 10, 20, 50, 100)
#: Test users scored and ranked at a time by :func:`evaluate` when given a :data:`BatchScorer`,
#: at most: fewer when that would be more than :data:`SCORED_CELLS` scores.
BATCH_USERS = 1024
#: Scores ranked at a time (float32 128 MB; ranking makes a few copies of that size).
SCORED_CELLS = 32_000_000


def users_per_batch(num_items: int, most: int = BATCH_USERS) -> int:
    """Users scored at a time so that a batch holds at most :data:`SCORED_CELLS` scores."""
    return max(1, min(most, SCORED_CELLS // max(num_items, 1)))

#: Scores of some test users: positions in ``Split.users`` -> dense [len(positions), items].
BatchScorer = Callable[[np.ndarray], np.ndarray]


def top_k(scores: np.ndarray, k: int, exclude: list[set[int]] | None = None) -> np.ndarray:
    """[users, k] item indices by descending score (ties: lower index first); excluded items never."""
    scores = np.array(scores, dtype=np.float64)
    if exclude is not None:
        for row, items in enumerate(exclude):
            scores[row, list(items)] = -np.inf
    part = np.argpartition(-scores, min(k, scores.shape[1] - 1), axis=1)[:, :k]
    part_scores = np.take_along_axis(scores, part, axis=1)
    order = np.lexsort((part, -part_scores), axis=1)
    return np.take_along_axis(part, order, axis=1)


def as_target_sets(targets: Sequence[set[int]] | np.ndarray) -> Sequence[set[int]]:
    """Per row the set of target item indices, from sets or from an array padded with -1."""
    if isinstance(targets, np.ndarray):
        return [set(row[row >= 0].tolist()) for row in targets]
    return targets


def _target_rows(ranked: np.ndarray, targets: Sequence[set[int]]) -> Iterator[tuple[np.ndarray, int]]:
    """For each row with targets (rows without any are skipped): bool per ranked place (a target?),
    and how many targets the row has."""
    for row, wanted in zip(ranked, targets, strict=True):
        if wanted:
            yield np.fromiter((int(i) in wanted for i in row), dtype=bool, count=len(row)), len(wanted)


def _recall(hits: np.ndarray, wanted: int, k: int) -> float:
    """Recall@k of one list: hits among its first k places / min(k, targets) (a numpy float)."""
    return hits[:k].sum() / min(k, wanted)


def recall_at(ranked: np.ndarray, targets: Sequence[set[int]] | np.ndarray, k: int = 20) -> float:
    """Mean Recall@k = hits / min(k, |targets|) over the rows with targets, unrounded. ``targets``:
    per row a set of item indices, or an array of them padded with -1; ``ranked`` may hold -1 for
    empty places."""
    total, rows = 0.0, 0
    for hits, wanted in _target_rows(ranked, as_target_sets(targets)):
        total += _recall(hits, wanted, k)
        rows += 1
    return float(total / rows) if rows else 0.0


def recall_ndcg(ranked: np.ndarray, targets: Sequence[set[int]]) -> dict[str, float]:
    """Mean Recall@K and NDCG@K over the users with targets (users without any are skipped), and
    the standard error of the mean Recall@20 (``se(recall@20)``). ``ranked`` may hold -1 for
    empty places."""
    discounts = 1.0 / np.log2(np.arange(2, ranked.shape[1] + 2))
    cutoffs = sorted(set(RECALL_AT) | {k for k in CURVE_AT if k <= ranked.shape[1]})
    sums = {f"recall@{k}": 0.0 for k in cutoffs} | {f"ndcg@{k}": 0.0 for k in NDCG_AT}
    per_user_recall_at_20: list[float] = []
    for hits, wanted in _target_rows(ranked, targets):
        for k in cutoffs:
            sums[f"recall@{k}"] += _recall(hits, wanted, k)
        per_user_recall_at_20.append(_recall(hits, wanted, 20))
        for k in NDCG_AT:
            ideal = discounts[: min(k, wanted)].sum()
            sums[f"ndcg@{k}"] += (hits[:k] * discounts[:k]).sum() / ideal
    users = len(per_user_recall_at_20)
    se = float(np.std(per_user_recall_at_20, ddof=1) / np.sqrt(users)) if users > 1 else 0.0
    return ({name: round(total / users, 4) if users else 0.0 for name, total in sums.items()}
            | {"se(recall@20)": round(se, 4), "users": users})


def all_scores(scorer: BatchScorer, data: Split) -> np.ndarray:
    """The whole [test users, items] matrix of a :data:`BatchScorer` (for small splits)."""
    return scorer(np.arange(len(data.users)))


def rank_in_batches(scorer: BatchScorer, data: Split, k: int,
                    batch: int = BATCH_USERS) -> dict[str, np.ndarray]:
    """Per mode the [test users, k] top items of ``scorer``, scored ``batch`` users at a time
    (memory: batch x items); mode ``new`` leaves out what each user bought before. The same lists
    as :func:`top_k` over the whole matrix."""
    ranked: dict[str, list[np.ndarray]] = {mode: [] for mode in MODES}
    batch = users_per_batch(data.num_items, batch)
    for start in range(0, len(data.users), batch):
        rows = np.arange(start, min(start + batch, len(data.users)))
        scores = scorer(rows)
        ranked["all"].append(top_k(scores, k))
        ranked["new"].append(top_k(scores, k, data.bought_before[start : start + batch]))
    return {mode: np.concatenate(lists) if lists else np.zeros((0, k), dtype=np.int64)
            for mode, lists in ranked.items()}


def evaluate(scores: np.ndarray | BatchScorer, data: Split) -> dict[str, dict[str, float]]:
    """Both modes' metrics for a [test users, items] score matrix, or for a :data:`BatchScorer`
    ranked batch by batch (higher is better)."""
    k = min(max(CURVE_AT), data.num_items)
    if callable(scores):
        return evaluate_ranked(rank_in_batches(scores, data, k), data)
    return evaluate_ranked({mode: top_k(scores, k, data.bought_before if mode == "new" else None)
                            for mode in MODES}, data)


def evaluate_ranked(ranked: dict[str, np.ndarray], data: Split) -> dict[str, dict[str, float]]:
    """Both modes' metrics for ranked lists per mode ([test users, K] item indices, -1 for none):
    mode ``new``'s lists must leave out what each user bought before."""
    results = {}
    for mode in MODES:
        metrics = recall_ndcg(ranked[mode], data.targets[mode])
        listed = ranked[mode][:, :20]
        metrics["coverage@20"] = round(len(np.unique(listed[listed >= 0])) / data.num_items, 4)
        results[mode] = metrics
    return results


def ranked_in_batches(scorer: BatchScorer, users: int, num_items: int, k: int, allowed: np.ndarray | None = None,
                      batch: int = BATCH_USERS) -> np.ndarray:
    """[users, k] top items of ``scorer`` (only ``allowed`` items, a bool mask, when given), scored
    ``batch`` users at a time (memory: batch x items, never users x items)."""
    ranked = []
    batch = users_per_batch(num_items, batch)
    for start in range(0, users, batch):
        scores = scorer(np.arange(start, min(start + batch, users)))
        ranked.append(top_k(scores if allowed is None else np.where(allowed, scores, -np.inf), k))
    return np.concatenate(ranked) if ranked else np.zeros((0, k), dtype=np.int64)


def cold_start_metrics(ranked: np.ndarray, data: ColdStartSplit, k: int = 20) -> dict[str, float]:
    """For ranked lists over the whole catalogue ([users, >= k], -1 for none): Recall@k of the new
    items bought and of every item bought, and the share of top-k slots that went to new items."""
    ranked = ranked[:, :k]
    return {
        f"recall@{k} new items": recall_ndcg(ranked, data.new_targets)[f"recall@{k}"],
        f"recall@{k} all items": recall_ndcg(ranked, data.all_targets)[f"recall@{k}"],
        f"new-item share of top {k}": round(float((ranked >= data.num_known).mean()), 4),
        "users": len(data.users),
    }


def among_new_items(ranked: np.ndarray, data: ColdStartSplit, ks: tuple[int, ...] = (10, 20)) -> dict[str, float]:
    """Recall@K when only the new items are ranked (a "new for you" shelf; ``ranked``: [users,
    >= max K] lists of new items, -1 for none): which of them does this shopper want?"""
    metrics = recall_ndcg(ranked, data.new_targets)
    return {f"recall@{k}": metrics[f"recall@{k}"] for k in ks}


def random_among_new_items(data: ColdStartSplit, ks: tuple[int, ...] = (10, 20)) -> dict[str, float]:
    """The expected :func:`among_new_items` recall of a random order: for a shopper with ``t``
    rankable targets among ``m`` new items, expected hits in the top k are ``t * k / m``."""
    m = data.num_items - data.num_known
    out = {}
    for k in ks:
        values = [min(k, m) * sum(1 for i in wanted if i >= 0) / m / min(k, len(wanted)) for wanted in data.new_targets]
        out[f"recall@{k}"] = round(float(np.mean(values)), 4) if values and m else 0.0
    return out
