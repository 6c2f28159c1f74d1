"""Training examples from an event table, built the way the agent will see histories.

For each user, events are grouped into baskets (same timestamp). Each basket after the first is a
prediction point: the history is the user's events strictly before the basket (the last
``history_length``, weighted by :func:`shared.events.history_inputs`), the targets are the
distinct items in the basket. No example's history ever contains its own or a later event.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from cloud_trainer.data.events_io import KINDS_BY_CODE, EventTable
from shared.events import EVENT_WEIGHTS, history_inputs

POPULARITY_HALF_LIFE_DAYS = 30.0


@dataclass
class TrainingSet:
    hist_items: np.ndarray  # int32 [rows, L]: one history per (user, basket)
    hist_weights: np.ndarray  # float32 [rows, L]
    example_row: np.ndarray  # int32 [examples]: which history row
    example_target: np.ndarray  # int32 [examples]: the item to predict
    example_time: np.ndarray  # float64 [examples]: when the target happened

    def __len__(self) -> int:
        return len(self.example_target)


def _user_slices(table: EventTable) -> tuple[np.ndarray, list[tuple[int, int]]]:
    order = np.lexsort((table.timestamp, table.user))
    users = table.user[order]
    cuts = np.flatnonzero(np.diff(users)) + 1
    starts = np.concatenate([[0], cuts])
    ends = np.concatenate([cuts, [len(users)]])
    return order, list(zip(starts.tolist(), ends.tolist(), strict=True))


def build_training_set(table: EventTable, history_length: int) -> TrainingSet:
    order, slices = _user_slices(table)
    items, kinds, times = table.item[order], table.kind[order], table.timestamp[order]
    rows_items: list[list[int]] = []
    rows_weights: list[list[float]] = []
    ex_row: list[int] = []
    ex_target: list[int] = []
    ex_time: list[float] = []
    for start, end in slices:
        t = times[start:end]
        cuts = (np.flatnonzero(np.diff(t)) + 1).tolist()
        bounds = list(zip([0, *cuts], [*cuts, end - start], strict=True))
        for b_start, b_end in bounds[1:]:
            lo = max(0, b_start - history_length)
            history = [
                (int(items[start + j]), KINDS_BY_CODE[int(kinds[start + j])]) for j in range(lo, b_start)
            ]
            row_items, row_weights = history_inputs(history, history_length)
            row = len(rows_items)
            rows_items.append(row_items)
            rows_weights.append(row_weights)
            for target in dict.fromkeys(items[start + b_start : start + b_end].tolist()):
                ex_row.append(row)
                ex_target.append(int(target))
                ex_time.append(float(t[b_start]))
    if not ex_target:
        raise ValueError("no training examples: every user has a single basket")
    return TrainingSet(
        hist_items=np.asarray(rows_items, dtype=np.int32),
        hist_weights=np.asarray(rows_weights, dtype=np.float32),
        example_row=np.asarray(ex_row, dtype=np.int32),
        example_target=np.asarray(ex_target, dtype=np.int32),
        example_time=np.asarray(ex_time, dtype=np.float64),
    )


def next_baskets(data: TrainingSet, rows: np.ndarray, width: int = 32) -> np.ndarray:
    """int32 [len(rows), width]: each history row's target items (its next basket), -1 padded."""
    targets = np.full((len(rows), width), -1, dtype=np.int32)
    position = {int(row): n for n, row in enumerate(rows)}
    filled = np.zeros(len(rows), dtype=np.int64)
    for row, item in zip(data.example_row.tolist(), data.example_target.tolist(), strict=True):
        n = position.get(row)
        if n is not None and filled[n] < width:
            targets[n, filled[n]] = item
            filled[n] += 1
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
