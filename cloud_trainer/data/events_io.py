"""Reading and writing the interchange tables (events and items CSV, optionally gzipped).

events: ``user_id,item_id,event,timestamp`` (event in view|cart|purchase; ISO-8601 or epoch s)
items:  ``item_id,title,category,price``  (optional)

Bad rows are counted by reason and reported, never fatal and never silently dropped.
"""

from __future__ import annotations

import csv
import gzip
import io
from array import array
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import IO

import numpy as np

from cloud_trainer.errors import InputError
from shared.catalog import CatalogItem
from shared.events import EventError, EventKind, parse_event

EVENT_COLUMNS = ("user_id", "item_id", "event", "timestamp")
ITEM_COLUMNS = ("item_id", "title", "category", "price")
KIND_CODES = {kind: code for code, kind in enumerate(EventKind)}
KINDS_BY_CODE = list(EventKind)
MAX_FIELD_BYTES = 1 << 16


@dataclass
class ReadReport:
    rows: int = 0
    kept: int = 0
    skipped: Counter[str] = field(default_factory=Counter)

    def skip(self, reason: str) -> None:
        self.skipped[reason] += 1

    def summary(self) -> str:
        parts = ", ".join(f"{reason} {n}" for reason, n in self.skipped.most_common())
        return f"{self.rows} rows read, {self.kept} kept" + (f", skipped: {parts}" if parts else "")


@dataclass
class EventTable:
    """Events as columns; users and items as index arrays into their id vocabularies."""

    user_ids: list[str]
    item_ids: list[str]
    user: np.ndarray  # int32 [n]
    item: np.ndarray  # int32 [n]
    kind: np.ndarray  # int8 [n], index into KINDS_BY_CODE
    timestamp: np.ndarray  # float64 [n], epoch seconds
    report: ReadReport

    def __len__(self) -> int:
        return len(self.user)


def open_text(path: Path, mode: str = "r") -> IO[str]:
    if mode == "r" and not path.exists():
        raise InputError(f"{path} does not exist")
    if path.suffix == ".gz":
        return io.TextIOWrapper(gzip.open(path, mode + "b"), encoding="utf-8", newline="")
    return open(path, mode, encoding="utf-8", newline="")


def csv_rows(path: Path, required: tuple[str, ...]) -> Iterator[dict[str, str]]:
    """Rows of a CSV as dicts; raises InputError for an unusable header or encoding."""
    csv.field_size_limit(MAX_FIELD_BYTES)
    try:
        with open_text(path) as f:
            reader = csv.DictReader(f)
            header = reader.fieldnames or []
            missing = [c for c in required if c not in header]
            if missing:
                raise InputError(f"{path}: missing columns {', '.join(missing)} (found: {', '.join(header) or 'none'})")
            if len(set(header)) != len(header):
                raise InputError(f"{path}: duplicated column names in the header")
            yield from reader
    except UnicodeDecodeError as e:
        raise InputError(f"{path}: not UTF-8 text ({e.reason} at byte {e.start})") from None
    except (gzip.BadGzipFile, EOFError) as e:
        raise InputError(f"{path}: damaged gzip file ({e})") from None
    except csv.Error as e:  # e.g. a field over MAX_FIELD_BYTES, a NUL byte
        raise InputError(f"{path}: malformed CSV: {e}") from None


#: Rows per Parquet batch: what is held as Python objects at a time.
PARQUET_BATCH_ROWS = 65_536


def cell_text(value: object) -> str:
    """A Parquet value as the text parse_event reads (timestamps as ISO 8601 UTC; null as empty)."""
    if value is None:
        return ""
    if isinstance(value, datetime):
        return (value if value.tzinfo else value.replace(tzinfo=UTC)).isoformat()
    return str(value)


def _check_parquet(path: Path, required: tuple[str, ...]) -> None:
    """InputError unless ``path`` is a Parquet file with the ``required`` columns."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    if not path.exists():
        raise InputError(f"{path} does not exist")
    try:
        names = pq.ParquetFile(path).schema_arrow.names
    except (pa.ArrowException, OSError) as e:
        raise InputError(f"{path}: not a readable Parquet file ({e})") from None
    missing = [c for c in required if c not in names]
    if missing:
        raise InputError(f"{path}: missing columns {', '.join(missing)} (found: {', '.join(names) or 'none'})")


def parquet_rows(path: Path, required: tuple[str, ...]) -> Iterator[dict[str, str]]:
    """Rows of a Parquet file as dicts, read in batches of PARQUET_BATCH_ROWS (never all at once)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    _check_parquet(path, required)
    try:
        parquet = pq.ParquetFile(path)
        for batch in parquet.iter_batches(batch_size=PARQUET_BATCH_ROWS, columns=list(required)):
            columns = [[cell_text(v) for v in batch.column(name).to_pylist()] for name in required]
            for values in zip(*columns, strict=True):
                yield dict(zip(required, values, strict=True))
    except (pa.ArrowException, OSError) as e:
        raise InputError(f"{path}: not a readable Parquet file ({e})") from None


