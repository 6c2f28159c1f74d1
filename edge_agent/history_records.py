"""The plaintext of a shopper's sealed records : one event, and the purchase memory.

An event is its timestamp, its kind and the item id's UTF-8 bytes; the purchase memory is, for
each item bought, when it was last bought, the id's length and its UTF-8 bytes, least recently
bought first. :mod:`edge_agent.history_store` seals both (see :mod:`edge_agent.crypto_envelope`).
"""

from __future__ import annotations

import logging
import struct
from collections.abc import Iterable
from typing import NamedTuple

from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from edge_agent.crypto_envelope import open_record
from edge_agent.errors import TamperedRecord
from shared.events import Event, EventKind

log = logging.getLogger("edge_agent.history_store")

_KINDS = list(EventKind)
_KIND_CODES = {kind: n for n, kind in enumerate(_KINDS)}
_RECORD = struct.Struct(">dB")  # timestamp, kind; the item id's UTF-8 bytes follow
_RECORD_SIZE = _RECORD.size
_PURCHASE = struct.Struct(">dH")  # when last bought, the item id's length; its UTF-8 bytes follow
#: The purchase memory's position in the associated data: event positions are 0 and up.
PURCHASES_SEQ = -1


class StoredEvent(NamedTuple):
    """One decrypted event (a NamedTuple: built 50 times per recommendation, so it must be cheap)."""

    item_id: str
    kind: EventKind
    timestamp: float


def encode_event(event: Event) -> bytes:
    return _RECORD.pack(event.timestamp, _KIND_CODES[event.kind]) + event.item_id.encode("utf-8")


def decode_event(plain: bytes) -> StoredEvent:
    timestamp, kind = _RECORD.unpack_from(plain)
    return StoredEvent(plain[_RECORD_SIZE:].decode("utf-8"), _KINDS[kind], timestamp)


def encode_purchases(bought: dict[str, float]) -> bytes:
    parts = []
    for item_id, when in bought.items():
        raw = item_id.encode("utf-8")
        parts.append(_PURCHASE.pack(when, len(raw)) + raw)
    return b"".join(parts)


def decode_purchases(plain: bytes) -> dict[str, float]:
    """item id -> when it was last bought, least recent first."""
    bought: dict[str, float] = {}
    at = 0
    while at < len(plain):
        when, size = _PURCHASE.unpack_from(plain, at)
        at += _PURCHASE.size
        bought[plain[at : at + size].decode("utf-8")] = when
        at += size
    return bought


def remember_purchases(bought: dict[str, float], new: list[tuple[float, str]], cap: int) -> dict[str, float]:
    """``bought`` with the purchases ``new`` (when, item id) added: the ``cap`` most recently bought."""
    for when, item_id in new:
        if when >= bought.get(item_id, when):
            bought.pop(item_id, None)  # re-inserted: the order stays least recently bought first
            bought[item_id] = when
    return dict(sorted(bought.items(), key=lambda entry: entry[1])[-cap:])


def expired_events(cipher: AESGCM, ref: bytes, rows: Iterable[tuple[int, bytes]], oldest: float) -> list[int]:
    """Positions of the sealed events in ``rows`` (position, sealed) from before ``oldest``; one
    that fails authentication is logged and left for now."""
    doomed = []
    for seq, sealed in rows:
        try:
            if decode_event(open_record(cipher, ref, seq, sealed)).timestamp < oldest:
                doomed.append(seq)
        except TamperedRecord:
            log.error("a history record failed authentication during the retention sweep")
    return doomed
