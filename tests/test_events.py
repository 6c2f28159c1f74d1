"""The shared event contract: parsing and the history weighting both sides rely on."""

import pytest

from shared.events import EventError, EventKind, history_inputs, parse_event, parse_timestamp


def test_timestamps_iso_and_epoch_agree() -> None:
    assert parse_timestamp("2011-11-09T00:00:00Z") == 1320796800.0
    assert parse_timestamp("2011-11-09 00:00:00") == 1320796800.0  # naive means UTC
    assert parse_timestamp("1320796800") == 1320796800.0
    assert parse_timestamp(1320796800) == 1320796800.0


@pytest.mark.parametrize("bad", ["", "yesterday", "nan", "-5", True, "1e20"])
def test_bad_timestamps_are_rejected(bad: object) -> None:
    with pytest.raises(EventError, match="timestamp"):
        parse_timestamp(bad)


def test_parse_event_names_the_bad_field() -> None:
    with pytest.raises(EventError, match="event must be one of view|cart|purchase"):
        parse_event("u", "i", "like", 0)
    with pytest.raises(EventError, match="user_id is empty"):
        parse_event(" ", "i", "view", 0)
    with pytest.raises(EventError, match="item_id contains control"):
        parse_event("u", "a\x00b", "view", 0)
    assert parse_event("u", "i", "PURCHASE", "0").kind is EventKind.PURCHASE


def test_history_inputs_by_hand() -> None:
    # oldest first: view of 5, purchase of 7. Most recent first in the output:
    # raw weights: purchase 1.0 * 0.97**0 = 1.0, view 0.25 * 0.97**1 = 0.2425; total 1.2425
    items, weights = history_inputs([(5, EventKind.VIEW), (7, EventKind.PURCHASE)], 4)
    assert items == [7, 5, 0, 0]
    assert weights == pytest.approx([1.0 / 1.2425, 0.2425 / 1.2425, 0.0, 0.0])
    assert sum(weights) == pytest.approx(1.0)


def test_history_inputs_keeps_only_the_most_recent() -> None:
    history = [(i, EventKind.VIEW) for i in range(10)]
    items, _ = history_inputs(history, 3)
    assert items == [9, 8, 7]
    assert history_inputs([], 3) == ([0, 0, 0], [0.0, 0.0, 0.0])
