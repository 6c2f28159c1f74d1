"""The baselines every evaluation shows beside the model: popularity, repeat purchases, item-kNN and
EASE, each a [test users, training items] score matrix for a :class:`Split` (pure numpy)."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from cloud_trainer.evaluation.splits import Split, is_target
from cloud_trainer.models.ease import ease


def _purchase_matrix(data: Split) -> np.ndarray:
    """[train users, items] 1.0 where the user bought the item in training."""
    train = data.train
    bought = is_target(train.kind, data.target)
    x = np.zeros((len(train.user_ids), data.num_items), dtype=np.float64)
    x[train.user[bought], train.item[bought]] = 1.0
    return x


def _test_rows(data: Split) -> np.ndarray:
    index = {user_id: n for n, user_id in enumerate(data.train.user_ids)}
    return np.array([index[u] for u in data.users])


def popularity_scores(data: Split) -> np.ndarray:
    """Purchases per item in training (distinct buyers), the same for every user."""
    counts = _purchase_matrix(data).sum(axis=0)
    return np.tile(counts, (len(data.users), 1))


def repeat_purchase_scores(data: Split) -> np.ndarray:
    """The user's own past purchases first (most often bought first), then popularity."""
    train = data.train
    popularity = popularity_scores(data)[0]
    scores = np.tile(popularity / (popularity.max() + 1.0), (len(data.users), 1))
    for row, rows in enumerate(data.history):
        bought = rows[is_target(train.kind[rows], data.target)]
        np.add.at(scores[row], train.item[bought], 1.0)
    return scores


def item_knn_scores(data: Split) -> np.ndarray:
    """Item-to-item cosine similarity on training purchases; a user's score sums their items' rows."""
    x = _purchase_matrix(data)
    norms = np.sqrt(x.sum(axis=0))
    norms[norms == 0] = 1.0
    similarity = (x.T @ x) / np.outer(norms, norms)
    np.fill_diagonal(similarity, 0.0)
    return x[_test_rows(data)] @ similarity


def ease_scores(data: Split, lam: float = 200.0) -> np.ndarray:
    """EASE (Steck 2019): a closed-form item-item model with a zero diagonal."""
    x = _purchase_matrix(data)
    return x[_test_rows(data)] @ ease(x, lam)


BASELINES: dict[str, Callable[[Split], np.ndarray]] = {
    "popularity": popularity_scores,
    "repeat-purchase": repeat_purchase_scores,
    "item-kNN (cosine)": item_knn_scores,
    "EASE (lambda 200)": ease_scores,
}
