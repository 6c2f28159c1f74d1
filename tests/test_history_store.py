"""Encrypted history at rest: unreadable, tamper-evident, erasable, rotatable, bounded, durable."""

from __future__ import annotations

import os
import shutil
import sqlite3
import threading
from pathlib import Path

import pytest

from edge_agent import master_key
from edge_agent.errors import MasterKeyError, StoreError, StoreFull, TamperedRecord, WrongMasterKey
from edge_agent.history_store import HISTORY_FILE, KEYRING_FILE, HistoryStore
from edge_agent.key_rotation import finish_pending, key_loader, rotate
from edge_agent.keyring import Keyring
from shared.events import EventKind, parse_event

USER, ITEM = "customer-17850", "WHITE-HANGING-HEART-85123A"
NOW = 1_700_000_000.0


def _events(user: str = USER, n: int = 5, start: float = NOW - 100) -> list:
    return [parse_event(user, f"{ITEM}-{i}", "purchase", start + i) for i in range(n)]


def _open(folder: Path, key: bytes | None = None, **kw: object) -> HistoryStore:
    fixed = key or os.urandom(32)
    return HistoryStore(folder, lambda: [fixed], clock=lambda: NOW, **kw)  # type: ignore[arg-type]


def _all_bytes(folder: Path) -> bytes:
    return b"".join(p.read_bytes() for p in folder.rglob("*") if p.is_file())


def test_round_trip_oldest_first(tmp_path: Path) -> None:
    store = _open(tmp_path)
    assert store.append(_events()) == 5
    got = store.recent(USER, 3)
    assert [e.item_id for e in got] == [f"{ITEM}-{i}" for i in (2, 3, 4)]
    assert got[-1].kind is EventKind.PURCHASE and got[-1].timestamp == NOW - 96
    assert store.recent("nobody", 3) == []


def test_nothing_readable_on_disk(tmp_path: Path) -> None:
    store = _open(tmp_path)
    store.append(_events())
    # read while the WAL is live, and again after a checkpoint
    for blob in (_all_bytes(tmp_path), (store.close(), _all_bytes(tmp_path))[1]):
        for needle in (USER, ITEM, "purchase", str(int(NOW - 96))):
            assert needle.encode() not in blob, needle


def test_wrong_or_missing_master_key_is_a_clear_error(tmp_path: Path) -> None:
    key_file = tmp_path / "master.key"
    store = HistoryStore(tmp_path / "h", key_loader(tmp_path / "h", key_file))
    store.append(_events())
    store.close()
    with pytest.raises(WrongMasterKey, match="does not match"):
        _open(tmp_path / "h")
    key_file.unlink()
    with pytest.raises(MasterKeyError, match="is missing, but .* holds encrypted history"):
        key_loader(tmp_path / "h", key_file)


def test_altered_or_moved_records_are_detected_and_others_still_served(tmp_path: Path) -> None:
    key = os.urandom(32)
    store = _open(tmp_path, key)
    store.append(_events(USER) + _events("other-user") + _events("third-user"))
    ours, theirs = store.ref(USER), store.ref("other-user")
    store.close()
    db = sqlite3.connect(tmp_path / HISTORY_FILE)
    # put the other user's record 0 in place of ours (same position): sealed under their data key, so it fails
    sealed = db.execute("SELECT sealed FROM events WHERE ref=? AND seq=0", (theirs,)).fetchone()[0]
    db.execute("UPDATE events SET sealed=? WHERE ref=? AND seq=0", (sealed, ours))
    # and flip one byte of the other user's record 1
    record = bytearray(db.execute("SELECT sealed FROM events WHERE ref=? AND seq=1", (theirs,)).fetchone()[0])
    record[-1] ^= 1
    db.execute("UPDATE events SET sealed=? WHERE ref=? AND seq=1", (bytes(record), theirs))
    db.commit()
    db.close()
    reopened = _open(tmp_path, key)
    with pytest.raises(TamperedRecord, match="record 0"):
        reopened.recent(USER, 10)
    with pytest.raises(TamperedRecord, match="record 1"):
        reopened.recent("other-user", 10)
    assert len(reopened.recent("third-user", 10)) == 5


