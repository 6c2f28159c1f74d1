"""The default model: a low-rank item-to-item model fitted in closed form, plus trend and repeat terms.

It is an embedding dot-product model like :mod:`cloud_trainer.models.dot_product`'s, with these weights:

- **Item embeddings.** EASE (Steck 2019) learns an item-to-item matrix ``B`` by ridge regression
  of each item's column on all others, over the shopper-item matrix ``X`` of the training period
  (``X[u, i]`` = the weight of u's strongest event with i: purchase 1.0, cart 0.5, view 0.25).
  A rank-``r`` truncated SVD ``B ~ U S V'`` splits it into history embeddings ``U`` and item
  vectors ``S V'``, so the agent scores with one ``[r] x [r, N]`` matmul. (``U``'s entries are
  even in size, which int8 needs: the embedding table is quantized with one scale for all of it;
  ``U sqrt(S)`` lost up to 40% of the score range on 200-item histories.)
- **User vector.** The sum of the embeddings of the distinct items in the shopper's last
  ``history_length`` events: the graph pools each item once ("distinct" pooling).
- **Trend.** The item bias is ``trend_weight * log1p(purchases in the last trend_days days of
  training)``: what is selling now. (Online Retail's test month is the run-up to Christmas.)
- **Repeat.** ``repeat_weight * (times the item appears in the history)`` is added to every
  history item's score, inside the graph (see :mod:`cloud_trainer.delivery.export`), so shoppers see what
  they keep buying, ordered by how often.

``cloud-trainer train`` chooses these settings per data set on a validation window cut from
the training period (:mod:`cloud_trainer.models.tuning`); the defaults below are its starting point.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np
import scipy.sparse as sp

from cloud_trainer.data.events_io import KINDS_BY_CODE, EventTable
from cloud_trainer.errors import TooManyItems
from cloud_trainer.models.dot_product import ModelWeights
from cloud_trainer.models.ease import ease
from shared.events import EVENT_WEIGHTS, EventKind

log = logging.getLogger(__name__)

#: Above this many items the dense item-item solve (N x N) costs too much memory and time.
MAX_ITEMS = 40_000


@dataclass
class FactorizedSettings:
    rank: int = 256
    l2: float = 200.0  # EASE's lambda
    trend_days: float = 14.0
    trend_weight: float = 0.05
    repeat_weight: float = 0.5
    view_weight: float = EVENT_WEIGHTS[EventKind.VIEW]  # a view's entry in the shopper-item matrix
    cart_weight: float = EVENT_WEIGHTS[EventKind.CART]  # (a purchase's is 1)
    seed: int = 7

    def event_weights(self) -> np.ndarray:
        """float32 per event kind code (:data:`cloud_trainer.data.events_io.KINDS_BY_CODE`)."""
        by_kind = {EventKind.VIEW: self.view_weight, EventKind.CART: self.cart_weight, EventKind.PURCHASE: 1.0}
        return np.asarray([by_kind[kind] for kind in KINDS_BY_CODE], dtype=np.float32)


def shopper_item_matrix(table: EventTable, event_weights: np.ndarray) -> sp.csr_matrix:
    """float32 [users, items], sparse (CSR): each shopper's strongest event weight per item. Memory
    grows with events, not users x items."""
    shape = (len(table.user_ids), len(table.item_ids))
    key = table.user.astype(np.int64) * shape[1] + table.item
    order = np.argsort(key, kind="stable")
    key, weight = key[order], event_weights[table.kind][order]
    starts = np.flatnonzero(np.r_[True, key[1:] != key[:-1]])
    strongest = np.maximum.reduceat(weight, starts) if len(key) else weight
    cells = key[starts]
    return sp.csr_matrix((strongest.astype(np.float32), (cells // shape[1], cells % shape[1])), shape=shape)


def truncated_svd(b: np.ndarray, rank: int, seed: int, power_iterations: int = 4) -> tuple[np.ndarray, ...]:
    """The top ``rank`` singular triplets (U [N, r], S [r], Vt [r, N]) by randomized SVD (Halko,
    Martinsson and Tropp 2011): a full SVD of a 4k x 4k matrix takes 15 s here, this about 1 s."""
    rng = np.random.default_rng(seed)
    width = min(b.shape[0], rank + 16)
    q, _ = np.linalg.qr(b @ rng.standard_normal((b.shape[1], width)))
    for _ in range(power_iterations):
        q, _ = np.linalg.qr(b.T @ q)
        q, _ = np.linalg.qr(b @ q)
    u_small, s, vt = np.linalg.svd(q.T @ b, full_matrices=False)
    return (q @ u_small)[:, :rank], s[:rank], vt[:rank]


def trend(table: EventTable, days: float) -> np.ndarray:
    """log1p of each item's events in the last ``days`` days of the table."""
    recent = table.timestamp >= table.timestamp.max() - days * 86400.0
    return np.log1p(np.bincount(table.item[recent], minlength=len(table.item_ids)).astype(np.float64))


def item_factors(table: EventTable, settings: FactorizedSettings) -> tuple[np.ndarray, np.ndarray]:
    """(history embeddings U [N, r], item vectors S V' [r, N]) of the rank-r EASE factorization."""
    num_items = len(table.item_ids)
    if num_items > MAX_ITEMS:
        raise TooManyItems(f"{num_items} items: the factorized model solves an items x items system and takes at "
                           f"most {MAX_ITEMS}; train with --model two-tower")
    rank = min(settings.rank, num_items)
    log.info("EASE item-item solve over %d items (lambda %g) ...", num_items, settings.l2)
    b = ease(shopper_item_matrix(table, settings.event_weights()), settings.l2)
    log.info("rank-%d factorization ...", rank)
    u, s, vt = truncated_svd(b, rank, settings.seed)
    # U has orthonormal columns: even entries, kind to int8; S V' is quantized per output channel
    return u.astype(np.float32), (s[:, None] * vt).astype(np.float32)


def assemble(factors: tuple[np.ndarray, np.ndarray], table: EventTable, settings: FactorizedSettings) -> ModelWeights:
    """The model from its item factors (:func:`item_factors`) and the trend and repeat settings."""
    u, item_vectors = factors
    rank = u.shape[1]
    return ModelWeights(
        history_embedding=u,
        projection=np.eye(rank, dtype=np.float32),
        projection_bias=np.zeros(rank, dtype=np.float32),
        item_vectors=item_vectors,
        item_bias=(settings.trend_weight * trend(table, settings.trend_days)).astype(np.float32),
        pooling="distinct",
        repeat_weight=settings.repeat_weight,
    )


def fit(table: EventTable, settings: FactorizedSettings) -> ModelWeights:
    return assemble(item_factors(table, settings), table, settings)
