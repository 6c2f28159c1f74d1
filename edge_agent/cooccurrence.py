"""A device's fleet aggregate from its shoppers' histories (pure: no I/O, numpy only).

The trainer's shopper x item matrix ``X`` (:mod:`cloud_trainer.models.factorized`) has, per shopper
and item, the weight of the shopper's strongest event with it (view 0.25, cart 0.5, purchase 1:
:data:`shared.events.EVENT_WEIGHTS`). This module sums, over the device's shoppers, exactly the
cells of ``X'X`` an EASE-type model needs, and how many distinct shoppers make each one, then
applies :mod:`shared.fleet_aggregates`' threshold rule and pair cap. The result holds no shopper id.

Vectorised and memory bounded: shoppers are taken in blocks of at most :data:`BLOCK_PAIRS` item
pairs (a shopper with n distinct items makes n(n-1)/2 of them; the agent keeps 200 events per
shopper, so at most 19,900); each block's pair counts are merged into sorted accumulators. Memory
grows with the distinct item pairs the events make (at most events x kept history), never with
shoppers x items or items x items.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Protocol

import numpy as np
import numpy.typing as npt

from shared.events import EVENT_WEIGHTS, EventKind
from shared.fleet_aggregates import DEFAULT_MAX_PAIRS, DEFAULT_MIN_SHOPPERS, DEFAULT_RECENT_DAYS, FleetAggregate

log = logging.getLogger(__name__)

#: Item pairs made at a time (three int64/float64 arrays of this length, ~100 MB at peak).
BLOCK_PAIRS = 4_000_000
_KINDS = list(EventKind)
_WEIGHT = np.asarray([EVENT_WEIGHTS[kind] for kind in _KINDS])

Ints = npt.NDArray[np.int64]
Floats = npt.NDArray[np.float64]


class TimedEvent(Protocol):
    @property
    def item_id(self) -> str: ...

    @property
    def kind(self) -> EventKind: ...

    @property
    def timestamp(self) -> float: ...


@dataclass
class _Sums:
    """Sorted cell keys with their distinct-shopper counts and Gram sums."""

    keys: Ints = field(default_factory=lambda: np.zeros(0, dtype=np.int64))
    shoppers: Ints = field(default_factory=lambda: np.zeros(0, dtype=np.int64))
    gram: Floats = field(default_factory=lambda: np.zeros(0))

    def add(self, keys: Ints, gram: Floats) -> None:
        """Add one contribution per (shopper, cell): ``keys`` may repeat across shoppers."""
        all_keys = np.concatenate([self.keys, keys])
        unique, inverse = np.unique(all_keys, return_inverse=True)
        ones = np.concatenate([self.shoppers, np.ones(len(keys), dtype=np.int64)])
        self.shoppers = np.bincount(inverse, weights=ones, minlength=len(unique)).astype(np.int64)
        self.gram = np.bincount(inverse, weights=np.concatenate([self.gram, gram]), minlength=len(unique)).astype(float)
        self.keys = unique


class _Block:
    """Shoppers' strongest weight per distinct item, gathered until the block makes enough pairs."""

    def __init__(self) -> None:
        self.owner: list[int] = []
        self.item: list[int] = []
        self.kind: list[int] = []
        self.pairs = 0
        self.shoppers = 0

    def add(self, items: Sequence[int], kinds: Sequence[int], distinct: int) -> None:
        self.owner.extend([self.shoppers] * len(items))
        self.item.extend(items)
        self.kind.extend(kinds)
        self.pairs += distinct * (distinct - 1) // 2
        self.shoppers += 1