def test_reordered_records_of_one_user_are_detected(tmp_path: Path) -> None:
    """Same user, same data key: only the associated data (user + position) can catch this."""
    key = os.urandom(32)
    store = _open(tmp_path, key)
    store.append(_events(USER))
    ours = store.ref(USER)
    store.close()
    db = sqlite3.connect(tmp_path / HISTORY_FILE)
    first, second = (db.execute("SELECT sealed FROM events WHERE ref=? AND seq=?", (ours, n)).fetchone()[0]
                     for n in (3, 4))
    db.execute("UPDATE events SET sealed=? WHERE ref=? AND seq=3", (second, ours))
    db.execute("UPDATE events SET sealed=? WHERE ref=? AND seq=4", (first, ours))
    db.commit()
    db.close()
    with pytest.raises(TamperedRecord, match="record 3"):
        _open(tmp_path, key).recent(USER, 10)


def test_erasure_is_final_even_for_a_backup_of_the_database(tmp_path: Path) -> None:
    key = os.urandom(32)
    store = _open(tmp_path / "live", key)
    store.append(_events() + _events("someone-else"))
    ref = store.ref(USER)
    wrapped = sqlite3.connect(tmp_path / "live" / KEYRING_FILE).execute(
        "SELECT wrapped FROM user_keys WHERE ref=?", (ref,)).fetchone()[0]
    store.close()
    shutil.copy(tmp_path / "live" / HISTORY_FILE, tmp_path / "backup.sqlite3")  # the operator's backup
    store = _open(tmp_path / "live", key)
    assert store.delete_user(USER) is True
    assert store.recent(USER, 10) == [] and len(store.recent("someone-else", 10)) == 5
    assert store.delete_user(USER) is False
    store.close()
    # the backup still holds the sealed records, but the only copy of their key is gone from the keyring
    backup = sqlite3.connect(tmp_path / "backup.sqlite3")
    assert backup.execute("SELECT count(*) FROM events WHERE ref=?", (ref,)).fetchone()[0] == 5
    assert bytes(wrapped) not in _all_bytes(tmp_path / "live")
    restored = tmp_path / "restored"
    restored.mkdir()
    shutil.copy(tmp_path / "backup.sqlite3", restored / HISTORY_FILE)
    shutil.copy(tmp_path / "live" / KEYRING_FILE, restored / KEYRING_FILE)
    assert _open(restored, key).recent(USER, 10) == []


def test_rotation_rewraps_keys_without_touching_history_and_a_running_store_follows(tmp_path: Path) -> None:
    key_file = tmp_path / "master.key"
    data = tmp_path / "data"
    running = HistoryStore(data, key_loader(data, key_file), clock=lambda: NOW)
    running.append(_events() + _events("second-user"))
    sealed_before = sqlite3.connect(data / HISTORY_FILE).execute("SELECT sealed FROM events").fetchall()
    old_key = key_file.read_bytes()
    assert rotate(data, key_file) == 2
    assert key_file.read_bytes() != old_key and not master_key.next_path(key_file).exists()
    assert (key_file.stat().st_mode & 0o777) == 0o600
    assert sqlite3.connect(data / HISTORY_FILE).execute("SELECT sealed FROM events").fetchall() == sealed_before
    # the store that was open all along keeps serving, and wraps new users' keys under the new key
    running._lock  # noqa: B018 - same object, no restart
    running.keyring._cache.clear()  # force unwrapping with what is on disk now
    assert len(running.recent(USER, 10)) == 5
    running.append(_events("new-user"))
    running.close()
    reopened = HistoryStore(data, key_loader(data, key_file), clock=lambda: NOW)
    assert [len(reopened.recent(u, 10)) for u in (USER, "second-user", "new-user")] == [5, 5, 5]
    reopened.close()
    with pytest.raises(WrongMasterKey):
        _open(data, old_key)


def test_interrupted_rotation_is_completed_or_discarded(tmp_path: Path) -> None:
    key_file = tmp_path / "master.key"
    data = tmp_path / "data"
    HistoryStore(data, key_loader(data, key_file), clock=lambda: NOW).append(_events())
    # crash after step 1: a new key file exists, the keyring was not re-wrapped -> discarded
    master_key.write_new(master_key.next_path(key_file))
    keyring = Keyring(data / KEYRING_FILE, lambda: master_key.candidates(key_file))
    finish_pending(keyring, key_file)
    assert not master_key.next_path(key_file).exists()
    # crash after step 2: the keyring is re-wrapped, the rename did not happen -> completed
    new = master_key.write_new(master_key.next_path(key_file))
    keyring.rotate(new)
    keyring.close()
    store = HistoryStore(data, key_loader(data, key_file), clock=lambda: NOW)  # finds the key in .next
    assert len(store.recent(USER, 10)) == 5
    finish_pending(store.keyring, key_file)
    assert key_file.read_bytes() == new and not master_key.next_path(key_file).exists()


