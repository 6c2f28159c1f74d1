"""Training examples from an event table, built the way the agent will see histories.

Vectorised with numpy (no loop per user or basket). For each user, events are grouped into baskets
(same timestamp). Each basket after the first is a
prediction point: the history is the user's events strictly before the basket (the last
``history_length``, weighted by :func:`shared.events.history_inputs`), the targets are the
distinct items in the basket. No example's history ever contains its own or a later event.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from cloud_trainer.data.events_io import KINDS_BY_CODE, EventTable
from shared.events import EVENT_WEIGHTS, RECENCY_DECAY
from shared.sequence import KIND_CODES as SEQUENCE_KIND_CODES
from shared.sequence import gap_buckets

POPULARITY_HALF_LIFE_DAYS = 30.0
#: History rows built at a time (their float64 temporaries are [rows, history_length]).
HISTORY_CHUNK = 65_536


@dataclass
class TrainingSet:
    hist_items: np.ndarray  # int32 [rows, L]: one history per (user, basket)
    hist_weights: np.ndarray  # float32 [rows, L]
    example_row: np.ndarray  # int32 [examples]: which history row
    example_target: np.ndarray  # int32 [examples]: the item to predict
    example_time: np.ndarray  # float64 [examples]: when the target happened
    #: A sequence model's inputs (shared.sequence), built with ``sequence=True``: int32 [rows, L] each.
    hist_kinds: np.ndarray | None = None
    hist_gaps: np.ndarray | None = None

    def __len__(self) -> int:
        return len(self.example_target)


def _baskets(table: EventTable) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Events ordered by (user, time); per event its basket number; per basket its first event and
    the first event of its user (all positions in that order)."""
    order = np.lexsort((table.timestamp, table.user))
    users, times = table.user[order], table.timestamp[order]
    new_user = np.r_[True, users[1:] != users[:-1]]
    new_basket = new_user | np.r_[True, times[1:] != times[:-1]]
    user_start = np.maximum.accumulate(np.where(new_user, np.arange(len(order)), 0))
    basket_start = np.flatnonzero(new_basket)
    basket = np.cumsum(new_basket) - 1
    return order, basket, np.stack([basket_start, user_start[basket_start]])


def _histories(items: np.ndarray, kinds: np.ndarray, starts: np.ndarray, firsts: np.ndarray,
               length: int) -> tuple[np.ndarray, np.ndarray]:
    """Each prediction point's history as :func:`shared.events.history_inputs` builds it: the last
    ``length`` events before ``starts`` (not before the user's ``firsts``), most recent first."""
    age = np.arange(length)
    position = starts[:, None] - 1 - age[None, :]
    present = position >= firsts[:, None]
    position = np.where(present, position, 0)
    kind_weight = np.asarray([EVENT_WEIGHTS[kind] for kind in KINDS_BY_CODE])
    decay = np.asarray([RECENCY_DECAY**a for a in range(length)])  # Python's pow, as history_inputs
    raw = np.where(present, kind_weight[kinds[position]] * decay[None, :], 0.0)
    total = np.cumsum(raw, axis=1)[:, -1]  # summed left to right, as Python's sum()
    return np.where(present, items[position], 0).astype(np.int32), (raw / total[:, None]).astype(np.float32)


def _sequences(kinds: np.ndarray, times: np.ndarray, starts: np.ndarray, firsts: np.ndarray,
               length: int) -> tuple[np.ndarray, np.ndarray]:
    """Each prediction point's kinds and time-gap buckets as :func:`shared.sequence.sequence_inputs`
    builds them (same positions as :func:`_histories`)."""
    position = starts[:, None] - 1 - np.arange(length)[None, :]
    present = position >= firsts[:, None]
    position = np.where(present, position, 0)
    codes = np.asarray([0] + [SEQUENCE_KIND_CODES[kind] for kind in KINDS_BY_CODE])
    previous = position - 1
    has_previous = present & (previous >= firsts[:, None])
    gaps = gap_buckets(times[position] - times[np.maximum(previous, 0)])
    return (np.where(present, codes[kinds[position] + 1], 0).astype(np.int32),
            np.where(has_previous, gaps, 0).astype(np.int32))


