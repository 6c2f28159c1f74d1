"""The default model: EASE in the leading eigenspace of the item Gram matrix, plus trend and repeat terms.

It is an embedding dot-product model like :mod:`cloud_trainer.models.dot_product`'s, with these weights:

- **Item embeddings.** EASE (Steck 2019) learns an item-to-item matrix ``B = I - P / diag(P)``
  (zero diagonal) with ``P = (G + lambda I)^-1``, ``G = X'X`` over the shopper-item matrix ``X``
  of the training period (``X[u, i]`` = the weight of u's strongest event with i: purchase 1.0,
  cart 0.5, view 0.25). Written in G's eigenvectors ``V`` (eigenvalues ``s``),
  ``P = I / lambda - V diag(s / (lambda (s + lambda))) V'``: the directions with large ``s``
  carry the item-to-item structure, the rest only the diagonal. So the model keeps the top
  ``r`` eigenpairs, found by randomized subspace iteration (Halko, Martinsson and Tropp 2011)
  with products by the sparse ``X`` only, and takes
  ``B ~ V diag(w) V' diag(1/d) - diag(own)``, ``w = s / (lambda (s + lambda))``,
  ``d = 1/lambda - V^2 w`` (``diag(P)`` in the same eigenspace), ``own`` the diagonal that
  EASE's constraint removes (else each history item scores itself, which stretches int8's
  score range). A randomized SVD of that ``B``, from products with [N, r + 16] blocks, splits
  it into history embeddings ``U`` and item vectors ``S V'``, so the agent scores with one
  ``[r] x [r, N]`` matmul. Nothing of size items x items or shoppers x items is ever made:
  memory is ``X`` (events) plus a few ``[N, r]`` blocks, and time grows with events x r.
  (``U``'s entries are even in size, which int8 needs: the embedding table is quantized with
  one scale for all of it.) On Online Retail it ranks as the dense solve followed by a rank-r
  SVD of ``B`` did, within one standard error (docs/evaluation.md); unlike it, it fits a
  million items.
- **User vector.** The sum of the embeddings of the distinct items in the shopper's last
  ``history_length`` events: the graph pools each item once ("distinct" pooling), weighted by
  ``recency**p`` for an event p events back (the mean over the item's events; 1: all alike), so
  what a shopper did lately may count for more.
- **Trend.** The item bias is ``trend_weight * log1p(purchases in the last trend_days days of
  training)``: what is selling now. (Online Retail's test month is the run-up to Christmas.)
- **Repeat.** ``repeat_weight * (times the item appears in the history)`` is added to every
  history item's score, inside the graph (see :mod:`cloud_trainer.delivery.export`), so shoppers see what
  they keep buying, ordered by how often.

``cloud-trainer train`` chooses these settings per data set on a validation window cut from
the training period (:mod:`cloud_trainer.models.tuning`); the defaults below are its starting point.
A change of ``lambda`` re-weights the same eigenpairs (:func:`factors_from_spectrum`): no new
decomposition.
"""

from __future__ import annotations

import logging
import os
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np
import scipy.sparse as sp

from cloud_trainer.data.events_io import KINDS_BY_CODE, EventTable
from cloud_trainer.models.dot_product import ModelWeights
from shared.events import EVENT_WEIGHTS, EventKind

log = logging.getLogger(__name__)

#: Extra directions the subspace iteration carries beyond the rank (Halko et al.'s oversampling).
OVERSAMPLE = 16
#: Subspace iterations: each is two sparse products with X (time grows with events x rank).
POWER_ITERATIONS = 4
#: Shoppers multiplied at a time: bounds the dense [shoppers, r] intermediate of X V.
SHOPPER_BLOCK = 131_072


@dataclass
class FactorizedSettings:
    rank: int = 256
    l2: float = 200.0  # EASE's lambda
    trend_days: float = 14.0
    trend_weight: float = 0.05
    repeat_weight: float = 0.5
    recency: float = 1.0  # history position p (0 = the latest event) weighs recency**p in the user vector
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


def gram_times(x: sp.csr_matrix, q: np.ndarray, block: int = SHOPPER_BLOCK) -> np.ndarray:
    """X'X q (float64), shoppers ``block`` at a time, blocks on every core (scipy's sparse
    products release the GIL): the Gram matrix is never formed. The products run in float32
    (half the memory traffic, which bounds them); blocks are summed in float64."""
    q32 = np.ascontiguousarray(q, dtype=np.float32)

    def block_product(start: int) -> np.ndarray:
        rows = x[start : start + block]
        return np.asarray(rows.T @ (rows @ q32))

    out = np.zeros((x.shape[1], q.shape[1]))
    with ThreadPoolExecutor(max_workers=os.cpu_count() or 1) as pool:
        for part in pool.map(block_product, range(0, x.shape[0], block)):
            out += part
    return out


def orthonormal_columns(a: np.ndarray) -> np.ndarray:
    """An orthonormal basis of ``a``'s columns ([N, w], N >> w) by shifted CholeskyQR3 (Fukaya et
    al. 2020): matrix products only, ten times faster here than Householder QR on a 200k x 272
    block. Householder QR when ``a`` is too close to rank-deficient for it."""
    m, n = a.shape
    try:
        first_shift = 11 * (m * n + n * (n + 1)) * np.finfo(np.float64).eps * float(np.einsum("ij,ij->", a, a))
        for shift in (first_shift, 0.0, 0.0):
            gram = a.T @ a
            gram[np.diag_indices_from(gram)] += shift
            a = a @ np.linalg.inv(np.linalg.cholesky(gram)).T
        return a
    except np.linalg.LinAlgError:
        return np.linalg.qr(a)[0]


