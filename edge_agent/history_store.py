"""Encrypted, durable store of each local shopper's recent events.

Owns ``history.sqlite3`` (sealed records only) and uses :mod:`edge_agent.keyring` for keys and
:mod:`edge_agent.crypto_envelope` for the cryptography. Nothing readable is written: users are
found by keyed hash, each record (item id, event kind, timestamp) is AES-GCM sealed under the
user's data key with associated data binding it to the user and its position. A write returns
only after SQLite has synced it (WAL, ``synchronous=FULL``): an acknowledged event survives kill -9
and power loss. Retention: at most ``max_events_per_user`` per user, none older than ``max_age``.

Beside the events, each shopper's **purchase memory**: the distinct items they bought (at most
``max_purchases_per_user``, the most recently bought) with when, sealed as one record under the
same key (position :data:`PURCHASES_SEQ`), so ``exclude=purchased`` still knows what was bought
long after those events left the event cap. It follows the same retention age and erasure.
"""

from __future__ import annotations

import logging
import sqlite3
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path

from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from edge_agent.crypto_envelope import open_record, open_records, seal_record, user_ref
from edge_agent.errors import KeyringError, StoreError, TamperedRecord, sqlite_storage_error
from edge_agent.history_records import (
    PURCHASES_SEQ,
    StoredEvent,
    decode_event,
    decode_purchases,
    encode_event,
    encode_purchases,
    expired_events,
    remember_purchases,
)
from edge_agent.keyring import Keyring, connect
from edge_agent.read_cache import ReadCache
from shared.events import Event, EventKind

log = logging.getLogger(__name__)

HISTORY_FILE = "history.sqlite3"
KEYRING_FILE = "keyring.sqlite3"


def stores_exist(folder: Path) -> bool:
    return (folder / HISTORY_FILE).exists() or (folder / KEYRING_FILE).exists()


