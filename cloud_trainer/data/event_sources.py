"""Events files as streams of pyarrow column batches (CSV, optionally gzipped, or Parquet).

Only files the row-by-row reader would read the same way are streamed: anything else (a header
that is not one plain line, invalid UTF-8, a damaged gzip stream, a field near the csv module's
size limit, a file pyarrow cannot parse) raises :class:`NotColumnar`, and the caller reads the
file row by row, which gives that reader's exact result or error.
"""

from __future__ import annotations

import csv
import gzip
import io
from collections.abc import Iterator
from pathlib import Path
from typing import IO

import pyarrow as pa
import pyarrow.compute as pc

#: Bytes of CSV parsed per batch (what is held as arrow columns at a time).
CSV_BLOCK_BYTES = 8 << 20
Columns = tuple[pa.Array, pa.Array, pa.Array, pa.Array]


class NotColumnar(Exception):
    """This file is read row by row instead (see the module docstring)."""


def _open_binary(path: Path) -> IO[bytes]:
    return gzip.open(path, "rb") if path.suffix == ".gz" else open(path, "rb")  # noqa: SIM115 (callers close)


def _plain_header(path: Path) -> list[str]:
    """The header, if it is one whole line (no quoted line break) that decodes as UTF-8."""
    try:
        with _open_binary(path) as f:
            line = f.readline(1 << 16).decode("utf-8")
    except (OSError, EOFError, UnicodeDecodeError, gzip.BadGzipFile) as e:
        raise NotColumnar(str(e)) from None
    if not line.endswith("\n") or not line.strip("\r\n"):
        raise NotColumnar("header")
    try:
        rows = list(csv.reader(io.StringIO(line, newline=""), strict=True))
    except csv.Error:
        raise NotColumnar("header") from None
    if len(rows) != 1 or any("\n" in name or "\r" in name for name in rows[0]):
        raise NotColumnar("header")
    return rows[0]


def csv_batches(path: Path, columns: tuple[str, ...], field_limit: int) -> Iterator[tuple[int, Columns]]:
    """(rows with a wrong number of fields since the last batch, the batch's ``columns``)."""
    header = _plain_header(path)
    if any(c not in header for c in columns) or len(set(header)) != len(header):
        raise NotColumnar("columns")
    with _open_binary(path) as source:
        yield from _batches(source, header, columns, field_limit)


def _batches(source: IO[bytes], header: list[str], columns: tuple[str, ...],
             field_limit: int) -> Iterator[tuple[int, Columns]]:
    import pyarrow.csv as pacsv

    wrong, longest_wrong = [0], [0]

    def count_wrong(row: pacsv.InvalidRow) -> str:
        wrong[0] += 1
        longest_wrong[0] = max(longest_wrong[0], len(row.text or ""))
        return "skip"

    try:
        reader = pacsv.open_csv(
            source,
            read_options=pacsv.ReadOptions(column_names=header, skip_rows=1, block_size=CSV_BLOCK_BYTES),
            parse_options=pacsv.ParseOptions(newlines_in_values=True, invalid_row_handler=count_wrong),
            convert_options=pacsv.ConvertOptions(column_types={c: pa.string() for c in header},
                                                 strings_can_be_null=False, quoted_strings_can_be_null=False))
        for batch in reader:
            longest = max((pc.max(pc.utf8_length(column)).as_py() or 0) for column in batch.columns)
            if max(longest, longest_wrong[0]) >= field_limit // 2:
                raise NotColumnar("a long field")
            yield wrong[0], tuple(batch.column(name) for name in columns)  # type: ignore[misc]
            wrong[0] = 0
        if longest_wrong[0] >= field_limit // 2:
            raise NotColumnar("a long field")
        if wrong[0]:
            yield wrong[0], tuple(pa.array([], pa.string()) for _ in columns)  # type: ignore[misc]
    except (pa.ArrowException, OSError, EOFError, gzip.BadGzipFile, UnicodeDecodeError) as e:
        raise NotColumnar(str(e)) from None


def parquet_batches(path: Path, columns: tuple[str, ...], batch_rows: int) -> Iterator[tuple[int, Columns]]:
    """Batches of ``batch_rows`` rows of a Parquet file's ``columns`` (never the whole file at once).
    Raises ``pa.ArrowException`` or ``OSError`` for a file that is not Parquet."""
    import pyarrow.parquet as pq

    parquet = pq.ParquetFile(path)
    for batch in parquet.iter_batches(batch_size=batch_rows, columns=list(columns)):
        yield 0, tuple(batch.column(name) for name in columns)  # type: ignore[misc]
