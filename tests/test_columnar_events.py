"""The columnar events reader (issue 17) against the row-by-row reader, its reference: the same
table, skip counts and errors on generated nasty files, typed Parquet and the real data sets."""

from __future__ import annotations

import gzip
import tempfile
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from test_input_fuzz import csv_files

from cloud_trainer.data.converters import prepare_retailrocket
from cloud_trainer.data.events_io import EVENT_COLUMNS, EventTable, read_events, read_events_by_row
from cloud_trainer.errors import InputError

ids = st.one_of(st.sampled_from(["u1", " u1", "u1 ", "U1", "a/b", "\u00a0x", "x\u3000", "é", "\x1cx", "x" * 128,
                                 "x" * 129, "", "17850", "17850.0", "ü" * 128, "ü" * 129, "a\x85b", "a b"]),
                st.text(max_size=6))
kinds = st.one_of(st.sampled_from(["view", "cart", "purchase", "VIEW", " cart", "Purchase ", "nap", ""]),
                  st.text(max_size=4))
stamps = st.one_of(st.sampled_from([
    "0", "1", "1.5", "1318579200", "1318579200.25", "32503680000", "32503680001", "1e9", "-1", "inf", "nan",
    "2010-12-01T08:26:00Z", "2010-12-01 08:26:00", "2010-12-01T08:26:00+00:00", "2010-12-01T08:26:00+01:00",
    "2012-02-29T00:00:00Z", "2011-02-29T00:00:00Z", "2000-02-29T23:59:59Z", "1900-02-29T00:00:00Z",
    "2011-13-01T00:00:00Z", "2011-04-31T00:00:00Z", "2011-01-01T24:00:00Z", "2011-01-01T00:60:00Z",
    "2011-01-01T00:00:60Z", "1969-12-31T23:59:59Z", "3000-01-01T00:00:00Z", "3000-01-01T00:00:01Z",
    "2011-01-01T00:00:00.5Z", " 12", "1_000", "0000-01-01T00:00:00Z", ""]), st.text(max_size=6))


def same(a: EventTable, b: EventTable) -> None:
    assert a.user_ids == b.user_ids and a.item_ids == b.item_ids
    for name in ("user", "item", "kind", "timestamp"):
        assert getattr(a, name).dtype == getattr(b, name).dtype, name
        assert np.array_equal(getattr(a, name), getattr(b, name)), name
    assert (a.report.rows, a.report.kept, dict(a.report.skipped)) == \
        (b.report.rows, b.report.kept, dict(b.report.skipped))


def both(path: Path) -> None:
    try:
        expected = read_events_by_row(path)
    except InputError as e:
        with pytest.raises(InputError) as raised:
            read_events(path)
        assert str(raised.value) == str(e)
        return
    same(read_events(path), expected)


FUZZ = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@FUZZ
@given(st.lists(st.tuples(ids, ids, kinds, stamps), min_size=1, max_size=12), st.booleans())
def test_rows_of_nasty_values_read_as_row_by_row(rows: list[tuple[str, ...]], gzipped: bool) -> None:
    import csv
    import io

    out = io.StringIO()
    writer = csv.writer(out)
    writer.writerow(EVENT_COLUMNS)
    writer.writerows(rows)
    data = out.getvalue().encode("utf-8", errors="surrogatepass")
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / ("e.csv.gz" if gzipped else "e.csv")
        path.write_bytes(gzip.compress(data) if gzipped else data)
        both(path)


@FUZZ
@given(csv_files(EVENT_COLUMNS), st.booleans(), st.sampled_from(["", "\n", "\r\n", "\n\n", "x,\"a\nb\"\n"]))
def test_malformed_files_read_as_row_by_row(data: bytes, gzipped: bool, tail: str) -> None:
    data += tail.encode()
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / ("e.csv.gz" if gzipped else "e.csv")
        path.write_bytes(gzip.compress(data) if gzipped else data)
        both(path)


def test_quoting_and_blank_lines_read_as_row_by_row(tmp_path: Path) -> None:
    path = tmp_path / "e.csv"
    path.write_bytes(b'"user_id",item_id,event,timestamp,extra\n"u""1",i"1,view,1,x\n\n\r\n"u\n2","i,2",cart,2,y\n'
                     b'"u3"x,i3,purchase,3,z\n""\n,\nu4,i4,view,4\nu5,i5,view,5,a,b\r\nu6,i6,view,6,"\r"\n')
    both(path)


def test_typed_parquet_reads_as_row_by_row(tmp_path: Path) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    stamp = datetime(2011, 12, 1, 8, 26, 0, 500, tzinfo=UTC)
    for name, timestamps in {"ts": pa.array([stamp, None, stamp, stamp], pa.timestamp("ms", tz="UTC")),
                             "naive": pa.array([stamp.replace(tzinfo=None)] * 4, pa.timestamp("us")),
                             "float": pa.array([1.5, float("nan"), None, 4e10]),
                             "int": pa.array([1, -1, None, 2], pa.int64())}.items():
        table = pa.table({"user_id": pa.array([17850, 2, None, 4], pa.int64()),
                          "item_id": pa.array(["a", " b", "c", None]),
                          "event": ["view", "cart", "purchase", "Purchase"], "timestamp": timestamps})
        path = tmp_path / f"{name}.parquet"
        pq.write_table(table, path)
        both(path)


def test_prepared_data_sets_read_as_row_by_row(prepared: Path, datasets: Path, tmp_path: Path) -> None:
    both(prepared / "events.csv.gz")
    rr = prepare_retailrocket(datasets / "retailrocket_sample" / "sample_events.csv", tmp_path)
    both(rr.events_path)
