"""The baselines every evaluation shows beside the model: popularity, repeat purchases, item-kNN and
EASE, for a :class:`Split`.

Each baseline is built once from the training purchases, kept as a scipy.sparse CSR [train users,
items] matrix (memory grows with events, not users x items), and returns a :data:`BatchScorer`:
a function from test-user positions (indices into ``data.users``) to their dense [batch, items]
scores. :func:`cloud_trainer.evaluation.metrics.evaluate` ranks such a scorer batch by batch, so
no [test users, items] matrix is ever made. The ``*_scores`` functions give the whole matrix (for
small splits and tests).
"""

from __future__ import annotations

import logging
from collections.abc import Callable

import numpy as np
import scipy.sparse as sp

from cloud_trainer.evaluation.metrics import BatchScorer, all_scores
from cloud_trainer.evaluation.splits import Split, is_target
from cloud_trainer.models.ease import ease

#: item-kNN keeps each item's :func:`knn_neighbours` most similar items (by cosine); the rest count
#: as 0. At least this many (a big catalogue: 200 per item)...
KNN_NEIGHBOURS = 200
#: ...and as many as this many similarities in all allow (16M, about 200 MB): up to 80,000 items
#: keep more than 200, and up to 4,000 (Online Retail's 3,660) keep them all. Top 200 alone would
#: lower Online Retail's item-kNN recall@20 from 0.181 to 0.166: its reference is the full similarity.
KNN_BUDGET = 16_000_000
#: Items per block when item-kNN computes the similarity (a sparse [items, block] slab each; 512
#: keeps its peak on Online Retail below the dense similarity's).
KNN_BLOCK = 512
#: EASE solves a dense items x items system (8 N^2 bytes, three copies: 10 GB at 20,000 items,
#: measured): above this many items the baseline is not computed (5.4 GB at the limit; the default
#: model, EASE in a low-rank eigenspace, has no such limit).
EASE_MAX_ITEMS = 15_000

log = logging.getLogger(__name__)


def _purchase_counts(data: Split) -> sp.csr_matrix:
    """CSR [train users, items]: how many times the user bought the item in training."""
    train = data.train
    bought = is_target(train.kind, data.target)
    ones = np.ones(int(bought.sum()), dtype=np.float64)
    counts = sp.csr_matrix((ones, (train.user[bought], train.item[bought])),
                           shape=(len(train.user_ids), data.num_items))
    counts.sum_duplicates()
    return counts


def _purchase_matrix(data: Split) -> sp.csr_matrix:
    """CSR [train users, items] 1.0 where the user bought the item in training."""
    x = _purchase_counts(data)
    x.data[:] = 1.0
    return x


def _test_rows(data: Split) -> np.ndarray:
    """Per test user, their row in the training period's user vocabulary."""
    index = {user_id: n for n, user_id in enumerate(data.train.user_ids)}
    return np.array([index[u] for u in data.users], dtype=np.int64)


def popularity(data: Split) -> BatchScorer:
    """Purchases per item in training (distinct buyers), the same for every user."""
    counts = np.asarray(_purchase_matrix(data).sum(axis=0), dtype=np.float64).ravel()
    return lambda rows: np.tile(counts, (len(rows), 1))


def repeat_purchase(data: Split) -> BatchScorer:
    """The user's own past purchases first (most often bought first), then popularity."""
    x = _purchase_counts(data)
    base = np.bincount(x.indices, minlength=data.num_items).astype(np.float64)  # distinct buyers
    base = base / (base.max() + 1.0)
    own = x[_test_rows(data)]

    def scores(rows: np.ndarray) -> np.ndarray:
        return base + own[rows].toarray()

    return scores


def _top_per_column(block: sp.coo_matrix, keep: int) -> sp.csc_matrix:
    """``block`` with only each column's ``keep`` largest entries (ties: the lower row index)."""
    order = np.lexsort((block.row, -block.data, block.col))
    cols = block.col[order]
    starts = np.searchsorted(cols, np.arange(block.shape[1]))
    best = order[np.arange(len(order)) - starts[cols] < keep]
    return sp.csc_matrix((block.data[best], (block.row[best], block.col[best])), shape=block.shape)