@dataclass
class Spectrum:
    """The leading eigenpairs of the item Gram matrix X'X: ``values`` [w] descending, ``vectors`` [N, w]."""

    values: np.ndarray
    vectors: np.ndarray


def gram_spectrum(x: sp.csr_matrix | None, width: int, seed: int, power_iterations: int = POWER_ITERATIONS,
                  extra: sp.csr_matrix | None = None) -> Spectrum:
    """The top ``width`` eigenpairs of X'X (+ ``extra``, a sparse symmetric [N, N] Gram matrix
    summed from fleet aggregates, :mod:`cloud_trainer.models.fleet_gram`; ``x`` None: that alone)
    by randomized subspace iteration and a Rayleigh-Ritz step."""
    x = None if x is None else sp.csr_matrix(x, dtype=np.float32)
    n = x.shape[1] if x is not None else extra.shape[0] if extra is not None else 0
    if extra is not None and extra.shape != (n, n):
        raise ValueError(f"the extra Gram matrix is {extra.shape}, not [{n}, {n}]")

    def times(q: np.ndarray) -> np.ndarray:
        out = gram_times(x, q) if x is not None else np.zeros((n, q.shape[1]))
        return out if extra is None else out + extra @ q

    width = min(width, n)
    q = orthonormal_columns(np.random.default_rng(seed).standard_normal((n, width)))
    for _ in range(power_iterations):
        q = orthonormal_columns(times(q))
    small = q.T @ times(q)
    values, rotation = np.linalg.eigh((small + small.T) / 2)
    order = np.argsort(values)[::-1]
    return Spectrum(np.maximum(values[order], 0.0), q @ rotation[:, order])


def item_spectrum(table: EventTable, settings: FactorizedSettings, extra: sp.csr_matrix | None = None) -> Spectrum:
    """The Gram spectrum the model of ``settings`` needs (its rank, its event weights), of the
    events' X'X plus ``extra`` (fleet aggregates over the same item index) when given."""
    num_items = len(table.item_ids)
    rank = min(settings.rank, num_items)
    x = shopper_item_matrix(table, settings.event_weights())
    log.info("top %d eigenpairs of the item Gram matrix: %d items, %d shopper-item cells ...", rank, num_items, x.nnz)
    return gram_spectrum(x, rank + OVERSAMPLE, settings.seed, extra=extra)


def factors_from_spectrum(spectrum: Spectrum, rank: int, l2: float, seed: int = 7,
                          power_iterations: int = 2) -> tuple[np.ndarray, np.ndarray]:
    """(history embeddings U [N, r], item vectors S V' [r, N]): the rank-``rank`` SVD of EASE's
    item-item matrix with ``lambda = l2``, in the spectrum's eigen-directions and with EASE's zero
    diagonal: ``B = V diag(w) V' diag(1/d) - diag(own)``, ``own`` the low-rank part's diagonal.
    Without the zero diagonal each history item would score itself, which stretches the int8
    score range; ``B`` is only ever multiplied by [N, r + 16] blocks (randomized SVD)."""
    values, v = spectrum.values, spectrum.vectors
    weight = values / (l2 * (values + l2))
    diagonal = 1.0 / l2 - (v**2) @ weight  # >= diag(P) > 0: V's rows have norm <= 1
    right = weight[:, None] * v.T / diagonal[None, :]  # [w, N]: B's low-rank part is v @ right
    own = np.einsum("ij,ji->i", v, right)

    def times(q: np.ndarray) -> np.ndarray:  # B q
        return v @ (right @ q) - own[:, None] * q

    def transposed_times(q: np.ndarray) -> np.ndarray:  # B' q
        return right.T @ (v.T @ q) - own[:, None] * q

    width = min(rank + OVERSAMPLE, v.shape[0])
    q = orthonormal_columns(times(np.random.default_rng(seed).standard_normal((v.shape[0], width))))
    for _ in range(power_iterations):
        q = orthonormal_columns(times(orthonormal_columns(transposed_times(q))))
    u_small, s, vt = np.linalg.svd(transposed_times(q).T, full_matrices=False)
    # U has orthonormal columns: even entries, kind to int8; S V' is quantized per output channel
    return (q @ u_small[:, :rank]).astype(np.float32), (s[:rank, None] * vt[:rank]).astype(np.float32)


def trend(table: EventTable, days: float) -> np.ndarray:
    """log1p of each item's events in the last ``days`` days of the table."""
    recent = table.timestamp >= table.timestamp.max() - days * 86400.0
    return np.log1p(np.bincount(table.item[recent], minlength=len(table.item_ids)).astype(np.float64))


def item_factors(table: EventTable, settings: FactorizedSettings,
                 extra: sp.csr_matrix | None = None) -> tuple[np.ndarray, np.ndarray]:
    """(history embeddings [N, r], item vectors [r, N]) of the model of ``settings``."""
    rank = min(settings.rank, len(table.item_ids))
    return factors_from_spectrum(item_spectrum(table, settings, extra), rank, settings.l2, settings.seed)


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
        recency=settings.recency,
    )


def fit(table: EventTable, settings: FactorizedSettings, extra: sp.csr_matrix | None = None) -> ModelWeights:
    return assemble(item_factors(table, settings, extra), table, settings)
