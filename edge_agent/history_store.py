"""Encrypted, durable store of each local shopper's recent events (SQLite in WAL mode).

Owns the database file and its transactions; the cryptography is :mod:`edge_agent.crypto_envelope`.
Nothing readable is written: users are found by keyed hash, records are AES-GCM sealed with
associated data binding them to the user and sequence number. A write returns only after SQLite
has synced it (``synchronous=FULL``), so an acknowledged event survives kill -9 and power loss.
"""

from __future__ import annotations

import json
import sqlite3
import threading
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from edge_agent.crypto_envelope import Envelope, TamperedRecord
from shared.events import Event, EventKind

SCHEMA_VERSION = 1


class StoreError(RuntimeError):
    """The store cannot be opened or used; the message names the cause and the fix."""


class WrongMasterKey(StoreError):
    pass


@dataclass(frozen=True, slots=True)
class StoredEvent:
    item_id: str
    kind: EventKind
    timestamp: float


class HistoryStore:
    def __init__(self, path: Path, master_key: bytes, *, max_events_per_user: int = 200) -> None:
        self._envelope = Envelope(master_key)
        self._cap = max_events_per_user
        self._lock = threading.Lock()
        path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        try:
            self._db = sqlite3.connect(path, check_same_thread=False, isolation_level=None)
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute("PRAGMA synchronous=FULL")
            self._db.execute("PRAGMA secure_delete=ON")
            self._db.execute("PRAGMA temp_store=MEMORY")
            self._init_schema()
        except sqlite3.DatabaseError as e:
            raise StoreError(f"cannot open history store {path}: {e}") from None

    def _init_schema(self) -> None:
        with self._lock:
            self._db.executescript(
                """
                CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value BLOB NOT NULL);
                CREATE TABLE IF NOT EXISTS users (
                    ref BLOB PRIMARY KEY, wrapped_key BLOB NOT NULL, next_seq INTEGER NOT NULL
                ) WITHOUT ROWID;
                CREATE TABLE IF NOT EXISTS events (
                    ref BLOB NOT NULL, seq INTEGER NOT NULL, sealed BLOB NOT NULL,
                    PRIMARY KEY (ref, seq)
                ) WITHOUT ROWID;
                """
            )
            row = self._db.execute("SELECT value FROM meta WHERE key='key_check'").fetchone()
            if row is None:
                self._db.execute("BEGIN IMMEDIATE")
                self._db.execute(
                    "INSERT INTO meta VALUES ('key_check', ?), ('schema', ?)",
                    (self._envelope.key_check, str(SCHEMA_VERSION).encode()),
                )
                self._db.execute("COMMIT")
            elif bytes(row[0]) != self._envelope.key_check:
                raise WrongMasterKey(
                    "the master key does not match this history store (wrong key file, or the "
                    "store belongs to another device); restore the right key"
                )

    def _data_key(self, ref: bytes, *, create: bool) -> tuple[bytes, int] | None:
        row = self._db.execute("SELECT wrapped_key, next_seq FROM users WHERE ref=?", (ref,)).fetchone()
        if row is not None:
            return self._envelope.unwrap_data_key(ref, bytes(row[0])), int(row[1])
        if not create:
            return None
        key = Envelope.new_data_key()
        self._db.execute(
            "INSERT INTO users VALUES (?, ?, 0)", (ref, self._envelope.wrap_data_key(ref, key))
        )
        return key, 0

    def append(self, events: Iterable[Event]) -> int:
        """Store events durably in one transaction; returns how many were stored."""
        by_user: dict[str, list[Event]] = {}
        for event in events:
            by_user.setdefault(event.user_id, []).append(event)
        count = 0
        with self._lock:
            try:
                self._db.execute("BEGIN IMMEDIATE")
                for user_id, user_events in by_user.items():
                    ref = self._envelope.user_ref(user_id)
                    found = self._data_key(ref, create=True)
                    assert found is not None
                    key, seq = found
                    for event in sorted(user_events, key=lambda e: e.timestamp):
                        plain = json.dumps(
                            {"i": event.item_id, "e": event.kind.value, "t": event.timestamp},
                            separators=(",", ":"),
                        ).encode()
                        sealed = Envelope.seal_record(key, ref, seq, plain)
                        self._db.execute("INSERT INTO events VALUES (?, ?, ?)", (ref, seq, sealed))
                        seq += 1
                        count += 1
                    self._db.execute("UPDATE users SET next_seq=? WHERE ref=?", (seq, ref))
                    self._db.execute("DELETE FROM events WHERE ref=? AND seq<?", (ref, seq - self._cap))
                self._db.execute("COMMIT")
            except BaseException:
                if self._db.in_transaction:
                    self._db.execute("ROLLBACK")
                raise
        return count

    def recent(self, user_id: str, limit: int) -> list[StoredEvent]:
        """The user's last ``limit`` events, oldest first; [] for an unknown user."""
        ref = self._envelope.user_ref(user_id)
        with self._lock:
            found = self._data_key(ref, create=False)
            if found is None:
                return []
            key, _ = found
            rows = self._db.execute(
                "SELECT seq, sealed FROM events WHERE ref=? ORDER BY seq DESC LIMIT ?", (ref, limit)
            ).fetchall()
        out = []
        for seq, sealed in reversed(rows):
            record = json.loads(Envelope.open_record(key, ref, int(seq), bytes(sealed)))
            out.append(StoredEvent(item_id=record["i"], kind=EventKind(record["e"]), timestamp=record["t"]))
        return out

    def delete_user(self, user_id: str) -> bool:
        """Destroy the user's data key and records; True if the user existed."""
        ref = self._envelope.user_ref(user_id)
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            deleted = self._db.execute("DELETE FROM users WHERE ref=?", (ref,)).rowcount
            self._db.execute("DELETE FROM events WHERE ref=?", (ref,))
            self._db.execute("COMMIT")
            self._db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        return deleted > 0

    def close(self) -> None:
        with self._lock:
            self._db.close()


__all__ = ["HistoryStore", "StoreError", "StoredEvent", "TamperedRecord", "WrongMasterKey"]