def test_retention_cap_and_age_reclaim_space(tmp_path: Path) -> None:
    store = _open(tmp_path, max_events_per_user=3, max_age_days=1)
    store.append(_events(n=5))
    assert [e.item_id[-1] for e in store.recent(USER, 10)] == ["2", "3", "4"]  # only the last 3 are kept
    old = [parse_event("old-user", f"x{i:03d}" * 30, "view", NOW - 3 * 86400 + i) for i in range(150)]
    store.append(old + _events("old-user", n=1))
    # the cap keeps the newest 3 (two expired, one current); expired ones are hidden at once
    assert [e.item_id for e in store.recent("old-user", 500)] == [f"{ITEM}-0"]
    store2 = _open(tmp_path / "b", max_events_per_user=500, max_age_days=1)
    store2.append(old + _events("old-user", n=1))
    assert [e.item_id for e in store2.recent("old-user", 500)] == [f"{ITEM}-0"]
    pages_before = store2._db.execute("PRAGMA page_count").fetchone()[0]
    assert store2.sweep() == 150
    assert store2._db.execute("SELECT count(*) FROM events").fetchone()[0] == 1
    assert store2._db.execute("PRAGMA page_count").fetchone()[0] < pages_before  # space given back


def test_orphaned_records_of_a_shredded_user_are_swept(tmp_path: Path) -> None:
    store = _open(tmp_path)
    store.append(_events())
    store.keyring.destroy(store.ref(USER))  # as if the agent died between the two steps of an erasure
    assert store.sweep() == 5


def test_full_disk_is_a_clear_error_and_loses_nothing_acknowledged(tmp_path: Path) -> None:
    store = _open(tmp_path)
    store.append(_events())
    pages = store._db.execute("PRAGMA page_count").fetchone()[0]
    store._db.execute(f"PRAGMA max_page_count={pages}")  # SQLite's own limit: the same SQLITE_FULL path
    with pytest.raises(StoreFull, match="full"):
        store.append([parse_event(USER, "x" * 120, "view", NOW - i) for i in range(500)])
    assert len(store.recent(USER, 10)) == 5  # the failed batch was rolled back whole


def test_corrupt_database_is_a_clear_error(tmp_path: Path) -> None:
    key = os.urandom(32)
    _open(tmp_path, key).close()
    (tmp_path / HISTORY_FILE).write_bytes(b"this is not a database" * 200)
    with pytest.raises(StoreError, match="corrupt"):
        _open(tmp_path, key)


