"""Encrypted history at rest: unreadable without the key, tamper-evident, erasable."""

from __future__ import annotations

import os
import sqlite3
from pathlib import Path

import pytest

from edge_agent.crypto_envelope import TamperedRecord
from edge_agent.history_store import HistoryStore, WrongMasterKey
from edge_agent.master_key import MasterKeyError, load_or_create
from shared.events import EventKind, parse_event

USER, ITEM = "customer-17850", "WHITE-HANGING-HEART-85123A"


def _events(user: str = USER, n: int = 5) -> list:
    return [parse_event(user, f"{ITEM}-{i}", "purchase", 1_300_000_000 + i) for i in range(n)]


def _all_bytes(folder: Path) -> bytes:
    return b"".join(p.read_bytes() for p in folder.rglob("*") if p.is_file())


def test_round_trip_oldest_first(tmp_path: Path) -> None:
    store = HistoryStore(tmp_path / "h.db", os.urandom(32))
    assert store.append(_events()) == 5
    got = store.recent(USER, 3)
    assert [e.item_id for e in got] == [f"{ITEM}-{i}" for i in (2, 3, 4)]
    assert got[-1].kind is EventKind.PURCHASE and got[-1].timestamp == 1_300_000_004
    assert store.recent("nobody", 3) == []


def test_nothing_readable_on_disk(tmp_path: Path) -> None:
    store = HistoryStore(tmp_path / "h.db", os.urandom(32))
    store.append(_events())
    # read while the WAL is live, and again after a checkpoint
    for blob in (_all_bytes(tmp_path), (store.close(), _all_bytes(tmp_path))[1]):
        for needle in (USER, ITEM, "purchase", "1300000004"):
            assert needle.encode() not in blob, needle


def test_wrong_master_key_is_a_clear_error(tmp_path: Path) -> None:
    HistoryStore(tmp_path / "h.db", os.urandom(32)).close()
    with pytest.raises(WrongMasterKey, match="does not match"):
        HistoryStore(tmp_path / "h.db", os.urandom(32))


def test_altered_or_moved_records_are_detected(tmp_path: Path) -> None:
    key = os.urandom(32)
    store = HistoryStore(tmp_path / "h.db", key)
    store.append(_events(USER) + _events("other-user"))
    ours, theirs = store._envelope.user_ref(USER), store._envelope.user_ref("other-user")
    store.close()
    db = sqlite3.connect(tmp_path / "h.db")
    # put the other user's record 0 in place of ours (same position): sealed under their data key, so it fails
    sealed = db.execute("SELECT sealed FROM events WHERE ref=? AND seq=0", (theirs,)).fetchone()[0]
    db.execute("UPDATE events SET sealed=? WHERE ref=? AND seq=0", (sealed, ours))
    # and flip one byte of the other user's record 1
    record = bytearray(db.execute("SELECT sealed FROM events WHERE ref=? AND seq=1", (theirs,)).fetchone()[0])
    record[-1] ^= 1
    db.execute("UPDATE events SET sealed=? WHERE ref=? AND seq=1", (bytes(record), theirs))
    db.commit()
    db.close()
    reopened = HistoryStore(tmp_path / "h.db", key)
    with pytest.raises(TamperedRecord, match="record 0"):
        reopened.recent(USER, 10)
    with pytest.raises(TamperedRecord, match="record 1"):
        reopened.recent("other-user", 10)


def test_reordered_records_of_one_user_are_detected(tmp_path: Path) -> None:
    """Same user, same data key: only the associated data (user + position) can catch this."""
    key = os.urandom(32)
    store = HistoryStore(tmp_path / "h.db", key)
    store.append(_events(USER))
    ours = store._envelope.user_ref(USER)
    store.close()
    db = sqlite3.connect(tmp_path / "h.db")
    first, second = (db.execute("SELECT sealed FROM events WHERE ref=? AND seq=?", (ours, n)).fetchone()[0]
                     for n in (3, 4))
    db.execute("UPDATE events SET sealed=? WHERE ref=? AND seq=3", (second, ours))
    db.execute("UPDATE events SET sealed=? WHERE ref=? AND seq=4", (first, ours))
    db.commit()
    db.close()
    with pytest.raises(TamperedRecord, match="record 3"):
        HistoryStore(tmp_path / "h.db", key).recent(USER, 10)


def test_erasure_makes_the_user_unrecoverable(tmp_path: Path) -> None:
    store = HistoryStore(tmp_path / "h.db", os.urandom(32))
    store.append(_events() + _events("someone-else"))
    assert store.delete_user(USER) is True
    assert store.recent(USER, 10) == []
    assert len(store.recent("someone-else", 10)) == 5
    assert store.delete_user(USER) is False


def test_master_key_file_is_created_0600_and_checked(tmp_path: Path) -> None:
    path = tmp_path / "keys" / "master.key"
    key = load_or_create(path)
    assert len(key) == 32 and (path.stat().st_mode & 0o777) == 0o600
    assert load_or_create(path) == key
    path.chmod(0o644)
    with pytest.raises(MasterKeyError, match="chmod 600"):
        load_or_create(path)
