"""Which local shopper a fleet erasure request names: ``erasure-index.sqlite3``.

Requests name a shopper by :func:`shared.erasure.erasure_digest` (keyed with the fleet's erasure
secret); the history knows them by a reference keyed with this device's own lookup secret. Neither
can be turned into the other without the shopper's id, which the agent does not keep, so the
index is written when the id passes by: on every write of a shopper's events (the history calls
:meth:`ErasureIndex.remember` before storing them).

A row is ``(HMAC(lookup secret, digest), user reference)``: the digest itself is not stored, so a
stolen disk with the erasure secret but without the device master key (which wraps the lookup
secret) does not let anyone test guessed ids against the index. Shoppers whose events were all
written before fleet erasure was configured are not in it: requests for them are applied once
they write again, and retention removes their history otherwise (see docs/security.md).
"""

from __future__ import annotations

import hashlib
import hmac
import sqlite3
import threading
from collections.abc import Callable
from pathlib import Path

from edge_agent.crypto_envelope import user_ref
from edge_agent.errors import sqlite_storage_error
from edge_agent.keyring import connect
from shared.erasure import erasure_digest

INDEX_FILE = "erasure-index.sqlite3"


class ErasureIndex:
    def __init__(self, folder: Path, secret: bytes, lookup_secret: Callable[[], bytes]) -> None:
        """``lookup_secret``: the history's (read at each use: a key rotation keeps its value)."""
        self._secret = secret
        self._lookup = lookup_secret
        self._lock = threading.Lock()
        try:
            self._db = connect(folder / INDEX_FILE)
            self._db.execute("CREATE TABLE IF NOT EXISTS names (name BLOB PRIMARY KEY, ref BLOB NOT NULL)"
                             " WITHOUT ROWID")
        except sqlite3.Error as e:
            raise sqlite_storage_error(e, f"open the erasure index in {folder}") from e

    def _name(self, digest: str) -> bytes:
        return hmac.new(self._lookup(), b"erasure-index\x00" + digest.encode("ascii"), hashlib.sha256).digest()

    def remember(self, user_ids: list[str]) -> None:
        """Index these shoppers (a read for those already indexed, one synced write for new ones)."""
        lookup = self._lookup()
        rows = [(self._name(erasure_digest(self._secret, u)), user_ref(lookup, u)) for u in user_ids]
        try:
            with self._lock:
                known = {bytes(r[0]) for r in self._db.execute(
                    f"SELECT name FROM names WHERE name IN ({','.join('?' * len(rows))})", [n for n, _ in rows])}
                new = [row for row in rows if row[0] not in known]
                if new:
                    self._db.executemany("INSERT OR REPLACE INTO names VALUES (?, ?)", new)
        except sqlite3.Error as e:
            raise sqlite_storage_error(e, "index shoppers for fleet erasure") from e

    def find(self, digest: str) -> bytes | None:
        """The history reference of the shopper a request names, if they shopped here since indexing."""
        try:
            with self._lock:
                row = self._db.execute("SELECT ref FROM names WHERE name=?", (self._name(digest),)).fetchone()
        except sqlite3.Error as e:
            raise sqlite_storage_error(e, "read the erasure index") from e
        return None if row is None else bytes(row[0])

    def drop(self, digest: str) -> None:
        try:
            with self._lock:
                self._db.execute("DELETE FROM names WHERE name=?", (self._name(digest),))
        except sqlite3.Error as e:
            raise sqlite_storage_error(e, "update the erasure index") from e

    def close(self) -> None:
        self._db.close()