@pytest.mark.parametrize("cache_users", [0, 4])
def test_concurrent_writers_and_readers_never_corrupt_the_store(tmp_path: Path, cache_users: int) -> None:
    store = _open(tmp_path, max_events_per_user=1000, cache_users=cache_users)
    errors: list[BaseException] = []

    def writer(user: str) -> None:
        try:
            for i in range(60):
                store.append([parse_event(user, f"item-{i}-{threading.get_ident()}", "view", NOW - 1000 + i)])
                seen = {e.item_id for e in store.recent(user, 200)}
                assert f"item-{i}-{threading.get_ident()}" in seen  # a write shows in the very next read
        except BaseException as e:  # pragma: no cover - reported below
            errors.append(e)

    threads = [threading.Thread(target=writer, args=(f"user-{n % 4}",)) for n in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    assert [len(store.recent(f"user-{n}", 1000)) for n in range(4)] == [120] * 4


def test_master_key_from_the_environment(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    key = os.urandom(32)
    monkeypatch.setenv("EDGE_AGENT_MASTER_KEY", key.hex())
    store = HistoryStore(tmp_path, key_loader(tmp_path, tmp_path / "unused.key"), clock=lambda: NOW)
    store.append(_events())
    store.close()
    assert not (tmp_path / "unused.key").exists()
    assert len(_open(tmp_path, key).recent(USER, 10)) == 5
    with pytest.raises(MasterKeyError, match="rotate it there"):
        rotate(tmp_path, tmp_path / "unused.key")
    monkeypatch.setenv("EDGE_AGENT_MASTER_KEY", "abc")
    with pytest.raises(MasterKeyError, match="64 hex digits"):
        key_loader(tmp_path, tmp_path / "unused.key")


def test_master_key_file_is_written_0600_and_a_readable_one_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "keys" / "master.key"
    key = master_key.write_new(path)
    assert len(key) == 32 and (path.stat().st_mode & 0o777) == 0o600
    assert master_key.read(path) == key
    path.chmod(0o644)
    with pytest.raises(MasterKeyError, match="chmod 600"):
        master_key.read(path)


def test_cached_reads_see_every_write_erasure_and_expiry_at_once(tmp_path: Path) -> None:
    now = [NOW]
    store = HistoryStore(tmp_path, lambda: [b"k" * 32], max_age_days=1, cache_users=2, clock=lambda: now[0])
    store.append(_events(n=5))
    assert len(store.recent(USER, 3)) == 3  # read through the cache from now on
    assert len(store.recent(USER, 10)) == 5  # more rows than were read: back to the database
    store.append([parse_event(USER, "NEW", "cart", NOW - 1)])
    assert store.recent(USER, 3)[-1].item_id == "NEW"
    for user in ("a", "b", "c"):
        store.append(_events(user, n=1))
        store.recent(user, 3)
    assert len(store._cache) == 2  # bounded: least recently served users fall out
    assert store.recent(USER, 3)[-1].item_id == "NEW"
    now[0] += 2 * 86400
    assert store.recent(USER, 3) == []  # past the retention age, cached or not
    now[0] = NOW
    assert store.delete_user(USER)
    assert store.recent(USER, 3) == []


@pytest.mark.parametrize("cache_users", [0, 10])
def test_the_purchase_memory_outlives_the_event_cap_and_follows_age_and_erasure(tmp_path: Path,
                                                                              cache_users: int) -> None:
    key = os.urandom(32)
    store = _open(tmp_path, key, max_events_per_user=3, max_purchases_per_user=4, cache_users=cache_users)
    store.append(_events(n=6, start=NOW - 100))  # purchases of items 0..5
    store.append([parse_event(USER, f"{ITEM}-9", "view", NOW - 50)])
    assert [e.item_id for e in store.recent(USER, 10)] == [f"{ITEM}-{i}" for i in (4, 5, 9)]
    # the 4 items bought last are remembered, though only two of those events are still kept
    assert store.purchased(USER) == {f"{ITEM}-{i}" for i in (2, 3, 4, 5)}
    store.append([parse_event(USER, f"{ITEM}-2", "purchase", NOW - 40)])  # bought again: now the latest
    store.append([parse_event(USER, f"{ITEM}-7", "purchase", NOW - 30)])
    assert store.purchased(USER) == {f"{ITEM}-{i}" for i in (2, 4, 5, 7)}
    assert store.purchased("nobody") == set()
    for needle in (ITEM, USER):
        assert needle.encode() not in _all_bytes(tmp_path)
    # past the retention age a purchase is forgotten: hidden at once, removed by the sweep
    store.close()
    aged = HistoryStore(tmp_path, lambda: [key], clock=lambda: NOW + 365 * 86400 - 60, max_events_per_user=3,
                        max_purchases_per_user=4, cache_users=cache_users)
    assert aged.purchased(USER) == {f"{ITEM}-{i}" for i in (2, 7)}
    aged.sweep()
    aged.close()
    again = _open(tmp_path, key, max_purchases_per_user=4)  # at NOW again: the swept ones are gone from disk
    assert again.purchased(USER) == {f"{ITEM}-{i}" for i in (2, 7)}
    assert again.delete_user(USER) and again.purchased(USER) == set()
    again.append(_events("another"))
    again.keyring.destroy(again.ref("another"))  # an erasure cut short: the sweep removes the memory
    again.sweep()
    again.close()
    with sqlite3.connect(tmp_path / HISTORY_FILE) as db:
        assert db.execute("SELECT count(*) FROM bought_items").fetchone() == (0,)
