"""Vectorised validation of event batches (pyarrow columns) into typed event columns.

The common row (printable identifiers, an exact event kind, epoch seconds or ISO-8601 whole
seconds in UTC) is checked and converted column-wise; any row failing a vectorised check goes
through :func:`shared.events.parse_event`, the reference, one row at a time, so the outcome and
the skip reasons are exactly those of the row-by-row reader.
"""

from __future__ import annotations

from array import array
from collections import Counter
from collections.abc import Callable
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from cloud_trainer.data.event_sources import NotColumnar
from cloud_trainer.data.events_io import cell_text
from shared.events import MAX_ID_LENGTH, EventError, parse_event

#: Characters Python's str.strip() removes, and C0/C1 controls: what a fast-path id may not contain
#: at its ends (strip) or anywhere (controls); anything else goes the row-by-row way.
_SPACES = r"\x{85}\x{a0}\x{1680}\x{2000}-\x{200a}\x{2028}\x{2029}\x{202f}\x{205f}\x{3000}"
_CONTROLS = r"\x00-\x1f\x7f-\x9f"


def _id_pattern(forbidden: str) -> str:
    edge, inner = f"[^ {_CONTROLS}{_SPACES}{forbidden}]", f"[^{_CONTROLS}{forbidden}]"
    return f"^{edge}(?:{inner}*{edge})?$"


ID_PATTERNS = {"user_id": _id_pattern("/"), "item_id": _id_pattern("")}
EPOCH_PATTERN = r"^[0-9]{1,15}(?:\.[0-9]{1,9})?$"
ISO_PATTERN = r"^[0-9]{4}-[0-9]{2}-[0-9]{2}[T ][0-9]{2}:[0-9]{2}:[0-9]{2}(?:Z|\+00:00)?$"
MAX_SECONDS = 32503680000.0  # shared.events.parse_timestamp's bound (year 3000)


def _text(column: pa.Array) -> pa.Array | None:
    """The column as the text the row-by-row reader sees, where that is cheap (strings, integers)."""
    if pa.types.is_string(column.type) or pa.types.is_large_string(column.type):
        return column
    if pa.types.is_integer(column.type):
        return pc.cast(column, pa.string())
    return None


def _mask(result: pa.Array) -> np.ndarray:
    return np.asarray(pc.fill_null(result, False).to_numpy(zero_copy_only=False), dtype=bool)


def _ids_ok(text: pa.Array | None, field: str) -> np.ndarray:
    if text is None:
        return np.zeros(0, dtype=bool)
    short = pc.less_equal(pc.utf8_length(text), MAX_ID_LENGTH)
    return _mask(pc.and_(short, pc.match_substring_regex(text, ID_PATTERNS[field])))


