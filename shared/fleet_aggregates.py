"""The fleet aggregate: what an agent may tell the trainer about its shoppers, and nothing more.

An agent publishes, retained on ``<prefix>/<fleet>/aggregates/<device_id>``, the sums an EASE-type
model is made of: the item Gram matrix ``G = X'X`` of its shoppers (``X[u, i]`` = the weight of
shopper u's strongest event with item i, the very matrix the trainer builds from an events file,
:mod:`cloud_trainer.models.factorized`), thresholded. Per item: how many distinct shoppers had an
event with it (``shoppers``), ``G[i, i]`` (``gram``) and how many distinct shoppers bought it in the
last ``recent_days`` days of the window (``recent_buyers``, the trend). Per pair of items (first <
second, indices into ``items``): distinct shoppers who had both and ``G[i, j]``. Columnar arrays in
one compact JSON object; no shopper id, no per-shopper row, no timestamp finer than the window.

**The threshold rule** (:func:`releasable`): an item, a pair or a recent-buyer count leaves the
device only if at least ``min_shoppers`` (k) distinct shoppers of that device contribute to it;
a recent-buyer count below k is published as 0. Why no count singles a shopper out: every number
published is a sum over at least k shoppers, each adding at most 1 (``G``'s entries are products
of weights <= 1), so no published number is one shopper's, and nothing names which shoppers
contributed. That is k-anonymity of each released cell, not differential privacy: someone who
sees two publications of a device between which exactly one shopper came or went learns that
shopper's items among the released cells (a differencing attack). Where that matters, the
documented alternative is Laplace noise: add ``Laplace(sensitivity / epsilon)`` to every count,
where one shopper with at most m distinct items changes up to m item cells and m(m-1)/2 pair
cells, so the L1 sensitivity is m(m+1)/2 (weights <= 1); with the agent's 200 kept events that
noise drowns all but the largest counts, which is why the default is the threshold, and why a
device should publish at most every ``interval_s`` (hours), not on every event.

**Size.** At most ``max_pairs`` pairs, the ones with the most shoppers (a store's Gram matrix has
up to items^2 / 2 cells; the largest carry the eigenspace the model keeps). At 100,000 pairs the
JSON is about 3 MB. :func:`parse_aggregate` refuses anything larger than :data:`MAX_PAYLOAD_BYTES`.

Pure: no I/O, no third-party imports. The agent computes (:mod:`edge_agent.cooccurrence`), the
trainer reads and sums (:mod:`cloud_trainer.models.fleet_gram`).
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from shared.bounded_json import loads
from shared.errors import JsonRejected
from shared.events import EVENT_WEIGHTS
from shared.topics import check_name

SCHEMA = "edge-rec/fleet-aggregates/v1"
#: Largest payload accepted (bytes): 1,000,000 pairs of short ids fit.
MAX_PAYLOAD_BYTES = 64 * 1024 * 1024
MAX_ITEMS = 2_000_000
MAX_PAIRS = 1_000_000
MAX_ITEM_ID_CHARS = 256
#: The agent's defaults (config section ``[aggregates]``).
DEFAULT_MIN_SHOPPERS = 10
DEFAULT_MAX_PAIRS = 100_000
DEFAULT_RECENT_DAYS = 14.0

_KEYS = ("schema", "device_id", "window_start", "window_end", "min_shoppers", "shoppers_total", "weights",
         "recent_days", "items", "item_shoppers", "item_gram", "item_recent_buyers", "pair_first", "pair_second",
         "pair_shoppers", "pair_gram")


class AggregateRejected(ValueError):
    """A payload that is not a valid fleet aggregate (bad remote data)."""


def releasable(shoppers: int, min_shoppers: int) -> bool:
    """The threshold rule: a cell leaves the device only if this many distinct shoppers made it."""
    return shoppers >= min_shoppers


@dataclass(frozen=True)
class FleetAggregate:
    """One device's aggregate over its shoppers' events in [window_start, window_end] (epoch s).

    ``shoppers_total`` is the number of shoppers with an event in the window, published only when
    at least ``min_shoppers`` (else 0). Arrays are plain sequences; :meth:`check` enforces the
    contract (lengths, ranges, and the threshold on every count)."""

    device_id: str
    window_start: float
    window_end: float
    min_shoppers: int
    shoppers_total: int
    weights: Mapping[str, float]  # event kind -> its entry in X
    recent_days: float
    items: Sequence[str]
    item_shoppers: Sequence[int]
    item_gram: Sequence[float]
    item_recent_buyers: Sequence[int]
    pair_first: Sequence[int]
    pair_second: Sequence[int]
    pair_shoppers: Sequence[int]
    pair_gram: Sequence[float]

    def check(self) -> FleetAggregate:
        """``self`` if it keeps the contract; :class:`AggregateRejected` naming the problem if not."""
        try:
            check_name(self.device_id, "device id")
        except ValueError as e:
            raise AggregateRejected(str(e)) from None
        _require(_number(self.window_start) and _number(self.window_end) and self.window_start <= self.window_end,
                 "window_start and window_end must be times with start <= end")
        _require(_integer(self.min_shoppers) and self.min_shoppers >= 1, "min_shoppers must be an integer >= 1")
        k = self.min_shoppers
        _require(_integer(self.shoppers_total) and (self.shoppers_total == 0 or self.shoppers_total >= k),
                 "shoppers_total must be 0 or at least min_shoppers")
        _require(isinstance(self.weights, Mapping) and set(self.weights) == {str(kind) for kind in EVENT_WEIGHTS}
                 and all(_number(w) and 0 < w <= 1 for w in self.weights.values()),
                 f"weights must give each event kind ({', '.join(map(str, EVENT_WEIGHTS))}) a weight in (0, 1]")
        _require(_number(self.recent_days) and self.recent_days > 0, "recent_days must be a positive number")
        n, m = len(self.items), len(self.pair_first)
        _require(n <= MAX_ITEMS and m <= MAX_PAIRS, f"at most {MAX_ITEMS} items and {MAX_PAIRS} pairs")
        _require(all(len(column) == n for column in (self.item_shoppers, self.item_gram, self.item_recent_buyers)),
                 "every item column must have one entry per item")
        _require(all(len(column) == m for column in (self.pair_second, self.pair_shoppers, self.pair_gram)),
                 "every pair column must have one entry per pair")
        _require(all(isinstance(i, str) and 0 < len(i) <= MAX_ITEM_ID_CHARS for i in self.items),
                 f"item ids must be strings of 1-{MAX_ITEM_ID_CHARS} characters")
        _require(len(set(self.items)) == n, "item ids must be distinct")
        _counts(self.item_shoppers, self.item_gram, k, "item")
        _require(all(_integer(r) and (r == 0 or k <= r <= s)
                     for r, s in zip(self.item_recent_buyers, self.item_shoppers, strict=True)),
                 "item_recent_buyers must be 0 or from min_shoppers to the item's shoppers")
        _counts(self.pair_shoppers, self.pair_gram, k, "pair")
        _require(all(_integer(a) and _integer(b) and 0 <= a < b < n
                     for a, b in zip(self.pair_first, self.pair_second, strict=True)),
                 "pairs must be item indices with first < second")
        _require(len(set(zip(self.pair_first, self.pair_second, strict=True))) == m, "pairs must be distinct")
        _require(all(p <= min(self.item_shoppers[a], self.item_shoppers[b]) for a, b, p
                     in zip(self.pair_first, self.pair_second, self.pair_shoppers, strict=True)),
                 "a pair cannot have more shoppers than either of its items")
        return self

    def to_json(self) -> dict[str, object]:
        return {"schema": SCHEMA, "device_id": self.device_id, "window_start": self.window_start,
                "window_end": self.window_end, "min_shoppers": self.min_shoppers,
                "shoppers_total": self.shoppers_total, "weights": dict(self.weights),
                "recent_days": self.recent_days, "items": list(self.items),
                "item_shoppers": list(self.item_shoppers), "item_gram": [_short(g) for g in self.item_gram],
                "item_recent_buyers": list(self.item_recent_buyers), "pair_first": list(self.pair_first),
                "pair_second": list(self.pair_second), "pair_shoppers": list(self.pair_shoppers),
                "pair_gram": [_short(g) for g in self.pair_gram]}

    def to_bytes(self) -> bytes:
        """Compact JSON of a checked aggregate (refuses to encode one that breaks the contract)."""
        data = json.dumps(self.check().to_json(), separators=(",", ":"), allow_nan=False).encode()
        _require(len(data) <= MAX_PAYLOAD_BYTES, f"the payload is {len(data)} bytes, more than {MAX_PAYLOAD_BYTES}")
        return data


def parse_aggregate(data: bytes, device_id: str | None = None) -> FleetAggregate:
    """A received payload, checked; with ``device_id``, it must be that device's (the topic's)."""
    if len(data) > MAX_PAYLOAD_BYTES:
        raise AggregateRejected(f"the payload is {len(data)} bytes, more than {MAX_PAYLOAD_BYTES}")
    try:
        raw = loads(data)
    except JsonRejected as e:
        raise AggregateRejected(f"not JSON: {e}") from None
    _require(isinstance(raw, dict), "the payload must be a JSON object")
    assert isinstance(raw, dict)
    _require(raw.get("schema") == SCHEMA, f"schema must be {SCHEMA!r}, not {str(raw.get('schema'))[:80]!r}")
    unknown, missing = sorted(set(raw) - set(_KEYS)), [k for k in _KEYS if k not in raw]
    _require(not unknown, f"unknown keys: {', '.join(unknown)[:200]} (a payload holds nothing but the aggregate)")
    _require(not missing, f"missing keys: {', '.join(missing)}")
    for key in _KEYS[8:]:
        _require(isinstance(raw[key], list), f"{key} must be an array")
    aggregate = FleetAggregate(**{k: raw[k] for k in _KEYS if k != "schema"}).check()
    if device_id is not None and aggregate.device_id != device_id:
        raise AggregateRejected(f"the payload is device {aggregate.device_id!r}'s, published as {device_id!r}'s")
    return aggregate


def _require(ok: bool, problem: str) -> None:
    if not ok:
        raise AggregateRejected(problem)


def _number(x: object) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x)


def _integer(x: object) -> bool:
    return isinstance(x, int) and not isinstance(x, bool)


def _counts(shoppers: Sequence[int], gram: Sequence[float], k: int, what: str) -> None:
    """Every count releasable, every Gram entry a sum of at most ``shoppers`` terms in (0, 1]."""
    _require(all(_integer(s) and releasable(s, k) for s in shoppers),
             f"every {what} count must be an integer of at least min_shoppers ({k}): the threshold rule")
    _require(all(_number(g) and 0 < g <= s + 1e-6 for g, s in zip(gram, shoppers, strict=True)),
             f"{what}_gram must be positive and at most the {what}'s shoppers")


def _short(x: float) -> float | int:
    """A Gram entry as short JSON: products of the default weights are multiples of 1/16."""
    rounded = round(float(x), 6)
    return int(rounded) if rounded.is_integer() else rounded
