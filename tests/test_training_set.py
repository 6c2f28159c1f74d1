"""Training examples from a tiny hand-checked event table (the vectorised build, issue 17)."""

from __future__ import annotations

import numpy as np

from cloud_trainer.data.events_io import KIND_CODES, EventTable, ReadReport
from cloud_trainer.data.training_set import build_training_set, next_baskets
from shared.events import EventKind

VIEW, CART, BUY = (KIND_CODES[k] for k in (EventKind.VIEW, EventKind.CART, EventKind.PURCHASE))


def test_tiny_table_gives_the_hand_checked_examples() -> None:
    # user 0: basket t=1 {item 1 view, item 2 purchase}, basket t=2 {item 3 cart, item 3 purchase}, t=3 {item 1}
    # user 1: a single basket (no prediction point); rows given out of order on purpose
    table = EventTable(
        user_ids=["a", "b"], item_ids=["i0", "i1", "i2", "i3"],
        user=np.array([0, 1, 0, 0, 0, 0, 1], dtype=np.int32),
        item=np.array([3, 0, 1, 2, 3, 1, 2], dtype=np.int32),
        kind=np.array([CART, BUY, VIEW, BUY, BUY, BUY, BUY], dtype=np.int8),
        timestamp=np.array([2.0, 5.0, 1.0, 1.0, 2.0, 3.0, 5.0]), report=ReadReport(),
    )
    data = build_training_set(table, history_length=3)
    # row 0 predicts basket t=2 from [item 2 (purchase), item 1 (view)], most recent first
    # row 1 predicts basket t=3 from the last 3 events: [3 (purchase), 3 (cart), 2 (purchase)]
    np.testing.assert_array_equal(data.hist_items, [[2, 1, 0], [3, 3, 2]])
    raw0 = np.array([1.0, 0.25 * 0.97, 0.0])
    raw1 = np.array([1.0, 0.5 * 0.97, 1.0 * 0.97**2])
    np.testing.assert_allclose(data.hist_weights, [raw0 / raw0.sum(), raw1 / raw1.sum()], rtol=1e-6)
    np.testing.assert_array_equal(data.example_row, [0, 1])  # item 3 once in basket t=2
    np.testing.assert_array_equal(data.example_target, [3, 1])
    np.testing.assert_array_equal(data.example_time, [2.0, 3.0])
    np.testing.assert_array_equal(next_baskets(data, np.array([1, 0]), width=2), [[1, -1], [3, -1]])


def test_a_sample_of_prediction_points_is_those_rows_of_the_full_set() -> None:
    from test_factorized import toy_table

    table = toy_table(users=30, items=20, events=400, seed=4)
    full = build_training_set(table, history_length=6)
    part = build_training_set(table, history_length=6, sample=9, seed=3)
    assert len(part.hist_items) == 9
    # each sampled row is one of the full set's rows, with its own next basket
    rows = [next(n for n in range(len(full.hist_items))
                 if (full.hist_items[n] == h).all() and (full.hist_weights[n] == w).all())
            for h, w in zip(part.hist_items, part.hist_weights, strict=True)]
    np.testing.assert_array_equal(next_baskets(part, np.arange(9)), next_baskets(full, np.array(rows)))
    assert len(build_training_set(table, 6, sample=10**6).hist_items) == len(full.hist_items)
