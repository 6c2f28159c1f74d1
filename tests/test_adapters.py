"""Dataset adapters and the events reader: bad rows are counted by reason, never fatal."""

from __future__ import annotations

import gzip
from pathlib import Path

import pytest

from cloud_trainer.data.converters import prepare_online_retail, prepare_retailrocket
from cloud_trainer.data.events_io import read_events, read_items
from cloud_trainer.errors import InputError

HEADER = "InvoiceNo,StockCode,Description,Quantity,InvoiceDate,UnitPrice,CustomerID,Country\n"
ROWS = [
    "536365,85123A,WHITE HANGING HEART,6,2010-12-01 08:26:00,2.55,17850.0,United Kingdom",  # kept
    "536365,71053,WHITE METAL LANTERN,6,2010-12-01 08:26:00,3.39,17850.0,United Kingdom",  # kept
    "536365,71053,WHITE METAL LANTERN,2,2010-12-01 08:26:00,3.39,17850.0,United Kingdom",  # duplicate line
    "536366,22633,HAND WARMER,6,2010-12-01 08:28:00,1.85,,United Kingdom",  # missing customer
    "C536379,D,Discount,-1,2010-12-01 09:41:00,27.5,14527.0,United Kingdom",  # cancellation
    "536370,POST,POSTAGE,3,2010-12-01 08:45:00,18,12583.0,France",  # non-product code
    "536371,22086,PAPER CHAIN KIT,0,2010-12-01 09:00:00,2.55,13047.0,United Kingdom",  # zero quantity
    "536372,22087,FREE GIFT,1,2010-12-01 09:01:00,0,13047.0,United Kingdom",  # zero price
    "536373,22088,BAD DATE,1,yesterday,1.0,13047.0,United Kingdom",  # malformed
    "536374,85123a,WHITE HANGING HEART,1,2010-12-02 10:00:00,2.65,13047.0,United Kingdom",  # kept (code upper)
]


def test_online_retail_cleaning_counts_every_reason(tmp_path: Path) -> None:
    source = tmp_path / "or.csv"
    source.write_text(HEADER + "\n".join(ROWS) + "\n")
    prepared = prepare_online_retail(source, tmp_path / "out")
    assert prepared.report.rows == 10 and prepared.report.kept == 3 and prepared.events == 3
    assert dict(prepared.report.skipped) == {
        "duplicate_line": 1, "missing_customer": 1, "cancellation": 1, "non_product_code": 1,
        "nonpositive_quantity": 1, "nonpositive_price": 1, "malformed": 1,
    }
    table = read_events(prepared.events_path)
    assert table.user_ids == ["17850", "13047"]
    assert table.item_ids == ["85123A", "71053"]
    items, _ = read_items(prepared.items_path)  # type: ignore[arg-type]
    assert items["85123A"].title == "WHITE HANGING HEART" and items["85123A"].price == pytest.approx(2.6)


def test_real_online_retail_matches_its_published_figures(datasets: Path, tmp_path: Path) -> None:
    prepared = prepare_online_retail(datasets / "online_retail" / "online_retail.csv.gz", tmp_path)
    assert prepared.report.rows == 541_909  # all transactions, as published
    assert prepared.report.skipped["missing_customer"] == 135_080  # as the dataset README says
    assert prepared.report.rows == prepared.report.kept + sum(prepared.report.skipped.values())
    table = read_events(prepared.events_path)
    assert len(table.user_ids) <= 4_372 and len(table.item_ids) <= 4_070  # published totals bound the cleaned ones


def test_retailrocket_maps_its_three_event_kinds(datasets: Path, tmp_path: Path) -> None:
    prepared = prepare_retailrocket(datasets / "retailrocket_sample" / "sample_events.csv", tmp_path)
    table = read_events(prepared.events_path)
    kinds = {int(k) for k in table.kind}
    assert kinds == {0, 1, 2}  # view, cart, purchase all present
    assert prepared.report.rows == 9_385
    assert prepared.report.kept + sum(prepared.report.skipped.values()) == 9_385


def test_events_reader_counts_bad_rows(tmp_path: Path) -> None:
    path = tmp_path / "events.csv.gz"
    with gzip.open(path, "wt") as f:
        f.write("user_id,item_id,event,timestamp\n")
        f.write("u1,i1,view,2020-01-01T00:00:00Z\nu1,i2,like,0\n,i3,view,0\nu2,i1,cart,notatime\nu2,i1,purchase,5\nu3,i4\n")
    table = read_events(path)
    assert len(table) == 2
    assert table.report.skipped == {"event_invalid": 1, "user_id_invalid": 1, "timestamp_invalid": 1,
                                    "wrong_field_count": 1}


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (b"user,item\nu,i\n", "missing columns"),
        (b"user_id,item_id,event,timestamp\n", "no usable events"),
        (b"user_id,item_id,event,timestamp\n\xff\xfe,x,view,0\n", "not UTF-8"),
        (b"user_id,user_id,item_id,event,timestamp\n", "duplicated column"),
        (b"", "missing columns"),
    ],
)
def test_unusable_files_are_clear_errors(tmp_path: Path, content: bytes, message: str) -> None:
    path = tmp_path / "events.csv"
    path.write_bytes(content)
    with pytest.raises(InputError, match=message):
        read_events(path)


def test_parquet_events_are_read_in_batches_and_equal_the_csv(
    prepared: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import csv
    from datetime import datetime

    import numpy as np
    import pyarrow as pa
    import pyarrow.parquet as pq

    from cloud_trainer.data import events_io

    with gzip.open(prepared / "events.csv.gz", "rt", encoding="utf-8") as f:
        rows = list(csv.DictReader(f))
    columns = {c: [r[c] for r in rows] for c in ("user_id", "item_id", "event")}
    stamps = pa.array([datetime.fromisoformat(r["timestamp"]) for r in rows], pa.timestamp("s", tz="UTC"))
    pq.write_table(pa.table({**columns, "timestamp": stamps}), tmp_path / "events.parquet", row_group_size=4096)
    monkeypatch.setattr(events_io, "PARQUET_BATCH_ROWS", 1000)  # many batches, as a large file has
    from_csv, from_parquet = read_events(prepared / "events.csv.gz"), read_events(tmp_path / "events.parquet")
    assert from_parquet.user_ids == from_csv.user_ids and from_parquet.item_ids == from_csv.item_ids
    for name in ("user", "item", "kind", "timestamp"):
        assert np.array_equal(getattr(from_parquet, name), getattr(from_csv, name)), name
    assert from_parquet.report.rows == from_csv.report.rows == len(rows) > 30_000


def test_parquet_problems_are_clear_errors_or_counted_skips(tmp_path: Path) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    pq.write_table(pa.table({"user_id": ["a"], "item_id": ["x"], "event": ["view"]}), tmp_path / "short.parquet")
    with pytest.raises(InputError, match="missing columns timestamp"):
        read_events(tmp_path / "short.parquet")
    (tmp_path / "fake.parquet").write_bytes(b"user_id,item_id\n" * 10)
    with pytest.raises(InputError, match="not a readable Parquet file"):
        read_events(tmp_path / "fake.parquet")
    table = pa.table({"user_id": ["a", None, "c"], "item_id": ["x", "y", "z"], "event": ["view", "cart", "nap"],
                      "timestamp": [1.7e9, 1.7e9, 1.7e9]})
    pq.write_table(table, tmp_path / "nulls.parquet")
    events = read_events(tmp_path / "nulls.parquet")
    assert len(events) == 1 and events.report.rows == 3 and sum(events.report.skipped.values()) == 2
