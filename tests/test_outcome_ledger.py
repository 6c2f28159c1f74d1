"""The outcome ledger (pure) and its sealed file: attribution, thresholds, bounds, persistence."""

from __future__ import annotations

import hashlib
from pathlib import Path
from types import SimpleNamespace
from typing import cast

import pytest

from edge_agent.active_model import ActiveModel
from edge_agent.keyring import Keyring
from edge_agent.loaded_model import LoadedModel
from edge_agent.outcome_file import OutcomeFile
from edge_agent.outcome_ledger import KEPT_VERSIONS, OutcomeLedger
from shared.outcomes import Arm, OutcomeCell, OutcomeKind, arm_of, cells_of_status, fleet_cells

CLICK, IMPRESSION = OutcomeKind.CLICK, OutcomeKind.IMPRESSION


def ref(n: int) -> bytes:
    return hashlib.sha256(f"user {n}".encode()).digest()


def ledger(**changes: object) -> OutcomeLedger:
    settings: dict[str, object] = {"window_s": 100.0, "max_requests": 1000, "min_shoppers": 1,
                                   "auto_impressions": True, **changes}
    return OutcomeLedger(**settings)  # type: ignore[arg-type]


def cell(book: OutcomeLedger, version: int = 7, arm: Arm = Arm.MODEL) -> OutcomeCell:
    return {(c.model_version, c.arm): c for c in book.cells()[0]}[(version, arm)]


def test_clicks_and_conversions_are_credited_to_the_request_that_showed_the_item() -> None:
    book = ledger()
    book.served("req-000001", ref(1), 7, Arm.MODEL, ["a", "b", "c"], at=1000)
    book.served("req-000002", ref(1), 7, Arm.MODEL, ["c", "d"], at=1010)
    assert book.outcome(CLICK, "req-000001", ref(1), "b")
    assert book.outcome(CLICK, "req-000001", ref(1), "b")  # counted once
    assert not book.outcome(CLICK, "req-000001", ref(1), "z")  # not in that request
    assert not book.outcome(CLICK, "req-000001", ref(2), "b")  # another shopper's request
    assert not book.outcome(CLICK, "no-such-req", ref(1), "b")
    assert book.shopper_event(ref(1), "c", at=1020, price=5.0, purchase=True)  # last touch: req 2
    assert book.shopper_event(ref(1), "c", at=1021, price=5.0, purchase=True)  # then req 1's c
    assert not book.shopper_event(ref(1), "c", at=1022, price=5.0, purchase=True)  # both converted
    assert not book.shopper_event(ref(2), "a", at=1020, price=None, purchase=True)  # not recommended to them
    assert not book.shopper_event(ref(1), "a", at=1200, price=None, purchase=False)  # past the window
    assert not book.shopper_event(ref(1), "a", at=999, price=None, purchase=False)  # before the request
    assert book.shopper_event(ref(1), "a", at=1050, price=9.0, purchase=False)  # a cart: no revenue
    assert cell(book) == OutcomeCell(7, Arm.MODEL, requests=2, impressions=5, clicks=1, conversions=3,
                                     converted_requests=2, revenue=10.0)


def test_impressions_come_from_the_app_when_configured_so() -> None:
    book = ledger(auto_impressions=False)
    book.served("req-000001", ref(1), 7, Arm.MODEL, ["a", "b"], at=0)
    assert cell(book).impressions == 0
    assert book.outcome(IMPRESSION, "req-000001", ref(1), "a")
    assert book.outcome(IMPRESSION, "req-000001", ref(1), "a")
    assert book.outcome(CLICK, "req-000001", ref(1), "b")  # a click implies an impression
    assert (cell(book).impressions, cell(book).clicks) == (2, 1)


def test_cells_stay_in_the_box_until_enough_distinct_shoppers_were_served() -> None:
    book = ledger(min_shoppers=3)
    for n in range(5):
        book.served(f"req-00000{n}", ref(n % 2), 7, Arm.MODEL, ["a"], at=n)  # two shoppers only
    book.served("req-hold-01", ref(9), 7, Arm.HOLDOUT, ["a"], at=9)
    assert book.cells() == ([], 2)
    assert book.status()["cells"] == [] and book.status()["suppressed_cells"] == 2
    book.served("req-000009", ref(2), 7, Arm.MODEL, ["a"], at=10)  # the third shopper
    ready, held = book.cells()
    assert [(c.model_version, c.arm, c.requests) for c in ready] == [(7, Arm.MODEL, 6)] and held == 1


def test_memory_is_bounded_by_requests_window_and_versions() -> None:
    book = ledger(max_requests=50)
    for n in range(200):
        book.served(f"req-{n:06d}", ref(n % 7), 7, Arm.MODEL, ["a"], at=n * 0.1)
    assert book.tracked_requests() == 50
    assert not book.outcome(CLICK, "req-000000", ref(0), "a")  # evicted
    assert book.outcome(CLICK, "req-000199", ref(199 % 7), "a")
    book.served("req-late01", ref(1), 7, Arm.MODEL, ["a"], at=1000)  # everything else is past the window
    assert book.tracked_requests() == 1
    for version in range(10, 10 + KEPT_VERSIONS + 2):
        book.served(f"req-v{version:05d}", ref(1), version, Arm.MODEL, ["a"], at=1000)
    assert {c.model_version for c in book.cells()[0]} == set(range(12, 10 + KEPT_VERSIONS + 2))


