"""The agent's ranking of stored shoppers by a factorized model, in float and vectorised: what the
settings search (:mod:`cloud_trainer.models.tuning`) and the blend's weight choice
(:mod:`cloud_trainer.models.blend_choice`) score on the validation window. Tests check that it
ranks as the served path does (a float32 export in LiteRT behind :func:`shared.recommendation.recommend`).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from cloud_trainer.data.events_io import EventTable
from cloud_trainer.evaluation import metrics
from cloud_trainer.models.dot_product import ModelWeights

#: Places ranked.
K = 20


def ban(scores: np.ndarray, banned: Sequence[np.ndarray]) -> None:
    """Set each row's ``banned`` items (row r: ``banned[r]``, item indices; one entry per row) to -inf, in place."""
    rows = np.repeat(np.arange(len(banned)), [len(b) for b in banned])
    scores[rows, np.concatenate(banned).astype(np.int64)] = -np.inf


def served_top_k(weights: ModelWeights, train: EventTable, histories: Sequence[np.ndarray], history_length: int,
                 exclusions: dict[str, Sequence[np.ndarray] | None], k: int = K) -> dict[str, np.ndarray]:
    """Per name in ``exclusions``, [shoppers, k] catalogue indices as the agent ranks them (float),
    all from one scoring pass: the distinct items of the last ``history_length`` events
    (``histories``: rows as the agent holds them, oldest first) pooled once each with the mean of
    ``recency**p`` over their positions p (0 = the latest), plus ``repeat_weight`` x their counts,
    without that exclusion's items (None: nothing excluded).
    Shoppers are scored in batches of :func:`metrics.users_per_batch` (memory: not shoppers x items)."""
    n = weights.num_items
    batch = metrics.users_per_batch(n)
    out = {name: np.empty((len(histories), min(k, n)), dtype=np.int64) for name in exclusions}
    for first in range(0, len(histories), batch):
        pooled, (user, item, counts) = pooled_histories(weights, train, histories[first : first + batch],
                                                        history_length)
        scores = pooled @ weights.item_vectors + weights.item_bias
        scores[user, item] += weights.repeat_weight * counts
        for name, excluded in exclusions.items():
            ranked = scores
            if excluded is not None:
                banned = excluded[first : first + len(pooled)]
                ranked = scores.copy()
                ban(ranked, banned)
            out[name][first : first + len(pooled)] = metrics.top_k(ranked, min(k, n))
    return out


def pooled_histories(weights: ModelWeights, train: EventTable, histories: Sequence[np.ndarray],
                     history_length: int) -> tuple[np.ndarray, tuple[np.ndarray, np.ndarray, np.ndarray]]:
    """(pooled history vectors [shoppers, D] of :func:`served_top_k`, and the (shopper, item,
    occurrences) of each distinct item of the histories: the repeat term's counts)."""
    n = weights.num_items
    chunk = [rows[-history_length:] for rows in histories]
    owner = np.repeat(np.arange(len(chunk)), [len(rows) for rows in chunk])
    age = np.concatenate([np.arange(len(rows))[::-1] for rows in chunk] or [[]]).astype(np.float64)
    rows = np.concatenate(chunk or [[]]).astype(np.int64)
    pairs, inverse, counts = np.unique(owner * n + train.item[rows], return_inverse=True, return_counts=True)
    user, item = pairs // n, pairs % n
    coefficient = np.bincount(inverse, weights=weights.recency**age, minlength=len(pairs)) / counts
    starts = np.searchsorted(user, np.arange(len(chunk)))
    held = np.bincount(user, minlength=len(chunk)) > 0  # an agent holding nothing pools nothing
    pooled = np.zeros((len(chunk), weights.history_embedding.shape[1]), dtype=np.float32)
    if held.any():
        pooled[held] = np.add.reduceat(weights.history_embedding[item].astype(np.float64) * coefficient[:, None],
                                       starts[held], axis=0)
    return pooled, (user, item, counts)