def read_events(path: Path) -> EventTable:
    """An events table from CSV (optionally gzipped) or Parquet (``.parquet``), read in column
    batches and validated vectorised (:mod:`cloud_trainer.data.event_batches`); the same table,
    skip counts and errors as :func:`read_events_by_row`."""
    import pyarrow as pa

    from cloud_trainer.data.event_batches import EventColumns
    from cloud_trainer.data.event_sources import NotColumnar, csv_batches, parquet_batches

    if path.suffix == ".parquet":
        _check_parquet(path, EVENT_COLUMNS)
        batches = parquet_batches(path, EVENT_COLUMNS, PARQUET_BATCH_ROWS)
    elif not path.exists():
        raise InputError(f"{path} does not exist")
    else:
        batches = csv_batches(path, EVENT_COLUMNS, MAX_FIELD_BYTES)
    columns = EventColumns([kind.value for kind in KINDS_BY_CODE])
    try:
        for wrong_field_count, batch in batches:
            columns.add(wrong_field_count, *batch)
    except NotColumnar:
        return read_events_by_row(path)
    except (pa.ArrowException, OSError) as e:
        raise InputError(f"{path}: not a readable Parquet file ({e})") from None
    report = ReadReport(rows=columns.rows, kept=columns.kept(), skipped=columns.skipped)
    if not report.kept:
        raise InputError(f"{path}: no usable events ({report.summary()})")
    return EventTable(
        user_ids=list(columns.users.index), item_ids=list(columns.items.index),
        user=np.frombuffer(columns.user, dtype=np.int32), item=np.frombuffer(columns.item, dtype=np.int32),
        kind=np.frombuffer(columns.kind, dtype=np.int8), timestamp=np.frombuffer(columns.timestamp, dtype=np.float64),
        report=report,
    )


def read_events_by_row(path: Path) -> EventTable:
    """:func:`read_events` one row at a time: the reference, and the way for files the columnar
    reader does not take (see :mod:`cloud_trainer.data.event_sources`)."""
    report = ReadReport()
    users: dict[str, int] = {}
    items: dict[str, int] = {}
    # typed buffers (4, 4, 1 and 8 bytes an event), not Python lists of objects (~36 bytes an entry)
    u, i, k, t = array("i"), array("i"), array("b"), array("d")
    rows = parquet_rows(path, EVENT_COLUMNS) if path.suffix == ".parquet" else csv_rows(path, EVENT_COLUMNS)
    for row in rows:
        report.rows += 1
        if None in row or any(v is None for v in row.values()):
            report.skip("wrong_field_count")
            continue
        try:
            event = parse_event(row["user_id"], row["item_id"], row["event"], row["timestamp"])
        except EventError as e:
            report.skip(str(e).split(" ")[0] + "_invalid")
            continue
        u.append(users.setdefault(event.user_id, len(users)))
        i.append(items.setdefault(event.item_id, len(items)))
        k.append(KIND_CODES[event.kind])
        t.append(event.timestamp)
    report.kept = len(u)
    if not u:
        raise InputError(f"{path}: no usable events ({report.summary()})")
    return EventTable(
        user_ids=list(users),
        item_ids=list(items),
        user=np.frombuffer(u, dtype=np.int32),
        item=np.frombuffer(i, dtype=np.int32),
        kind=np.frombuffer(k, dtype=np.int8),
        timestamp=np.frombuffer(t, dtype=np.float64),
        report=report,
    )


def read_items(path: Path) -> tuple[dict[str, CatalogItem], ReadReport]:
    report = ReadReport()
    out: dict[str, CatalogItem] = {}
    for row in csv_rows(path, ("item_id",)):
        report.rows += 1
        item_id = (row.get("item_id") or "").strip()
        if not item_id:
            report.skip("item_id_empty")
            continue
        if item_id in out:
            report.skip("duplicate_item")
            continue
        price_text = (row.get("price") or "").strip()
        price: float | None = None
        if price_text:
            try:
                price = float(price_text)
            except ValueError:
                report.skip("price_invalid")
                continue
            if not np.isfinite(price) or price < 0:
                report.skip("price_invalid")
                continue
        out[item_id] = CatalogItem(
            id=item_id,
            title=(row.get("title") or "").strip(),
            category=(row.get("category") or "").strip(),
            price=price,
        )
        report.kept += 1
    return out, report


def write_events(path: Path, rows: Iterator[tuple[str, str, str, str]]) -> int:
    count = 0
    with open_text(path, "w") as f:
        writer = csv.writer(f)
        writer.writerow(EVENT_COLUMNS)
        for row in rows:
            writer.writerow(row)
            count += 1
    return count


def write_items(path: Path, items: list[CatalogItem]) -> None:
    with open_text(path, "w") as f:
        writer = csv.writer(f)
        writer.writerow(ITEM_COLUMNS)
        for item in items:
            writer.writerow([item.id, item.title, item.category, "" if item.price is None else f"{item.price:g}"])
