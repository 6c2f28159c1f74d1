"""Converters from the two public datasets to the interchange tables (see ../shared/datasets/README.md).

- UCI Online Retail: purchases only; user = CustomerID, item = StockCode. Rows without a customer,
  cancellations (invoice 'C...'), non-positive quantity or price, non-product codes (no digit:
  POST, D, M, BANK CHARGES, ...) and repeated (invoice, item) lines are skipped and counted.
- RetailRocket: view / addtocart / transaction events with epoch-millisecond timestamps.
"""

from __future__ import annotations

import statistics
from collections import Counter, defaultdict
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from cloud_trainer.data.events_io import ReadReport, csv_rows, write_events, write_items
from shared.catalog import CatalogItem
from shared.events import MAX_ID_LENGTH

ONLINE_RETAIL_COLUMNS = ("InvoiceNo", "StockCode", "Description", "Quantity", "InvoiceDate", "UnitPrice", "CustomerID")
RETAILROCKET_COLUMNS = ("timestamp", "visitorid", "event", "itemid")
RETAILROCKET_EVENTS = {"view": "view", "addtocart": "cart", "transaction": "purchase"}


@dataclass
class PreparedData:
    events_path: Path
    items_path: Path | None
    report: ReadReport
    events: int
    items: int


def _online_retail_rows(path: Path, report: ReadReport, titles: dict[str, Counter[str]],
                        prices: dict[str, list[float]]) -> Iterator[tuple[str, str, str, str]]:
    seen: set[tuple[str, str]] = set()
    for row in csv_rows(path, ONLINE_RETAIL_COLUMNS):
        report.rows += 1
        customer = (row["CustomerID"] or "").strip()
        invoice = (row["InvoiceNo"] or "").strip()
        code = (row["StockCode"] or "").strip().upper()
        if not customer:
            report.skip("missing_customer")
            continue
        if invoice.upper().startswith("C"):
            report.skip("cancellation")
            continue
        if not any(c.isdigit() for c in code) or len(code) > MAX_ID_LENGTH:
            report.skip("non_product_code")
            continue
        try:
            quantity = float(row["Quantity"])
            price = float(row["UnitPrice"])
            when = datetime.strptime(row["InvoiceDate"].strip(), "%Y-%m-%d %H:%M:%S")
            user = str(int(float(customer)))
        except (ValueError, TypeError, AttributeError):
            report.skip("malformed")
            continue
        if quantity <= 0:
            report.skip("nonpositive_quantity")
            continue
        if price <= 0:
            report.skip("nonpositive_price")
            continue
        if (invoice, code) in seen:
            report.skip("duplicate_line")
            continue
        seen.add((invoice, code))
        title = (row["Description"] or "").strip()
        if title:
            titles[code][title] += 1
        prices[code].append(price)
        report.kept += 1
        yield user, code, "purchase", when.replace(tzinfo=UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def prepare_online_retail(source: Path, out_dir: Path) -> PreparedData:
    out_dir.mkdir(parents=True, exist_ok=True)
    report = ReadReport()
    titles: dict[str, Counter[str]] = defaultdict(Counter)
    prices: dict[str, list[float]] = defaultdict(list)
    events_path = out_dir / "events.csv.gz"
    count = write_events(events_path, _online_retail_rows(source, report, titles, prices))
    items = [
        CatalogItem(
            id=code,
            title=titles[code].most_common(1)[0][0] if titles[code] else "",
            category="",
            price=round(statistics.median(prices[code]), 2),
        )
        for code in sorted(prices)
    ]
    items_path = out_dir / "items.csv"
    write_items(items_path, items)
    return PreparedData(events_path, items_path, report, count, len(items))


def _retailrocket_rows(path: Path, report: ReadReport) -> Iterator[tuple[str, str, str, str]]:
    seen: set[tuple[str, str, str, str]] = set()
    for row in csv_rows(path, RETAILROCKET_COLUMNS):
        report.rows += 1
        kind = RETAILROCKET_EVENTS.get((row["event"] or "").strip())
        if kind is None:
            report.skip("unknown_event")
            continue
        try:
            seconds = int(row["timestamp"]) / 1000.0
            user, item = str(int(row["visitorid"])), str(int(row["itemid"]))
        except (ValueError, TypeError):
            report.skip("malformed")
            continue
        key = (user, item, kind, f"{seconds:.3f}")
        if key in seen:
            report.skip("duplicate_event")
            continue
        seen.add(key)
        report.kept += 1
        yield key


def prepare_retailrocket(source: Path, out_dir: Path) -> PreparedData:
    out_dir.mkdir(parents=True, exist_ok=True)
    report = ReadReport()
    events_path = out_dir / "events.csv.gz"
    count = write_events(events_path, _retailrocket_rows(source, report))
    return PreparedData(events_path, None, report, count, 0)


CONVERTERS = {"online-retail": prepare_online_retail, "retailrocket": prepare_retailrocket}