def _iso_seconds(text: pa.Array, ok: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Epoch seconds of ISO-8601 'YYYY-MM-DD[T ]hh:mm:ss[Z|+00:00]' texts, and which were valid dates."""
    def part(start: int, length: int) -> np.ndarray:
        sliced = pc.utf8_slice_codeunits(text, start, start + length)
        digits = pc.if_else(pa.array(ok), sliced, "0")
        return np.asarray(pc.cast(digits, pa.int64()).to_numpy(zero_copy_only=False))
    y, m, d, hh, mm, ss = part(0, 4), part(5, 2), part(8, 2), part(11, 2), part(14, 2), part(17, 2)
    leap = (y % 4 == 0) & ((y % 100 != 0) | (y % 400 == 0))
    month_days = np.array([0, 31, 28, 31, 30, 31, 30, 31, 31, 30, 31, 30, 31])[np.clip(m, 0, 12)] + (leap & (m == 2))
    valid = ok & (y >= 1) & (m >= 1) & (m <= 12) & (d >= 1) & (d <= month_days) & (hh < 24) & (mm < 60) & (ss < 60)
    # days since 1970-01-01 of a proleptic Gregorian date (H. Hinnant's days_from_civil)
    yy = y - (m <= 2)
    era = np.floor_divide(yy, 400)
    yoe = yy - era * 400
    doy = (153 * (m + np.where(m > 2, -3, 9)) + 2) // 5 + d - 1
    days = era * 146097 + yoe * 365 + yoe // 4 - yoe // 100 + doy - 719468
    return (days * 86400 + hh * 3600 + mm * 60 + ss).astype(np.float64), valid


def _timestamps(column: pa.Array) -> tuple[np.ndarray, np.ndarray]:
    """(epoch seconds, fast) per row; rows not fast are parsed row by row."""
    n = len(column)
    if pa.types.is_floating(column.type) or pa.types.is_integer(column.type):
        values = np.asarray(pc.cast(column, pa.float64()).to_numpy(zero_copy_only=False), dtype=np.float64)
        fast = ~np.asarray(column.is_null().to_numpy(zero_copy_only=False), dtype=bool)
    elif pa.types.is_timestamp(column.type) and column.type.unit in ("s", "ms", "us"):
        micros = pc.cast(pc.cast(column, pa.timestamp("us", column.type.tz)), pa.int64())
        values = np.asarray(pc.fill_null(micros, 0).to_numpy(), dtype=np.int64) / 1e6
        fast = ~np.asarray(column.is_null().to_numpy(zero_copy_only=False), dtype=bool)
    elif (text := _text(column)) is not None:
        epoch = _mask(pc.match_substring_regex(text, EPOCH_PATTERN))
        values = np.asarray(pc.cast(pc.if_else(pa.array(epoch), text, "0"), pa.float64()).to_numpy(), dtype=np.float64)
        iso, valid = _iso_seconds(text, _mask(pc.match_substring_regex(text, ISO_PATTERN)))
        values = np.where(valid, iso, values)
        fast = epoch | valid
    else:
        return np.zeros(n), np.zeros(n, dtype=bool)
    with np.errstate(invalid="ignore"):
        fast &= np.isfinite(values) & (values >= 0) & (values <= MAX_SECONDS)
    return values, fast


class Vocabulary:
    """Ids to indices in order of first appearance, fed one batch at a time."""

    def __init__(self) -> None:
        self.index: dict[str, int] = {}

    def encode(self, ids: pa.Array) -> np.ndarray:
        encoded = pc.dictionary_encode(ids)  # its dictionary lists the batch's ids in order of appearance
        known = self.index
        codes = np.fromiter((known.setdefault(v, len(known)) for v in encoded.dictionary.to_pylist()),
                            dtype=np.int32, count=len(encoded.dictionary))
        return codes[np.asarray(encoded.indices.to_numpy(zero_copy_only=False), dtype=np.int64)]


class EventColumns:
    """Typed event columns (4 + 4 + 1 + 8 bytes an event) grown batch by batch, with skip counts."""

    def __init__(self, kind_names: list[str]) -> None:
        self.kind_names = kind_names  # by kind code
        self.kinds = pa.array(kind_names)
        self.users, self.items = Vocabulary(), Vocabulary()
        self.user, self.item, self.kind = array("i"), array("i"), array("b")
        self.timestamp = array("d")
        self.rows = 0
        self.skipped: Counter[str] = Counter()

    def add(self, wrong_field_count: int, user: pa.Array, item: pa.Array, event: pa.Array,
            timestamp: pa.Array) -> None:
        """A batch, and the rows with a wrong number of fields pyarrow skipped before it."""
        known = set(self.skipped)
        self._add(user, item, event, timestamp)
        if wrong_field_count:
            if "wrong_field_count" not in known and set(self.skipped) - known:
                raise NotColumnar("the order of first skip reasons in this batch is not known")
            self.rows += wrong_field_count
            self.skipped["wrong_field_count"] += wrong_field_count

    def _add(self, user: pa.Array, item: pa.Array, event: pa.Array, timestamp: pa.Array) -> None:
        self.rows += len(user)
        user_text, item_text = _text(user), _text(item)
        strings = pa.types.is_string(event.type) or pa.types.is_large_string(event.type)
        kind = pc.index_in(event, value_set=self.kinds) if strings else pa.nulls(len(event), pa.int32())
        seconds, fast = _timestamps(timestamp)
        fast &= _ids_ok(user_text, "user_id") if user_text is not None else False
        fast &= _ids_ok(item_text, "item_id") if item_text is not None else False
        kind_codes = np.asarray(pc.fill_null(kind, -1).to_numpy(zero_copy_only=False), dtype=np.int64)
        fast &= kind_codes >= 0
        slow = self._parse_slow(np.flatnonzero(~fast), (user, item, event, timestamp))
        kept = np.sort(np.concatenate([np.flatnonzero(fast), np.asarray(list(slow), dtype=np.int64)]))
        users = self._merged(user_text, fast, slow, kept, lambda e: e.user_id)
        items = self._merged(item_text, fast, slow, kept, lambda e: e.item_id)
        for n, event_ in slow.items():
            kind_codes[n], seconds[n] = self.kind_names.index(event_.kind.value), event_.timestamp
        self.user.extend(self.users.encode(users))
        self.item.extend(self.items.encode(items))
        self.kind.extend(kind_codes[kept].astype(np.int8))
        self.timestamp.extend(seconds[kept])

    def _parse_slow(self, rows: np.ndarray, columns: tuple[pa.Array, ...]) -> dict[int, Any]:
        """parse_event row by row for the rows that failed a vectorised check: kept ones by row."""
        out = {}
        for n in rows.tolist():
            try:
                out[n] = parse_event(*(cell_text(column[n].as_py()) for column in columns))
            except EventError as e:
                self.skipped[str(e).split(" ")[0] + "_invalid"] += 1
        return out

    @staticmethod
    def _merged(text: pa.Array | None, fast: np.ndarray, slow: dict[int, Any], kept: np.ndarray,
                field: Callable[[Any], str]) -> pa.Array:
        """The kept rows' ids in row order: fast rows' text as is, row-by-row rows' parsed ids."""
        quick = text.filter(pa.array(fast)) if text is not None and fast.any() else pa.array([], pa.string())
        if not slow:
            return quick
        both = pa.concat_arrays([quick.cast(pa.string()), pa.array([field(e) for e in slow.values()], pa.string())])
        positions = np.concatenate([np.flatnonzero(fast), np.fromiter(slow, dtype=np.int64, count=len(slow))])
        return both.take(pa.array(np.argsort(positions, kind="stable")))

    def kept(self) -> int:
        return len(self.user)