def build_training_set(table: EventTable, history_length: int, sample: int | None = None,
                       seed: int = 0, sequence: bool = False) -> TrainingSet:
    """Every prediction point's history and targets; with ``sample``, only that many prediction
    points drawn at random (seeded): what the closed-form model needs for calibration, whose
    full set (points x ``history_length``) would outgrow memory on a big shop. ``sequence``: also
    each position's kind and time gap (a sequence model's inputs)."""
    order, basket, (basket_start, user_start) = _baskets(table)
    items, kinds, times = table.item[order], table.kind[order], table.timestamp[order]
    predicted = basket_start != user_start  # every basket after the user's first
    row_of_basket = np.cumsum(predicted) - 1
    # the examples: each predicted basket's distinct items, in order of first appearance
    key = basket.astype(np.int64) * (int(items.max(initial=0)) + 1) + items
    first = np.sort(np.unique(key, return_index=True)[1])
    first = first[predicted[basket[first]]]
    if not len(first):
        raise ValueError("no training examples: every user has a single basket")
    starts, firsts = basket_start[predicted], user_start[predicted]
    example_row = row_of_basket[basket[first]]
    if sample is not None and sample < len(starts):
        picked = np.sort(np.random.default_rng(seed).choice(len(starts), sample, replace=False))
        renumber = np.full(len(starts), -1, dtype=np.int64)
        renumber[picked] = np.arange(sample)
        starts, firsts = starts[picked], firsts[picked]
        first = first[renumber[example_row] >= 0]
        example_row = renumber[row_of_basket[basket[first]]]
    hist_items = np.empty((len(starts), history_length), dtype=np.int32)
    hist_weights = np.empty((len(starts), history_length), dtype=np.float32)
    shape = (len(starts), history_length) if sequence else (0, history_length)
    hist_kinds, hist_gaps = np.empty(shape, dtype=np.int32), np.empty(shape, dtype=np.int32)
    for lo in range(0, len(starts), HISTORY_CHUNK):  # bounded float64 temporaries
        chunk = slice(lo, lo + HISTORY_CHUNK)
        hist_items[chunk], hist_weights[chunk] = _histories(items, kinds, starts[chunk], firsts[chunk],
                                                            history_length)
        if sequence:
            hist_kinds[chunk], hist_gaps[chunk] = _sequences(kinds, times, starts[chunk], firsts[chunk],
                                                             history_length)
    return TrainingSet(
        hist_items=hist_items,
        hist_weights=hist_weights,
        example_row=example_row.astype(np.int32),
        example_target=items[first].astype(np.int32),
        example_time=times[first].astype(np.float64),
        hist_kinds=hist_kinds if sequence else None,
        hist_gaps=hist_gaps if sequence else None,
    )


def next_baskets(data: TrainingSet, rows: np.ndarray, width: int = 32) -> np.ndarray:
    """int32 [len(rows), width]: each history row's target items (its next basket), -1 padded."""
    targets = np.full((len(rows), width), -1, dtype=np.int32)
    position = np.full(len(data.hist_items), -1, dtype=np.int64)
    position[np.asarray(rows, dtype=np.int64)] = np.arange(len(rows))
    picked = np.flatnonzero(position[data.example_row] >= 0)
    picked = picked[np.argsort(data.example_row[picked], kind="stable")]  # by row, in example order
    n = position[data.example_row[picked]]
    run_start = np.flatnonzero(np.r_[True, n[1:] != n[:-1]])
    rank = np.arange(len(n)) - np.repeat(run_start, np.diff(np.r_[run_start, len(n)]))
    keep = rank < width
    targets[n[keep], rank[keep]] = data.example_target[picked[keep]]
    return targets


def popularity(table: EventTable, num_items: int, limit: int = 500) -> list[int]:
    """Item indices, most popular first: event-weighted counts decayed by age (30-day half-life)."""
    weights = np.asarray([EVENT_WEIGHTS[KINDS_BY_CODE[c]] for c in range(len(KINDS_BY_CODE))])
    age_days = (table.timestamp.max() - table.timestamp) / 86400.0
    score = np.bincount(
        table.item, weights=weights[table.kind] * 0.5 ** (age_days / POPULARITY_HALF_LIFE_DAYS), minlength=num_items
    )
    ranked = np.argsort(-score, kind="stable")
    return [int(i) for i in ranked[:limit] if score[i] > 0]
