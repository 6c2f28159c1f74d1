"""The item Gram matrix summed from the fleet's aggregates, and the factorized model fitted on it.

Each device's aggregate (:mod:`shared.fleet_aggregates`) holds the cells of its shoppers' ``X'X``
that pass the threshold rule, with ``X`` built as the trainer builds it from events (strongest
event weight per shopper and item). Shoppers of different devices are different rows of one big
``X``, so the fleet's Gram matrix is the sum of the devices' (:func:`summed`). What the threshold
and the pair cap leave out reads as 0: the sum is the exact Gram of the events with its rare
cells removed, a principled approximation (EASE's eigenspace is carried by the large cells). The
model is then fitted exactly as from events (:func:`cloud_trainer.models.factorized.gram_spectrum`
with the summed matrix as its operator), with the trend from the devices' recent buyers.

Calibration: int8 quantization needs histories that look like shoppers'. Without events, they are
walks on the co-occurrence graph (:func:`walk_histories`): a first item drawn by its shoppers, each
next item drawn in proportion to its Gram cell with the current one (a shopper who had one item had
those), lengths drawn around the fleet's mean distinct items per shopper; the walk's next steps
are the targets the quality gate reads. With ``--events``, real histories are used instead.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import scipy.sparse as sp

from cloud_trainer.errors import InputError
from cloud_trainer.models.dot_product import ModelWeights
from cloud_trainer.models.factorized import OVERSAMPLE, FactorizedSettings, factors_from_spectrum, gram_spectrum
from shared.events import EventKind, history_inputs
from shared.fleet_aggregates import AggregateRejected, FleetAggregate, parse_aggregate

log = logging.getLogger(__name__)

#: The largest aggregate file read.
MAX_FILE_BYTES = 64 * 1024 * 1024


@dataclass
class FleetGram:
    """The fleet's summed aggregates over ``item_ids`` (model index order)."""

    item_ids: list[str]
    gram: sp.csr_matrix  # float64 [N, N], symmetric, diagonal included
    shoppers: np.ndarray  # int64 [N]: distinct shoppers per item, summed over devices (0: below threshold)
    recent_buyers: np.ndarray  # int64 [N]: distinct recent buyers, summed
    weights: dict[str, float]  # the event weights every device's X used
    recent_days: float
    devices: list[str]
    shoppers_total: int
    window_end: float

    @property
    def pairs(self) -> int:
        return int((self.gram.nnz - np.count_nonzero(self.gram.diagonal())) // 2)


def read_folder(folder: Path) -> list[FleetAggregate]:
    """Every ``*.json`` aggregate in ``folder`` (``cloud-trainer fleet aggregates`` writes them),
    each checked; one that is not valid is an error naming the file."""
    files = sorted(folder.glob("*.json")) if folder.is_dir() else []
    if not files:
        raise InputError(f"{folder} holds no aggregate (*.json): collect them with 'cloud-trainer fleet aggregates'")
    aggregates = []
    for path in files:
        if path.stat().st_size > MAX_FILE_BYTES:
            raise InputError(f"{path}: larger than {MAX_FILE_BYTES} bytes")
        try:
            aggregates.append(parse_aggregate(path.read_bytes()))
        except AggregateRejected as e:
            raise InputError(f"{path}: not a fleet aggregate: {e}") from None
    devices = [a.device_id for a in aggregates]
    if len(set(devices)) < len(devices):
        raise InputError(f"{folder}: a device's aggregate appears twice (its shoppers would count twice)")
    return aggregates


def summed(aggregates: Sequence[FleetAggregate], first_items: Sequence[str] = ()) -> FleetGram:
    """The aggregates summed over one item index: ``first_items`` (an events table's) first, then
    the other items of the aggregates by their total shoppers (most first)."""
    weights = {repr(sorted(a.weights.items())) for a in aggregates}
    if len(weights) != 1:
        raise InputError(f"the aggregates were made with different event weights: {sorted(weights)}")
    shoppers_by_id: dict[str, int] = {}
    for a in aggregates:
        for item_id, count in zip(a.items, a.item_shoppers, strict=True):
            shoppers_by_id[item_id] = shoppers_by_id.get(item_id, 0) + count
    known = set(first_items)
    extra = sorted((i for i in shoppers_by_id if i not in known), key=lambda i: (-shoppers_by_id[i], i))
    item_ids = [*first_items, *extra]
    index = {item_id: n for n, item_id in enumerate(item_ids)}
    n = len(item_ids)
    rows, cols, values = [], [], []
    shoppers, buyers = np.zeros(n, dtype=np.int64), np.zeros(n, dtype=np.int64)
    for a in aggregates:
        at = np.asarray([index[i] for i in a.items], dtype=np.int64)
        first, second = at[np.asarray(a.pair_first, dtype=np.int64)], at[np.asarray(a.pair_second, dtype=np.int64)]
        rows += [at, first, second]
        cols += [at, second, first]
        pair_gram = np.asarray(a.pair_gram, dtype=np.float64)
        values += [np.asarray(a.item_gram, dtype=np.float64), pair_gram, pair_gram]
        np.add.at(shoppers, at, np.asarray(a.item_shoppers, dtype=np.int64))
        np.add.at(buyers, at, np.asarray(a.item_recent_buyers, dtype=np.int64))
    gram = sp.csr_matrix((np.concatenate(values), (np.concatenate(rows), np.concatenate(cols))), shape=(n, n))
    gram.sum_duplicates()
    fleet = FleetGram(item_ids, gram, shoppers, buyers, dict(aggregates[0].weights),
                      max(a.recent_days for a in aggregates), [a.device_id for a in aggregates],
                      sum(a.shoppers_total for a in aggregates), max(a.window_end for a in aggregates))
    log.info("fleet aggregates: %d devices, %d shoppers, %d items (%d not in the events), %d item pairs",
             len(aggregates), fleet.shoppers_total, n, len(extra), fleet.pairs)
    return fleet


def settings_weights(fleet: FleetGram) -> dict[str, float]:
    """The view and cart weights a model trained with the fleet's Gram must use (its X's)."""
    return {"view_weight": fleet.weights[str(EventKind.VIEW)], "cart_weight": fleet.weights[str(EventKind.CART)]}


def trend(fleet: FleetGram) -> np.ndarray:
    """log1p of each item's recent buyers over the fleet (the trend term of the events' model)."""
    return np.log1p(fleet.recent_buyers.astype(np.float64))


def fit(fleet: FleetGram, settings: FactorizedSettings) -> ModelWeights:
    """The factorized model from the fleet's Gram alone (no events)."""
    n = len(fleet.item_ids)
    rank = min(settings.rank, n)
    log.info("top %d eigenpairs of the fleet's Gram matrix: %d items, %d cells ...", rank, n, fleet.gram.nnz)
    spectrum = gram_spectrum(None, rank + OVERSAMPLE, settings.seed, extra=fleet.gram)
    u, item_vectors = factors_from_spectrum(spectrum, rank, settings.l2, settings.seed)
    return ModelWeights(history_embedding=u, projection=np.eye(rank, dtype=np.float32),
                        projection_bias=np.zeros(rank, dtype=np.float32), item_vectors=item_vectors,
                        item_bias=(settings.trend_weight * trend(fleet)).astype(np.float32), pooling="distinct",
                        repeat_weight=settings.repeat_weight, recency=settings.recency)


def popular(fleet: FleetGram, limit: int = 500) -> list[int]:
    """Item indices, most recent buyers first, then most shoppers (the catalogue's fallback)."""
    ranked = np.lexsort((-fleet.shoppers, -fleet.recent_buyers))
    return [int(i) for i in ranked[:limit] if fleet.shoppers[i] > 0]


def walk_histories(fleet: FleetGram, history_length: int, count: int, seed: int,
                   width: int = 32) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(items [count, L] int32, weights [count, L] float32, targets [count, width] int32, -1 padded):
    histories as walks on the co-occurrence graph (module docstring), built as the agent builds
    model inputs (purchases, most recent first, :func:`shared.events.history_inputs`)."""
    rng = np.random.default_rng(seed)
    off = (fleet.gram - sp.diags(fleet.gram.diagonal())).tocsr()
    off.eliminate_zeros()
    start_p = fleet.shoppers / max(int(fleet.shoppers.sum()), 1)
    mean_items = max(float(fleet.shoppers.sum()) / max(fleet.shoppers_total, 1), 1.0)
    items = np.zeros((count, history_length), dtype=np.int32)
    weights = np.zeros((count, history_length), dtype=np.float32)
    targets = np.full((count, width), -1, dtype=np.int32)
    for row in range(count):
        length = int(min(history_length, rng.geometric(1.0 / mean_items)))
        walk = [int(rng.choice(len(start_p), p=start_p))]
        while len(walk) < length + 5:
            lo, hi = off.indptr[walk[-1]], off.indptr[walk[-1] + 1]
            if hi > lo:
                cells = off.data[lo:hi]
                walk.append(int(off.indices[lo + rng.choice(hi - lo, p=cells / cells.sum())]))
            else:
                walk.append(int(rng.choice(len(start_p), p=start_p)))
        hist, nxt = walk[:length], list(dict.fromkeys(walk[length:]))[:width]
        i, w = history_inputs([(item, EventKind.PURCHASE) for item in hist], history_length)
        items[row], weights[row] = i, w
        targets[row, : len(nxt)] = nxt
    return items, weights, targets
