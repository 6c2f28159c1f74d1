"""Fleet-wide erasure: the signed erasure list and the keyed hash that names a shopper in it.

A shopper who asks to be forgotten may have shopped in several stores. ``cloud-trainer erase``
appends a request to the fleet's **erasure list**, one signed document retained on
``<prefix>/<fleet>/erasure`` (:func:`shared.topics.erasure_topic`), so every agent gets it, also
one that was offline when it was published::

    {"schema": "edge-rec.erasure/1", "fleet": "default", "version": 1717000000123,
     "created": "...", "expires": "...",
     "entries": [{"seq": 1717000000123, "user": "<32 hex digits>", "until": "2025-06-01T00:00:00Z"}, ...]}

- **No raw id on the broker.** ``user`` is :func:`erasure_digest`: HMAC-SHA256 keyed with the
  fleet's *erasure secret* (32 random bytes, given to the trainer and to every agent as a 0600
  file), truncated to 128 bits. A broker subscriber without the secret cannot test a guess, so
  small id spaces cannot be enumerated; a holder of the secret (someone who took a device apart)
  can test guesses against the list, and learns which ids asked to be erased, never their data.
- **Sequenced, so a replay cannot harm.** Each request has a ``seq`` above every earlier one
  (milliseconds since the epoch, or the last one + 1), and the document's ``version`` is its
  newest ``seq``. An agent applies only entries above the last version it applied and refuses a
  document not newer than it (``rollback``): an old list replayed after a shopper came back
  erases nothing new.
- **Bounded.** An entry is kept ``until`` its own expiry (default 365 days: by then the history
  retention, ``history.max_age_days``, has removed the shopper's events anyway), expired entries
  are dropped when the next request is appended, and the list holds at most
  :data:`MAX_ENTRIES` live entries (about 0.6 MiB signed, below the 1 MiB envelope limit). The
  document expires with its last entry.

Pure: the trainer and the agent do the I/O (:mod:`cloud_trainer.delivery.erasure`,
:mod:`edge_agent.erasure`). The trust rules are those of :mod:`shared.fleet_documents`.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import re
from dataclasses import dataclass
from datetime import datetime, timedelta

from shared.errors import BadInput, MalformedDocument
from shared.fleet_documents import Header, field_of, parse_header, parse_time
from shared.manifest import MAX_VERSION, iso_utc

SCHEMA = "edge-rec.erasure/1"
#: Live requests one list holds.
MAX_ENTRIES = 4096
#: Hex digits of a shopper's digest (128 bits).
DIGEST_HEX = 32
#: Bytes of the fleet's erasure secret.
SECRET_BYTES = 32
DEFAULT_VALID_DAYS = 365
_DOMAIN = b"edge-rec.erasure/1\x00"
_HEX = re.compile(r"^[0-9a-f]+$")
_BODY = frozenset({"entries"})


def erasure_digest(secret: bytes, user_id: str) -> str:
    """The name of ``user_id`` in erasure lists: HMAC-SHA256(secret, domain || id), 128 bits, hex."""
    mac = hmac.new(secret, _DOMAIN + user_id.encode("utf-8"), hashlib.sha256)
    return mac.hexdigest()[:DIGEST_HEX]


def parse_secret(text: str) -> bytes:
    """The erasure secret from its file's text: 64 hex digits (surrounding white space ignored)."""
    value = text.strip()
    if len(value) != 2 * SECRET_BYTES or not _HEX.match(value.lower()):
        raise BadInput(f"an erasure secret is {2 * SECRET_BYTES} hex digits ({SECRET_BYTES} random bytes); "
                       "make one with 'cloud-trainer erasure-secret --out FILE'")
    return bytes.fromhex(value)


@dataclass(frozen=True)
class ErasureEntry:
    seq: int
    user: str  # erasure_digest of the shopper
    until: str

    @property
    def until_at(self) -> datetime:
        return parse_time(self.until, "until")


@dataclass(frozen=True)
class ErasureList:
    header: Header
    entries: tuple[ErasureEntry, ...]

    @property
    def version(self) -> int:
        return self.header.version

    def pending(self, applied: int | None, now: datetime) -> list[ErasureEntry]:
        """Entries above the ``applied`` version that have not expired, oldest first."""
        return [e for e in self.entries if (applied is None or e.seq > applied) and e.until_at > now]

    def to_json(self) -> str:
        return json.dumps({**self.header.as_dict(), "entries": [
            {"seq": e.seq, "user": e.user, "until": e.until} for e in self.entries]}, sort_keys=True)


def _entry(raw: object, index: int) -> ErasureEntry:
    where = f"entries[{index}]."
    if not isinstance(raw, dict) or set(raw) != {"seq", "user", "until"}:
        raise MalformedDocument(f"{where[:-1]} must be an object of seq, user and until")
    seq, user = field_of(raw, "seq", int, where), field_of(raw, "user", str, where)
    assert isinstance(seq, int) and isinstance(user, str)
    if not 1 <= seq <= MAX_VERSION:
        raise MalformedDocument(f"{where}seq must be an integer from 1 to {MAX_VERSION}")
    if len(user) != DIGEST_HEX or not _HEX.match(user):
        raise MalformedDocument(f"{where}user must be {DIGEST_HEX} lowercase hex digits (a keyed digest, never an id)")
    until = str(field_of(raw, "until", str, where))
    parse_time(until, f"{where}until")
    return ErasureEntry(seq, user, until)


def parse_erasure_list(text: str) -> ErasureList:
    """Structurally validate an erasure list's signed text (signature already verified)."""
    header, data = parse_header(text, SCHEMA, _BODY)
    raw = data.get("entries")
    if not isinstance(raw, list) or len(raw) > MAX_ENTRIES:
        raise MalformedDocument(f"entries must be a list of at most {MAX_ENTRIES} requests")
    entries = tuple(_entry(e, i) for i, e in enumerate(raw))
    seqs = [e.seq for e in entries]
    if seqs != sorted(set(seqs)):
        raise MalformedDocument("entries must be in increasing seq order, each seq once")
    if entries and header.version != seqs[-1]:
        raise MalformedDocument("version must be the seq of the last entry")
    return ErasureList(header, entries)


def appended(previous: ErasureList | None, fleet: str, digest: str, now: datetime,
             valid_days: int = DEFAULT_VALID_DAYS) -> ErasureList:
    """``previous`` (None: a new list) without its expired entries, plus a request for ``digest``."""
    if not 1 <= valid_days <= 3650:
        raise BadInput("an erasure request's validity must be from 1 to 3650 days")
    if len(digest) != DIGEST_HEX or not _HEX.match(digest):
        raise BadInput(f"a digest is {DIGEST_HEX} lowercase hex digits")
    kept = [] if previous is None else [e for e in previous.entries if e.until_at > now]
    if len(kept) >= MAX_ENTRIES:
        raise BadInput(f"the fleet's erasure list holds {MAX_ENTRIES} live requests, its limit: erase with a shorter "
                       "--valid-days (the agents' history.max_age_days is enough) once older requests expire")
    last = previous.version if previous is not None else 0
    seq = max(last + 1, int(now.timestamp() * 1000))
    until = iso_utc(now + timedelta(days=valid_days))
    entries = (*kept, ErasureEntry(seq, digest, until))
    expires = max(entries, key=lambda e: e.until_at).until
    return ErasureList(Header(SCHEMA, fleet, seq, iso_utc(now), expires), entries)
