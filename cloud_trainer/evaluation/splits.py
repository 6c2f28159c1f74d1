"""The protocol's split (see :mod:`cloud_trainer.evaluation`): the training period, the test users
and their targets per mode, and the cold-start split over a run's whole catalogue."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, replace
from datetime import UTC, datetime

import numpy as np

from cloud_trainer.data.events_io import KIND_CODES, EventTable
from shared.events import EventKind

PURCHASE = KIND_CODES[EventKind.PURCHASE]
#: What a hit is: a purchase (the default), or for shops with few purchases in their logs any
#: event (view, cart, purchase). "Bought before" in mode new and the test users' condition follow.
TARGETS: dict[str, tuple[int, ...]] = {"purchase": (PURCHASE,), "any": tuple(KIND_CODES.values())}


def is_target(kinds: np.ndarray, target: str) -> np.ndarray:
    """bool per event kind code: does it count under ``target`` (a key of :data:`TARGETS`)?"""
    if target not in TARGETS:
        raise ValueError(f"target must be one of {', '.join(TARGETS)}, not {target!r}")
    return np.isin(kinds, TARGETS[target])


#: The protocol's modes: ``all`` (every item bought in the test period) and ``new`` (items never
#: bought before; what was bought before is excluded from the ranking).
MODES = ("all", "new")


def cut_time(day: str) -> float:
    """Epoch seconds of midnight UTC starting ``day`` (YYYY-MM-DD)."""
    try:
        return datetime.strptime(day, "%Y-%m-%d").replace(tzinfo=UTC).timestamp()
    except ValueError:
        raise ValueError(f"{day!r} is not a date like 2011-11-09") from None


def train_period(table: EventTable, cut: float) -> EventTable:
    """The events before ``cut``, with user and item vocabularies of that period only."""
    keep = table.timestamp < cut
    if not keep.any():
        raise ValueError("no events before the cut")
    users, user = np.unique(table.user[keep], return_inverse=True)
    items, item = np.unique(table.item[keep], return_inverse=True)
    report = table.report
    return EventTable(
        user_ids=[table.user_ids[u] for u in users], item_ids=[table.item_ids[i] for i in items],
        user=user.astype(np.int32), item=item.astype(np.int32), kind=table.kind[keep],
        timestamp=table.timestamp[keep], report=report,
    )


@dataclass
class Split:
    train: EventTable  # the training period, own vocabularies (see train_period)
    users: list[str]  # test users
    history: list[np.ndarray]  # per test user: row indices into train, in time order
    targets: dict[str, list[set[int]]]  # mode -> per test user: target item indices
    bought_before: list[set[int]]  # per test user: items bought in training (excluded in mode new)
    target: str = "purchase"  # what counts as "bought" (TARGETS)

    @property
    def num_items(self) -> int:
        return len(self.train.item_ids)


#: Beyond this many test users, :func:`sample_users` keeps a seeded sample of this many.
MAX_TEST_USERS = 50_000
SAMPLE_SEED = 17


def sampled_positions(total: int, limit: int, seed: int = SAMPLE_SEED) -> list[int] | None:
    """None up to ``limit``; beyond, a seeded sample of ``limit`` positions of ``total``, in order."""
    if total <= limit:
        return None
    return np.sort(np.random.default_rng(seed).choice(total, limit, replace=False)).tolist()


def sample_users(data: Split, limit: int = MAX_TEST_USERS, seed: int = SAMPLE_SEED) -> Split:
    """``data`` itself up to ``limit`` test users; beyond, a seeded sample of ``limit`` of them
    (in their original order)."""
    keep = sampled_positions(len(data.users), limit, seed)
    if keep is None:
        return data
    return replace(data, users=[data.users[n] for n in keep], history=[data.history[n] for n in keep],
                   targets={mode: [targets[n] for n in keep] for mode, targets in data.targets.items()},
                   bought_before=[data.bought_before[n] for n in keep])


def _rows_by_user(train: EventTable) -> tuple[np.ndarray, np.ndarray]:
    """Training rows ordered by (user, time), and where each user's run starts and ends in that order."""
    order = np.lexsort((train.timestamp, train.user))
    return order, np.searchsorted(train.user[order], np.arange(len(train.user_ids) + 1))


def _test_purchases(table: EventTable, train: EventTable, cut: float, target: str) -> Iterator[tuple[int, str]]:
    """(training-period user index, item id) of each test-period purchase (``target`` event) by a
    user seen in training."""
    user_index = {user_id: n for n, user_id in enumerate(train.user_ids)}
    test = (table.timestamp >= cut) & is_target(table.kind, target)
    for u, i in zip(table.user[test].tolist(), table.item[test].tolist(), strict=True):
        user = user_index.get(table.user_ids[u])
        if user is not None:
            yield user, table.item_ids[i]