def test_an_erased_shopper_leaves_nothing_to_attribute() -> None:
    book = ledger()
    book.served("req-000001", ref(1), 7, Arm.MODEL, ["a"], at=0)
    book.forget_user(ref(1))
    assert not book.outcome(CLICK, "req-000001", ref(1), "a")
    assert not book.shopper_event(ref(1), "a", at=1, price=None, purchase=True)
    assert cell(book).requests == 1  # the anonymous count stays


def test_snapshot_round_trip_keeps_every_request_and_count() -> None:
    book = ledger(min_shoppers=2)
    book.served("req-000001", ref(1), 7, Arm.MODEL, ["a", "b"], at=0)
    book.served("req-000002", ref(2), 7, Arm.HOLDOUT, ["c"], at=1)
    book.outcome(CLICK, "req-000001", ref(1), "a")
    copy = ledger(min_shoppers=2)
    copy.restore(book.snapshot())
    assert copy.cells() == book.cells() and copy.snapshot() == book.snapshot()
    assert copy.shopper_event(ref(1), "b", at=5, price=1.0, purchase=True)  # the request came back
    assert copy.outcome(CLICK, "req-000001", ref(1), "a")  # known, and already counted
    copy.served("req-000003", ref(3), 7, Arm.HOLDOUT, ["c"], at=6)  # the held cells' shoppers came back too
    copy.served("req-000004", ref(4), 7, Arm.MODEL, ["c"], at=6)
    assert cell(copy, 7, Arm.HOLDOUT).requests == 2
    assert (cell(copy).requests, cell(copy).clicks, cell(copy).conversions, cell(copy).revenue) == (2, 1, 1, 1.0)


def test_the_sealed_file_restores_and_hides_its_content(tmp_path: Path) -> None:
    keyring = Keyring(tmp_path / "keyring.sqlite3", lambda: [b"m" * 32])
    try:
        book = ledger()
        book.served("req-secret", ref(1), 7, Arm.MODEL, ["item-secret"], at=0)
        store = OutcomeFile(tmp_path, keyring)
        assert store.save(book) and not store.save(book)  # unchanged: not written again
        raw = store.path.read_bytes()
        assert b"req-secret" not in raw and ref(1) not in raw and b"cells" not in raw
        again = ledger()
        assert OutcomeFile(tmp_path, keyring).load_into(again)
        assert again.outcome(CLICK, "req-secret", ref(1), "item-secret")
        store.path.write_bytes(raw[:-1] + bytes([raw[-1] ^ 1]))  # tampered
        fresh = ledger()
        assert not OutcomeFile(tmp_path, keyring).load_into(fresh) and fresh.cells() == ([], 0)
    finally:
        keyring.close()


@pytest.mark.parametrize("share", [0.0, 0.1, 0.5])
def test_arms_are_stable_and_take_the_configured_share(share: float) -> None:
    arms = [arm_of(f"shopper-{n}", share, "salt-a") for n in range(20_000)]
    assert arms == [arm_of(f"shopper-{n}", share, "salt-a") for n in range(20_000)]
    assert abs(arms.count(Arm.HOLDOUT) / len(arms) - share) < 0.015
    if share:
        other = [arm_of(f"shopper-{n}", share, "salt-b") for n in range(20_000)]
        assert other != arms  # a new salt draws a new holdout


def test_the_trainer_reads_cells_back_and_skips_junk() -> None:
    good = ledger()
    good.served("req-000001", ref(1), 7, Arm.MODEL, ["a"], at=0)
    status = {"outcomes": good.status()}
    junk = {"outcomes": {**good.status(), "cells": [{"model_version": "7", "arm": "model"}, 5,
                                                     {"model_version": 7, "arm": "x", "requests": 1},
                                                     {"model_version": 7, "arm": "model", "requests": -1}]}}
    assert cells_of_status(status) == good.cells()[0]
    assert cells_of_status(junk) == [] and cells_of_status({"outcomes": "x"}) == [] and cells_of_status({}) == []
    total = fleet_cells({"a": status, "b": status, "c": junk})
    assert total[(7, Arm.MODEL)].requests == 2


def test_the_control_is_the_replaced_version_and_never_a_revoked_one() -> None:
    def model(version: int) -> LoadedModel:
        return cast(LoadedModel, SimpleNamespace(version=version))  # replace() reads the version only

    active = ActiveModel(keep_control=True)
    active.replace(model(1), set())
    assert active.control is None  # nothing before the first model: popular items
    active.replace(model(2), set())
    assert active.control is not None and active.control.version == 1
    active.replace(model(3), {2})  # a rollback that revokes 2: the control stays the last good one
    assert active.control.version == 1
    active.replace(model(4), set())
    assert active.control.version == 3
    active.replace(model(5), {3, 4})  # the serving version and the control revoked
    assert active.control is None
    plain = ActiveModel()
    plain.replace(model(1), set())
    plain.replace(model(2), set())
    assert plain.control is None  # experiment.control = "popular": nothing extra kept loaded
