"""The keyring: per-user data keys and the lookup secret, wrapped by the master key.

A file of its own (``keyring.sqlite3``) so that a backup of the history database holds ciphertext
only: erasing a user deletes their wrapped data key here (``secure_delete``, WAL truncated), after
which no copy of the history database can be decrypted for them.

Master-key rotation re-wraps every key in one transaction and bumps ``generation``; a running
agent notices the new generation (or a failed unwrap), reloads the master key from its file and
carries on: no restart, no re-encryption of history.
"""

from __future__ import annotations

import contextlib
import logging
import os
import sqlite3
import threading
from collections import OrderedDict
from collections.abc import Callable
from pathlib import Path

from edge_agent.crypto_envelope import MasterKey, new_key
from edge_agent.errors import TamperedRecord, WrongMasterKey

log = logging.getLogger(__name__)

CACHE_SIZE = 4096
LOOKUP_LABEL = b"lookup-secret"


def private_file(path: Path) -> None:
    """Create ``path`` (if absent) and its write-ahead log and shared-memory files (if present)
    readable by the agent's user only, whatever the umask. SQLite creates its -wal and -shm files
    with the mode of the database file, so creating that one 0600 first covers them too."""
    os.close(os.open(path, os.O_RDWR | os.O_CREAT, 0o600))
    for suffix in ("", "-wal", "-shm", "-journal"):
        with contextlib.suppress(FileNotFoundError):
            os.chmod(f"{path}{suffix}", 0o600)


def connect(path: Path) -> sqlite3.Connection:
    """A SQLite connection with the durability and hygiene settings both stores use; the files are 0600."""
    private_file(path)
    db = sqlite3.connect(path, check_same_thread=False, isolation_level=None)
    db.execute("PRAGMA auto_vacuum=INCREMENTAL")  # only takes effect on a new file
    db.execute("PRAGMA journal_mode=WAL")
    db.execute("PRAGMA synchronous=FULL")
    db.execute("PRAGMA secure_delete=ON")
    db.execute("PRAGMA temp_store=MEMORY")
    return db


class Keyring:
    def __init__(self, path: Path, load_keys: Callable[[], list[bytes]]) -> None:
        """``load_keys`` returns the candidate master keys (the file, then a pending rotation)."""
        self._load_keys = load_keys
        self._lock = threading.RLock()
        self._cache: OrderedDict[bytes, bytes] = OrderedDict()
        self._db = connect(path)
        self._db.executescript(
            """
            CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value BLOB NOT NULL);
            CREATE TABLE IF NOT EXISTS user_keys (ref BLOB PRIMARY KEY, wrapped BLOB NOT NULL) WITHOUT ROWID;
            """
        )
        keys = load_keys()
        if not keys:
            raise WrongMasterKey("no master key available")
        if self._meta("check") is None:
            self._master = MasterKey(keys[0])
            secret = new_key()
            self._write(
                lambda: self._db.executemany(
                    "INSERT INTO meta VALUES (?, ?)",
                    [("check", self._master.check), ("lookup", self._master.wrap(LOOKUP_LABEL, secret)),
                     ("generation", b"1")],
                )
            )
        self._generation = -1
        self._refresh()

    # -- internals ---------------------------------------------------------------------------
    def _meta(self, key: str) -> bytes | None:
        row = self._db.execute("SELECT value FROM meta WHERE key=?", (key,)).fetchone()
        return None if row is None else bytes(row[0])

    def _write(self, work: Callable[[], object]) -> None:
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                work()
                self._db.execute("COMMIT")
            except BaseException:
                if self._db.in_transaction:
                    self._db.execute("ROLLBACK")
                raise

    def _refresh(self) -> None:
        """Pick the master key matching the keyring (again, after a rotation)."""
        with self._lock:
            generation = int(self._meta("generation") or b"0")
            if generation == self._generation:
                return
            check = self._meta("check")
            for key in self._load_keys():
                master = MasterKey(key)
                if master.check == check:
                    self._master = master
                    self.lookup_secret = master.unwrap(LOOKUP_LABEL, self._meta("lookup") or b"")
                    self._generation = generation
                    return
            raise WrongMasterKey(
                "the master key does not match this device's keyring (wrong key file, or the data "
                "belongs to another device); restore the right key"
            )

    # -- data keys -------------------------------------------------------------------------
    def data_key(self, ref: bytes, *, create: bool) -> bytes | None:
        with self._lock:
            cached = self._cache.get(ref)
            if cached is not None:
                self._cache.move_to_end(ref)
                return cached
            row = self._db.execute("SELECT wrapped FROM user_keys WHERE ref=?", (ref,)).fetchone()
            if row is None:
                if not create:
                    return None
                self._refresh()  # never wrap under a key a rotation has just retired
                key = new_key()
                wrapped = self._master.wrap(b"user|" + ref, key)
                self._write(lambda: self._db.execute("INSERT INTO user_keys VALUES (?, ?)", (ref, wrapped)))
            else:
                try:
                    key = self._master.unwrap(b"user|" + ref, bytes(row[0]))
                except TamperedRecord:
                    self._refresh()
                    key = self._master.unwrap(b"user|" + ref, bytes(row[0]))
            self._cache[ref] = key
            if len(self._cache) > CACHE_SIZE:
                self._cache.popitem(last=False)
            return key

    def destroy(self, ref: bytes) -> bool:
        """Crypto-shred a user: their wrapped key is deleted and overwritten; True if it existed."""
        with self._lock:
            self._cache.pop(ref, None)
            existed = self._db.execute("DELETE FROM user_keys WHERE ref=?", (ref,)).rowcount > 0
            self._db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
            return existed

    @property
    def master_check(self) -> bytes:
        """Identifies the master key the keyring is wrapped under (safe to compare, reveals nothing)."""
        with self._lock:
            return self._master.check

    def refs(self) -> set[bytes]:
        with self._lock:
            return {bytes(r[0]) for r in self._db.execute("SELECT ref FROM user_keys")}

    # -- rotation --------------------------------------------------------------------------
    def rotate(self, new_master_key: bytes) -> int:
        """Re-wrap every key under ``new_master_key`` in one transaction; returns how many."""
        new = MasterKey(new_master_key)
        with self._lock:
            self._refresh()
            rows = self._db.execute("SELECT ref, wrapped FROM user_keys").fetchall()
            rewrapped = [
                (new.wrap(b"user|" + bytes(ref), self._master.unwrap(b"user|" + bytes(ref), bytes(w))), bytes(ref))
                for ref, w in rows
            ]
            lookup = new.wrap(LOOKUP_LABEL, self.lookup_secret)
            generation = str(self._generation + 1).encode()

            def work() -> None:
                self._db.executemany("UPDATE user_keys SET wrapped=? WHERE ref=?", rewrapped)
                self._db.executemany(
                    "UPDATE meta SET value=? WHERE key=?",
                    [(new.check, "check"), (lookup, "lookup"), (generation, "generation")],
                )

            self._write(work)
            self._db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
            self._master, self._generation = new, int(generation)
            return len(rows)

    def close(self) -> None:
        with self._lock:
            self._db.close()