class HistoryStore:
    def __init__(
        self,
        folder: Path,
        load_keys: Callable[[], list[bytes]],
        *,
        max_events_per_user: int = 200,
        max_purchases_per_user: int = 1000,
        max_age_days: float = 365,
        cache_users: int = 0,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._cap = max_events_per_user
        self._purchase_cap = max_purchases_per_user
        self._purchase_cache: ReadCache[dict[str, float]] = ReadCache(cache_users)  # like _cache
        # Decrypted recent events of the users served last: ref -> (rows read, events oldest first).
        # A write drops that user's entry, so a new event shows in the very next read.
        self._cache: ReadCache[tuple[int, list[StoredEvent]]] = ReadCache(cache_users)
        self._changes = 0  # bumped on every write: a read that raced a write is not cached
        self._max_age = max_age_days * 86400.0
        self._clock = clock
        self._lock = threading.Lock()
        self.folder = folder
        #: Called with the user ids of each write before it is stored (the fleet erasure index,
        #: :mod:`edge_agent.erasure_index`); an exception refuses the write.
        self.on_users: Callable[[list[str]], None] | None = None
        folder.mkdir(parents=True, exist_ok=True, mode=0o700)
        try:
            self.keyring = Keyring(folder / KEYRING_FILE, load_keys)
            self._db = connect(folder / HISTORY_FILE)
            self._db.execute(
                "CREATE TABLE IF NOT EXISTS events (ref BLOB NOT NULL, seq INTEGER NOT NULL,"
                " sealed BLOB NOT NULL, PRIMARY KEY (ref, seq)) WITHOUT ROWID"
            )
            self._db.execute(
                "CREATE TABLE IF NOT EXISTS bought_items (ref BLOB PRIMARY KEY, sealed BLOB NOT NULL) WITHOUT ROWID"
            )
        except sqlite3.Error as e:
            raise sqlite_storage_error(e, f"open the history store in {folder}") from e

    def ref(self, user_id: str) -> bytes:
        """The user's keyed reference: what the store, and the outcome ledger, know them by."""
        return user_ref(self.keyring.lookup_secret, user_id)

    def append(self, events: Iterable[Event]) -> int:
        """Store events durably in one transaction; returns how many were stored."""
        by_user: dict[str, list[Event]] = {}
        for event in events:
            by_user.setdefault(event.user_id, []).append(event)
        if self.on_users is not None and by_user:
            self.on_users(list(by_user))
        try:
            ciphers = {}
            for user_id in by_user:
                ref = self.ref(user_id)
                key = self.keyring.data_key(ref, create=True)
                assert key is not None
                ciphers[user_id] = (ref, AESGCM(key))
            count = 0
            with self._lock:
                self._db.execute("BEGIN IMMEDIATE")
                try:
                    for user_id, user_events in by_user.items():
                        ref, cipher = ciphers[user_id]
                        (last,) = self._db.execute("SELECT max(seq) FROM events WHERE ref=?", (ref,)).fetchone()
                        seq = -1 if last is None else int(last)
                        rows = []
                        for event in sorted(user_events, key=lambda e: e.timestamp):
                            seq += 1
                            rows.append((ref, seq, seal_record(cipher, ref, seq, encode_event(event))))
                        self._db.executemany("INSERT INTO events VALUES (?, ?, ?)", rows)
                        self._db.execute("DELETE FROM events WHERE ref=? AND seq<=?", (ref, seq - self._cap))
                        self._remember_purchases(ref, cipher, user_events)
                        count += len(rows)
                    self._db.execute("COMMIT")
                except BaseException:
                    if self._db.in_transaction:
                        self._db.execute("ROLLBACK")
                    raise
                finally:
                    self._forget([ref for ref, _ in ciphers.values()])
            return count
        except KeyringError as e:
            raise StoreError(str(e)) from e
        except sqlite3.Error as e:
            raise sqlite_storage_error(e, "store events") from e

    def _remember_purchases(self, ref: bytes, cipher: AESGCM, events: list[Event]) -> None:
        """Add ``events``' purchases to the user's purchase memory (in the caller's transaction)."""
        new = sorted((e.timestamp, e.item_id) for e in events if e.kind is EventKind.PURCHASE)
        if not new or not self._purchase_cap:
            return
        row = self._db.execute("SELECT sealed FROM bought_items WHERE ref=?", (ref,)).fetchone()
        try:
            bought = {} if row is None else decode_purchases(open_record(cipher, ref, PURCHASES_SEQ, row[0]))
        except TamperedRecord:  # the events matter more: keep them, start the memory again
            log.error("a purchase memory failed authentication; it starts again from these purchases")
            bought = {}
        kept = remember_purchases(bought, new, self._purchase_cap)
        self._db.execute("INSERT OR REPLACE INTO bought_items VALUES (?, ?)",
                         (ref, seal_record(cipher, ref, PURCHASES_SEQ, encode_purchases(kept))))

    def purchased(self, user_id: str) -> set[str]:
        """The items the user bought within the retention age (at most ``max_purchases_per_user``,
        the most recently bought), whether or not those events are still among the kept ones."""
        ref = self.ref(user_id)
        oldest = self._clock() - self._max_age
        try:
            with self._lock:
                cached = self._purchase_cache.get(ref)
                if cached is not None:
                    self._purchase_cache.hit(ref)
                    return {item for item, when in cached.items() if when >= oldest}
            key = self.keyring.data_key(ref, create=False)
            if key is None:
                return set()
            with self._lock:
                row = self._db.execute("SELECT sealed FROM bought_items WHERE ref=?", (ref,)).fetchone()
                changes = self._changes
            bought = {} if row is None else decode_purchases(open_record(AESGCM(key), ref, PURCHASES_SEQ, row[0]))
        except KeyringError as e:
            raise StoreError(f"cannot read a purchase memory: {e}") from e
        except sqlite3.Error as e:
            raise sqlite_storage_error(e, "read a purchase memory") from e
        if self._purchase_cache.users:
            with self._lock:
                if changes == self._changes:
                    self._purchase_cache.put(ref, bought)
        return {item for item, when in bought.items() if when >= oldest}

    def _forget(self, refs: Iterable[bytes] | None = None) -> None:
        """Drop cached reads (of ``refs``, or all); the caller holds the lock."""
        self._changes += 1
        refs = None if refs is None else list(refs)
        self._cache.drop(refs)
        self._purchase_cache.drop(refs)

    def recent(self, user_id: str, limit: int) -> list[StoredEvent]:
        """The user's last ``limit`` events within the retention age, oldest first."""
        try:
            return self._recent(self.ref(user_id), limit)
        except KeyringError as e:
            raise StoreError(f"cannot read a history: {e}") from e
        except sqlite3.Error as e:
            raise sqlite_storage_error(e, "read a history") from e

    def _recent(self, ref: bytes, limit: int) -> list[StoredEvent]:
        oldest = self._clock() - self._max_age
        with self._lock:
            cached = self._cache.get(ref)
            if cached is not None and (limit <= cached[0] or len(cached[1]) < cached[0]):
                self._cache.hit(ref)
                return [e for e in cached[1][-limit:] if e.timestamp >= oldest]
        key = self.keyring.data_key(ref, create=False)
        if key is None:
            return []
        with self._lock:
            rows = self._db.execute(
                "SELECT seq, sealed FROM events WHERE ref=? ORDER BY seq DESC LIMIT ?", (ref, limit)
            ).fetchall()
            changes = self._changes
        events = list(map(decode_event, open_records(AESGCM(key), ref, reversed(rows))))
        if self._cache.users:
            with self._lock:
                if changes == self._changes:  # no write since the read: the events are current
                    self._cache.put(ref, (limit, events))
        return [e for e in events if e.timestamp >= oldest]

    def histories(self) -> Iterator[list[StoredEvent]]:
        """Read-only: every shopper's kept events within the retention age, oldest first, one list
        per shopper and in no meaningful order, without who they are (for the fleet aggregate,
        :mod:`edge_agent.cooccurrence`). Shoppers erased meanwhile or whose records fail
        authentication are left out. Nothing is cached or written."""
        oldest = self._clock() - self._max_age
        with self._lock:
            refs = [bytes(r[0]) for r in self._db.execute("SELECT DISTINCT ref FROM events")]
        for ref in refs:
            try:
                key = self.keyring.data_key(ref, create=False)
                if key is None:
                    continue
                with self._lock:
                    rows = self._db.execute("SELECT seq, sealed FROM events WHERE ref=? ORDER BY seq",
                                            (ref,)).fetchall()
                events = list(map(decode_event, open_records(AESGCM(key), ref, rows)))
            except TamperedRecord:
                log.error("a history failed authentication; it is left out of the aggregate")
                continue
            except KeyringError as e:
                raise StoreError(f"cannot read the histories: {e}") from e
            except sqlite3.Error as e:
                raise sqlite_storage_error(e, "read the histories") from e
            yield [e for e in events if e.timestamp >= oldest]

    def delete_user(self, user_id: str) -> bool:
        """Destroy the user's data key first (crypto-shredding), then their records.

        Once the key is destroyed the erasure has happened: the records can never be read again.
        If deleting them fails then (a damaged database page), that is logged and the answer is
        still that the user was erased; the retention sweep removes records without a key.
        """
        return self.delete_ref(self.ref(user_id))

    def delete_ref(self, ref: bytes) -> bool:
        """:meth:`delete_user` for a user known by reference only (a fleet erasure request)."""
        try:
            existed = self.keyring.destroy(ref)
        except sqlite3.Error as e:
            raise sqlite_storage_error(e, "erase a user") from e
        with self._lock:
            self._forget([ref])
            try:
                existed = self._db.execute("DELETE FROM events WHERE ref=?", (ref,)).rowcount > 0 or existed
                self._db.execute("DELETE FROM bought_items WHERE ref=?", (ref,))
                self._reclaim()
            except sqlite3.Error as e:
                log.error("an erased user's key is destroyed, but their unreadable records could not be deleted "
                          "yet (%s); the retention sweep will retry", sqlite_storage_error(e, "delete records"))
                return True
        return existed

    def _reclaim(self) -> None:
        self._db.execute("PRAGMA incremental_vacuum")
        self._db.execute("PRAGMA wal_checkpoint(TRUNCATE)")

    def sweep(self) -> int:
        """Delete records past the maximum age and records whose key is gone; returns how many
        event records went. Purchase memories forget what is past the age, or go with their key."""
        oldest = self._clock() - self._max_age
        live = self.keyring.refs()
        with self._lock:
            refs = [bytes(r[0]) for r in self._db.execute("SELECT DISTINCT ref FROM events")]
        removed = 0
        for ref in refs:
            key = self.keyring.data_key(ref, create=False) if ref in live else None
            with self._lock:
                rows = self._db.execute("SELECT seq, sealed FROM events WHERE ref=?", (ref,)).fetchall()
                doomed = [seq for seq, _ in rows] if key is None else expired_events(AESGCM(key), ref, rows, oldest)
                self._db.executemany("DELETE FROM events WHERE ref=? AND seq=?", [(ref, s) for s in doomed])
                removed += len(doomed)
        self._sweep_purchases(oldest)
        with self._lock:
            self._forget()
            self._reclaim()
        return removed

    def _sweep_purchases(self, oldest: float) -> None:
        """Forget purchases past the maximum age, and purchase memories whose key is gone (looked
        up per memory: a shopper whose first purchase lands during the sweep keeps theirs)."""
        with self._lock:
            refs = [bytes(r[0]) for r in self._db.execute("SELECT ref FROM bought_items")]
        for ref in refs:
            key = self.keyring.data_key(ref, create=False)
            with self._lock:
                row = self._db.execute("SELECT sealed FROM bought_items WHERE ref=?", (ref,)).fetchone()
                if row is None:
                    continue
                try:
                    bought = {} if key is None else decode_purchases(
                        open_record(AESGCM(key), ref, PURCHASES_SEQ, row[0]))
                except TamperedRecord:
                    log.error("a purchase memory failed authentication during the retention sweep")
                    continue
                kept = {item: when for item, when in bought.items() if when >= oldest}
                if not kept:
                    self._db.execute("DELETE FROM bought_items WHERE ref=?", (ref,))
                elif len(kept) < len(bought):
                    assert key is not None
                    self._db.execute("UPDATE bought_items SET sealed=? WHERE ref=?", (
                        seal_record(AESGCM(key), ref, PURCHASES_SEQ, encode_purchases(kept)), ref))

    def size_bytes(self) -> int:
        """Bytes on disk of the history and keyring databases, write-ahead logs included."""
        names = [name + suffix for name in (HISTORY_FILE, KEYRING_FILE) for suffix in ("", "-wal", "-shm")]
        return sum(path.stat().st_size for path in (self.folder / n for n in names) if path.exists())

    def close(self) -> None:
        with self._lock:
            self._db.close()
        self.keyring.close()


__all__ = ["HistoryStore", "StoredEvent"]