def knn_similarity(x: sp.csr_matrix, neighbours: int) -> sp.csr_matrix:
    """CSR [items, items]: row i holds item i's ``neighbours`` most cosine-similar items (zero
    diagonal), computed a block of items at a time from the sparse purchases ``x``."""
    n = x.shape[1]
    norms = np.sqrt(np.asarray(x.sum(axis=0), dtype=np.float64).ravel())
    norms[norms == 0] = 1.0
    xt, xc = x.T.tocsr(), x.tocsc()
    blocks = []
    for start in range(0, n, KNN_BLOCK):
        block = (xt @ xc[:, start : start + KNN_BLOCK]).tocoo()  # columns: items start.. (symmetric)
        values = block.data / (norms[block.row] * norms[block.col + start])
        values[block.row == block.col + start] = 0.0
        nonzero = values != 0.0
        pruned = sp.coo_matrix((values[nonzero], (block.row[nonzero], block.col[nonzero])), shape=block.shape)
        blocks.append(_top_per_column(pruned, neighbours))
    return sp.hstack(blocks).T.tocsr() if blocks else sp.csr_matrix((n, n))


def knn_neighbours(num_items: int) -> int:
    """How many most similar items item-kNN keeps per item: :data:`KNN_NEIGHBOURS`, or more as
    :data:`KNN_BUDGET` allows (every item on a small catalogue: the exact full similarity)."""
    return max(KNN_NEIGHBOURS, KNN_BUDGET // max(num_items, 1))


def item_knn(data: Split, neighbours: int | None = None) -> BatchScorer:
    """Item-to-item cosine similarity on training purchases, each item keeping its ``neighbours``
    most similar items (default :func:`knn_neighbours`: all of them up to 4,000 items, so Online
    Retail's figures are the full similarity's; at least 200); a user's score sums their items' rows."""
    x = _purchase_matrix(data)
    neighbours = knn_neighbours(data.num_items) if neighbours is None else neighbours
    similarity = knn_similarity(x, neighbours)
    own = x[_test_rows(data)]
    return lambda rows: (own[rows] @ similarity).toarray()


def ease_baseline(data: Split, lam: float = 200.0) -> BatchScorer | None:
    """EASE (Steck 2019): a closed-form item-item model with a zero diagonal. Dense items x items:
    None (not computed) above :data:`EASE_MAX_ITEMS` items."""
    if data.num_items > EASE_MAX_ITEMS:
        log.warning("EASE baseline not computed: %d items, its dense items x items system takes at most %d",
                    data.num_items, EASE_MAX_ITEMS)
        return None
    x = _purchase_matrix(data)
    weights = ease(x, lam)
    own = x[_test_rows(data)]
    return lambda rows: np.asarray(own[rows] @ weights)


def popularity_scores(data: Split) -> np.ndarray:
    return all_scores(popularity(data), data)


def repeat_purchase_scores(data: Split) -> np.ndarray:
    return all_scores(repeat_purchase(data), data)


def item_knn_scores(data: Split) -> np.ndarray:
    return all_scores(item_knn(data), data)


def ease_scores(data: Split, lam: float = 200.0) -> np.ndarray:
    scorer = ease_baseline(data, lam)
    if scorer is None:
        raise ValueError(f"EASE takes at most {EASE_MAX_ITEMS} items, not {data.num_items}")
    return all_scores(scorer, data)


#: name -> builder of the baseline's :data:`BatchScorer` for a split (None: not computed here).
BASELINES: dict[str, Callable[[Split], BatchScorer | None]] = {
    "popularity": popularity,
    "repeat-purchase": repeat_purchase,
    "item-kNN (cosine)": item_knn,
    "EASE (lambda 200)": ease_baseline,
}
