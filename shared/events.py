"""The shopping-event contract: event kinds, their weights, timestamps, and history weighting.

The trainer builds model inputs from event histories with :func:`history_inputs`, and the agent
builds them with the very same function, so a model sees on the device exactly what it saw in
training.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from enum import StrEnum

from shared.errors import EventError


class EventKind(StrEnum):
    VIEW = "view"
    CART = "cart"
    PURCHASE = "purchase"


#: How much one event of each kind says about a shopper's taste (purchase > cart > view).
EVENT_WEIGHTS: dict[EventKind, float] = {
    EventKind.VIEW: 0.25,
    EventKind.CART: 0.5,
    EventKind.PURCHASE: 1.0,
}

#: Each step back in a history multiplies an event's weight by this factor (most recent first).
RECENCY_DECAY = 0.97

#: Events an agent keeps per shopper unless configured otherwise (``history.max_events_per_user``):
#: what ``exclude`` sees, and what the trainer's evaluation and tuning assume an agent knows.
STORED_EVENTS_PER_USER = 200
#: Distinct bought items an agent remembers per shopper unless configured otherwise
#: (``history.max_purchases_per_user``): ``exclude=purchased`` leaves them out even after their
#: events have left the event cap.
REMEMBERED_PURCHASES_PER_USER = 1000
#: Days an agent keeps events and purchases unless configured otherwise (``history.max_age_days``).
RETENTION_DAYS = 365

#: Bounds on identifiers accepted anywhere (files, REST, MQTT): printable, no control characters.
MAX_ID_LENGTH = 128


@dataclass(frozen=True, slots=True)
class Event:
    user_id: str
    item_id: str
    kind: EventKind
    timestamp: float  # seconds since the Unix epoch, UTC


def parse_kind(value: object) -> EventKind:
    try:
        return EventKind(str(value).strip().lower())
    except ValueError:
        allowed = "|".join(k.value for k in EventKind)
        raise EventError(f"event must be one of {allowed}, got {str(value)[:40]!r}") from None


#: What an identifier may not contain: C0 and C1 control characters.
CONTROL_CHARACTERS = r"\x00-\x1f\x7f-\x9f"  # a regular-expression character range


def parse_identifier(value: object, field: str) -> str:
    """A user id, item id or category: 1-128 characters after trimming surrounding whitespace, no
    control characters, and (user ids) no '/', so every user can be addressed in a URL path."""
    text = "" if value is None else str(value).strip()
    if not text:
        raise EventError(f"{field} is empty")
    if len(text) > MAX_ID_LENGTH:
        raise EventError(f"{field} is longer than {MAX_ID_LENGTH} characters")
    if any(c < " " or "\x7f" <= c <= "\x9f" for c in text):
        raise EventError(f"{field} contains control characters")
    if any("\ud800" <= c <= "\udfff" for c in text):  # from a JSON escape: not encodable as UTF-8
        raise EventError(f"{field} contains a lone surrogate")
    if field == "user_id" and "/" in text:
        raise EventError("user_id contains '/'")
    return text


def parse_timestamp(value: object) -> float:
    """Epoch seconds (int/float or numeric string) or ISO-8601 text; naive times are UTC."""
    if isinstance(value, bool):
        raise EventError("timestamp must be ISO-8601 text or epoch seconds")
    if isinstance(value, (int, float)):
        seconds = float(value)
    else:
        text = str(value).strip()
        if not text:
            raise EventError("timestamp is empty")
        try:
            seconds = float(text)
        except ValueError:
            try:
                parsed = datetime.fromisoformat(text.replace("Z", "+00:00"))
            except ValueError:
                raise EventError(f"timestamp {text[:40]!r} is neither ISO-8601 nor epoch seconds") from None
            if parsed.tzinfo is None:
                parsed = parsed.replace(tzinfo=UTC)
            seconds = parsed.timestamp()
    if not math.isfinite(seconds) or seconds < 0 or seconds > 32503680000:  # year 3000
        raise EventError("timestamp is out of range")
    return seconds


def parse_event(user_id: object, item_id: object, kind: object, timestamp: object) -> Event:
    return Event(
        user_id=parse_identifier(user_id, "user_id"),
        item_id=parse_identifier(item_id, "item_id"),
        kind=parse_kind(kind),
        timestamp=parse_timestamp(timestamp),
    )


def history_inputs(
    history: Sequence[tuple[int, EventKind]], length: int
) -> tuple[list[int], list[float]]:
    """Model inputs for a history of (item index, kind) pairs, oldest first.

    Returns ``(items, weights)``, each of ``length`` entries: the most recent ``length`` events,
    most recent first, zero-padded. Weights are event weight x recency decay, normalised to sum
    to 1 so the model sees a weighted mean of its history embeddings. An empty history gives all
    zeros (the caller serves a popularity fallback instead).
    """
    recent = list(history)[-length:][::-1]
    raw = [EVENT_WEIGHTS[kind] * RECENCY_DECAY**age for age, (_, kind) in enumerate(recent)]
    total = sum(raw)
    items = [item for item, _ in recent] + [0] * (length - len(recent))
    weights = [w / total for w in raw] + [0.0] * (length - len(recent)) if total > 0 else [0.0] * length
    return items, weights