def aggregate(histories: Iterable[Sequence[TimedEvent]], device_id: str, now: float, *,
              since: float | None = None, min_shoppers: int = DEFAULT_MIN_SHOPPERS,
              max_pairs: int = DEFAULT_MAX_PAIRS, recent_days: float = DEFAULT_RECENT_DAYS) -> FleetAggregate:
    """The device's aggregate over each shopper's events in [``since``, ``now``] (``histories``: one
    sequence of events per shopper, in any order; who the shopper is is never asked)."""
    vocabulary: dict[str, int] = {}
    items, pairs, recent = _Sums(), _Sums(), _Sums()
    recent_buys: list[int] = []  # per shopper, the distinct items bought lately
    block, total, oldest = _Block(), 0, now
    recent_from = now - recent_days * 86400.0
    for events in histories:
        kept = [e for e in events if (since is None or e.timestamp >= since) and e.timestamp <= now]
        if not kept:
            continue
        total += 1
        oldest = min(oldest, min(e.timestamp for e in kept))
        strongest: dict[int, int] = {}
        for e in kept:
            code, kind = vocabulary.setdefault(e.item_id, len(vocabulary)), _KINDS.index(e.kind)
            if code not in strongest or _WEIGHT[kind] > _WEIGHT[strongest[code]]:
                strongest[code] = kind
        recent_buys.extend({vocabulary[e.item_id] for e in kept
                            if e.kind is EventKind.PURCHASE and e.timestamp >= recent_from})
        if block.pairs + len(strongest) ** 2 // 2 > BLOCK_PAIRS and block.shoppers:
            _count(block, items, pairs)
            block = _Block()
        block.add(list(strongest), list(strongest.values()), len(strongest))
    _count(block, items, pairs)
    recent.add(np.asarray(recent_buys, dtype=np.int64), np.ones(len(recent_buys)))
    return _release(device_id, since if since is not None else oldest, now, total, list(vocabulary), items, pairs,
                    recent, min_shoppers, max_pairs, recent_days)


def _count(block: _Block, items: _Sums, pairs: _Sums) -> None:
    """Add a block's item cells (G's diagonal) and pair cells (first < second) to the sums."""
    if not block.shoppers:
        return
    owner, item = np.asarray(block.owner, dtype=np.int64), np.asarray(block.item, dtype=np.int64)
    weight = _WEIGHT[np.asarray(block.kind, dtype=np.int64)]
    items.add(item, weight**2)
    order = np.lexsort((item, owner))  # by shopper, then item: each pair once, first < second
    owner, item, weight = owner[order], item[order], weight[order]
    ends = np.searchsorted(owner, owner, side="right")
    partners = ends - np.arange(len(owner)) - 1  # items after this one in its shopper's run
    first = np.repeat(np.arange(len(owner)), partners)
    run_start = np.repeat(np.cumsum(partners) - partners, partners)
    second = first + 1 + np.arange(len(first)) - run_start
    keys = item[first] * (1 << 31) + item[second]
    pairs.add(keys, weight[first] * weight[second])


def _release(device_id: str, start: float, end: float, total: int, ids: list[str], items: _Sums, pairs: _Sums,
             recent: _Sums, k: int, max_pairs: int, recent_days: float) -> FleetAggregate:
    """The threshold rule (cells of at least ``k`` shoppers) and the pair cap, as a checked aggregate."""
    kept_items = items.keys[items.shoppers >= k]
    index = np.full(len(ids), -1, dtype=np.int64)
    index[kept_items] = np.arange(len(kept_items))
    released = pairs.shoppers >= k
    keys, shoppers, gram = pairs.keys[released], pairs.shoppers[released], pairs.gram[released]
    if len(keys) > max_pairs:  # the largest counts (ties: the larger Gram entry, then the key)
        top = np.lexsort((keys, -gram, -shoppers))[:max_pairs]
        keys, shoppers, gram = keys[top], shoppers[top], gram[top]
    first, second = index[keys >> 31], index[keys & ((1 << 31) - 1)]
    swap = first > second  # item codes follow first appearance; published indices follow the item list
    first, second = np.where(swap, second, first), np.where(swap, first, second)
    buyers = np.zeros(len(kept_items), dtype=np.int64)
    known = index[recent.keys] >= 0
    buyers[index[recent.keys[known]]] = recent.shoppers[known]
    buyers[buyers < k] = 0
    log.info("aggregate of %d shoppers: %d of %d items and %d of %d pairs have at least %d shoppers (%d published)",
             total, len(kept_items), len(items.keys), int(released.sum()), len(pairs.keys), k, len(keys))
    return FleetAggregate(
        device_id=device_id, window_start=float(start), window_end=float(end), min_shoppers=k,
        shoppers_total=total if total >= k else 0, weights={str(kind): EVENT_WEIGHTS[kind] for kind in _KINDS},
        recent_days=recent_days, items=[ids[i] for i in kept_items.tolist()],
        item_shoppers=items.shoppers[items.shoppers >= k].tolist(),
        item_gram=items.gram[items.shoppers >= k].tolist(), item_recent_buyers=buyers.tolist(),
        pair_first=first.tolist(), pair_second=second.tolist(), pair_shoppers=shoppers.tolist(),
        pair_gram=gram.tolist(),
    )