def split(table: EventTable, cut: float, catalogue: list[str] | None = None, target: str = "purchase") -> Split:
    """The protocol's test users and targets. With a model's ``catalogue`` (item ids by model
    index, the training period's items first, as trained) the items it lists beyond the training
    items (new items, see :mod:`cloud_trainer.models.side_features`) count as targets too."""
    train = train_period(table, cut)
    if catalogue is not None and catalogue[: len(train.item_ids)] != train.item_ids:
        raise ValueError("the catalogue does not start with the training period's items")
    item_index = {item_id: n for n, item_id in enumerate(catalogue or train.item_ids)}
    order, bounds = _rows_by_user(train)
    test_purchases: dict[int, set[int]] = {}
    for user, item_id in _test_purchases(table, train, cut, target):
        known_item = item_index.get(item_id)
        if known_item is not None:
            test_purchases.setdefault(user, set()).add(known_item)
    result = Split(train, [], [], {mode: [] for mode in MODES}, [], target)
    for u in sorted(test_purchases):
        rows = order[bounds[u] : bounds[u + 1]]
        bought = set(train.item[rows[is_target(train.kind[rows], target)]].tolist())
        if not bought:
            continue
        result.users.append(train.user_ids[u])
        result.history.append(rows)
        result.bought_before.append(bought)
        result.targets["all"].append(test_purchases[u])
        result.targets["new"].append(test_purchases[u] - bought)
    return result


@dataclass
class ColdStartSplit:
    """The shoppers who bought a *new* item in the test period: one with no training events.

    Such items can be ranked only by a model that knows them from side features (catalogue
    indices ``num_known`` and up, :mod:`cloud_trainer.models.side_features`). Users: at least one
    training purchase and one test purchase of a new item. ``new_targets`` are the new items they
    bought, ``all_targets`` everything they bought in the test period; a bought item the catalogue
    does not list gets a negative index, so it counts as a target that cannot be hit.
    """

    train: EventTable  # the training period, own vocabularies (see train_period)
    users: list[str]
    history: list[np.ndarray]  # per user: row indices into train, in time order
    new_targets: list[set[int]]
    all_targets: list[set[int]]
    num_known: int  # catalogue indices below this are training items
    num_items: int  # the whole catalogue, known and new


def catalogue_split(table: EventTable, cut: float, catalogue: list[str], target: str = "purchase") -> ColdStartSplit:
    """Every shopper with a training purchase and a test-period purchase, whatever they bought,
    ranked over ``catalogue`` (item ids by model index, the training period's items first, as
    trained): :func:`cold_start_split` without its condition on new items."""
    train = train_period(table, cut)
    num_known = len(train.item_ids)
    if catalogue[:num_known] != train.item_ids or set(catalogue[num_known:]) & set(train.item_ids):
        raise ValueError("the catalogue does not start with the training period's items")
    index = {item_id: n for n, item_id in enumerate(catalogue)}
    unlisted: dict[str, int] = {}
    order, bounds = _rows_by_user(train)
    bought: dict[int, set[int]] = {}
    for user, item_id in _test_purchases(table, train, cut, target):
        item = index.get(item_id)
        if item is None:
            item = unlisted.setdefault(item_id, -1 - len(unlisted))
        bought.setdefault(user, set()).add(item)
    result = ColdStartSplit(train, [], [], [], [], num_known, len(catalogue))
    for u in sorted(bought):
        rows = order[bounds[u] : bounds[u + 1]]
        if is_target(train.kind[rows], target).any():
            result.users.append(train.user_ids[u])
            result.history.append(rows)
            result.new_targets.append({i for i in bought[u] if i < 0 or i >= num_known})
            result.all_targets.append(bought[u])
    return result


def cold_start_split(table: EventTable, cut: float, catalogue: list[str]) -> ColdStartSplit:
    """``catalogue``: item ids by model index, the training period's items first (as trained)."""
    data = catalogue_split(table, cut, catalogue)
    return keep_shoppers(data, [n for n, new in enumerate(data.new_targets) if new])


def keep_shoppers(data: ColdStartSplit, keep: list[int]) -> ColdStartSplit:
    """``data`` with only the shoppers at positions ``keep``."""
    return replace(data, users=[data.users[n] for n in keep], history=[data.history[n] for n in keep],
                   new_targets=[data.new_targets[n] for n in keep], all_targets=[data.all_targets[n] for n in keep])


def sample_shoppers(data: ColdStartSplit, limit: int = MAX_TEST_USERS, seed: int = SAMPLE_SEED) -> ColdStartSplit:
    """:func:`sample_users` for a :class:`ColdStartSplit`."""
    keep = sampled_positions(len(data.users), limit, seed)
    return data if keep is None else keep_shoppers(data, keep)
